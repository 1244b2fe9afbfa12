"""The data package: the one crop-window sampler of `data.common`, drawn
by the classification, segmentation and detection crops alike."""

import numpy as np
import pytest
import tensorflow as tf

from keras_coordatt.training import data
from keras_coordatt.training.data import common
from keras_coordatt.training.data import detection
from keras_coordatt.training.data import segmentation

_HEIGHT, _WIDTH = 48, 64
_SEEDS = [(0, 0), (1, 2), (7, 3), (123, 456)]
_DEFAULT = ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0))
_NARROW = ((0.25, 0.5), (0.5, 2.0))
# `(top, left, height, width)` on a 48x64 image, recorded from the three
# samplers before they were merged (`data.random_resized_crop`,
# `segmentation_data.random_crop_pair`, `detection_data.random_crop_boxes`
# each called `tf.image.stateless_sample_distorted_bounding_box` with the
# same arguments, and their crops were identical for these seeds).
_OLD_WINDOWS = {
    _DEFAULT: [[18, 7, 26, 23], [4, 6, 43, 53], [1, 7, 42, 56],
               [15, 11, 19, 16]],
    _NARROW: [[4, 18, 34, 28], [19, 15, 23, 41], [1, 4, 24, 47],
              [1, 11, 43, 34]],
}


def _window(seed, scale, ratio, shape=(_HEIGHT, _WIDTH, 3)):
    window = common.crop_window(tf.constant(shape, tf.int32),
                                tf.constant(seed, tf.int32), scale, ratio)
    return [int(v) for v in window]


@pytest.mark.parametrize("scale_ratio", [_DEFAULT, _NARROW])
def test_crop_window_gives_the_old_samplers_windows(scale_ratio):
    scale, ratio = scale_ratio
    windows = [_window(seed, scale, ratio) for seed in _SEEDS]
    assert windows == _OLD_WINDOWS[scale_ratio]


def test_crop_window_of_jpeg_bytes_is_the_decoded_images():
    image = np.zeros((_HEIGHT, _WIDTH, 3), "uint8")
    shape = tf.image.extract_jpeg_shape(tf.io.encode_jpeg(image))
    for seed, expected in zip(_SEEDS, _OLD_WINDOWS[_DEFAULT]):
        window = common.crop_window(shape, tf.constant(seed, tf.int32))
        assert [int(v) for v in window] == expected


def _coordinates():
    """Image channels 0/1: each pixel's row/column; mask: row * W + col."""
    rows, cols = np.mgrid[:_HEIGHT, :_WIDTH]
    image = np.stack([rows, cols, np.zeros_like(rows)], -1)
    return (tf.constant(image, tf.float32),
            tf.constant(rows * _WIDTH + cols, tf.int32))


@pytest.mark.parametrize("seed_index", range(len(_SEEDS)))
def test_mask_and_boxes_crops_use_the_same_window(seed_index):
    seed = tf.constant(_SEEDS[seed_index], tf.int32)
    top, left, height, width = _OLD_WINDOWS[_DEFAULT][seed_index]
    image, mask = _coordinates()
    size = 16
    # Image + mask: the window's corner pixels land on the output's corners.
    cropped, cropped_mask = segmentation.random_crop_pair(image, mask, seed,
                                                          size)
    bottom, right = top + height - 1, left + width - 1
    np.testing.assert_allclose(cropped[0, 0, :2], [top, left], atol=1e-3)
    np.testing.assert_allclose(cropped[-1, -1, :2], [bottom, right],
                               atol=1e-3)
    assert int(cropped_mask[0, 0]) == top * _WIDTH + left
    assert int(cropped_mask[-1, -1]) == bottom * _WIDTH + right
    # Image + boxes: a box on the window becomes the whole crop.
    box = [[top / _HEIGHT, left / _WIDTH, (top + height) / _HEIGHT,
            (left + width) / _WIDTH]]
    _, boxes, labels = detection.random_crop_boxes(
        image, tf.constant(box, tf.float32), tf.constant([3]), seed, size)
    np.testing.assert_allclose(boxes, [[0.0, 0.0, 1.0, 1.0]], atol=1e-6)
    assert labels.numpy().tolist() == [3]


def test_classification_crop_uses_the_window():
    """The classification crop of the window equals the window itself
    resized (bilinear), computed here from the numpy slice."""
    image, _ = _coordinates()
    top, left, height, width = _OLD_WINDOWS[_DEFAULT][1]
    seed = tf.constant(_SEEDS[1], tf.int32)
    cropped = data.random_resized_crop(image, seed, 24)
    window = image.numpy()[top:top + height, left:left + width]
    expected = tf.image.resize(window, (24, 24), method="bilinear")
    np.testing.assert_allclose(cropped, expected, atol=1e-4)


def test_shared_helpers_are_public():
    assert data.as_images is common.as_images
    assert data.num_examples is common.num_examples
    assert data.shard is common.shard
    with pytest.raises(ValueError, match=r"Received: x_train.shape=\(2, 3\)"):
        common.as_images("x_train", np.zeros((2, 3)))
    grey = common.as_images("x", np.arange(4, dtype="uint8").reshape(1, 2, 2))
    assert grey.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(grey[0, :, :, 2], [[0, 1], [2, 3]])
    ds = tf.data.Dataset.range(6)
    context = tf.distribute.InputContext(num_input_pipelines=2,
                                         input_pipeline_id=1)
    assert list(common.shard(ds, context).as_numpy_iterator()) == [1, 3, 5]
    assert list(common.shard(ds, None).as_numpy_iterator()) == list(range(6))

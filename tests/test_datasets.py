"""Tests of keras_coordatt.datasets: the offline digits and digit scenes."""

import numpy as np
import pytest

from keras_coordatt.datasets import digits_images
from keras_coordatt.datasets import digits_scenes
from keras_coordatt.datasets import stratified_split


@pytest.fixture(scope="module")
def scenes():
    return digits_scenes(200, image_size=64, max_digits=3, seed=3)


def test_scene_shapes_and_types(scenes):
    assert scenes["images"].shape == (200, 64, 64, 3)
    assert scenes["images"].dtype == np.uint8
    assert scenes["masks"].shape == (200, 64, 64)
    assert scenes["boxes"].shape == (200, 3, 4)
    assert scenes["classes"].shape == scenes["sources"].shape == (200, 3)
    assert scenes["masks"].max() <= 10
    counts = (scenes["classes"] >= 0).sum(1)
    assert counts.min() == 1 and counts.max() == 3
    # Padding is -1 in every array, at the same slots.
    pad = scenes["classes"] < 0
    assert (scenes["sources"][pad] == -1).all()
    assert (scenes["boxes"][pad] == -1).all()
    assert (scenes["boxes"][~pad] >= 0).all()


def test_masks_boxes_and_pixels_agree(scenes):
    labels = digits_images(8)[1]
    for n in range(len(scenes["images"])):
        mask, image = scenes["masks"][n], scenes["images"][n, ..., 0]
        covered = np.zeros_like(mask, bool)
        for box, cls, src in zip(scenes["boxes"][n], scenes["classes"][n],
                                 scenes["sources"][n]):
            if cls < 0:
                continue
            assert labels[src] == cls
            x0, y0, x1, y1 = box.astype(int)
            inside = mask[y0:y1, x0:x1] == cls + 1
            # The box is the tight box of the digit's stroke pixels.
            assert inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] |= inside
        # Every labelled pixel lies in the box of a digit of its class.
        assert np.array_equal(covered, mask > 0)
        # Labelled pixels are the bright ones (threshold 0.35 of 255).
        assert image[mask > 0].min() >= 89
        assert image[mask == 0].max() <= 90


def test_validation_scenes_use_only_held_out_digits():
    train = digits_scenes(300, image_size=32, seed=0)
    val = digits_scenes(100, image_size=32, split="validation", seed=0)
    labels = digits_images(8)[1]
    train_idx, held_out = stratified_split(labels, 0.2, 0)
    used_train = set(train["sources"].ravel()) - {-1}
    used_val = set(val["sources"].ravel()) - {-1}
    assert used_train <= set(train_idx.tolist())
    assert used_val <= set(held_out.tolist())
    assert not used_train & used_val


def test_scenes_are_deterministic_and_seeded():
    a = digits_scenes(20, image_size=32, seed=5)
    b = digits_scenes(20, image_size=32, seed=5)
    c = digits_scenes(20, image_size=32, seed=6)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["masks"], c["masks"])


@pytest.mark.parametrize("kwargs, name", [
    ({"num_images": 0}, "num_images"),
    ({"num_images": 2.0}, "num_images"),
    ({"image_size": 8}, "image_size"),
    ({"max_digits": 5}, "max_digits"),
    ({"split": "test"}, "split"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"threshold": 0.0}, "threshold"),
])
def test_bad_scene_arguments_name_the_argument(kwargs, name):
    args = dict(num_images=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"`{name}` must be .* Received: "
                                         f"{name}="):
        digits_scenes(**args)

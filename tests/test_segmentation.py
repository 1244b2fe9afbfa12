"""`task="segmentation"`: config and CLI checks, the (image, mask) sources
and pipelines, the ASPP rates, and (slow) the offline demo trained as
shipped and the CLI on tfds mock data."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_coordatt.applications.imagenet import preprocess_input
from keras_coordatt.training import cli as train_cli
from keras_coordatt.training.data import segmentation as sd
from keras_coordatt.training.segmentation import aspp_dilation_rates
from keras_coordatt.training.recipes import get_config


def _identity(images):
    return images


def _pattern_source(n=8, size=32):
    """Images whose red channel encodes each pixel's class (8x8 blocks),
    left-right asymmetric, so that a flip of one without the other shows."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(1, 5, (n, size // 8, size // 8))
    masks = np.kron(blocks, np.ones((8, 8))).astype("int32")  # 8x8 blocks
    masks[:, :, : size // 2] = 0  # asymmetric
    images = np.repeat((masks * 50)[..., None], 3, -1).astype("uint8")
    return sd.from_arrays(images, masks, images, masks, num_classes=5)


def test_digits_seg_pipelines_shapes_and_dtypes():
    source = sd.load_digits_scenes(64, examples={"train": 16,
                                                 "validation": 8})
    assert (source.num_classes, source.train_examples,
            source.val_examples) == (11, 16, 8)
    images, masks = next(iter(sd.train_dataset(
        source, image_size=64, global_batch_size=8,
        preprocess=preprocess_input, scale=(0.6, 1.0), ratio=(0.8, 1.25))))
    assert images.shape == (8, 64, 64, 3) and images.dtype == tf.float32
    assert masks.shape == (8, 64, 64) and masks.dtype == tf.int32
    assert set(np.unique(masks)) <= set(range(11))
    val_images, val_masks = next(iter(sd.eval_dataset(
        source, image_size=64, global_batch_size=8,
        preprocess=preprocess_input)))
    assert val_images.shape == (8, 64, 64, 3)
    assert val_masks.shape == (8, 64, 64)


def test_flip_and_crop_keep_masks_aligned_with_images():
    source = _pattern_source()
    images, masks = next(iter(sd.train_dataset(
        source, image_size=32, global_batch_size=8, preprocess=_identity,
        scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=3)))
    images, masks = images.numpy(), masks.numpy()
    np.testing.assert_array_equal(np.round(images[..., 0] / 50), masks)
    left_empty = np.array([not m[:, :16].any() for m in masks])
    right_empty = np.array([not m[:, 16:].any() for m in masks])
    assert (left_empty | right_empty).all()  # whole halves moved together
    assert 0 < left_empty.sum() < 8  # some flipped, some not
    # Crops: the same box on both, resized to a larger size.
    images, masks = next(iter(sd.train_dataset(
        source, image_size=64, global_batch_size=8, preprocess=_identity,
        scale=(0.5, 0.9), seed=4)))
    exact = np.round(images.numpy()[..., 0] / 50) == masks.numpy()
    assert exact.mean() > 0.9  # bilinear vs nearest differ at edges only


def test_center_crop_pair_at_full_size_is_the_identity():
    rng = np.random.default_rng(1)
    image = tf.constant(rng.integers(0, 255, (32, 32, 3)), tf.uint8)
    mask = tf.constant(rng.integers(0, 9, (32, 32)), tf.int32)
    out_image, out_mask = sd.center_crop_pair(image, mask, 32)
    np.testing.assert_array_equal(out_image.numpy(), image.numpy())
    np.testing.assert_array_equal(out_mask.numpy(), mask.numpy())


def test_array_source_holds_out_a_split_and_checks_its_arguments():
    masks = np.zeros((10, 8, 8), "int32")
    masks[:, 2:4, 2:4] = 3
    source = sd.from_arrays(np.zeros((10, 8, 8, 3), "uint8"), masks,
                            validation_fraction=0.2)
    assert (source.num_classes, source.train_examples,
            source.val_examples) == (4, 8, 2)
    with pytest.raises(ValueError, match="Pass both `x_val` and `y_val`"):
        sd.from_arrays(np.zeros((2, 8, 8, 3)), masks[:2],
                       x_val=np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="non-negative integer masks"):
        sd.from_arrays(np.zeros((2, 8, 8, 3)), masks[:2, :4])


def test_padded_evaluation_weights_every_pixel():
    source = _pattern_source(n=5)
    images, masks, weights = next(iter(sd.eval_dataset(
        source, image_size=32, global_batch_size=8, preprocess=_identity,
        pad_to_multiple=4)))
    assert images.shape[0] == 8 and weights.shape == (8, 32, 32)
    np.testing.assert_array_equal(weights.numpy()[:, 0, 0],
                                  [1, 1, 1, 1, 1, 0, 0, 0])


def test_tfds_oxford_pet_on_mock_data_maps_the_trimap():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        source = sd.load_source("tfds:oxford_iiit_pet")
        assert source.num_classes == 2
        assert source.class_names == ["background", "pet"]
        assert (source.train_examples, source.val_examples) == (6, 6)
        images, masks = next(iter(sd.train_dataset(
            source, image_size=32, global_batch_size=3,
            preprocess=preprocess_input)))
    assert images.shape == (3, 32, 32, 3) and masks.shape == (3, 32, 32)
    assert set(np.unique(masks)) <= {0, 1}


def test_folder_source_pairs_images_and_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        image = rng.integers(0, 255, (24, 40, 3)).astype("uint8")
        mask = rng.integers(0, 4, (24, 40, 1)).astype("uint8")
        tf.io.write_file(str(tmp_path / "images" / f"s{i}.png"),
                         tf.io.encode_png(image))
        tf.io.write_file(str(tmp_path / "masks" / f"s{i}.png"),
                         tf.io.encode_png(mask))
    source = sd.load_source(f"folder:{tmp_path}", validation_fraction=0.2)
    assert (source.num_classes, source.train_examples,
            source.val_examples) == (4, 4, 1)
    images, masks = next(iter(sd.train_dataset(
        source, image_size=32, global_batch_size=2,
        preprocess=preprocess_input)))
    assert images.shape == (2, 32, 32, 3) and masks.shape == (2, 32, 32)
    (tmp_path / "masks" / "s0.png").unlink()
    with pytest.raises(ValueError, match="masks/STEM.png"):
        sd.load_source(f"folder:{tmp_path}")


def test_task_config_and_recipe():
    config = get_config("digits_seg")
    assert (config.task, config.dataset, config.image_size) == (
        "segmentation", "digits-seg", 64)
    assert config.to_dict()["task"] == "segmentation"
    assert get_config("digits").task == "classification"
    with pytest.raises(ValueError, match="multiple of 32"):
        get_config("digits_seg", {"image_size": 48})
    with pytest.raises(ValueError, match="Not a known tensorflow-datasets"):
        sd.load_source("tfds:mnist")


def test_cli_task_flag_and_clear_errors(capsys):
    assert train_cli.main(["--print-config", "--task", "segmentation"]) == 0
    assert '"task": "segmentation"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--task", "keypoints"])
    assert info.value.code == 2
    assert "invalid choice: 'keypoints'" in capsys.readouterr().err
    assert train_cli.main(["--set", "task=keypoints"]) == 2
    err = capsys.readouterr().err
    assert "task='keypoints'" in err and "'segmentation'" in err
    assert train_cli.main(["--task", "segmentation", "--dataset",
                           "digits"]) == 2
    err = capsys.readouterr().err
    assert "classification dataset" in err and "digits-seg" in err


def test_aspp_rates_follow_the_feature_map():
    assert [aspp_dilation_rates(s) for s in (64, 224, 512, 1024)] == [
        [1], [1, 3, 4], [3, 6, 9], [6, 12, 18]]


# The demo's validation mean IoU (11 classes, the background included)
# after the `digits_seg` recipe as shipped. Predicting background everywhere
# scores BACKGROUND_ONLY_MIOU (the background's share of the validation
# pixels, 0.889, over 11 classes).
BACKGROUND_ONLY_MIOU = 0.0809
DEMO_MIOU_FLOOR = 0.11


@pytest.mark.slow
def test_digits_seg_demo_learns_and_its_model_reloads(tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("keras_hub")
    from keras_coordatt.training.fit import train

    result = train("digits_seg", overrides={
        "output_dir": str(tmp_path), "tensorboard": False}, verbose=0)
    metrics = result.metrics
    assert set(metrics) == {"loss", "mean_iou", "pixel_accuracy"}
    assert metrics["mean_iou"] >= DEMO_MIOU_FLOOR > BACKGROUND_ONLY_MIOU
    assert metrics["pixel_accuracy"] > 0.889  # Above background-only.
    losses = result.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    with open(os.path.join(tmp_path, "results.json")) as f:
        assert json.load(f)["metrics"]["mean_iou"] == pytest.approx(
            metrics["mean_iou"])
    # The saved segmenter loads (keras-hub and our backbone registered) and
    # predicts as the trained one.
    loaded = keras.saving.load_model(result.model_path)
    scenes = sd.load_digits_scenes(64, examples={"train": 1,
                                                 "validation": 4})
    images = next(iter(sd.eval_dataset(
        scenes, image_size=64, global_batch_size=4,
        preprocess=preprocess_input)))[0]
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               result.model.predict(images, verbose=0),
                               atol=1e-5)


@pytest.mark.slow
def test_segmentation_cli_on_tfds_mock_data(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("keras_hub")
    out = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=8):
        code = train_cli.main([
            "--task", "segmentation", "--dataset", "tfds:oxford_iiit_pet",
            "--image-size", "64", "--epochs", "1", "--batch-size", "4",
            "--output-dir", str(out),
            "--set", "bn_recalibration_steps=1", "--set", "tensorboard=false",
        ])
    assert code == 0, capsys.readouterr().err[-2000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    with open(out / "config.json") as f:
        assert json.load(f)["task"] == "segmentation"
    assert 0.0 <= results["metrics"]["mean_iou"] <= 1.0
    assert np.isfinite(results["metrics"]["loss"])
    assert (out / "model.keras").exists()

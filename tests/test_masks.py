"""`folder:` segmentation masks read by their real encoding: palette PNGs by
index, 16-bit ids kept, RGB refused, the ignore value (255) weighted 0 in
the batches, and ids checked against the classes, naming the file."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_coordatt.training import cli as train_cli
from keras_coordatt.training.data import segmentation as sd

Image = pytest.importorskip("PIL.Image")

# Pascal VOC's colours of classes 0-2 and of its 255 outline: their
# luminance (what `decode_png(channels=1)` returns) is no class id.
VOC_PALETTE = ([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252
               + [224, 224, 192])


def _identity(images):
    return images


def _folder(path, masks, mode="P"):
    """`path/images/sI.png` (noise) and `path/masks/sI.png` for each mask,
    saved in Pillow `mode`; returns the mask files."""
    (path / "images").mkdir(parents=True)
    (path / "masks").mkdir()
    rng = np.random.default_rng(0)
    files = []
    for i, mask in enumerate(masks):
        image = rng.integers(0, 255, mask.shape[:2] + (3,)).astype("uint8")
        Image.fromarray(image).save(path / "images" / f"s{i}.png")
        if mode == "P":
            saved = Image.fromarray(mask.astype("uint8"), mode="P")
            saved.putpalette(VOC_PALETTE)
        elif mode == "I;16":
            saved = Image.fromarray(mask.astype("uint16"))
        else:
            saved = Image.fromarray(mask.astype("uint8")).convert(mode)
        files.append(str(path / "masks" / f"s{i}.png"))
        saved.save(files[-1])
    return files


def _masks(n=4, ids=3, size=16, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, ids, (size, size)) for _ in range(n)]


def _eval_batches(source, size=16):
    return list(sd.eval_dataset(source, image_size=size, global_batch_size=8,
                                preprocess=_identity))


def test_a_palette_mask_is_read_by_index(tmp_path):
    masks = _masks()
    files = _folder(tmp_path, masks, "P")
    # What the masks were misread as: the palette colours' luminance.
    grey = tf.io.decode_png(tf.io.read_file(files[0]), channels=1)
    assert set(np.unique(grey)) == {0, 38, 75}
    np.testing.assert_array_equal(sd.read_mask(files[0]), masks[0])
    source = sd.load_source(f"folder:{tmp_path}", validation_fraction=0.25)
    assert (source.num_classes, source.ignore_index) == (3, None)
    images, labels = next(iter(sd.train_dataset(
        source, image_size=16, global_batch_size=3, preprocess=_identity)))
    assert set(np.unique(labels)) == {0, 1, 2}
    (val_labels,) = [batch[1].numpy() for batch in _eval_batches(source)]
    assert any((val_labels[0] == m).all() for m in masks)


def test_ignored_pixels_weigh_zero_in_training_and_evaluation(tmp_path):
    masks = _masks(n=5)
    for i, mask in enumerate(masks):
        mask[i, :] = 255  # A different row ignored in each mask.
    _folder(tmp_path, masks, "P")
    source = sd.load_source(f"folder:{tmp_path}", validation_fraction=0.2)
    assert (source.num_classes, source.ignore_index) == (3, 255)
    images, labels, weights = next(iter(sd.train_dataset(
        source, image_size=16, global_batch_size=4, preprocess=_identity,
        scale=(1.0, 1.0), ratio=(1.0, 1.0), horizontal_flip=False)))
    labels, weights = labels.numpy(), weights.numpy()
    assert set(np.unique(labels)) == {0, 1, 2}
    for label, weight in zip(labels, weights):
        (mask,) = [m for m in masks if ((m == 255) == (weight == 0)).all()]
        np.testing.assert_array_equal(label, np.where(mask == 255, 0, mask))
        assert weight.sum() == 16 * 15  # one row of 16 ignored
    # Evaluation: the ignored pixels and the padding both weigh 0.
    _, val_labels, val_weights = next(iter(sd.eval_dataset(
        source, image_size=16, global_batch_size=2, preprocess=_identity,
        pad_to_multiple=2)))
    assert val_weights.numpy().sum(axis=(1, 2)).tolist() == [240.0, 0.0]
    assert val_labels.numpy().max() <= 2


def test_sixteen_bit_ids_are_kept(tmp_path):
    masks = _masks(n=3)
    masks[0][0, 0] = 300
    files = _folder(tmp_path, masks, "I;16")
    # `decode_png(channels=1)` scaled them to 8 bits: every id became 0 (300
    # became 1).
    assert set(np.unique(tf.io.decode_png(
        tf.io.read_file(files[1]), channels=1))) == {0}
    np.testing.assert_array_equal(sd.read_mask(files[0]), masks[0])
    with pytest.raises(ValueError, match=(
            rf"Received: {files[0]} holds 300; accepted: 0\.\.254 and 255 "
            r"\(ignored\); pass ignore_index=None when ids exceed it")):
        sd.load_source(f"folder:{tmp_path}")
    source = sd.from_folder(str(tmp_path), validation_fraction=0.34,
                            ignore_index=None)
    assert source.num_classes == 301
    labels = np.concatenate([b[1].numpy().ravel() for b in sd.eval_dataset(
        source, image_size=16, global_batch_size=1, preprocess=_identity)]
        + [b[1].numpy().ravel() for b in sd.train_dataset(
            source, image_size=16, global_batch_size=2,
            preprocess=_identity, scale=(1.0, 1.0), ratio=(1.0, 1.0),
            horizontal_flip=False).take(1)])
    assert set(np.unique(labels)) == {0, 1, 2, 300}


def test_an_rgb_mask_is_refused_naming_the_file(tmp_path):
    files = _folder(tmp_path, _masks(n=3), "RGB")
    with pytest.raises(ValueError, match=(
            r"holds one class id per pixel \(a palette, grayscale or 16-bit "
            rf"PNG\); colours are not ids\. Received: {files[0]} of mode "
            r"'RGB'; accepted modes: P, L, 1, I, I;16")):
        sd.load_source(f"folder:{tmp_path}")


def test_ids_outside_the_stated_classes_name_the_file(tmp_path):
    masks = _masks(n=4)
    masks[2][3, 3] = 5
    files = _folder(tmp_path, masks, "L")
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    with pytest.raises(ValueError, match=(
            rf"A mask holds an id outside the classes\. Received: "
            rf"{files[2]} holds 5; accepted: 0\.\.2 and 255 \(ignored\)$")):
        sd.load_source(f"folder:{tmp_path}")
    masks[2][3, 3] = 2
    Image.fromarray(masks[2].astype("uint8")).save(files[2])
    source = sd.load_source(f"folder:{tmp_path}")
    assert (source.num_classes, source.class_names) == (
        3, ["background", "cat", "dog"])
    with pytest.raises(ValueError, match=(
            r"`ignore_index` must not be a class id\. Received: "
            r"ignore_index=1, num_classes=3")):
        sd.from_folder(str(tmp_path), ignore_index=1)
    assert sorted(os.listdir(tmp_path / "masks")) == [
        f"s{i}.png" for i in range(4)]


@pytest.mark.slow
def test_cli_trains_on_palette_masks_and_refuses_rgb_ones(tmp_path, capsys):
    pytest.importorskip("keras_hub")
    masks = _masks(n=6, size=32)
    for mask in masks:
        mask[0, :] = 255
    _folder(tmp_path / "data", masks, "P")
    out = tmp_path / "run"
    args = ["--task", "segmentation", "--dataset", f"folder:{tmp_path}/data",
            "--image-size", "32", "--epochs", "1", "--batch-size", "2",
            "--output-dir", str(out), "--verbose", "0",
            "--set", "bn_recalibration_steps=0", "--set", "tensorboard=false"]
    assert train_cli.main(args) == 0, capsys.readouterr().err[-2000:]
    assert "3 classes" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert np.isfinite(results["metrics"]["loss"])
    assert 0.0 <= results["metrics"]["mean_iou"] <= 1.0
    import keras_coordatt.hub  # noqa: F401  (registers the backbone)
    model = keras.saving.load_model(out / "model.keras")
    assert model.outputs[0].shape[-1] == 3  # 3 classes, not 76 or 256
    rgb = tmp_path / "rgb"
    files = _folder(rgb, masks, "RGB")
    args[3] = f"folder:{rgb}"
    args[args.index(str(out))] = str(tmp_path / "run2")
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"Received: {files[0]} of mode 'RGB'" in err
    assert not (tmp_path / "run2" / "config.json").exists()

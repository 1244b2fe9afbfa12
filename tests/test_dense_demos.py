"""The default dense demos on real digits: the `mnist-seg` / `mnist-det`
scenes (held-out digits only in validation, shapes, classes, masks, boxes)
and, slow, `keras-coordatt train --task segmentation|detection` as shipped
reaching their floors."""

import json

import numpy as np
import pytest

pytest.importorskip("mlxtend")

from keras_coordatt import datasets  # noqa: E402
from keras_coordatt.training import cli as train_cli  # noqa: E402
from keras_coordatt.training.data import detection as dd  # noqa: E402
from keras_coordatt.training.data import segmentation as sd  # noqa: E402


@pytest.fixture(scope="module")
def scenes():
    """A few scenes of each split (the csv is read once per call)."""
    return {split: datasets.mnist_scenes(64, 64, split=split, seed=3)
            for split in ("train", "validation")}


def test_validation_scenes_use_only_held_out_digits(scenes):
    _, labels = datasets.mnist_images(28)
    train, held_out = datasets.stratified_split(labels, 0.2, 0)
    assert (len(train), len(held_out)) == (4000, 1000)
    used = {split: set(s["sources"][s["sources"] >= 0].tolist())
            for split, s in scenes.items()}
    assert used["train"] and used["validation"]
    assert used["train"] <= set(train.tolist())
    assert used["validation"] <= set(held_out.tolist())
    # The classes are those of the digits pasted.
    for s in scenes.values():
        real = s["sources"] >= 0
        np.testing.assert_array_equal(s["classes"][real],
                                      labels[s["sources"][real]])


def test_scene_shapes_masks_and_boxes(scenes):
    s = scenes["train"]
    assert s["images"].shape == (64, 64, 64, 3)
    assert s["images"].dtype == np.uint8 and s["masks"].shape == (64, 64, 64)
    assert s["classes"].shape == s["sources"].shape == (64, 2)
    assert s["boxes"].shape == (64, 2, 4)
    assert 0 <= s["masks"].min() and s["masks"].max() <= 10
    counts = (s["classes"] >= 0).sum(axis=1)
    assert set(counts.tolist()) == {1, 2}  # one or two digits a canvas
    for n in range(len(s["images"])):
        for box, digit in zip(s["boxes"][n], s["classes"][n]):
            if digit < 0:
                assert (box == -1).all()
                continue
            x0, y0, x1, y1 = box.astype(int)
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            # Digits are 24 to 32 pixels a side: their strokes' boxes are
            # at least 10 pixels tall (a "1" may be thin).
            assert y1 - y0 >= 10
            inside = s["masks"][n, y0:y1, x0:x1]
            assert (inside == digit + 1).any()
            # The box is tight: the digit's stroke touches its four edges.
            stroke = inside == digit + 1
            assert stroke[0].any() and stroke[-1].any()
            assert stroke[:, 0].any() and stroke[:, -1].any()


def test_scenes_are_deterministic_with_the_seed(scenes):
    again = datasets.mnist_scenes(64, 64, split="train", seed=3)
    np.testing.assert_array_equal(again["images"], scenes["train"]["images"])
    other = datasets.mnist_scenes(64, 64, split="train", seed=4)
    assert not np.array_equal(other["sources"], scenes["train"]["sources"])


def test_mnist_scene_argument_errors():
    with pytest.raises(ValueError, match=r"`min_scale` must be a float in "
                       r"\(0, 1\]\. Received: min_scale=0"):
        datasets.mnist_scenes(1, 64, min_scale=0)
    with pytest.raises(ValueError, match=r"`max_digits` must be an integer "
                       r"from 1 to 4\. Received: max_digits=5"):
        datasets.mnist_scenes(1, 64, max_digits=5)


def test_sources_and_batches_of_the_dense_demos():
    small = {"train": 8, "validation": 4}
    seg = sd.load_mnist_scenes(64, examples=small)
    assert (seg.name, seg.num_classes, seg.train_examples,
            seg.val_examples) == ("mnist-seg", 11, 8, 4)
    images, masks = next(iter(sd.eval_dataset(
        seg, image_size=64, global_batch_size=4,
        preprocess=lambda x: x)))
    assert images.shape == (4, 64, 64, 3) and masks.shape == (4, 64, 64)
    assert 0 <= int(masks.numpy().min()) and int(masks.numpy().max()) <= 10
    det = dd.load_mnist_scenes(64, examples=small)
    assert (det.name, det.num_classes, det.max_boxes) == ("mnist-det", 10, 2)
    _, targets = next(iter(dd.eval_dataset(
        det, image_size=64, global_batch_size=4, preprocess=lambda x: x)))
    boxes = targets["boxes"].numpy()
    real = targets["labels"].numpy() >= 0
    assert real.any(axis=1).all()
    assert (boxes[real] >= 0).all() and (boxes[real] <= 64).all()


@pytest.mark.parametrize("task, dataset, recipe", [
    ("segmentation", "mnist-seg", "mnist_seg"),
    ("detection", "mnist-det", "mnist_det")])
def test_the_task_defaults_are_the_mnist_demos(capsys, task, dataset,
                                               recipe):
    assert train_cli.main(["--print-config", "--task", task]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["task"], printed["dataset"]) == (task, dataset)
    from keras_coordatt.training.tasks import default_recipe

    assert default_recipe(task, None) == recipe
    assert default_recipe(task, dataset) == recipe


# The default demos as shipped (`keras-coordatt train --task ...`), on 2
# CPU cores shared at load 1 to 11 (see the recipes): segmentation
# validation mean IoU 0.134 (58 minutes there), detection mAP@0.5 0.124
# (61 minutes). The floors sit under those and above a model that
# predicts background everywhere (mean IoU 0.087; mAP 0): they check that
# the demos learn, not the goals of 0.5, which these recipes do not
# reach.
BACKGROUND_ONLY_MIOU = 0.087
SEG_MIOU_FLOOR = 0.12
DET_MAP50_FLOOR = 0.10


def _run_demo(tmp_path, capsys, task):
    pytest.importorskip("keras_hub")
    code = train_cli.main(["--task", task, "--output-dir", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "results.json") as f:
        return json.load(f)["metrics"]


@pytest.mark.slow
def test_segmentation_demo_as_shipped(tmp_path, capsys):
    metrics = _run_demo(tmp_path, capsys, "segmentation")
    assert metrics["mean_iou"] >= SEG_MIOU_FLOOR > BACKGROUND_ONLY_MIOU


@pytest.mark.slow
def test_detection_demo_as_shipped(tmp_path, capsys):
    pytest.importorskip("pycocotools")
    metrics = _run_demo(tmp_path, capsys, "detection")
    assert metrics["map_50"] >= DET_MAP50_FLOOR

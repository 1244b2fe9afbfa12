"""Detection input pipelines: images with boxes and their classes.

The detection counterpart of `keras_coordatt.training.data`, with the same
functions and arguments (`load_source`, `train_dataset`, `eval_dataset`),
so that `train()` picks one module or another by `TrainConfig.task`. A
source is a `DetectionSource` whose examples are `(image, {"boxes",
"labels"})`: the image RGB in [0, 255] of any size, `boxes` float32 `(n, 4)`
as `(y_min, x_min, y_max, x_max)` fractions of the image (tensorflow-
datasets' `BBoxFeature`), `labels` int32 `(n,)`, rows of label -1 being
padding. The pipelines are `data.training_stream` and
`data.evaluation_stream` (the same shuffling, per-example seeds,
per-replica batches and per-host sharding as classification) with
box-aware transforms:

- training: a random crop (`data.random_resized_crop`'s area and aspect
  ranges) resized to the training size; a box stays when its centre is in
  the crop (SSD's rule), clipped to it; optional left-right flips;
- evaluation: the whole image resized to the size (no crop: a crop would
  cut ground-truth objects out of the score).

Batches are `(preprocess(images), {"boxes", "labels"})` with `boxes`
float32 `(B, max_boxes, 4)` `yxyx` in pixels of the resized image and
`labels` int32 `(B, max_boxes)`, rows past an image's objects filled with
-1 (keras-hub's padding), the format `detection.build_detector`'s RetinaNet
trains on.

Datasets (`dataset=`):

- `"digits-det"`: the `keras_coordatt.datasets.digits_scenes` canvases
  that `digits-seg` segments (one generator for both), at the training
  image size, with the tight box of every digit's strokes; 10 classes (the
  digits), at most `DIGITS_DET_MAX_DIGITS` per canvas, 1,024 training and
  256 validation scenes drawn from disjoint digits; offline.
- `"mnist-det"`: the same scenes of the 5,000 real 28x28 MNIST digits
  (`keras_coordatt.datasets.mnist_scenes`, the `mnist-seg` scenes), at
  most `MNIST_DET_MAX_DIGITS` per canvas, `MNIST_DET_EXAMPLES` scenes;
  validation scenes hold only the 1,000 held-out digits; offline (the
  `datasets` extra). The default demo.
- `"tfds:NAME"`: the tensorflow-datasets detection datasets of
  `TFDS_DETECTION` (`voc`, `coco`; see their entries).
"""

import dataclasses
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_coordatt.datasets import digits_scenes
from keras_coordatt.datasets import mnist_scenes
from keras_coordatt.training.data import classification as data_lib
from keras_coordatt.training.data.common import as_images
from keras_coordatt.training.data.common import crop_window
from keras_coordatt.training.data.common import num_examples
from keras_coordatt.training.dataset_registry import find_dataset
from keras_coordatt.training.dataset_registry import load_named
from keras_coordatt.training.tasks import dataset_forms

DIGITS_DET_EXAMPLES = {"train": 1024, "validation": 256}
DIGITS_DET_CLASSES = tuple(str(d) for d in range(10))
DIGITS_DET_MAX_DIGITS = 3
MNIST_DET_EXAMPLES = {"train": 2048, "validation": 256}
MNIST_DET_MAX_DIGITS = 2
# Target rows of a tensorflow-datasets image (keras-hub's NMS keeps as
# many detections); objects past them are left out.
TFDS_MAX_BOXES = 100


@dataclasses.dataclass
class DetectionSource(data_lib.ImageSource):
    """An `ImageSource` of `(image, {"boxes", "labels"})` examples.

    Attributes:
        max_boxes: rows of the padded targets of a batch (the most objects
            an image keeps).
    """

    max_boxes: int = TFDS_MAX_BOXES


@dataclasses.dataclass(frozen=True)
class TfdsDetection:
    """How to read one tensorflow-datasets detection dataset.

    Attributes:
        image: the image feature.
        objects: the `Sequence` feature of the objects, with `bbox`
            (normalised `yxyx`) and `label` (a `ClassLabel`).
        ignore: a boolean object feature whose objects are left out of the
            targets (neither trained on nor scored), or None.
        splits: default `(train, validation)` splits.
    """

    image: str
    objects: str
    ignore: Optional[str]
    splits: Tuple[str, str]


TFDS_DETECTION = {
    # PASCAL VOC (voc/2007, voc/2012): 20 classes. The objects marked
    # difficult are the ones VOC's own evaluation ignores.
    "voc": TfdsDetection(image="image", objects="objects",
                         ignore="is_difficult",
                         splits=("train", "validation")),
    # COCO (coco/2017): 80 classes. Crowd regions are not single objects.
    "coco": TfdsDetection(image="image", objects="objects",
                          ignore="is_crowd", splits=("train", "validation")),
}


# ---------------------------------------------------------------------------
# Sources.


def load_source(dataset, *, image_size=64, validation_fraction=0.1, seed=0,
                data_dir=None, manual_dir=None, download=True,
                train_split=None, val_split=None, eval_crop_fraction=1.0):
    """Returns the detection source a dataset string names.

    Args:
        dataset: `"mnist-det"`, `"digits-det"` or `"tfds:NAME"` (a
            `TFDS_DETECTION` name; see the module's docstring).
        image_size: side of the mnist-det / digits-det canvases.
        validation_fraction: unused (no source here holds out a split);
            accepted so that the arguments are `data.load_source`'s.
        seed: seed of the scenes.
        data_dir, manual_dir, download: tensorflow-datasets' (see
            `data.from_tfds`).
        train_split, val_split: tensorflow-datasets split names (default:
            the dataset's entry in `TFDS_DETECTION`).
        eval_crop_fraction: unused (see `eval_dataset`).

    Returns:
        A `DetectionSource`.

    Raises:
        ValueError: an unknown form or tensorflow-datasets name.
    """
    del eval_crop_fraction
    kind, _, arg = dataset.partition(":") if isinstance(dataset, str) else (
        None, None, None)
    if find_dataset(dataset) is not None:
        return load_named(dataset, "detection", image_size=image_size,
                          validation_fraction=validation_fraction, seed=seed)
    if kind == "tfds" and arg:
        return from_tfds(arg, data_dir=data_dir, manual_dir=manual_dir,
                         download=download, train_split=train_split,
                         val_split=val_split)
    raise ValueError(
        "Unknown detection dataset. Received: dataset="
        f"{dataset!r}, task='detection'; accepted: "
        f"{', '.join(dataset_forms('detection'))}"
    )


def load_digits_scenes(image_size=64, seed=0, examples=None):
    """The offline `digits-det` source (`datasets.digits_scenes`).

    Args:
        image_size: side of the canvases (no resize needed at that size).
        seed: seed of the scenes.
        examples: `{"train": N, "validation": M}`; default
            `DIGITS_DET_EXAMPLES`.

    Returns:
        A `DetectionSource` named `"digits-det"` with 10 classes.
    """
    return _scene_source("digits-det", digits_scenes, image_size, seed,
                         examples or DIGITS_DET_EXAMPLES,
                         DIGITS_DET_MAX_DIGITS)


def load_mnist_scenes(image_size=64, seed=0, examples=None):
    """The offline `mnist-det` source (`datasets.mnist_scenes`, up to
    `MNIST_DET_MAX_DIGITS` digits a canvas); arguments as
    `load_digits_scenes` (default `MNIST_DET_EXAMPLES`).

    Returns:
        A `DetectionSource` named `"mnist-det"` with 10 classes.
    """
    return _scene_source("mnist-det", mnist_scenes, image_size, seed,
                         examples or MNIST_DET_EXAMPLES, MNIST_DET_MAX_DIGITS)


def _scene_source(name, scenes, image_size, seed, examples, max_digits):
    arrays = []
    for split in ("train", "validation"):
        made = scenes(examples[split], image_size, max_digits=max_digits,
                      split=split, seed=seed)
        arrays += [made["images"],
                   scene_targets(made["boxes"], made["classes"], image_size)]
    return from_arrays(*arrays, num_classes=len(DIGITS_DET_CLASSES),
                       name=name, class_names=DIGITS_DET_CLASSES)


def scene_targets(boxes, classes, image_size):
    """`datasets.digits_scenes` boxes (`xyxy` pixel edges, -1 padding) as
    source targets: normalised `yxyx` boxes and their labels."""
    valid = (classes >= 0)[..., None]
    boxes = np.where(valid, boxes[..., [1, 0, 3, 2]] / image_size, -1.0)
    return {"boxes": boxes.astype("float32"),
            "labels": classes.astype("int32")}


def from_arrays(x_train, y_train, x_val, y_val, *, num_classes=None,
                name="arrays", class_names=None):
    """A detection source over numpy arrays held in memory.

    Args:
        x_train, x_val: images `(N, H, W, 3)`, `(N, H, W, 1)` or
            `(N, H, W)` in [0, 255].
        y_train, y_val: `{"boxes": (N, n, 4), "labels": (N, n)}`: boxes
            `yxyx` as fractions of the image, labels the class ids, rows
            of label -1 padding.
        num_classes: defaults to the largest label + 1.
        name, class_names: the source's.

    Returns:
        A `DetectionSource` keeping up to `n` boxes per image.

    Raises:
        ValueError: arrays of the wrong shapes, types or ranges.
    """
    x_train = as_images("x_train", x_train)
    x_val = as_images("x_val", x_val)
    y_train = _as_targets("y_train", y_train, len(x_train))
    y_val = _as_targets("y_val", y_val, len(x_val))
    if num_classes is None:
        num_classes = int(max(y_train["labels"].max(),
                              y_val["labels"].max())) + 1
    source = data_lib.array_source(
        x_train, y_train, x_val, y_val, num_classes=num_classes, name=name,
        class_names=None if class_names is None else list(class_names))
    return DetectionSource(
        **{field.name: getattr(source, field.name)
           for field in dataclasses.fields(source)},
        max_boxes=max(1, y_train["labels"].shape[1],
                      y_val["labels"].shape[1]),
    )


def _as_targets(name, y, count):
    boxes = np.asarray(y.get("boxes") if isinstance(y, dict) else None)
    labels = np.asarray(y.get("labels") if isinstance(y, dict) else None)
    ok = boxes.ndim == 3 and boxes.shape[0] == count and (
        boxes.shape[2] == 4) and labels.shape == boxes.shape[:2] and (
        np.issubdtype(labels.dtype, np.integer)) and (
        not labels.size or labels.min() >= -1)
    if ok:
        real = boxes[labels >= 0]
        ok = ((real >= 0) & (real <= 1)).all() and (
            real[:, :2] <= real[:, 2:]).all()
    if not ok:
        raise ValueError(
            f"`{name}` must be a dict of `boxes` (N, n, 4), `yxyx` "
            "fractions of the image with min <= max, and `labels` (N, n) "
            f"integers >= -1 (-1: padding), N = {count} images. Received: "
            f"{name} with boxes of shape {boxes.shape}, labels of shape "
            f"{labels.shape}, dtype {labels.dtype}"
        )
    return {"boxes": boxes.astype("float32"),
            "labels": labels.astype("int32")}


def from_tfds(name, *, data_dir=None, manual_dir=None, download=True,
              train_split=None, val_split=None):
    """A tensorflow-datasets detection dataset as a source.

    Args:
        name: a `TFDS_DETECTION` name, optionally with a config and version
            (`"voc"`, `"voc/2012"`, `"coco/2017:1.*.*"`).
        data_dir, manual_dir, download: see `data.from_tfds`.
        train_split, val_split: split names (default: the entry's).

    Returns:
        A `DetectionSource` named `"tfds:NAME"` with the dataset's classes,
        keeping up to `TFDS_MAX_BOXES` objects per image.

    Raises:
        ValueError: a dataset not in `TFDS_DETECTION`.
    """
    base = name.split(":")[0].split("/")[0]
    if base not in TFDS_DETECTION:
        raise ValueError(
            "Not a known tensorflow-datasets detection dataset. Received: "
            f"dataset='tfds:{name}', task='detection'; accepted: "
            f"{', '.join('tfds:' + n for n in TFDS_DETECTION)}"
        )
    spec = TFDS_DETECTION[base]
    builder = data_lib.tfds_builder(name, data_dir, ", ".join(TFDS_DETECTION))
    data_lib.prepare_tfds(builder, download, manual_dir)
    train_split = train_split or spec.splits[0]
    val_split = val_split or spec.splits[1]

    def convert(example):
        objects = example[spec.objects]
        keep = tf.ones_like(objects["label"], tf.bool)
        if spec.ignore:
            keep = tf.logical_not(objects[spec.ignore])
        return example[spec.image], {
            "boxes": tf.boolean_mask(objects["bbox"], keep),
            "labels": tf.cast(tf.boolean_mask(objects["label"], keep),
                              tf.int32),
        }

    read = data_lib.tfds_reader(builder, convert)
    splits = dict(builder.info.splits)
    class_names = builder.info.features[spec.objects]["label"].names
    return DetectionSource(
        name=f"tfds:{name}", num_classes=len(class_names),
        train_examples=num_examples(builder, splits, train_split,
                                              read),
        val_examples=num_examples(builder, splits, val_split, read),
        make_train=data_lib.tfds_train_reader(builder, read, train_split),
        make_val=lambda: read(val_split),
        class_names=list(class_names), max_boxes=TFDS_MAX_BOXES,
    )


# ---------------------------------------------------------------------------
# Pipelines.


def random_crop_boxes(image, boxes, labels, seed, size, scale=(0.08, 1.0),
                      ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """One random crop of an image, resized to `size`, and its boxes.

    The crop is `common.crop_window`'s (area `scale`, aspect `ratio`,
    stateless). A box whose centre falls outside it is dropped (label -1),
    the others are clipped to it.

    Args:
        image: `(H, W, 3)` image in [0, 255].
        boxes: `(n, 4)` normalised `yxyx` boxes.
        labels: `(n,)` int32 labels (-1: padding).
        seed: int tensor of shape `(2,)`.
        size: output side.
        scale, ratio: see `common.crop_window`.

    Returns:
        `(image, boxes, labels)`: float32 `(size, size, 3)`, boxes
        normalised to the crop, labels.
    """
    top, left, height, width = crop_window(tf.shape(image), seed, scale,
                                           ratio)
    return _crop_boxes(image, boxes, labels, tf.stack([top, left]),
                       tf.stack([height, width]), size)


def resize_boxes(image, boxes, labels, size):
    """The whole image resized to `size` (float32); normalised boxes stay
    as they are."""
    return _crop_boxes(image, boxes, labels, tf.zeros([2], tf.int32),
                       tf.shape(image)[:2], size)


def _crop_boxes(image, boxes, labels, begin, extent, size):
    """Pixels `begin` to `begin + extent` (rows, columns) of the image,
    resized to `size`, and the boxes moved into that window.

    `tf.image.resize`'s half-pixel centres map pixel edge `e` of the crop
    to `e * size / extent`: normalised coordinates carry over exactly.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    image = tf.slice(image, tf.concat([begin, [0]], 0),
                     tf.concat([extent, [-1]], 0))
    image = tf.image.resize(tf.cast(image, tf.float32), (size, size))
    origin = tf.tile(tf.cast(begin, tf.float32) / shape, [2])
    span = tf.tile(tf.cast(extent, tf.float32) / shape, [2])
    boxes = (tf.cast(boxes, tf.float32) - origin) / span
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    inside = tf.reduce_all((centre >= 0.0) & (centre <= 1.0), axis=-1)
    labels = tf.where(inside & (labels >= 0), labels, -1)
    boxes = tf.clip_by_value(boxes, 0.0, 1.0)
    return tf.ensure_shape(image, (size, size, 3)), boxes, labels


def flip_boxes(image, boxes, seed):
    """Flips an image and its normalised `yxyx` boxes left-right together,
    with probability 1/2 (stateless)."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    y0, x0, y1, x1 = tf.unstack(boxes, axis=-1)
    flipped = tf.stack([y0, 1.0 - x1, y1, 1.0 - x0], axis=-1)
    return tf.cond(flip, lambda: (tf.reverse(image, [1]), flipped),
                   lambda: (image, boxes))


def pad_targets(boxes, labels, max_boxes, size):
    """The batch targets of one image: its real boxes first, in pixels of a
    `size` image, then -1 rows up to `max_boxes` (extra objects dropped).

    Returns:
        `{"boxes": float32 (max_boxes, 4), "labels": int32 (max_boxes,)}`.
    """
    real = labels >= 0
    boxes = tf.boolean_mask(boxes, real)[:max_boxes] * float(size)
    labels = tf.boolean_mask(labels, real)[:max_boxes]
    missing = max_boxes - tf.shape(labels)[0]
    boxes = tf.pad(boxes, [[0, missing], [0, 0]], constant_values=-1.0)
    labels = tf.pad(labels, [[0, missing]], constant_values=-1)
    return {"boxes": tf.ensure_shape(boxes, (max_boxes, 4)),
            "labels": tf.ensure_shape(labels, (max_boxes,))}


def train_dataset(source, *, image_size, global_batch_size, preprocess,
                  strategy=None, scale=(0.08, 1.0),
                  ratio=(3.0 / 4.0, 4.0 / 3.0), horizontal_flip=True,
                  shuffle_buffer=10_000, cache=False, seed=0,
                  deterministic=False, num_classes=None):
    """The training input: endless `(images, targets)` global batches.

    `data.train_dataset` with `random_crop_boxes` and `flip_boxes` as the
    augmentation; the arguments are its.

    Raises:
        ValueError: `num_classes` (one-hot targets) is set.
    """
    _check_sparse(num_classes)
    max_boxes = _max_boxes(source)

    def augment(image, target, seeds):
        image, boxes, labels = random_crop_boxes(
            image, target["boxes"], target["labels"], seeds[0], image_size,
            scale, ratio)
        if horizontal_flip:
            image, boxes = flip_boxes(image, boxes, seeds[1])
        return image, pad_targets(boxes, labels, max_boxes, image_size)

    return data_lib.training_stream(
        source, augment=augment, finish=_finish(preprocess),
        global_batch_size=global_batch_size, strategy=strategy,
        shuffle_buffer=shuffle_buffer, cache=cache, seed=seed,
        deterministic=deterministic,
    )


def eval_dataset(source, *, image_size, global_batch_size, preprocess,
                 crop_fraction=1.0, cache=False, drop_remainder=False,
                 num_classes=None, pad_to_multiple=1):
    """The evaluation input: whole images resized, `(images, targets)`.

    `data.eval_dataset` with `resize_boxes`; the arguments are its, but
    `crop_fraction` must be 1 (see the module's docstring). Padded batches
    carry per-image weights, which `detection.evaluate` reads (keras-hub's
    RetinaNet loss ignores sample weights).

    Raises:
        ValueError: `num_classes` is set, or `crop_fraction` is not 1.
    """
    _check_sparse(num_classes)
    if crop_fraction != 1.0:
        raise ValueError(
            "Detection evaluates whole images (a crop would cut objects "
            "out of the ground truth). Received: crop_fraction="
            f"{crop_fraction!r}; accepted: 1.0"
        )
    max_boxes = _max_boxes(source)

    def transform(image, target):
        image, boxes, labels = resize_boxes(
            image, target["boxes"], target["labels"], image_size)
        return image, pad_targets(boxes, labels, max_boxes, image_size)

    return data_lib.evaluation_stream(
        source, transform=transform, finish=_finish(preprocess),
        global_batch_size=global_batch_size, cache=cache,
        drop_remainder=drop_remainder, pad_to_multiple=pad_to_multiple,
    )


def _max_boxes(source):
    return getattr(source, "max_boxes", TFDS_MAX_BOXES)


def _finish(preprocess):
    def finish(images, targets, *weights):
        return (preprocess(images), targets, *weights)

    return finish


def _check_sparse(num_classes):
    if num_classes is not None:
        raise ValueError(
            "Detection targets are boxes with class ids (no one-hot "
            f"targets, no label smoothing). Received: num_classes="
            f"{num_classes!r}"
        )


__all__ = [
    "DetectionSource",
    "TFDS_DETECTION",
    "TfdsDetection",
    "eval_dataset",
    "flip_boxes",
    "from_arrays",
    "from_tfds",
    "load_digits_scenes",
    "load_mnist_scenes",
    "load_source",
    "pad_targets",
    "random_crop_boxes",
    "resize_boxes",
    "scene_targets",
    "train_dataset",
]

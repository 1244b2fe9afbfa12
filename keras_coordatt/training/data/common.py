"""Pieces shared by the classification, segmentation and detection
pipelines: the random crop window, the array checks and the sharding.

One crop-window sampler serves the three tasks, so that an image and its
mask or boxes, and the three pipelines for the same seed, see the same
window.
"""

import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def crop_window(shape, seed, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
    """A random crop window of area `scale` and aspect `ratio`, as
    `tf.image.sample_distorted_bounding_box` / RandomResizedCrop draw it.
    Stateless: same seed, same window.

    Args:
        shape: the image's shape `(H, W, C)` (an int32 tensor; for JPEG
            bytes, `tf.image.extract_jpeg_shape`).
        seed: int tensor of shape `(2,)`.
        scale: range of the window's area as a fraction of the image area.
        ratio: range of the window's width / height.

    Returns:
        `(top, left, height, width)`: int32 scalar tensors, in pixels (the
        whole image when no window fits in 10 attempts).
    """
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=float(scale[0]),
        aspect_ratio_range=tuple(float(r) for r in ratio),
        area_range=tuple(float(s) for s in scale),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return begin[0], begin[1], extent[0], extent[1]


def shard(ds, input_context):
    """Every `num_input_pipelines`-th example of `ds` for this pipeline
    (`AutoShardPolicy.DATA` by hand); `ds` itself for a single pipeline."""
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines,
                      input_context.input_pipeline_id)
    return ds


def as_images(name, x):
    """`x` as an `(N, H, W, 3)` numeric array (grey images repeated to
    RGB); `name` is the argument named in the error."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"`{name}` must be images of shape (N, H, W), (N, H, W, 1) or "
            f"(N, H, W, 3). Received: {name}.shape={x.shape}"
        )
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if not (np.issubdtype(x.dtype, np.integer)
            or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(
            f"`{name}` must hold numbers in [0, 255]. Received: "
            f"{name}.dtype={x.dtype}"
        )
    if np.issubdtype(x.dtype, np.floating):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:  # A NaN pixel trains a NaN model, silently.
            raise ValueError(
                f"`{name}` must hold finite numbers in [0, 255]. Received: "
                f"{name} with {bad:,} NaN or infinite values")
    return x


def num_examples(builder, splits, split, read):
    """Examples in a tensorflow-datasets (sub)split: from the metadata when
    `splits` says it holds them, else counted by reading `read(split)`."""
    if splits:
        try:
            return int(builder.info.splits[split].num_examples)
        except (KeyError, ValueError):
            pass
    ds = read(split)
    count = int(ds.cardinality())
    if count < 0:
        count = int(ds.reduce(0, lambda n, _: n + 1))
    return count


def first_unreadable(files):
    """The first of `files` that TensorFlow's image decoder cannot read, as
    `(path, reason)`, or None.

    A decoding error inside `fit` names neither the file nor (often) the
    cause; the training loop calls this after such an error to say which
    file it was. It decodes every file (one at a time, eagerly), so it is
    only run once something has failed.
    """
    for path in files:
        try:
            data = tf.io.read_file(path)
            tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.OpError, OSError) as error:
            message = getattr(error, "message", None) or str(error)
            lines = [line.strip() for line in message.splitlines()
                     if line.strip() and not line.strip().startswith("[[")]
            return os.fsdecode(path), (lines[0] if lines
                                       else type(error).__name__)
    return None


# Decoded images stop here, as Pillow's `Image.MAX_IMAGE_PIXELS` (the same
# value): a 388 KB PNG of 20000 x 20000 pixels decodes to 1.2 GB (and more
# while resized). Raise it (or set None) for larger images on purpose.
MAX_IMAGE_PIXELS = 89_478_485


def check_image_sizes(files, limit=None):
    """Raises naming the first of `files` whose header declares more than
    `limit` pixels (default `MAX_IMAGE_PIXELS`; None: no limit).

    Only the headers are read (Pillow opens lazily), with a few threads, so
    a folder is checked before anything is decoded. Files Pillow cannot
    open are left to the decoder (and `first_unreadable`)."""
    limit = MAX_IMAGE_PIXELS if limit is None else limit
    if limit is None or not files:
        return
    try:
        from PIL import Image
    except ImportError:  # Pillow is in the datasets extra; no check then.
        return
    import concurrent.futures

    def pixels(path):
        """The declared pixel count, as text; "" if within the limit or not
        an image Pillow opens."""
        try:
            with Image.open(path) as image:
                count = image.size[0] * image.size[1]
        except Image.DecompressionBombError:
            # Pillow's own refusal, at twice its limit (its size is not
            # given back): above ours unless ours was raised beyond it.
            bound = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            return f"more than {bound:,}" if bound > limit else ""
        except Exception:  # noqa: BLE001 - the decoder's to judge
            return ""
        return f"{count:,}" if count > limit else ""

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for path, count in zip(files, pool.map(pixels, files)):
            if count:
                raise ValueError(
                    f"An image is larger than the decoder is allowed to "
                    f"allocate. Received: {os.fsdecode(path)} with "
                    f"{count} pixels; accepted: up to {limit:,} (keras_"
                    "coordatt.training.data.common.MAX_IMAGE_PIXELS, which "
                    "you may raise)")

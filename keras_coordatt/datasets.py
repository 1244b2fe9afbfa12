"""The small real dataset that ships offline, shared by training and QAT.

scikit-learn bundles the UCI handwritten digits (1,797 grey 8x8 images,
10 classes), so the demos and tests run on real images without a download.
This module turns them into RGB images of any size and splits them; it needs
numpy and scikit-learn (the `datasets` extra), and no TensorFlow.
"""

import numpy as np


def digits_images(image_size=32):
    """scikit-learn's digits as RGB uint8 images in [0, 255].

    The 8x8 images (values 0..16) are scaled to [0, 255], upscaled
    bilinearly to `image_size` (half-pixel centres, like `tf.image.resize`)
    and repeated over 3 channels.

    Args:
        image_size: int >= 8, side of the square images.

    Returns:
        `(images, labels)`: uint8 `(1797, S, S, 3)` and int32 `(1797,)`.
    """
    if isinstance(image_size, bool) or not isinstance(
            image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(
            "`image_size` must be an integer >= 8. "
            f"Received: image_size={image_size!r}"
        )
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:  # pragma: no cover - optional extra.
        raise ImportError(
            "The digits dataset needs scikit-learn: "
            "pip install 'keras-coordatt[datasets]'"
        ) from error
    digits = sk_load_digits()
    images = digits.images.astype("float32") * (255.0 / 16.0)
    images = _resize_bilinear(images, int(image_size))
    images = np.clip(np.round(images), 0, 255).astype("uint8")
    return np.repeat(images[..., None], 3, axis=-1), \
        digits.target.astype("int32")


def _resize_bilinear(images, size):
    """Bilinear resize of `(N, h, w)` to `(N, size, size)`, half-pixel
    centres and edge clamping (TF2's `tf.image.resize` without antialias)."""

    def weights(n_in):
        centre = (np.arange(size) + 0.5) * (n_in / size) - 0.5
        centre = np.clip(centre, 0, n_in - 1)
        low = np.floor(centre).astype(int)
        high = np.minimum(low + 1, n_in - 1)
        frac = (centre - low).astype("float32")
        matrix = np.zeros((size, n_in), "float32")
        matrix[np.arange(size), low] += 1 - frac
        matrix[np.arange(size), high] += frac
        return matrix

    rows = weights(images.shape[1])
    cols = weights(images.shape[2])
    return np.einsum("ih,nhw,jw->nij", rows, images, cols)


def stratified_split(labels, fraction, seed=0):
    """Index arrays `(train, held_out)`, each class split by `fraction`.

    Every class keeps at least one training example and gives
    `round(fraction * count)` examples to the held-out part.

    Args:
        labels: integer labels `(N,)`.
        fraction: float in [0, 1), the held-out share of each class.
        seed: shuffle seed.

    Returns:
        Two shuffled int arrays of indices into `labels`.
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(
            "The held-out fraction must be in [0, 1). "
            f"Received: fraction={fraction!r}"
        )
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_out = min(int(round(fraction * len(idx))), len(idx) - 1)
        held_out.append(idx[:n_out])
        train.append(idx[n_out:])
    train = np.concatenate(train)
    held_out = np.concatenate(held_out)
    rng.shuffle(train)
    rng.shuffle(held_out)
    return train, held_out


def digits_scenes(num_images, image_size=64, max_digits=3, split="train",
                  validation_fraction=0.2, seed=0, threshold=0.35):
    """Canvases of several real digits, with segmentation masks and boxes.

    The offline dense-prediction demo: each image is a black square canvas
    cut into a 2 x 2 grid; 1 to `max_digits` digits of scikit-learn's set go
    into distinct cells, each upscaled to a random size between half and all
    of its cell and placed at a random offset inside it, so digits never
    overlap. A pixel's class is `digit + 1` where that digit's stroke is
    brighter than `threshold` of full scale, else 0 (background): 11
    classes. A digit's box is the tight box of its stroke pixels.

    Training and validation scenes draw their digits from the two sides of
    the same stratified split as `keras_coordatt.training.load_digits`, so
    no validation digit is ever seen in training.

    Args:
        num_images: int >= 1, how many scenes.
        image_size: int >= 16, side of the square canvas.
        max_digits: int in [1, 4], the most digits on one canvas.
        split: `"train"` or `"validation"`.
        validation_fraction: float in (0, 1), the held-out share of each
            class of digits.
        seed: seed of the scenes (the digit split uses seed 0, as the
            classification demo).
        threshold: float in (0, 1), the stroke level that counts as digit.

    Returns:
        A dict of numpy arrays: `images` uint8 `(N, S, S, 3)`, `masks`
        uint8 `(N, S, S)` (0 background, 1 + digit), `boxes` float32
        `(N, max_digits, 4)` as `(x_min, y_min, x_max, y_max)` pixel edges,
        `classes` int32 `(N, max_digits)` (the digit, 0..9), both padded
        with -1 where a canvas has fewer digits, and `sources` int32
        `(N, max_digits)`: the indices of the digits used into
        `digits_images()` (-1 for padding).

    Raises:
        ValueError: an argument outside the ranges above.
    """
    _check_scene_arguments(num_images, image_size, max_digits, split,
                           validation_fraction, threshold)
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    glyphs = digits.images.astype("float32") / 16.0
    train, held_out = stratified_split(digits.target, validation_fraction, 0)
    pool = train if split == "train" else held_out
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    s, cell = int(image_size), int(image_size) // 2
    out = {
        "images": np.zeros((num_images, s, s, 3), "uint8"),
        "masks": np.zeros((num_images, s, s), "uint8"),
        "boxes": np.full((num_images, max_digits, 4), -1.0, "float32"),
        "classes": np.full((num_images, max_digits), -1, "int32"),
        "sources": np.full((num_images, max_digits), -1, "int32"),
    }
    for n in range(num_images):
        count = rng.integers(1, max_digits + 1)
        cells = rng.permutation(4)[:count]
        for slot, (where, index) in enumerate(
                zip(cells, rng.choice(pool, count))):
            size = int(rng.integers(cell // 2, cell + 1))
            glyph = _resize_bilinear(glyphs[index][None], size)[0]
            top = (where // 2) * cell + int(rng.integers(0, cell - size + 1))
            left = (where % 2) * cell + int(rng.integers(0, cell - size + 1))
            window = (slice(top, top + size), slice(left, left + size))
            level = np.clip(np.round(glyph * 255.0), 0, 255).astype("uint8")
            out["images"][n][window] = level[..., None]
            stroke = glyph > threshold
            out["masks"][n][window][stroke] = digits.target[index] + 1
            rows, cols = np.nonzero(stroke)
            out["boxes"][n, slot] = (left + cols.min(), top + rows.min(),
                                     left + cols.max() + 1,
                                     top + rows.max() + 1)
            out["classes"][n, slot] = digits.target[index]
            out["sources"][n, slot] = index
    return out


def _check_scene_arguments(num_images, image_size, max_digits, split,
                           validation_fraction, threshold):
    def integer(value):
        return not isinstance(value, bool) and isinstance(
            value, (int, np.integer))

    checks = (
        ("num_images", num_images, integer(num_images) and num_images >= 1,
         "an integer >= 1"),
        ("image_size", image_size, integer(image_size) and image_size >= 16,
         "an integer >= 16"),
        ("max_digits", max_digits,
         integer(max_digits) and 1 <= max_digits <= 4,
         "an integer from 1 to 4"),
        ("split", split, split in ("train", "validation"),
         "'train' or 'validation'"),
        ("validation_fraction", validation_fraction,
         isinstance(validation_fraction, (int, float))
         and 0.0 < validation_fraction < 1.0, "a float in (0, 1)"),
        ("threshold", threshold, isinstance(threshold, (int, float))
         and 0.0 < threshold < 1.0, "a float in (0, 1)"),
    )
    for name, value, ok, accepted in checks:
        if not ok:
            raise ValueError(
                f"`{name}` must be {accepted}. Received: {name}={value!r}")

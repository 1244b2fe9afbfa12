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

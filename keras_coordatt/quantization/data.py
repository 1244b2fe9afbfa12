"""Digits as numpy arrays for the quantization recipes, and a cheap
shift augmentation.

The offline digits of `keras_coordatt.datasets`, split and preprocessed like
ImageNet inputs. Used by the tests and by `keras-coordatt quantize --dataset
digits`.
"""

import numpy as np

from keras_coordatt.datasets import digits_images
from keras_coordatt.datasets import stratified_split


def load_digits(image_size=32, test_fraction=0.2, seed=0, preprocess=True):
    """Loads sklearn's digits as `(x_train, y_train), (x_test, y_test)`.

    The images of `keras_coordatt.datasets.digits_images` (the same ones the
    training demo uses), split per class by `test_fraction`. The defaults
    hold out exactly the validation images of
    `keras_coordatt.training.load_digits()`, so a model trained by
    `keras-coordatt train --dataset digits` is quantized and measured on
    images it never saw.

    Args:
        image_size: int >= 8, side of the square RGB images.
        test_fraction: float in (0, 1), the held-out share of each class
            (0.2: 1,438 training and 359 held-out images).
        seed: seed of the split.
        preprocess: whether to apply `keras_coordatt.preprocess_input`
            (else float32 RGB in [0, 255]).

    Returns:
        Two `(images, labels)` pairs: float32 `(N, S, S, 3)` and int32 `(N,)`.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(
            "`test_fraction` must be in (0, 1). "
            f"Received: test_fraction={test_fraction!r}"
        )
    images, labels = digits_images(image_size)
    images = images.astype("float32")
    if preprocess:
        from keras_coordatt.applications import preprocess_input

        images = np.asarray(preprocess_input(images), dtype="float32")
    train, test = stratified_split(labels, test_fraction, seed)
    return (images[train], labels[train]), (images[test], labels[test])


def shift_augment(images, labels, copies=2, max_shift=4, seed=0):
    """Appends randomly shifted copies of a batch of images (zero fill).

    A cheap, offline augmentation for the digits demo: each copy moves every
    image by up to `max_shift` pixels along each axis.

    Args:
        images: `(N, H, W, C)` array.
        labels: `(N,)` array.
        copies: int >= 0, how many shifted copies to append.
        max_shift: int >= 0, the largest shift in pixels.
        seed: random seed.

    Returns:
        `(images, labels)` with `N * (copies + 1)` rows, shuffled.
    """
    rng = np.random.default_rng(seed)
    out_x, out_y = [images], [labels]
    n, h, w = images.shape[:3]
    background = images.min()
    for _ in range(int(copies)):
        shifted = np.full_like(images, background)
        dys = rng.integers(-max_shift, max_shift + 1, n)
        dxs = rng.integers(-max_shift, max_shift + 1, n)
        for i, (dy, dx) in enumerate(zip(dys, dxs)):
            src = images[i, max(0, -dy):h - max(0, dy),
                         max(0, -dx):w - max(0, dx)]
            shifted[i, max(0, dy):max(0, dy) + src.shape[0],
                    max(0, dx):max(0, dx) + src.shape[1]] = src
        out_x.append(shifted)
        out_y.append(labels)
    order = rng.permutation(n * (int(copies) + 1))
    return np.concatenate(out_x)[order], np.concatenate(out_y)[order]

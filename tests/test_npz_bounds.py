"""`.npz` datasets are read within what the file holds: a header that
declares gigabytes in a small file is refused before anything is
allocated (asserted under an address-space limit in a subprocess)."""

import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from keras_coordatt.utils import npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _npy_bytes(shape, dtype="uint8", data=b""):
    """An .npy file whose header declares `shape` followed by `data`."""
    buffer = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False,
              "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def _write_npz(path, entries, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, payload in entries.items():
            archive.writestr(name + ".npy", payload)


def test_honest_file_loads(tmp_path):
    path = tmp_path / "ok.npz"
    x = np.arange(2 * 8 * 8 * 3, dtype="uint8").reshape(2, 8, 8, 3)
    np.savez_compressed(path, x_train=x, y_train=np.array([0, 1]))
    arrays = npz.load_npz(str(path))
    np.testing.assert_array_equal(arrays["x_train"], x)
    assert sorted(arrays) == ["x_train", "y_train"]


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED,
                                         zipfile.ZIP_DEFLATED])
def test_header_declaring_more_than_the_file_holds(tmp_path, compression):
    path = tmp_path / "liar.npz"
    _write_npz(path, {
        "x_train": _npy_bytes((100_000, 224, 224, 3), data=b"\0" * 4096),
        "y_train": _npy_bytes((2,), "int64", b"\0" * 16)}, compression)
    with pytest.raises(ValueError, match=(
            r"liar\.npz: entry 'x_train\.npy' declares \(100000, 224, 224, "
            r"3\) of uint8 \(15,052,800,000 bytes\) but holds 4,096")):
        npz.load_npz(str(path))


def test_object_arrays_and_the_total_limit(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="holds Python objects"):
        npz.load_npz(str(path))
    path = tmp_path / "big.npz"
    np.savez(path, x_train=np.zeros(1000, "uint8"))
    with pytest.raises(ValueError, match=(
            r"need 1,000 bytes, over the limit of 999 \(keras_coordatt"
            r"\.utils\.npz\.MAX_NPZ_BYTES")):
        npz.load_npz(str(path), max_bytes=999)
    with pytest.raises(ValueError, match="Not a readable .npz file"):
        npz.load_npz(str(tmp_path / "objects.npz") + "-missing")


_UNDER_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from keras_coordatt.utils.npz import load_npz
try:
    load_npz(sys.argv[1])
except ValueError as e:
    print("REFUSED", e)
"""


def test_crafted_npz_is_refused_under_a_memory_limit(tmp_path):
    # Without the check, np.load asks for 15 GB at once (a MemoryError
    # here, 10 GB of RSS without a limit).
    path = tmp_path / "liar.npz"
    _write_npz(path, {"x_train": _npy_bytes((100_000, 224, 224, 3),
                                            data=b"\0" * 4096)},
               zipfile.ZIP_DEFLATED)
    out = subprocess.run([sys.executable, "-c", _UNDER_LIMIT, str(path)],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED" in out.stdout and "declares" in out.stdout


@pytest.mark.parametrize("change,match", [
    ("nan", r"`x_train` must hold finite numbers in \[0, 255\]\. Received: "
            r"x_train with 1 NaN or infinite values"),
    ("one_class", r"every label is 0, a single class"),
    ("huge_label", r"the largest label is 2147483647, which would make "
                   r"2,147,483,648 classes"),
])
def test_npz_values_that_would_train_nonsense(change, match, tmp_path):
    from keras_coordatt.training.data.classification import from_npz

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (20, 8, 8, 3)).astype("float32")
    y = np.arange(20) % 2
    if change == "nan":
        x[3, 2, 1, 0] = np.nan
    elif change == "one_class":
        y[:] = 0
    else:
        y[5] = 2**31 - 1
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=y)
    with pytest.raises(ValueError, match=match):
        from_npz(str(path))

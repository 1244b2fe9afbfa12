"""A data file that cannot be read: the error names the file and the
decoder's reason, in one line (issue: `InvalidArgumentError: <stack traces
unavailable>` with no file)."""

import io
import os

import numpy as np
import pytest

from keras_coordatt.training import cli as train_cli
from keras_coordatt.training.data import segmentation as sd
from keras_coordatt.training.data.common import first_unreadable

Image = pytest.importorskip("PIL.Image")


def _png(path, size=32, seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size, size, 3)).astype("uint8")
    Image.fromarray(pixels).save(path)


def _jpeg_bytes(size=32):
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, "uint8")).save(
        buffer, format="JPEG")
    return buffer.getvalue()


def _class_folder(data):
    """`data/{a,b}/I.png`: 6 noise images per class; returns `data`."""
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(6):
            _png(data / label / f"{i}.png", seed=i)
    return data


def test_first_unreadable_names_file_and_reason(tmp_path):
    good = tmp_path / "good.png"
    _png(good)
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(_jpeg_bytes()[:40])
    dangling = tmp_path / "dangling.png"
    os.symlink(tmp_path / "absent.png", dangling)
    assert first_unreadable([str(good)]) is None
    for bad in (text, truncated, dangling):
        path, reason = first_unreadable([str(good), str(bad)])
        assert path == str(bad)
        assert reason and "\n" not in reason
    assert "image file format" in first_unreadable([str(text)])[1]


def test_unreadable_mask_names_the_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        _png(tmp_path / "images" / f"s{i}.png", seed=i)
        Image.fromarray(np.zeros((32, 32), "uint8")).save(
            tmp_path / "masks" / f"s{i}.png")
    (tmp_path / "masks" / "s1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=(
            r"Could not read a segmentation mask\. Received: .*s1\.png "
            r"\(UnidentifiedImageError")):
        sd.from_folder(str(tmp_path))


def test_train_names_the_image_that_breaks_fit(tmp_path, capsys):
    data = _class_folder(tmp_path / "data")
    broken = data / "a" / "broken.jpg"
    broken.write_text("not an image")
    out = tmp_path / "run"
    args = ["--dataset", f"folder:{data}", "--image-size", "32",
            "--epochs", "1", "--batch-size", "4", "--alpha", "0.35",
            "--output-dir", str(out), "--verbose", "0",
            "--set", "bn_recalibration_steps=0",
            "--set", "tensorboard=false"]
    assert train_cli.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"cannot read the image {broken}:" in err[0]
    assert "image file format" in err[0]


def test_offline_tfds_fails_fast_with_the_way_out(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    import socket

    try:
        socket.create_connection(("storage.googleapis.com", 443), 5).close()
        pytest.skip("this machine is online: the download would start")
    except OSError:
        pass
    status = train_cli.main([
        "--dataset", "tfds:tf_flowers", "--data-dir", str(tmp_path / "tfds"),
        "--epochs", "1", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1, err
    assert "tfds:tf_flowers is not prepared in" in err[0]
    assert "cannot reach storage.googleapis.com" in err[0]
    assert "--data-dir" in err[0] and "--manual-dir" in err[0]
    assert not (tmp_path / "run").exists()


def _huge_png(path, side=20000):
    """A small PNG whose header declares `side` x `side` pixels (the IHDR
    chunk rewritten, its CRC fixed): what a decoder would allocate for."""
    import struct
    import zlib

    _png(path, size=8)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4:start + 12] = struct.pack(">II", side, side)
    crc = zlib.crc32(bytes(data[start:start + 17])) & 0xFFFFFFFF
    data[start + 17:start + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    from keras_coordatt.training.data import classification

    data = _class_folder(tmp_path / "data")
    huge = data / "b" / "huge.png"
    _huge_png(huge)
    with pytest.raises(ValueError, match=(
            rf"Received: {huge} with more than 178,956,970 pixels; accepted: "
            r"up to 89,478,485 \(keras_coordatt\.training\.data\.common\."
            r"MAX_IMAGE_PIXELS")):
        classification.from_folder(str(data))
    # Under Pillow's bomb threshold, the declared count itself is named.
    _huge_png(huge, side=10000)
    with pytest.raises(ValueError, match=r"huge\.png with 100,000,000 pixels"):
        classification.from_folder(str(data))
    (tmp_path / "seg" / "images").mkdir(parents=True)
    (tmp_path / "seg" / "masks").mkdir()
    for i in range(2):
        _png(tmp_path / "seg" / "images" / f"s{i}.png", seed=i)
        Image.fromarray(np.zeros((8, 8), "uint8")).save(
            tmp_path / "seg" / "masks" / f"s{i}.png")
    _huge_png(tmp_path / "seg" / "images" / "s1.png")
    with pytest.raises(ValueError, match=r"s1\.png with more than"):
        sd.from_folder(str(tmp_path / "seg"))


def _zero_png(path, side, rows=100):
    """A real, valid `side` x `side` RGB PNG of zeros (1.2 MB on disk at 20000,
    `3 * side**2` bytes once decoded), written without holding the image:
    one block of `rows` rows is deflated once, ended by a full flush (which
    resets the compressor, so the block may be repeated), and repeated."""
    import struct
    import zlib

    def chunk(kind, body):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", crc)

    assert side % rows == 0
    row = b"\0" * (1 + 3 * side)  # filter byte 0, then the pixels
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate
    block = packer.compress(row * rows) + packer.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(side):
        checksum = zlib.adler32(row, checksum)
    stream = (b"\x78\xda" + block * (side // rows) + packer.flush()
              + struct.pack(">I", checksum))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


# Runs with the address space capped at what the imports mapped plus
# LIMIT_MIB: the folder sources must refuse the huge image from its header;
# the control then shows that decoding it would not fit under the cap.
_DECODE_UNDER_LIMIT = """
import resource, sys
from PIL import Image
from keras_coordatt.training.data import classification, segmentation

def vm_size():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

limit = vm_size() + int(sys.argv[3]) * (1 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for name, build in (("classification", classification.from_folder),
                    ("segmentation", segmentation.from_folder)):
    folder = sys.argv[1] if name == "classification" else sys.argv[2]
    try:
        build(folder)
        print(name, "ACCEPTED")
    except ValueError as e:
        print(name, "REFUSED", str(e).splitlines()[0])
Image.MAX_IMAGE_PIXELS = None
try:
    Image.open(sys.argv[4]).load()
    print("control DECODED")
except MemoryError:
    print("control MEMORYERROR")
"""


def test_decoded_image_memory_is_bounded_under_a_limit(tmp_path):
    """The issue's case, measured: a 20000 x 20000 PNG of a few hundred KB
    took 2.5 GB (classification) and 9.2 GB (segmentation). Here a real
    one of 1.2 MB (1.6 GB decoded by Pillow, 4 bytes a pixel) sits in each
    kind of folder; with 1 GiB of address space left after the imports,
    both sources refuse it by name and nothing is decoded."""
    import subprocess
    import sys

    side = 20_000
    data = _class_folder(tmp_path / "data")
    huge = data / "b" / "huge.png"
    _zero_png(huge, side)
    assert huge.stat().st_size < 2 << 20
    seg = tmp_path / "seg"
    (seg / "images").mkdir(parents=True)
    (seg / "masks").mkdir()
    for i in range(2):
        _png(seg / "images" / f"s{i}.png", seed=i)
        Image.fromarray(np.zeros((32, 32), "uint8")).save(
            seg / "masks" / f"s{i}.png")
    os.replace(huge, seg / "images" / "s1.png")
    os.link(seg / "images" / "s1.png", huge)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", _DECODE_UNDER_LIMIT, str(data), str(seg),
         "1024", str(huge)],
        cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["classification"].startswith("REFUSED"), out.stdout
    assert "huge.png with more than 178,956,970 pixels" in (
        lines["classification"])
    assert lines["segmentation"].startswith("REFUSED"), out.stdout
    assert "s1.png with more than" in lines["segmentation"]
    assert lines["control"] == "MEMORYERROR", out.stdout


def test_a_split_that_holds_out_nothing_is_named(tmp_path):
    """Keras says "No training images found" when the validation share of
    a small folder rounds down to no image."""
    from keras_coordatt.training.data import classification

    data = tmp_path / "data"
    for i in range(7):
        (data / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        _png(data / "ab"[i % 2] / f"{i}.png", size=8, seed=i)
    with pytest.raises(ValueError, match=(
            r"The image folder .*data has 7 images: a validation fraction "
            r"of 0\.1 holds out none\. Received: validation_fraction=0\.1; "
            r"accepted: a fraction of at least 1/7 = 0\.143")):
        classification.from_folder(str(data), 32, 0.1, 0)
    source = classification.from_folder(str(data), 32, 0.2, 0)
    assert (source.train_examples, source.val_examples) == (6, 1)

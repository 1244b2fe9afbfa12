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

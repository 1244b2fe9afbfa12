"""The authors' checkpoint layout -> MobileNetV2CA, against a PyTorch reference."""

import hashlib
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as tr  # noqa: E402
from keras_coordatt import MobileNetV2CA  # noqa: E402
from keras_coordatt import MobileNeXtCA  # noqa: E402
from keras_coordatt.cli import main as cli_main  # noqa: E402
from keras_coordatt.weights import imagenet  # noqa: E402
from keras_coordatt.weights import load_torch_weights  # noqa: E402

HERE = os.path.dirname(__file__)
KEYS_TSV = os.path.join(HERE, os.pardir, os.pardir, "shared", "reference",
                        "mbv2_ca_state_dict_keys.tsv")


def _blob_id(path):
    """git's blob id, computed here independently of the package."""
    data = open(path, "rb").read()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


_REFERENCES = {}


def _reference(alpha, tmp_path_factory):
    """A randomized PyTorch reference and its checkpoint, made once per alpha."""
    if alpha not in _REFERENCES:
        net = tr.randomized(tr.MobileNetV2CA(width_mult=alpha),
                            seed=int(alpha * 10))
        path = str(tmp_path_factory.mktemp("ckpt") / f"mbv2_ca_{alpha}.pth")
        torch.save(net.state_dict(), path)
        _REFERENCES[alpha] = (alpha, net, path)
    return _REFERENCES[alpha]


@pytest.fixture(scope="module", params=[1.0, 0.5])
def reference(request, tmp_path_factory):
    return _reference(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def reference_1(tmp_path_factory):
    """The published width (alpha 1.0), the only one with imagenet weights."""
    return _reference(1.0, tmp_path_factory)


def _logits(net, x_nhwc):
    with torch.no_grad():
        return net(torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)))).numpy()


def _assert_close(out, ref):
    scale = np.abs(ref).max()
    assert np.abs(out - ref).max() <= 1e-4 * scale, (
        np.abs(out - ref).max(), scale)


def test_reference_keys_equal_the_authors_checkpoint():
    expected = []
    with open(KEYS_TSV) as f:
        for line in f:
            if not line.startswith("#"):
                key, shape = line.rstrip("\n").split("\t")
                expected.append((key, shape))
    sd = tr.MobileNetV2CA().state_dict()
    assert len(expected) == 490
    assert [(k, str(tuple(v.shape))) for k, v in sd.items()] == [
        (k, s.replace(",)", ",)")) for k, s in expected]


@pytest.mark.parametrize("size", [(224, 224), (225, 193), (96, 160)])
def test_logits_match_pytorch(reference, size):
    alpha, net, path = reference
    model = MobileNetV2CA(alpha=alpha, weights=path, input_shape=size + (3,),
                          classifier_activation=None)
    x = np.random.default_rng(0).normal(size=(2,) + size + (3,)).astype(
        "float32")
    _assert_close(keras.ops.convert_to_numpy(model(x, training=False)),
                  _logits(net, x))


def test_backbone_without_top_matches_pytorch_features(reference):
    alpha, net, path = reference
    model = MobileNetV2CA(alpha=alpha, weights=path, include_top=False)
    x = np.random.default_rng(1).normal(size=(1, 128, 96, 3)).astype("float32")
    with torch.no_grad():
        ref = net.conv(net.features(torch.from_numpy(
            np.transpose(x, (0, 3, 1, 2))))).numpy()
    out = keras.ops.convert_to_numpy(model(x))
    _assert_close(np.transpose(out, (0, 3, 1, 2)), ref)


def test_wrapped_prefixed_and_renamed_checkpoints(tmp_path):
    net = tr.randomized(tr.MobileNetV2CA(width_mult=0.35,
                                         gate_names=("conv_h", "conv_w")), 3)
    state = {"module." + k: v for k, v in net.state_dict().items()}
    path = str(tmp_path / "wrapped.pth")
    torch.save({"epoch": 199, "state_dict": state, "best_acc1": 74.3}, path)
    model = MobileNetV2CA(alpha=0.35, weights=path, input_shape=(96, 96, 3),
                          classifier_activation=None)
    x = np.random.default_rng(2).normal(size=(2, 96, 96, 3)).astype("float32")
    _assert_close(keras.ops.convert_to_numpy(model(x)), _logits(net, x))


def test_one_error_lists_every_problem():
    sd = {k: v.numpy() for k, v in tr.MobileNetV2CA(width_mult=0.35)
          .state_dict().items()}
    del sd["features.3.conv.6.bn1.running_var"]
    del sd["conv.1.bias"]
    sd["features.5.conv.9.weight"] = np.zeros(3, "float32")
    sd["features.2.conv.0.weight"] = np.zeros((5, 5, 1, 1), "float32")
    model = MobileNetV2CA(alpha=0.35, weights=None)
    with pytest.raises(ValueError) as info:
        load_torch_weights(model, sd)
    message = str(info.value)
    for text in ("2 missing", "features.3.conv.6.bn1.running_var",
                 "conv.1.bias", "1 unexpected", "features.5.conv.9.weight",
                 "1 mis-shaped", "features.2.conv.0.weight"):
        assert text in message


def test_width_mismatch_is_reported(reference):
    alpha, _, path = reference
    other = 0.75
    with pytest.raises(ValueError, match="mis-shaped"):
        MobileNetV2CA(alpha=other, weights=path)


def test_pth_only_for_mobilenetv2_ca(reference):
    with pytest.raises(ValueError, match="convert into MobileNetV2CA only"):
        MobileNeXtCA(weights=reference[2])


def test_convert_command_line(reference, tmp_path, capsys):
    alpha, net, path = reference
    out = str(tmp_path / "converted.weights.h5")
    assert cli_main(["convert", path, "-o", out, "--alpha", str(alpha)]) == 0
    assert "Converted 490 tensors" in capsys.readouterr().out
    model = MobileNetV2CA(alpha=alpha, weights=out, input_shape=(96, 96, 3),
                          classifier_activation=None)
    x = np.random.default_rng(4).normal(size=(1, 96, 96, 3)).astype("float32")
    _assert_close(keras.ops.convert_to_numpy(model(x)), _logits(net, x))
    assert cli_main(["convert", path, "-o", str(tmp_path / "x.h5")]) == 2
    assert not os.path.exists(tmp_path / "x.h5")


@pytest.fixture()
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def test_imagenet_path_end_to_end_offline(reference_1, keras_home, tmp_path,
                                          monkeypatch):
    _, net, path = reference_1
    mirror = tmp_path / "mirror.pth"
    mirror.write_bytes(open(path, "rb").read())
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_URL", mirror.as_uri())
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_BLOB_ID", _blob_id(mirror))
    model = MobileNetV2CA(weights="imagenet", classifier_activation=None)
    x = np.random.default_rng(5).normal(size=(1, 224, 224, 3)).astype("float32")
    _assert_close(keras.ops.convert_to_numpy(model(x)), _logits(net, x))
    cached = sorted(os.listdir(keras_home / "models" / "keras_coordatt"))
    assert cached == [f"{_blob_id(mirror)[:12]}-mbv2_ca.pth",
                      f"mobilenetv2_ca_1.0_{_blob_id(mirror)[:12]}_top"
                      ".weights.h5"]
    # The next call loads the converted cache: no download, no conversion.
    mirror.unlink()
    again = MobileNetV2CA(weights="imagenet", classifier_activation=None)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(x)),
                                  keras.ops.convert_to_numpy(model(x)))
    # include_top=False converts (from the cached checkpoint) once more.
    with pytest.warns(UserWarning, match="non-square"):
        backbone = MobileNetV2CA(weights="imagenet", include_top=False,
                                 input_shape=(160, 128, 3))
    assert backbone.output.shape == (None, 5, 4, 1280)


def test_tampered_download_leaves_no_cache(reference_1, keras_home, tmp_path,
                                           monkeypatch):
    _, _, path = reference_1
    data = bytearray(open(path, "rb").read())
    expected = _blob_id(path)
    data[len(data) // 2] ^= 0xFF
    tampered = tmp_path / "tampered.pth"
    tampered.write_bytes(bytes(data))
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_URL", tampered.as_uri())
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_BLOB_ID", expected)
    with pytest.raises(imagenet.IntegrityError) as info:
        MobileNetV2CA(weights="imagenet")
    assert expected in str(info.value)
    assert _blob_id(tampered) in str(info.value)
    assert os.listdir(keras_home / "models" / "keras_coordatt") == []


def test_default_source_is_the_pinned_authors_file():
    assert imagenet.IMAGENET_URL.endswith(
        "9c9d9cc234c1fc0e195816304eb07753ef308e00/mbv2_ca.pth")
    assert imagenet.IMAGENET_BLOB_ID == (
        "07b6640600b7d767acfaebcf5ddb801b675073df")


def test_channels_first_matches_pytorch_on_torch_backend(reference, tmp_path):
    """TF's CPU kernels have no NCHW convolutions; PyTorch runs them."""
    alpha, net, path = reference
    x = np.random.default_rng(6).normal(size=(2, 3, 97, 131)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, keras\n"
        "keras.config.set_image_data_format('channels_first')\n"
        "from keras_coordatt import MobileNetV2CA\n"
        f"m = MobileNetV2CA(alpha={alpha}, weights=sys.argv[1], "
        "include_top=False, pooling='avg')\n"
        "x = np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], keras.ops.convert_to_numpy(m(x)))\n"
    )
    env = dict(os.environ, KERAS_BACKEND="torch",
               PYTHONPATH=os.path.dirname(HERE))
    result = subprocess.run(
        [sys.executable, "-c", script, path, str(tmp_path / "x.npy"),
         str(tmp_path / "out.npy")],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        ref = net.conv(net.features(torch.from_numpy(x))).mean(dim=(2, 3))
    _assert_close(np.load(tmp_path / "out.npy"), ref.numpy())

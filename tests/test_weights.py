"""The authors' checkpoint layout -> MobileNetV2CA, against a PyTorch reference."""

import hashlib
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys
import time
import warnings
import zipfile

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_coordatt import MobileNetV2CA  # noqa: E402
from keras_coordatt import MobileNeXtCA  # noqa: E402
from keras_coordatt.cli import main as cli_main  # noqa: E402
from keras_coordatt.weights import imagenet  # noqa: E402
from keras_coordatt.weights import load_torch_weights  # noqa: E402
from keras_coordatt.weights import CheckpointError  # noqa: E402
from keras_coordatt.weights import ConversionError  # noqa: E402
from keras_coordatt.weights import convert_torch  # noqa: E402
from keras_coordatt.weights import load_weights  # noqa: E402

HERE = os.path.dirname(__file__)
# Vendored from ../shared/reference, so that a clone runs the test alone.
KEYS_TSV = os.path.join(HERE, "fixtures", "mbv2_ca_state_dict_keys.tsv")


def _torch_reference():
    """benchmarks/torch_reference.py: the independent PyTorch network."""
    path = os.path.join(os.path.dirname(os.path.abspath(HERE)),
                        "benchmarks", "torch_reference.py")
    spec = importlib.util.spec_from_file_location("torch_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tr = _torch_reference()


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


@pytest.fixture(scope="module")
def small():
    """A width-0.35 model and a state dict (numpy) that fits it, built once.

    The converter checks everything before it sets any weight, so the tests
    that expect an error can share the model.
    """
    sd = {k: v.numpy() for k, v in tr.MobileNetV2CA(width_mult=0.35)
          .state_dict().items()}
    return MobileNetV2CA(alpha=0.35, weights=None), sd


def test_one_error_lists_every_problem(small):
    model, sd = small[0], dict(small[1])
    del sd["features.3.conv.6.bn1.running_var"]
    del sd["conv.1.bias"]
    sd["features.5.conv.9.weight"] = np.zeros(3, "float32")
    sd["features.2.conv.0.weight"] = np.zeros((5, 5, 1, 1), "float32")
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
    converted = (f"mobilenetv2_ca_1.0_{_blob_id(mirror)[:12]}"
                 f"_c{convert_torch.CONVERTER_VERSION}_top.weights.h5")
    assert cached == [f"{_blob_id(mirror)[:12]}-mbv2_ca.pth", converted,
                      converted + ".sha256"]
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
    _assert_names_the_way_out(str(info.value), tampered.as_uri())
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


# --- The converter's value checks (one error, every bad key named) ----------

def test_bad_values_join_the_one_error(small):
    model, sd = small[0], dict(small[1])
    before = model.get_weights()
    bad = {
        # Wrong ranks: numpy's transpose would fail naming no key.
        "features.2.conv.0.weight": sd["features.2.conv.0.weight"][:, :, 0, 0],
        "conv.0.weight": sd["conv.0.weight"][None],
        "classifier.1.weight": sd["classifier.1.weight"][0],
        "features.4.conv.1.weight": np.full_like(
            sd["features.4.conv.1.weight"], np.nan),
        "features.5.conv.4.bias": np.full_like(
            sd["features.5.conv.4.bias"], np.inf),
        "features.6.conv.1.running_var": -sd["features.6.conv.1.running_var"],
        "features.7.conv.3.weight": sd["features.7.conv.3.weight"].astype(
            "int64"),
        "features.8.conv.7.weight": "a string",
        "features.9.conv.8.bias": {"nested": sd["features.9.conv.8.bias"]},
    }
    sd.update(bad)
    with pytest.raises(ConversionError) as info:
        load_torch_weights(model, sd)
    message = str(info.value)
    for text in ("3 mis-shaped", "2 not tensors", "1 non-float",
                 "2 non-finite", "1 negative running variances",
                 "features.7.conv.3.weight: dtype int64",
                 "features.8.conv.7.weight: a str",
                 "features.9.conv.8.bias: a dict", *bad):
        assert text in message, (text, message)
    # Only the bad entries are listed: nothing else went missing.
    assert "missing" not in message and "unexpected" not in message
    assert len(message.splitlines()) < 25
    for old, new in zip(before, model.get_weights()):
        assert np.array_equal(old, new)  # nothing was loaded


def test_non_finite_values_in_a_file_are_named(small, tmp_path):
    model, sd = small
    state = {k: torch.tensor(v) for k, v in sd.items()}  # copies
    state["features.3.conv.6.conv2.weight"][0, 0, 0, 0] = float("nan")
    path = str(tmp_path / "nan.pth")
    torch.save(state, path)
    with pytest.raises(ConversionError,
                       match=r"features\.3\.conv\.6\.conv2\.weight: 1 of"):
        load_torch_weights(model, path)


# --- Torch checkpoints recognised by content --------------------------------

@pytest.fixture(scope="module")
def mbv2():
    """One alpha-1.0 MobileNetV2CA (top) for the tests that load into it."""
    return MobileNetV2CA(weights=None)


@pytest.fixture(scope="module")
def reference_weights(mbv2, reference_1):
    """What the reference checkpoint converts into, by the direct path."""
    load_torch_weights(mbv2, reference_1[2])
    return [np.array(w) for w in mbv2.get_weights()]


def _zero(model):
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])


def _assert_weights_equal(model, expected):
    actual = model.get_weights()
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert np.array_equal(a, e)


@pytest.mark.parametrize("name", ["mbv2_ca.pth.tar", "MBV2_CA.PTH",
                                  "pytorch_model.bin", "last.ckpt", "weights"])
def test_torch_checkpoints_recognised_by_content(name, mbv2, reference_1,
                                                 reference_weights, tmp_path):
    path = tmp_path / name
    shutil.copyfile(reference_1[2], path)
    _zero(mbv2)
    load_weights(mbv2, str(path), family="mobilenetv2_ca")
    _assert_weights_equal(mbv2, reference_weights)


def test_constructor_reads_a_pth_tar(reference_1, reference_weights,
                                     tmp_path):
    path = tmp_path / "model_best.pth.tar"
    shutil.copyfile(reference_1[2], path)
    _assert_weights_equal(MobileNetV2CA(weights=str(path)), reference_weights)


def test_unknown_file_kind_is_named(mbv2, tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"PK\x03\x04 not torch, not keras")
    with pytest.raises(ValueError, match="neither a torch.save checkpoint"):
        load_weights(mbv2, str(path), family="mobilenetv2_ca")


# --- The imagenet cache: verified, healed, cleaned ---------------------------

def _assert_names_the_way_out(message, url):
    for text in (url, "KERAS_COORDATT_IMAGENET_URL",
                 "KERAS_COORDATT_IMAGENET_BLOB_ID", "weights=PATH"):
        assert text in message, (text, message)


@pytest.fixture()
def mirror(reference_1, tmp_path, monkeypatch):
    """The reference checkpoint as the imagenet source (a file:// URL)."""
    path = tmp_path / "mirror.pth"
    shutil.copyfile(reference_1[2], path)
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_URL", path.as_uri())
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_BLOB_ID", _blob_id(path))
    return path


def _cache(keras_home):
    return keras_home / "models" / "keras_coordatt"


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


_DAMAGE = {
    "altered": (_flip_middle_byte, "damaged"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size
                                                          // 2]), "damaged"),
    "emptied": (lambda p: p.write_bytes(b""), "damaged"),
    "digest missing": (lambda p: os.remove(f"{p}.sha256"),
                       "no readable digest"),
    "digest emptied": (lambda p: open(f"{p}.sha256", "w").close(),
                       "no readable digest"),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_damaged_cache_entry_heals(damage, mbv2, reference_weights, mirror,
                                   keras_home):
    imagenet.load_imagenet_weights(mbv2)  # converts and caches
    converted = _cache(keras_home) / imagenet.converted_name(
        mbv2, _blob_id(mirror))
    entries = sorted(os.listdir(_cache(keras_home)))
    mirror.unlink()  # healing needs the cached checkpoint only
    damage_entry, reason = _DAMAGE[damage]
    damage_entry(converted)
    _zero(mbv2)
    with pytest.warns(UserWarning, match=reason):
        imagenet.load_imagenet_weights(mbv2)
    _assert_weights_equal(mbv2, reference_weights)
    assert sorted(os.listdir(_cache(keras_home))) == entries
    _zero(mbv2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # healed: verified and silent
        imagenet.load_imagenet_weights(mbv2)
    _assert_weights_equal(mbv2, reference_weights)


def test_damaged_checkpoint_is_downloaded_again(mbv2, reference_weights,
                                                mirror, keras_home):
    imagenet.load_imagenet_weights(mbv2)
    blob_id = _blob_id(mirror)
    checkpoint = _cache(keras_home) / f"{blob_id[:12]}-mbv2_ca.pth"
    _flip_middle_byte(_cache(keras_home) / imagenet.converted_name(
        mbv2, blob_id))
    _flip_middle_byte(checkpoint)
    _zero(mbv2)
    with pytest.warns(UserWarning) as record:
        imagenet.load_imagenet_weights(mbv2)
    messages = " ".join(str(w.message) for w in record)
    assert "cached ImageNet weights" in messages
    assert f"expected {blob_id}" in messages and "downloaded again" in messages
    assert _blob_id(checkpoint) == blob_id
    _assert_weights_equal(mbv2, reference_weights)


def test_killed_runs_leave_nothing_after_the_next_call(mbv2, reference_weights,
                                                       mirror, keras_home):
    folder = pathlib.Path(imagenet.cache_dir())
    killed = folder / ".download-xyz"
    killed.mkdir()
    (killed / "mbv2_ca.pth").write_bytes(b"the first megabytes")
    half_written = folder / ".tmp-k2j4mobilenetv2_ca.weights.h5"
    half_written.write_bytes(b"half")
    # Another process's download, still growing: its folder is old, its file
    # fresh. It stays.
    running = folder / ".download-running"
    running.mkdir()
    (running / "mbv2_ca.pth").write_bytes(b"growing")
    old = time.time() - 2 * imagenet.STALE_AFTER
    for path in (killed / "mbv2_ca.pth", killed, half_written, running):
        os.utime(path, (old, old))
    imagenet.load_imagenet_weights(mbv2)
    converted = imagenet.converted_name(mbv2, _blob_id(mirror))
    assert sorted(os.listdir(folder)) == sorted([
        ".download-running", f"{_blob_id(mirror)[:12]}-mbv2_ca.pth",
        converted, converted + ".sha256"])
    _assert_weights_equal(mbv2, reference_weights)


def test_download_failure_names_the_way_out(mbv2, keras_home, tmp_path,
                                            monkeypatch):
    url = (tmp_path / "absent.pth").as_uri()
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_URL", url)
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_BLOB_ID", "ab" * 20)
    with pytest.raises(imagenet.DownloadError) as info:
        imagenet.load_imagenet_weights(mbv2)
    _assert_names_the_way_out(str(info.value), url)
    assert "ab" * 20 in str(info.value)
    assert os.listdir(_cache(keras_home)) == []


@pytest.mark.parametrize("content, error, cause", [
    ("another width", ConversionError, "mis-shaped"),
    ("not a checkpoint", CheckpointError, "not-a-checkpoint.pth"),
])
def test_verified_file_that_does_not_convert_names_the_way_out(
        content, error, cause, mbv2, keras_home, tmp_path, monkeypatch):
    path = tmp_path / "not-a-checkpoint.pth"
    if content == "another width":
        torch.save(tr.MobileNetV2CA(width_mult=0.35).state_dict(), path)
    else:
        path.write_bytes(b"<html>rate limited</html>")
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_URL", path.as_uri())
    monkeypatch.setenv("KERAS_COORDATT_IMAGENET_BLOB_ID", _blob_id(path))
    with pytest.raises(error) as info:
        imagenet.load_imagenet_weights(mbv2)
    message = str(info.value)
    _assert_names_the_way_out(message, path.as_uri())
    assert _blob_id(path) in message and cause in message
    # The checkpoint is what was asked for, so it stays; no conversion does.
    assert os.listdir(_cache(keras_home)) == [
        f"{_blob_id(path)[:12]}-mbv2_ca.pth"]


def test_imagenet_from_a_legacy_format_checkpoint(reference_1, mbv2,
                                                  keras_home, tmp_path,
                                                  monkeypatch):
    """A legacy (pre-1.6) copy gives the zip copy's weights, bit for bit."""
    _, net, path = reference_1
    legacy = tmp_path / "legacy.pth"
    torch.save(net.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert zipfile.is_zipfile(path) and not zipfile.is_zipfile(legacy)
    sources = {}
    for name, source in (("zip", pathlib.Path(path)), ("legacy", legacy)):
        monkeypatch.setenv("KERAS_COORDATT_IMAGENET_URL", source.as_uri())
        monkeypatch.setenv("KERAS_COORDATT_IMAGENET_BLOB_ID",
                           _blob_id(source))
        sources[name] = MobileNetV2CA(weights="imagenet").get_weights()
    assert len(sources["zip"]) == len(sources["legacy"]) > 0
    for a, b in zip(sources["zip"], sources["legacy"]):
        assert a.dtype == b.dtype and np.array_equal(a, b)

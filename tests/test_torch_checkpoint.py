"""Tests for the torch-free checkpoint reader, against torch.load itself."""

import builtins
import collections
import os
import subprocess
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_coordatt.weights.torch_checkpoint import (  # noqa: E402
    CheckpointError,
    extract_state_dict,
    git_blob_sha1,
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


def _roundtrip(obj, path):
    torch.save(obj, path)
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


def test_module_state_dict(tmp_path):
    sd = _net().state_dict()
    ours = _roundtrip(sd, tmp_path / "sd.pth")
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
def test_dtypes(tmp_path, dtype):
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
    ours = _roundtrip({"t": t, "scalar": t[1, 2].clone()}, tmp_path / "d.pt")
    assert ours["scalar"].shape == ()


def _save(obj, tmp_path, name="x.pt"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def test_uint16_rebuild_tensor_v3(tmp_path):
    # torch writes uint16 as _rebuild_tensor_v3 + torch.storage.UntypedStorage
    t = torch.arange(60000, 60012, dtype=torch.int32).to(torch.uint16)
    ours = read_torch_checkpoint(_save({"u": t.view(3, 4)[:, 1:]}, tmp_path))
    expected = np.arange(60000, 60012, dtype=np.uint16).reshape(3, 4)[:, 1:]
    assert ours["u"].dtype == np.uint16
    np.testing.assert_array_equal(ours["u"], expected)


def test_non_contiguous_saved_directly(tmp_path):
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    t = _roundtrip(x.t(), tmp_path / "t.pt")
    np.testing.assert_array_equal(t, np.arange(24.0).reshape(4, 6).T)
    s = _roundtrip(x[1:, 2:5], tmp_path / "s.pt")  # storage offset 8
    np.testing.assert_array_equal(s, [[8, 9, 10], [14, 15, 16], [20, 21, 22]])
    e = _roundtrip(x[:, 6:], tmp_path / "e.pt")
    assert e.shape == (4, 0)
    b = _roundtrip(x[2].expand(3, 6), tmp_path / "b.pt")  # stride 0
    np.testing.assert_array_equal(b, np.tile(np.arange(12.0, 18.0), (3, 1)))


def test_shared_storage(tmp_path):
    a = torch.arange(10, dtype=torch.float64)
    path = _save({"a": a, "b": a[2:6], "c": a[::3]}, tmp_path)
    data = [n for n in zipfile.ZipFile(path).namelist() if "/data/" in n]
    assert len(data) == 1  # one storage record for the three tensors
    ours = read_torch_checkpoint(path)
    _assert_same(ours, torch.load(path, weights_only=True))
    np.testing.assert_array_equal(ours["c"], [0, 3, 6, 9])
    ours["a"][2] = -1.0  # copies, not views of each other
    assert ours["b"][0] == 2.0


def test_training_checkpoint_wrapper(tmp_path):
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    net[4](torch.randn(1, 144)).sum().backward()
    opt.step()
    ckpt = {"epoch": 3, "arch": "mobilenetv2_ca",
            "state_dict": net.state_dict(), "best_acc1": torch.tensor(0.7),
            "optimizer": opt.state_dict()}
    ours = _roundtrip(ckpt, tmp_path / "ckpt.pth.tar")
    assert ours["epoch"] == 3
    assert ours["best_acc1"].shape == ()
    assert ours["best_acc1"] == np.float32(0.7)
    sd = extract_state_dict(ours)
    assert list(sd) == list(net.state_dict())
    np.testing.assert_array_equal(sd["4.bias"], net[4].bias.detach().numpy())


@pytest.mark.parametrize("key", ["model", "state_dict_ema"])
def test_other_wrapper_keys_and_dataparallel_prefix(tmp_path, key):
    sd = _net().state_dict()
    dp = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
    path = _save({key: dp, "epoch": 1}, tmp_path)
    loaded = load_torch_state_dict(path)
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(sd)
    for k, v in sd.items():
        assert loaded[k].tobytes() == v.numpy().tobytes()


def test_parameters_and_bfloat16(tmp_path):
    torch.manual_seed(2)
    w = torch.randn(4, 7).to(torch.bfloat16)
    w[0, :3] = torch.tensor([float("nan"), float("-inf"), 1 / 3])
    p = torch.nn.Parameter(torch.ones(2))
    path = _save({"w": w, "wt": w.t(), "p": p}, tmp_path)
    ours = read_torch_checkpoint(path)
    for key, ref in [("w", w), ("wt", w.t())]:
        assert ours[key].dtype == np.float32
        expected = ref.float().contiguous().numpy()
        assert ours[key].tobytes() == expected.tobytes()
    np.testing.assert_array_equal(ours["p"], [1.0, 1.0])


def test_plain_objects(tmp_path):
    obj = {"d": torch.float16, "dev": torch.device("cpu"),
           "s": torch.Size([2, 3]), "set": {1, 2}, "bytes": b"ab\xff",
           "c": 1 + 2j, "n": None}
    ours = read_torch_checkpoint(_save(obj, tmp_path))
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
def test_malicious_pickle_is_refused(tmp_path, kind, names):
    target = tmp_path / "pwned"
    path = _save({"w": torch.ones(2), "x": _evil(kind, target)}, tmp_path)
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


def test_legacy_format(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy") as err:
        read_torch_checkpoint(path)
    assert "torch.save(torch.load(f), g)" in str(err.value)


def test_no_state_dict(tmp_path):
    obj = {"epoch": 3, "arch": "x", "optimizer": {"lr": 0.1}}
    path = _save(obj, tmp_path)
    with pytest.raises(CheckpointError, match="top-level keys") as err:
        load_torch_state_dict(path)
    for key in ("epoch", "arch", "optimizer"):
        assert repr(key) in str(err.value)
    with pytest.raises(CheckpointError, match="list"):
        extract_state_dict([np.zeros(2)])

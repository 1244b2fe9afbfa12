"""Hostile checkpoints: each gets a CheckpointError naming the problem.

The cases that would crash the interpreter or take gigabytes without the
reader's bounds run in a subprocess (`read_limited.py`) with 256 MiB of
address space beyond what it already maps, so a regression fails the test,
not the suite.
"""

import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_coordatt.weights.torch_checkpoint import (  # noqa: E402
    LEGACY_MAGIC_NUMBER,
    CheckpointError,
    read_torch_checkpoint,
)

HERE = os.path.dirname(os.path.abspath(__file__))
LIMIT_MIB = 256


class _Ref:
    """A storage, pickled as torch's persistent id."""

    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    """A tensor record on a `_Ref`, pickled as torch pickles tensors."""

    def __init__(self, ref, size, stride, offset=0):
        self.ref, self.size, self.stride, self.offset = ref, size, stride, \
            offset

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (
            self.ref, self.offset, torch.Size(self.size), self.stride, False,
            collections.OrderedDict())


def _pickle(obj, legacy):
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.persistent_id = lambda o: (
        ("storage", torch.FloatStorage, o.key, "cpu", o.numel)
        + ((None,) if legacy else ())) if isinstance(o, _Ref) else None
    pickler.dump(obj)
    return buffer.getvalue()


def _write(path, fmt, pkl, records=()):
    """A checkpoint in `fmt` around a raw pickle and raw storage records."""
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pkl)
            archive.writestr("archive/byteorder", "little")
            for key, data in records:
                archive.writestr(f"archive/data/{key}", data)
            archive.writestr("archive/version", "3\n")
    else:
        sys_info = {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}
        parts = [pickle.dumps(v, protocol=2)
                 for v in (LEGACY_MAGIC_NUMBER, 1001, sys_info)]
        parts += [pkl, pickle.dumps(sorted(k for k, _ in records), 2)]
        for _, data in sorted(records):
            parts += [(len(data) // 4).to_bytes(8, "little"), data]
        path.write_bytes(b"".join(parts))
    return path


def _tensors_file(path, fmt, tensors, records):
    return _write(path, fmt, _pickle(tensors, fmt == "legacy"), records)


def _read_limited(path, what="object"):
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "read_limited.py"), str(path),
         str(LIMIT_MIB), what], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_refused(outcome, match):
    assert outcome["error"] == "CheckpointError", outcome
    assert match in outcome["message"], outcome
    assert len(outcome["message"]) < 1000  # a sentence, not a dump


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_crafted_tensors_are_read_like_torch(tmp_path, fmt):
    """The crafting itself is faithful: benign records load in torch too."""
    ref = _Ref("0", 6)
    data = np.arange(6, dtype="<f4").tobytes()
    path = _tensors_file(tmp_path / "ok.pt", fmt,
                         {"a": _Tensor(ref, (2, 3), (3, 1)),
                          "b": _Tensor(ref, (3,), (0,), offset=4)},
                         [("0", data)])
    ours = read_torch_checkpoint(path)
    theirs = torch.load(path, weights_only=True)
    for key in ("a", "b"):
        np.testing.assert_array_equal(ours[key], theirs[key].numpy())
    np.testing.assert_array_equal(ours["b"], [4, 4, 4])


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_stride_zero_tensor_claiming_a_gigabyte(tmp_path, fmt):
    path = _tensors_file(tmp_path / "s0.pt", fmt,
                         {"w": _Tensor(_Ref("0", 1), (1 << 28,), (0,))},
                         [("0", b"\0\0\x80?")])
    _assert_refused(_read_limited(path), "would take more than")


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_thousand_views_of_one_storage(tmp_path, fmt):
    numel = 1 << 18  # 1 MiB of float32
    ref = _Ref("0", numel)
    views = {f"v{i}": _Tensor(ref, (numel,), (1,)) for i in range(1024)}
    path = _tensors_file(tmp_path / "views.pt", fmt, views,
                         [("0", bytes(4 * numel))])
    assert os.path.getsize(path) < 2 << 20
    outcome = _read_limited(path)
    _assert_refused(outcome, "would take more than")
    assert "views that repeat their storage" in outcome["message"]


def test_compressed_record_inflating_to_a_gigabyte(tmp_path):
    path = tmp_path / "bomb.pt"
    pkl = _pickle({"w": _Tensor(_Ref("0", 1 << 28), (1 << 28,), (1,))},
                  legacy=False)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pkl)
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        chunk = bytes(1 << 20)
        with archive.open(info, "w", force_zip64=True) as record:
            for _ in range(1024):
                record.write(chunk)
    assert os.path.getsize(path) < 2 << 20
    _assert_refused(_read_limited(path), "is compressed")


def test_compressed_data_pkl(tmp_path):
    path = tmp_path / "z.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    with pytest.raises(CheckpointError, match="data.pkl is compressed"):
        read_torch_checkpoint(path)


_HUGE = 1 << 62
_CLAIMS = {
    "binbytes8": (b"\x80\x04\x8e" + struct.pack("<Q", _HUGE) + b"x" * 16
                  + b".", f"claims {_HUGE} bytes"),
    "binunicode8": (b"\x80\x04\x8d" + struct.pack("<Q", _HUGE) + b"x" * 16
                    + b".", f"claims {_HUGE} bytes"),
    "bytearray8": (b"\x80\x05\x96" + struct.pack("<Q", _HUGE) + b"x" * 16
                   + b".", f"claims {_HUGE} bytes"),
    "frame": (b"\x80\x04\x95" + struct.pack("<Q", _HUGE) + b"N.",
              f"claims {_HUGE} bytes"),
    "bytearray_call": (b"\x80\x02cbuiltins\nbytearray\n\x8a\x08"
                       + _HUGE.to_bytes(8, "little") + b"\x85R.",
                       "refused bytearray()"),
    "memo_put": (b"\x80\x02Np%d\n." % _HUGE, "memo index"),
    "memo_long_binput": (b"\x80\x02Nr" + struct.pack("<I", 2**32 - 1)
                         + b".", "memo index"),
    "memo_get": (b"\x80\x02g%d\n." % _HUGE, "memo index"),
    "deep_tuples_as_key": (b"\x80\x02})" + b"\x85" * 1_000_000 + b"Ns.",
                           "nests deeper than 100"),
    "deep_marks": (b"\x80\x02" + b"(" * 100_000 + b"l" * 100_000 + b".",
                   "nests deeper than 100"),
    "empty_lists": (b"\x80\x02(" + b"]" * 600_000 + b"l.",
                    "builds more than"),
}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(_CLAIMS))
def test_lengths_memo_and_nesting_are_bounded(tmp_path, fmt, case):
    pkl, match = _CLAIMS[case]
    path = _write(tmp_path / f"{case}.pt", fmt, pkl)
    _assert_refused(_read_limited(path), match)


def test_exhaustion_never_escapes_raw(tmp_path):
    """A Python 3 int of a million digits (INT opcode) is refused by int()
    itself; whatever the interpreter raises is a CheckpointError."""
    path = _write(tmp_path / "int.pt", "zip",
                  b"\x80\x02I" + b"9" * 1_000_000 + b"\n.")
    _assert_refused(_read_limited(path), "truncated or corrupt")


_ALTERING = {
    # BUILD with (None, {"most_common": set}) sets a class attribute in the
    # C unpickler (slot state goes through setattr).
    "build_counter_class": b"\x80\x02ccollections\nCounter\n"
                           b"N}X\x0b\x00\x00\x00most_commoncbuiltins\nset\n"
                           b"s\x86b.",
    "build_ordered_dict_class": b"\x80\x02ccollections\nOrderedDict\n"
                                b"}X\x04\x00\x00\x00keysNsb.",
    "build_rebuild_function": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
                              b"N}X\x08\x00\x00\x00__code__Ns\x86b.",
    "setitem_on_class": b"\x80\x02ccollections\nOrderedDict\n"
                        b"X\x04\x00\x00\x00keysNs.",
    "append_on_size": b"\x80\x02ctorch\nSize\nNa.",
    "additems_on_set_class": b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"
                             b"cbuiltins\nset\n(N\x90.",
    "build_on_storage_type": b"\x80\x02ctorch\nFloatStorage\n"
                             b"}X\x05\x00\x00\x00dtypeNsb.",
}


def _class_state():
    return {cls: dict(vars(cls)) for cls in (
        collections.Counter, collections.OrderedDict, set, tuple, dict)}


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("case", sorted(_ALTERING))
def test_no_allowed_class_or_function_can_be_altered(tmp_path, fmt, case):
    before = _class_state()
    most_common = collections.Counter.most_common
    path = _write(tmp_path / f"{case}.pt", fmt, _ALTERING[case])
    with pytest.raises(CheckpointError, match="refused"):
        read_torch_checkpoint(path)
    assert collections.Counter.most_common is most_common
    assert _class_state() == before
    assert collections.Counter("abca").most_common(1) == [("a", 2)]


@pytest.mark.parametrize("opcode,name", [
    (b"\x82\x01", "EXT1"), (b"i__builtin__\nlist\n", "INST"),
    (b"(cbuiltins\nset\no", "OBJ"), (b"\x97", "NEXT_BUFFER")])
def test_opcodes_torch_never_writes_are_refused(tmp_path, opcode, name):
    path = _write(tmp_path / "op.pt", "zip", b"\x80\x05" + opcode + b".")
    with pytest.raises(CheckpointError, match=f"opcode {name}"):
        read_torch_checkpoint(path)

"""A safe, PyTorch-free reader for checkpoints written by `torch.save`.

Hand-written because torch's own safe loader (`torch.load(weights_only=True)`)
needs torch, a multi-GB dependency our users converting a checkpoint need not
have. Both formats torch has written since 0.4 are read:

- the zip format (PyTorch >= 1.6): `data.pkl` plus one stored entry per
  storage; compressed entries are refused (torch never writes them, and they
  are how a small file claims a huge one);
- the legacy format (`_use_new_zipfile_serialization=False`, the default
  before 1.6 and what timm's `clean_checkpoint.py` writes): one stream of
  protocol-2 pickles (magic number, protocol version 1001, system info, the
  object, the sorted storage keys) followed by each storage as an int64
  element count and its raw little-endian bytes. Every count is checked
  against the persistent id that uses it and against the file before
  anything is sliced. A pickled `nn.Module` (`('module', ...)` ids) and the
  pre-0.4 tar format are refused with a clear error.

Unpickling goes through `safe_pickle` with the allow-list below: containers,
tensors and a few plain torch objects; nothing else is imported or called.
Tensors become numpy arrays that own their data (bfloat16 ones float32, as
numpy has no bfloat16). Memory stays bounded by the file: its bytes once,
plus the tensors, which may materialise at most `4 * file size + 16 MiB`
(views of one storage, stride-0 expansions and the like count each time
they are copied out), plus the unpickler's containers (see `safe_pickle`).
"""

import collections
import hashlib
import math
import os
import tarfile
import warnings
import zipfile
import zlib

import numpy as np

from keras_coordatt.weights import safe_pickle
from keras_coordatt.weights.safe_pickle import TRUNCATED as _TRUNCATED
from keras_coordatt.weights.safe_pickle import CheckpointError
from keras_coordatt.weights.safe_pickle import Inert

# torch dtype name -> numpy type code ("bf16": read as uint16, widened).
_DTYPES = {
    "float32": "f4", "float64": "f8", "float16": "f2", "bfloat16": "bf16",
    "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1",
    "uint8": "u1", "uint16": "u2", "uint32": "u4", "uint64": "u8",
    "bool": "b1", "complex64": "c8", "complex128": "c16",
}
_STORAGES = {
    "FloatStorage": "float32", "DoubleStorage": "float64",
    "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64", "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
# pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2): how a legacy file starts.
LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
LEGACY_PROTOCOL = 1001
_MAX_DIMS = 32
_SLACK = 16 << 20

# Immutable, so that nothing in a pickle can alter them.
_StorageType = collections.namedtuple("_StorageType", "dtype")
_Storage = collections.namedtuple("_Storage", "raw dtype byteorder key")


def _numpy_dtype(name, byteorder="little"):
    if name not in _DTYPES:
        raise CheckpointError(f"tensor dtype torch.{name} has no numpy "
                              "equivalent; convert it (.float()) and re-save")
    dt = np.dtype("u2" if name == "bfloat16" else _DTYPES[name])
    return dt.newbyteorder("<" if byteorder == "little" else ">")


def _ints(values, what):
    values = tuple(values) if isinstance(values, (tuple, list)) else None
    if values is None or len(values) > _MAX_DIMS or not all(
            type(v) in (int, bool) and 0 <= v < 1 << 62 for v in values):
        raise CheckpointError(f"bad tensor {what}; {_TRUNCATED}")
    return values


class _Tensors:
    """Rebuilds tensors as numpy arrays, within a budget of bytes copied."""

    def __init__(self, budget, file_size=0, dry=False):
        self.left, self.budget, self.file_size = budget, budget, file_size
        self.dry = dry  # only check the arguments (first legacy pass)

    def rebuild(self, storage, offset, size, stride, dtype=None):
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"tensor without a storage record; "
                                  f"{_TRUNCATED}")
        name = dtype or storage.dtype
        dt = _numpy_dtype(name, storage.byteorder)
        (offset,), size = _ints((offset,), "offset"), _ints(size, "shape")
        stride = _ints(stride, "strides")
        if len(size) != len(stride):
            raise CheckpointError(f"bad tensor shape {size}; {_TRUNCATED}")
        if self.dry:
            return None
        if len(storage.raw) % dt.itemsize:
            raise CheckpointError(
                f"storage {storage.key!r} of {len(storage.raw)} bytes does "
                f"not hold whole torch.{name} elements; {_TRUNCATED}")
        if 0 in size:
            out = np.zeros(size, dt.newbyteorder("="))
        else:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride))
            if last >= len(storage.raw) // dt.itemsize:
                raise CheckpointError(f"tensor exceeds its storage "
                                      f"{storage.key!r}; {_TRUNCATED}")
            self._charge(math.prod(size) * dt.itemsize, storage.key)
            flat = storage.raw.view(dt)[offset:]
            view = np.lib.stride_tricks.as_strided(
                flat, size, [s * dt.itemsize for s in stride], writeable=False)
            out = np.array(view, dtype=dt.newbyteorder("="))  # a copy
        if name == "bfloat16":  # bfloat16 is the top half of a float32
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out

    def _charge(self, nbytes, key):
        self.left -= nbytes
        if self.left < 0:
            raise CheckpointError(
                f"the tensors would take more than {self.budget} bytes "
                f"(4 x the file's {self.file_size} bytes + 16 MiB) when "
                f"copied out, the last a view of storage {key!r}: views "
                "that repeat their storage (stride 0, many views of one "
                "storage) claim far more memory than the file holds")


def _encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise CheckpointError(f"refused _codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _bytearray(*args):
    if len(args) == 0:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], bytes):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in (
            "latin1", "latin-1"):
        return bytearray(args[0], "latin1")
    raise CheckpointError("refused bytearray() of anything but bytes")


def _rebuild_v3(tensors):
    # (storage, offset, size, stride, requires_grad, hooks, dtype[, meta])
    def rebuild(storage, offset, size, stride, *rest):
        if len(rest) < 3 or not str(rest[2]).startswith("torch."):
            raise CheckpointError(f"bad _rebuild_tensor_v3 call; {_TRUNCATED}")
        return tensors.rebuild(storage, offset, size, stride,
                               str(rest[2])[len("torch."):])
    return rebuild


def _allowed(tensors):
    """The globals a checkpoint may use, bound to one file's `tensors`."""
    v2 = (lambda storage, offset, size, stride, *_:
          tensors.rebuild(storage, offset, size, stride))
    allowed = {
        "collections.OrderedDict": collections.OrderedDict,
        "collections.Counter": collections.Counter,
        "torch._utils._rebuild_tensor": tensors.rebuild,
        # (storage, offset, size, stride, requires_grad, hooks[, meta])
        "torch._utils._rebuild_tensor_v2": v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_v3(tensors),
        "torch._utils._rebuild_parameter": lambda data, *_: data,
        "torch._utils._rebuild_parameter_with_state": lambda data, *_: data,
        "torch.Size": tuple,
        "torch.device": lambda *a: ":".join(str(v) for v in a),
        "_codecs.encode": _encode,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "builtins.bytearray": _bytearray,
        "builtins.complex": complex,
    }
    # Dtypes without a numpy equivalent are read as names and refused on use.
    allowed.update({f"torch.{n}": f"torch.{n}" for n in list(_DTYPES) + [
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
        "float8_e8m0fnu", "complex32"]})
    allowed.update({f"{m}.{n}": _StorageType(d) for n, d in _STORAGES.items()
                    for m in ("torch", "torch.storage")})
    return allowed


def _storage_id(pid, legacy):
    """Checks a persistent id; returns (dtype name, key, numel, view)."""
    if isinstance(pid, tuple) and pid[:1] == ("module",):
        raise CheckpointError(
            "this checkpoint pickles a whole nn.Module (torch.save(model)), "
            "which runs the model's code when loaded; load it with torch if "
            "you trust it and save model.state_dict() instead")
    if not (isinstance(pid, tuple) and len(pid) == (6 if legacy else 5)
            and pid[0] == "storage" and isinstance(pid[1], _StorageType)
            and type(pid[4]) is int and pid[4] >= 0):
        raise CheckpointError(f"bad persistent id {str(pid)[:200]}; "
                              f"{_TRUNCATED}")
    view = pid[5] if legacy else None
    if view is not None and not (isinstance(view, tuple) and len(view) == 3
                                 and all(type(v) is int for v in view[1:])):
        raise CheckpointError(f"bad storage view {view!r}; {_TRUNCATED}")
    return pid[1].dtype, str(pid[2]), pid[4], view


def is_torch_checkpoint(path):
    """Whether `path` looks like a `torch.save` file, judged by its content.

    True for a zip archive holding a `data.pkl` (PyTorch >= 1.6) and for a
    file that starts with the legacy format's magic number; the suffix is not
    looked at. Nothing is unpickled.
    """
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    if head == LEGACY_MAGIC:
        return True
    if not head.startswith(b"PK"):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.count("/") <= 1 and n.split("/")[-1] == "data.pkl"
                       for n in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


class _Entries:
    """Reads stored zip entries, at most the file's size in all."""

    def __init__(self, archive, file_size):
        self.archive, self.left, self.file_size = archive, file_size, file_size

    def read(self, name):
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise CheckpointError(f"record {name} is missing; "
                                  f"{_TRUNCATED}") from None
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"record {name} is compressed; torch.save never compresses, "
                "and a compressed record can inflate far beyond the file")
        self.left -= info.file_size
        if self.left < 0:
            raise CheckpointError(
                f"the records claim more bytes than the file's "
                f"{self.file_size} (at {name}); {_TRUNCATED}")
        return self.archive.read(info)


def _read_zip(path, file_size, placeholders):
    budget = 4 * file_size + _SLACK
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkls = [n for n in names
                if n.count("/") <= 1 and n.split("/")[-1] == "data.pkl"]
        if not pkls:
            raise CheckpointError(
                f"{path} is a zip without data.pkl, not a torch.save "
                f"checkpoint; it holds {names[:5]}")
        prefix = pkls[0][:-len("data.pkl")]
        entries = _Entries(archive, file_size)
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = entries.read(f"{prefix}byteorder").decode(
                "ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"unknown byteorder {byteorder[:20]!r}")
        storages = {}

        def storage(pid):
            dtype, key, numel, _ = _storage_id(pid, legacy=False)
            if key not in storages:
                raw = np.frombuffer(entries.read(f"{prefix}data/{key}"),
                                    np.uint8)
                _check_record(key, len(raw), numel, dtype)
                storages[key] = _Storage(raw, dtype, byteorder, key)
            return storages[key]

        tensors = _Tensors(budget, file_size)
        obj, _, refused = safe_pickle.load(
            entries.read(pkls[0]), 0, _allowed(tensors), storage,
            placeholders)
    return obj, refused


def _check_record(key, nbytes, numel, dtype):
    expected = numel * _numpy_dtype(dtype).itemsize
    if nbytes != expected:
        raise CheckpointError(
            f"storage {key!r} holds {nbytes} bytes where its {numel} "
            f"torch.{dtype} elements need {expected}; {_TRUNCATED}")


def _legacy_header(data):
    """Checks the magic number, version and system info; returns the end."""
    pos = 0
    for expected, what in ((LEGACY_MAGIC_NUMBER, "magic number"),
                           (LEGACY_PROTOCOL, "protocol version")):
        value, pos, _ = safe_pickle.load(data, pos, {})
        if value != expected:
            raise CheckpointError(f"bad legacy {what} {str(value)[:40]}; "
                                  f"{_TRUNCATED}")
    sys_info, pos, _ = safe_pickle.load(data, pos, {})
    if not isinstance(sys_info, dict) or not sys_info.get(
            "little_endian", True):
        raise CheckpointError("a legacy checkpoint from a big-endian machine"
                              " or with bad system info; re-save it")
    return pos


def _legacy_records(data, pos, uses):
    """Slices each storage record after the pickles; returns {key: raw}."""
    keys, pos, _ = safe_pickle.load(data, pos, {})
    if not isinstance(keys, list) or not all(isinstance(k, str)
                                             for k in keys):
        raise CheckpointError(f"bad storage key list; {_TRUNCATED}")
    if set(keys) != set(uses) or len(keys) != len(set(keys)):
        raise CheckpointError(
            f"the storage keys ({len(keys)}) do not match the storages the "
            f"tensors use ({len(uses)}); {_TRUNCATED}")
    raws = {}
    for key in keys:
        dtype, numel = uses[key]
        if pos + 8 > len(data):
            raise CheckpointError(f"storage {key!r} is missing; {_TRUNCATED}")
        count = int.from_bytes(data[pos:pos + 8], "little")
        if count != numel:
            raise CheckpointError(
                f"storage {key!r} records {count} elements where its "
                f"tensors use {numel}; {_TRUNCATED}")
        nbytes = numel * _numpy_dtype(dtype).itemsize
        if pos + 8 + nbytes > len(data):
            raise CheckpointError(
                f"storage {key!r} needs {nbytes} bytes, the file has "
                f"{len(data) - pos - 8} left; {_TRUNCATED}")
        raws[key] = np.frombuffer(data, np.uint8, nbytes, pos + 8)
        pos += 8 + nbytes
    return raws


def _view(raw, dtype, view):
    """A legacy storage view (key, offset, size), in elements."""
    itemsize = _numpy_dtype(dtype).itemsize
    _, offset, size = view
    if offset < 0 or size < 0 or (offset + size) * itemsize > len(raw):
        raise CheckpointError(f"storage view {view!r} exceeds its storage; "
                              f"{_TRUNCATED}")
    return raw[offset * itemsize:(offset + size) * itemsize]


def _read_legacy(data, placeholders):
    start = _legacy_header(data)
    end = safe_pickle.skip(data, start)
    uses = {}

    def record(pid):  # first pass: which storages, of what type and size
        dtype, key, numel, _ = _storage_id(pid, legacy=True)
        if uses.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise CheckpointError(f"storage {key!r} is used with two types "
                                  f"or sizes; {_TRUNCATED}")
        return _Storage(None, dtype, "little", key)

    safe_pickle.load(data, start, _allowed(_Tensors(0, dry=True)), record,
                     placeholders)
    raws = _legacy_records(data, end, uses)

    def storage(pid):
        dtype, key, _, view = _storage_id(pid, legacy=True)
        raw = raws[key] if view is None else _view(raws[key], dtype, view)
        return _Storage(raw, dtype, "little", key)

    tensors = _Tensors(4 * len(data) + _SLACK, len(data))
    obj, _, refused = safe_pickle.load(data, start, _allowed(tensors),
                                       storage, placeholders)
    return obj, refused


def _read(path, placeholders):
    """`read_torch_checkpoint`, also returning the refused globals' names."""
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    try:
        if head.startswith(b"PK"):
            if not zipfile.is_zipfile(path):
                raise CheckpointError(f"{path} is a damaged zip; {_TRUNCATED}")
            return _read_zip(path, file_size, placeholders)
        if head == LEGACY_MAGIC:
            with open(path, "rb") as f:
                return _read_legacy(f.read(), placeholders)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError,
            MemoryError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CheckpointError(f"{path}: {_TRUNCATED} ({err!r})") from None
    if tarfile.is_tarfile(path):
        raise CheckpointError(
            f"{path} is in the tar format of PyTorch < 0.4, which is not "
            "read; load it with an old torch and re-save it: "
            "torch.save(torch.load(f), g)")
    what = ("a plain pickle, not a torch.save file" if head.startswith(b"\x80")
            else f"not a torch.save file (it starts with {head[:4]!r})")
    raise CheckpointError(f"{path} is {what}; {_TRUNCATED}")


def read_torch_checkpoint(path, placeholders=False):
    """Reads a `torch.save` checkpoint without importing torch.

    Every tensor (and `nn.Parameter`) becomes a numpy array that owns its data,
    with the tensor's dtype, shape, strides and storage offset honoured; 0-d
    tensors become 0-d arrays. bfloat16 tensors become float32 (exact: numpy
    has no bfloat16). torch dtypes become strings such as `"torch.float32"`,
    `torch.device` a string, `torch.Size` a tuple.

    Args:
        path: a file written by `torch.save`, in the zip (PyTorch >= 1.6) or
            the legacy format; recognised by content, whatever its suffix.
        placeholders: whether globals outside the allow-list (an
            `argparse.Namespace` of training arguments, say) are read as inert
            `safe_pickle.Inert` records instead of raising. Nothing of theirs
            is imported or run either way.

    Returns:
        The unpickled object (typically a dict or `OrderedDict`).

    Raises:
        FileNotFoundError: `path` does not exist.
        CheckpointError: not a checkpoint, a corrupt or hostile one (bounds in
            the module docstring), or a pickle that asks for a global outside
            the allow-list (unless `placeholders`).
    """
    return _read(os.fspath(path), placeholders)[0]


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net",
                 "state_dict_ema")


def _kind(obj):
    """"state dict", "tainted" (holds refused objects) or None.

    A str-keyed mapping of mostly tensors is a state dict even with a few
    other values: the converter then names those keys, instead of this
    search reporting that no state dict exists.
    """
    if not (isinstance(obj, dict) and obj and all(
            isinstance(k, str) for k in obj)):
        return None
    tensors = sum(isinstance(v, np.ndarray) for v in obj.values())
    if any(isinstance(v, Inert) for v in obj.values()):
        return "tainted" if tensors else None
    return "state dict" if tensors > len(obj) / 2 else None


def _candidates(obj):
    """(path, value) pairs: the object, then wrapper keys one, two down."""
    level = [("", obj)]
    for _ in range(3):
        yield from level
        level = [(f"{path}/{key}".lstrip("/"), value[key])
                 for path, value in level if isinstance(value, dict)
                 for key in _WRAPPER_KEYS if key in value]


def extract_state_dict(obj, key=None):
    """Finds the state dict in what `read_torch_checkpoint` returned.

    A mapping of str -> arrays is used as is; otherwise the first one found
    under the keys `state_dict`, `model`, `model_state_dict`, `net`,
    `state_dict_ema` (in this order), one level down, then two (timm's and
    Lightning-style training checkpoints: `{"model": {"state_dict": ...}}`).
    A `module.` prefix on every key (DataParallel) is stripped.

    Args:
        obj: the object returned by `read_torch_checkpoint`.
        key: optional path of the state dict, such as `"state_dict_ema"` or
            `"model/state_dict"`, to pick one explicitly.

    Returns:
        `collections.OrderedDict[str, np.ndarray]`.

    Raises:
        CheckpointError: nothing looks like a state dict (the message lists
            the top-level keys found), or the state dict holds objects of a
            refused type.
    """
    found = [(key, _lookup(obj, key))] if key else _candidates(obj)
    for path, value in found:
        kind = _kind(value)
        if kind == "tainted":
            bad = sorted(k for k, v in value.items() if isinstance(v, Inert))
            raise CheckpointError(
                f"the state dict at {path or 'the top level'!r} holds "
                f"objects of types outside the allow-list: {bad[:5]} "
                f"({sorted({value[k].name for k in bad})}); it is not read")
        if kind:
            strip = all(k.startswith("module.") for k in value)
            return collections.OrderedDict(
                (k[len("module."):] if strip else k, v)
                for k, v in value.items())
    what = (f"top-level keys {list(obj)[:20]}" if isinstance(obj, dict)
            else f"a {type(obj).__name__}")
    where = (f"at {key!r}" if key else
             f"at the top level or one or two levels under {_WRAPPER_KEYS}")
    raise CheckpointError(
        f"no state dict (a mapping of str -> tensors) found {where}: {what}")


def _lookup(obj, key):
    for part in key.split("/"):
        if not isinstance(obj, dict) or part not in obj:
            raise CheckpointError(f"the checkpoint has no {key!r}")
        obj = obj[part]
    return obj


def load_torch_state_dict(path, key=None):
    """Reads a checkpoint's state dict (see `extract_state_dict`).

    Objects of types outside the allow-list *outside* the state dict (an
    `argparse.Namespace` of training arguments, say) are read as inert
    placeholders and dropped, with a warning naming their types; inside the
    state dict they are an error.

    Args:
        path: a file written by `torch.save` (zip or legacy format).
        key: optional path of the state dict inside the checkpoint.

    Returns:
        `collections.OrderedDict[str, np.ndarray]`.
    """
    obj, refused = _read(os.fspath(path), placeholders=True)
    try:
        state_dict = extract_state_dict(obj, key)
    except CheckpointError as err:
        if refused:
            raise CheckpointError(
                f"{err}; the file also pickles objects of refused types "
                f"{sorted(refused)[:5]} (a whole model saved with "
                "torch.save(model)?)") from None
        raise
    if refused:
        warnings.warn(
            f"{path}: objects of types outside the allow-list, outside the "
            f"state dict, were read as inert placeholders and ignored: "
            f"{sorted(refused)}", stacklevel=2)
    return state_dict


def git_blob_sha1(path, chunk_size=1 << 20):
    """Returns the git blob id of a file (as `git hash-object` prints it).

    Args:
        path: the file; read in chunks, so it may be large.
        chunk_size: bytes read at a time.

    Returns:
        The hex SHA-1 of `b"blob <size>\\0" + contents`.
    """
    digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""A safe, PyTorch-free reader for checkpoints written by `torch.save`.

Only the zip format (PyTorch >= 1.6) is read. Unpickling goes through an
allow-list: containers, tensors and a few plain torch objects are rebuilt,
any other global is refused before anything runs. Tensors become numpy arrays
(bfloat16 ones float32, as numpy has no bfloat16).
"""

import _compat_pickle
import collections
import functools
import hashlib
import os
import pickle
import types
import zipfile
import zlib

import numpy as np


class CheckpointError(ValueError):
    """A file that is not, or not safely, a readable PyTorch checkpoint."""


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
_TRUNCATED = "the file is truncated or corrupt; download or save it again"


# Immutable, so that a pickle's BUILD opcode cannot alter them.
_StorageType = collections.namedtuple("_StorageType", "dtype")
_Storage = collections.namedtuple("_Storage", "raw dtype byteorder")


def _rebuild(storage, offset, size, stride, dtype=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor without a storage record; {_TRUNCATED}")
    name = dtype or storage.dtype
    if name not in _DTYPES:
        raise CheckpointError(f"tensor dtype torch.{name} has no numpy "
                              "equivalent; convert it (.float()) and re-save")
    dt = np.dtype("u2" if name == "bfloat16" else _DTYPES[name])
    dt = dt.newbyteorder("<" if storage.byteorder == "little" else ">")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(
            isinstance(v, int) and v >= 0 for v in size + stride + (offset,)):
        raise CheckpointError(f"bad tensor shape {size}; {_TRUNCATED}")
    numel = len(storage.raw) // dt.itemsize
    if 0 in size:
        out = np.zeros(size, dt.newbyteorder("="))
    else:
        if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= numel:
            raise CheckpointError(f"tensor exceeds its storage; {_TRUNCATED}")
        flat = storage.raw[:numel * dt.itemsize].view(dt)[offset:]
        view = np.lib.stride_tricks.as_strided(
            flat, size, [s * dt.itemsize for s in stride], writeable=False)
        out = np.array(view, dtype=dt.newbyteorder("="))  # a copy
    if name == "bfloat16":  # bfloat16 is the top half of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _encode(text, encoding="latin1"):
    if encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"refused _codecs.encode with {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    "collections.OrderedDict": collections.OrderedDict,
    "collections.Counter": collections.Counter,
    "torch._utils._rebuild_tensor": _rebuild,
    # (storage, offset, size, stride, requires_grad, hooks[, dtype][, meta])
    "torch._utils._rebuild_tensor_v2":
        lambda st, off, size, stride, *_: _rebuild(st, off, size, stride),
    "torch._utils._rebuild_tensor_v3":
        lambda st, off, size, stride, *rest: _rebuild(
            st, off, size, stride, str(rest[2])[len("torch."):]),
    "torch._utils._rebuild_parameter": lambda data, *_: data,
    "torch._utils._rebuild_parameter_with_state": lambda data, *_: data,
    "torch.Size": tuple,
    "torch.device": lambda *a: ":".join(str(v) for v in a),
    "_codecs.encode": _encode,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": bytearray,
    "builtins.complex": complex,
}
# Dtypes without a numpy equivalent are read as names and refused on use.
_ALLOWED.update({f"torch.{n}": f"torch.{n}" for n in list(_DTYPES) + [
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e8m0fnu", "complex32"]})
_ALLOWED.update({f"{m}.{n}": _StorageType(d) for n, d in _STORAGES.items()
                 for m in ("torch", "torch.storage")})


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, byteorder):
        super().__init__(file)
        self._archive, self._prefix = archive, prefix
        self._byteorder = byteorder
        self._storages = {}

    def find_class(self, module, name):
        # torch pickles with protocol 2, which writes Python 2 names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full not in _ALLOWED:
            jit = " (a TorchScript archive?)" if "__torch__" in full else ""
            raise CheckpointError(
                f"refused global {full!r}{jit}: this checkpoint holds more "
                "than tensors and containers, and could run code when loaded."
                " If you trust its source, load it with torch and re-save the"
                " state dict alone: torch.save(model.state_dict(), path)")
        obj = _ALLOWED[full]
        # A fresh wrapper, so that a pickle's BUILD cannot alter our functions.
        if isinstance(obj, types.FunctionType):
            return functools.partial(obj)
        return obj

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5
                and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"bad persistent id {pid!r}; {_TRUNCATED}")
        key = str(pid[2])
        if key not in self._storages:
            try:
                data = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"storage record data/{key} is "
                                      f"missing; {_TRUNCATED}") from None
            raw = np.frombuffer(data, np.uint8)
            self._storages[key] = _Storage(raw, pid[1].dtype, self._byteorder)
        return self._storages[key]


def read_torch_checkpoint(path):
    """Reads a `torch.save` zip checkpoint without importing torch.

    Every tensor (and `nn.Parameter`) becomes a numpy array that owns its data,
    with the tensor's dtype, shape, strides and storage offset honoured; 0-d
    tensors become 0-d arrays. bfloat16 tensors become float32 (exact: numpy
    has no bfloat16). torch dtypes become strings such as `"torch.float32"`,
    `torch.device` a string, `torch.Size` a tuple.

    Args:
        path: path to a file written by `torch.save` (PyTorch >= 1.6).

    Returns:
        The unpickled object (typically a dict or `OrderedDict`).

    Raises:
        FileNotFoundError: `path` does not exist.
        CheckpointError: a legacy or corrupt file, or a pickle that asks for
            a global outside the allow-list (nothing is executed).
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"\x80"):
            raise CheckpointError(
                f"{path} is in the legacy (pre-1.6, non-zip) torch.save "
                "format or a plain pickle; re-save it with a recent PyTorch: "
                "torch.save(torch.load(f), g)")
        what = ("a damaged zip" if head.startswith(b"PK") else
                f"not a torch.save zip file (it starts with {head!r})")
        raise CheckpointError(f"{path} is {what}; {_TRUNCATED}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pkls = [n for n in names if n.count("/") <= 1
                    and n.split("/")[-1] == "data.pkl"]
            if not pkls:
                raise CheckpointError(
                    f"{path} is a zip without data.pkl, not a torch.save "
                    f"checkpoint; it holds {names[:5]}")
            prefix = pkls[0][:-len("data.pkl")]
            byteorder = "little"
            if f"{prefix}byteorder" in names:
                byteorder = archive.read(f"{prefix}byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"unknown byteorder {byteorder!r}")
            with archive.open(pkls[0]) as pkl:
                return _Unpickler(pkl, archive, prefix, byteorder).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, pickle.UnpicklingError,
            ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError) as err:
        raise CheckpointError(f"{path}: {_TRUNCATED} ({err!r})") from err


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net",
                 "state_dict_ema")


def _is_state_dict(obj):
    return (isinstance(obj, dict) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, np.ndarray)
                    for k, v in obj.items()))


def extract_state_dict(obj):
    """Finds the state dict in what `read_torch_checkpoint` returned.

    A mapping of str -> arrays is used as is; otherwise the first of the keys
    `state_dict`, `model`, `model_state_dict`, `net`, `state_dict_ema` (in this
    order) whose value is one. A `module.` prefix on every key (DataParallel)
    is stripped.

    Args:
        obj: the object returned by `read_torch_checkpoint`.

    Returns:
        `collections.OrderedDict[str, np.ndarray]`.

    Raises:
        CheckpointError: nothing looks like a state dict; the message lists
            the top-level keys found.
    """
    found = obj if _is_state_dict(obj) else None
    if found is None and isinstance(obj, dict):
        found = next((obj[k] for k in _WRAPPER_KEYS
                      if k in obj and _is_state_dict(obj[k])), None)
    if found is None:
        what = (f"top-level keys {list(obj)}" if isinstance(obj, dict)
                else f"a {type(obj).__name__}")
        raise CheckpointError(
            f"no state dict (a mapping of str -> tensors) found: {what}; "
            f"expected one at the top level or under one of {_WRAPPER_KEYS}")
    strip = all(k.startswith("module.") for k in found)
    return collections.OrderedDict(
        (k[len("module."):] if strip else k, v) for k, v in found.items())


def load_torch_state_dict(path):
    """Reads a checkpoint's state dict (see `extract_state_dict`).

    Args:
        path: path to a file written by `torch.save`.

    Returns:
        `collections.OrderedDict[str, np.ndarray]`.
    """
    return extract_state_dict(read_torch_checkpoint(path))


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

"""A restricted unpickler: an untrusted pickle is read as data, never as code.

Hand-written because nothing that installs without torch does this. The
documented recipe, overriding `Unpickler.find_class`, stops a pickle from
naming arbitrary globals but not from altering the allowed ones (BUILD on a
class sets its attributes), and the C unpickler trusts the stream's length
fields and memo indices (a 2**62-byte claim is allocated before it is read)
and builds nesting that later overflows the C stack when hashed. This
subclass of the pure-Python `pickle._Unpickler` replaces or guards every
opcode that could do any of that:

- globals come only from the caller's allow-list; with `placeholders`, any
  other global becomes an inert `Refused` marker and whatever a pickle builds
  from it an inert `Inert` record (never called, never imported);
- only allowed callables and classes are called (REDUCE, NEWOBJ), and only
  the containers this unpickler made are filled (APPEND(S), SETITEM(S),
  ADDITEMS); BUILD sets the instance dict of an `OrderedDict` or `Counter`
  *instance* only, as torch's `weights_only` unpickler does, so no class or
  function can be changed;
- every length is checked against the bytes left before anything is
  allocated, and memo indices against the stream's size;
- nesting depth (containers and MARKs) is at most `MAX_DEPTH` and the number
  of containers at most `1024 + stream bytes / 16`;
- opcodes torch never writes (INST, OBJ, EXT1/2/4, NEWOBJ_EX, out-of-band
  buffers) are refused.

Any failure is a `CheckpointError`, also a `MemoryError`, `RecursionError`
or `OverflowError` raised while unpickling.
"""

import _compat_pickle
import collections
import pickle
import pickletools
import struct

MAX_DEPTH = 100
TRUNCATED = "the file is truncated or corrupt; download or save it again"


class CheckpointError(ValueError):
    """A file that is not, or not safely, a readable checkpoint."""


class Refused:
    """Stands for a global outside the allow-list; holds only its name."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<refused global {self.name}>"


class Inert:
    """What a pickle built from a `Refused` global: its name, nothing else.

    Items and state given to it are dropped; it never runs anything.
    """

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass

    def __repr__(self):
        return f"<inert {self.name}>"


_FILLABLE = {
    "list": (list,),
    "dict": (dict, collections.OrderedDict, collections.Counter),
    "set": (set,),
}
_BUILDABLE = (collections.OrderedDict, collections.Counter)


class _Stream:
    """Reads a bytes object from `pos`, refusing reads past its end."""

    def __init__(self, data, pos=0):
        self.data, self.pos = data, pos

    def remaining(self):
        return len(self.data) - self.pos

    def read(self, n=-1):
        n = self.remaining() if n is None or n < 0 else n
        if n > self.remaining():
            raise CheckpointError(
                f"the pickle claims {n} bytes where {self.remaining()} "
                f"remain; {TRUNCATED}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(out)

    def readinto(self, buffer):
        buffer[:] = self.read(len(buffer))
        return len(buffer)

    def readline(self):
        end = self.data.find(b"\n", self.pos)
        return self.read((len(self.data) if end < 0 else end + 1) - self.pos)


_CODES = {op.name: op.code.encode("latin1")[0] for op in pickletools.opcodes}


def _op(name):
    return _CODES[name]


class SafeUnpickler(pickle._Unpickler):
    """See the module docstring. Use `load` rather than this class."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, stream, allowed, persistent_load, placeholders):
        super().__init__(stream, encoding="utf-8")  # torch.load's encoding
        self._allowed = allowed
        self._persistent = persistent_load
        self._placeholders = placeholders
        self.refused = set()
        self._size = len(stream.data)
        self._max_objects = 1024 + self._size // 16
        self._depth = {}  # id(container) -> nesting depth
        self._alive = []  # keeps those ids from being reused
        self._callables = {}

    def find_class(self, module, name):
        # torch pickles with protocol 2, which writes Python 2 names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in self._allowed:
            obj = self._allowed[full]
        elif self._placeholders:
            self.refused.add(full)
            obj = Refused(full)
        else:
            jit = " (a TorchScript archive?)" if "__torch__" in full else ""
            raise CheckpointError(
                f"refused global {full!r}{jit}: this checkpoint holds more "
                "than tensors and containers, and could run code when loaded."
                " If you trust its source, load it with torch and re-save the"
                " state dict alone: torch.save(model.state_dict(), path)")
        if callable(obj):
            self._callables[id(obj)] = obj
        return obj

    def persistent_load(self, pid):
        return self._persistent(pid)

    # -- bookkeeping ---------------------------------------------------------

    def _depth_of(self, objects):
        return 1 + max((self._depth.get(id(o), 0) for o in objects),
                       default=0)

    def _check(self, depth):
        if depth > MAX_DEPTH:
            raise CheckpointError(
                f"the pickle nests deeper than {MAX_DEPTH} levels; "
                "no checkpoint does: the file is corrupt or hostile")
        return depth

    def _new(self, obj, depth):
        if len(self._alive) >= self._max_objects:
            raise CheckpointError(
                f"the pickle builds more than {self._max_objects} containers "
                f"for {self._size} bytes; the file is corrupt or hostile")
        self._alive.append(obj)
        self._depth[id(obj)] = depth

    def _grow(self, target, kind, items):
        if not isinstance(target, (Inert,) + _FILLABLE[kind]) or \
                id(target) not in self._depth:
            raise CheckpointError(
                f"refused to add items to a {type(target).__name__}: only "
                f"{kind}s built by the pickle itself can be filled")
        depth = self._check(self._depth_of(items))
        self._depth[id(target)] = max(self._depth[id(target)], depth)

    def _memo_index(self, i):
        if not 0 <= i <= self._size:
            raise CheckpointError(
                f"memo index {i} is beyond the {self._size}-byte pickle; "
                f"{TRUNCATED}")
        return i


def _builder(name, arity=None):
    """Guards an opcode that makes a container from stack items."""
    original = pickle._Unpickler.dispatch[_op(name)]

    def run(self):
        items = self.stack if arity is None else self.stack[len(
            self.stack) - arity:]
        if arity is None and len(self.metastack) == 0:
            raise CheckpointError(f"{name} without a MARK; {TRUNCATED}")
        depth = self._check(self._depth_of(items))
        original(self)
        self._new(self.stack[-1], depth)
    return run


def _filler(name, kind, marked, count=1):
    """Guards an opcode that adds stack items to an existing container."""
    original = pickle._Unpickler.dispatch[_op(name)]

    def run(self):
        if marked:
            if not self.metastack or not self.metastack[-1]:
                raise CheckpointError(f"{name} without a target; {TRUNCATED}")
            target, items = self.metastack[-1][-1], self.stack
        else:
            if len(self.stack) <= count:
                raise CheckpointError(f"{name} without a target; {TRUNCATED}")
            target, items = self.stack[-count - 1], self.stack[-count:]
        self._grow(target, kind, items)
        original(self)
    return run


def _refuse(name):
    def run(self):
        raise CheckpointError(
            f"the pickle uses opcode {name}, which torch.save never writes; "
            "the file is corrupt or hostile")
    return run


def _load_mark(self):
    if len(self.metastack) >= MAX_DEPTH:
        self._check(MAX_DEPTH + 1)
    pickle._Unpickler.load_mark(self)


def _load_reduce(self):
    args = self.stack.pop()
    func = self.stack[-1]
    if not isinstance(args, tuple):
        raise CheckpointError(f"REDUCE with {type(args).__name__} arguments;"
                              f" {TRUNCATED}")
    depth = self._check(self._depth_of([args]))
    if isinstance(func, Refused):
        result = Inert(func.name)
    elif self._callables.get(id(func)) is func:
        result = func(*args)
    else:
        raise CheckpointError(f"refused call of a {type(func).__name__}: "
                              "only allowed globals can be called")
    self.stack[-1] = result
    self._new(result, depth)


def _load_newobj(self):
    args = self.stack.pop()
    cls = self.stack.pop()
    if isinstance(cls, Refused):
        obj = Inert(cls.name)
    elif isinstance(cls, type) and self._callables.get(id(cls)) is cls \
            and isinstance(args, tuple):
        obj = cls.__new__(cls, *args)
    else:
        raise CheckpointError(f"refused NEWOBJ of a {type(cls).__name__}: "
                              "only allowed classes can be instantiated")
    self.append(obj)
    self._new(obj, self._check(self._depth_of([args])))


def _load_build(self):
    state = self.stack.pop()
    inst = self.stack[-1]
    if isinstance(inst, Inert):
        return
    if type(inst) not in _BUILDABLE or id(inst) not in self._depth:
        raise CheckpointError(
            f"refused BUILD on a {type(inst).__name__}: only OrderedDict and "
            "Counter instances take state; the file could alter a class")
    if isinstance(state, tuple) and len(state) == 2 and not state[1]:
        state = state[0]
    if state is None:
        return
    if type(state) is not dict or not all(type(k) is str for k in state):
        raise CheckpointError(f"refused BUILD state of a "
                              f"{type(state).__name__}; {TRUNCATED}")
    self._grow(inst, "dict", [state])
    inst.__dict__.update(state)


def _load_bytearray8(self):
    n, = struct.unpack("<Q", self.read(8))
    if n > self._size:
        raise CheckpointError(f"BYTEARRAY8 claims {n} bytes in a "
                              f"{self._size}-byte pickle; {TRUNCATED}")
    self.append(bytearray(self.read(n)))


def _memo(name, reader, store):
    def run(self):
        i = self._memo_index(reader(self))
        if store:
            self.memo[i] = self.stack[-1]
        elif i in self.memo:
            self.append(self.memo[i])
        else:
            raise CheckpointError(f"memo index {i} was never stored; "
                                  f"{TRUNCATED}")
    return run


def _text_index(self):
    return int(self.readline()[:-1])


def _long_index(self):
    return struct.unpack("<I", self.read(4))[0]


_D = SafeUnpickler.dispatch
for _name, _arity in [("TUPLE", None), ("LIST", None), ("DICT", None),
                      ("FROZENSET", None), ("TUPLE1", 1), ("TUPLE2", 2),
                      ("TUPLE3", 3), ("EMPTY_TUPLE", 0), ("EMPTY_LIST", 0),
                      ("EMPTY_DICT", 0), ("EMPTY_SET", 0)]:
    _D[_op(_name)] = _builder(_name, _arity)
for _name, _kind, _marked, _count in [
        ("APPEND", "list", False, 1), ("APPENDS", "list", True, 0),
        ("SETITEM", "dict", False, 2), ("SETITEMS", "dict", True, 0),
        ("ADDITEMS", "set", True, 0)]:
    _D[_op(_name)] = _filler(_name, _kind, _marked, _count)
for _name in ("INST", "OBJ", "EXT1", "EXT2", "EXT4", "NEWOBJ_EX",
              "NEXT_BUFFER", "READONLY_BUFFER"):
    _D[_op(_name)] = _refuse(_name)
_D[_op("MARK")] = _load_mark
_D[_op("REDUCE")] = _load_reduce
_D[_op("NEWOBJ")] = _load_newobj
_D[_op("BUILD")] = _load_build
_D[_op("BYTEARRAY8")] = _load_bytearray8
_D[_op("PUT")] = _memo("PUT", _text_index, True)
_D[_op("GET")] = _memo("GET", _text_index, False)
_D[_op("LONG_BINPUT")] = _memo("LONG_BINPUT", _long_index, True)
_D[_op("LONG_BINGET")] = _memo("LONG_BINGET", _long_index, False)

# What a malformed stream raises inside the pure-Python unpickler.
_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, TypeError,
              KeyError, IndexError, AttributeError, struct.error)
_EXHAUSTED = (MemoryError, RecursionError, OverflowError)


def load(data, pos, allowed, persistent_load=None, placeholders=False):
    """Unpickles one pickle of `data` (bytes) starting at `pos`.

    Args:
        data: the bytes holding the pickle (and maybe more after it).
        pos: where the pickle starts.
        allowed: `{"module.name": object}`, the globals the pickle may use.
        persistent_load: called with each persistent id; refused if None.
        placeholders: whether other globals become `Refused` markers
            (recorded in the returned set) instead of an error.

    Returns:
        `(obj, end, refused)`: the object, the position after the pickle's
        STOP and the set of refused global names.

    Raises:
        CheckpointError: the pickle is malformed, exceeds a bound or asks for
            something outside the allow-list.
    """
    def refuse(pid):
        raise CheckpointError(f"unexpected persistent id {pid!r}; {TRUNCATED}")

    stream = _Stream(data, pos)
    unpickler = SafeUnpickler(stream, allowed, persistent_load or refuse,
                              placeholders)
    try:
        obj = unpickler.load()
    except CheckpointError:
        raise
    except _MALFORMED as err:
        raise CheckpointError(f"{TRUNCATED} ({type(err).__name__}: "
                              f"{str(err)[:200]})") from None
    except _EXHAUSTED as err:
        raise CheckpointError(
            f"the pickle exhausted the reader ({type(err).__name__}); the "
            "file is corrupt or hostile") from None
    return obj, stream.pos, unpickler.refused


def skip(data, pos):
    """Returns the position after the pickle starting at `pos`, unexecuted.

    Raises:
        CheckpointError: the pickle is malformed or claims bytes it lacks.
    """
    stream = _Stream(data, pos)
    try:
        for opcode, _, _ in pickletools.genops(stream):
            if opcode.name == "STOP":
                return stream.pos
    except CheckpointError:
        raise
    except _MALFORMED + _EXHAUSTED as err:
        raise CheckpointError(f"{TRUNCATED} ({type(err).__name__}: "
                              f"{str(err)[:200]})") from None
    raise CheckpointError(f"a pickle without its end; {TRUNCATED}")

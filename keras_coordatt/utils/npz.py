"""`.npz` files read without trusting their headers.

Why hand-written: `np.load` allocates the array an entry's header declares
before it reads the entry's data, so a 3 MB file whose header declares 3 GB
takes 3 GB (and more while converting). Here every entry's header is read
first (NumPy's own `read_magic` / `read_array_header_*`) and checked against
what the file holds: the declared bytes may not exceed the entry's size in
the archive, nor all entries together `MAX_NPZ_BYTES`, a stated limit like
Pillow's `Image.MAX_IMAGE_PIXELS` that a user may raise. Object arrays
(pickles) are refused, as `np.load(allow_pickle=False)` does.
"""

import math
import zipfile
import zlib

import numpy as np

# Entries of all arrays together, decompressed; raise it for larger data.
MAX_NPZ_BYTES = 8 << 30


def load_npz(path, max_bytes=None):
    """The arrays of the `.npz` file `path`, as a dict.

    Args:
        path: the file.
        max_bytes: bound on the arrays' total size (default
            `MAX_NPZ_BYTES`).

    Raises:
        ValueError: not an npz file, an entry that declares more than it
            holds, object arrays, or more than `max_bytes` in all (each
            naming the file and the entry).
    """
    limit = MAX_NPZ_BYTES if max_bytes is None else max_bytes
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(_declared_bytes(path, archive, info)
                        for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"Not a readable .npz file. Received: {path!r} "
                         f"({type(e).__name__}: {e})") from e
    if total > limit:
        raise ValueError(
            f"{path}: its arrays need {total:,} bytes, over the limit of "
            f"{limit:,} (keras_coordatt.utils.npz.MAX_NPZ_BYTES, which you "
            "may raise)")
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def _declared_bytes(path, archive, info):
    name = info.filename
    with archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
        except ValueError as e:
            raise ValueError(f"{path}: entry {name!r} is not a .npy array "
                             f"({e})") from e
        header = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}: entry {name!r} holds Python objects "
                         "(pickles), which are not loaded; save numbers")
    declared = math.prod(shape) * dtype.itemsize
    size = info.file_size
    if size > _TRUSTED_RATIO * max(info.compress_size, 1):
        # The archive's own size field may lie too: count what it inflates
        # to, streaming (no allocation).
        size = _inflated_size(path, archive, info)
    if declared > size - header:
        raise ValueError(
            f"{path}: entry {name!r} declares {shape} of {dtype} "
            f"({declared:,} bytes) but holds {size - header:,}")
    return declared


# Compression ratios above this are verified by inflating (image data
# compresses far less; a crafted size field or a bomb far more).
_TRUSTED_RATIO = 64


def _inflated_size(path, archive, info):
    size = 0
    try:
        with archive.open(info) as f:
            while chunk := f.read(1 << 20):
                size += len(chunk)
    except (EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: entry {info.filename!r} is damaged "
                         f"({type(e).__name__}: {e})") from e
    return size

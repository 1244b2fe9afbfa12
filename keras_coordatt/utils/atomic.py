"""Atomic outputs: written under a temporary name, then renamed into place.

A reader never sees a half-written file or directory: it finds the previous
version or the complete new one. What a killed process leaves behind carries
a recognisable temporary name (`.tmp-*` for files, `.<name>.tmp-*` for
directories) that `remove_stale` can clean up later. A file is flushed to
the disk (`fsync`) before its rename, and the directory after it, so that a
power cut cannot leave the new name pointing at data never written.
"""

import contextlib
import os
import shutil
import tempfile
import time

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path next to `path` that becomes `path` on success.

    The temporary file lives in the same directory (same filesystem, so the
    final `os.replace` is atomic) and ends with `path`'s own name, so writers
    that check the extension (`model.save_weights` wants `.weights.h5`)
    accept it. It exists, empty, when yielded. Its bytes reach the disk
    (`fsync`) before the rename, the rename itself after it. On any
    exception it is removed and `path` is left as it was.

    Args:
        path: the file to produce; its directory must exist.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=TMP_PREFIX, suffix=os.path.basename(path)
    )
    os.close(fd)
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
        fsync_directory(directory)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync(path):
    """Flushes a written file's bytes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory):
    """Flushes a directory's entries (a rename in it) to the disk, where
    the platform lets a directory be opened (not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # Some filesystems refuse fsync on a directory.
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(target, overwrite=False):
    """Yields a temporary directory that becomes `target` on success.

    The temporary directory is created next to `target` (same filesystem, so
    the final `os.rename` is atomic). On any exception it is removed, as are
    the parent directories this call had to create, so a failed export leaves
    nothing behind.

    Args:
        target: path of the directory to produce.
        overwrite: whether an existing `target` is replaced (only once the
            new one is complete).

    Raises:
        FileExistsError: `target` exists and `overwrite` is False.
    """
    target = os.path.abspath(os.fspath(target))
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(
            f"The output {target!r} already exists; choose another path or "
            "pass overwrite=True (--overwrite)."
        )
    parent = os.path.dirname(target)
    created = []
    path = parent
    while not os.path.isdir(path):
        created.append(path)
        path = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(
        dir=parent, prefix=f".{os.path.basename(target)}.tmp-"
    )
    try:
        yield tmp
        if os.path.lexists(target):
            old = tempfile.mkdtemp(
                dir=parent, prefix=f".{os.path.basename(target)}.old-"
            )
            os.rmdir(old)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for path in created:  # innermost first
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise


def _last_modified(path):
    """The newest mtime of `path` and, for a directory, of what it holds.

    A directory's own mtime changes only when entries are added or removed,
    not while a file inside it grows (a download in progress), so the files
    count too.
    """
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest,
                                 os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def remove_stale(directory, prefixes=(TMP_PREFIX,), max_age=3600.0):
    """Removes temporaries that killed processes left in `directory`.

    Only entries whose name starts with one of `prefixes` and that nothing
    has written to for `max_age` seconds go: a younger one may belong to a
    process still writing it (another Python session downloading, say), and
    removing it would make that process fail.

    Args:
        directory: the folder to clean (not recursive).
        prefixes: name prefixes of temporary files and folders.
        max_age: seconds since the last write after which an entry is stale.

    Returns:
        The names removed, sorted.
    """
    removed = []
    cutoff = time.time() - max_age
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not name.startswith(tuple(prefixes)):
            continue
        with contextlib.suppress(OSError):  # gone already, or not ours
            if _last_modified(path) < cutoff:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
                removed.append(name)
    return removed

"""Atomic outputs: written under a temporary name, then renamed into place.

A reader never sees a half-written file or directory: it finds the previous
version or the complete new one. What a killed process leaves behind carries
a recognisable temporary name (`.tmp-*` for files, `.<name>.tmp-*` for
directories) that `remove_stale` can clean up later. A file is flushed to
the disk (`fsync`) before its rename, and the directory after it, so that a
power cut cannot leave the new name pointing at data never written.
"""

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time

TMP_PREFIX = ".tmp-"
LOCK_FILE = ".lock"


class WriteError(OSError, ValueError):
    """Writing an output failed (a full disk, no permission): one line
    naming the file. An `OSError` (with the original `errno`) and a
    `ValueError`, so that the CLIs, which report `ValueError`s in one line,
    report it too; the original error is its `__cause__`."""

    def __str__(self):  # The message, without OSError's "[Errno N] ".
        return self.strerror or super().__str__()


def _write_error(path, error):
    """The `WriteError` naming `path` for an `OSError` raised writing it."""
    reason = error.strerror or str(error)
    return WriteError(
        error.errno or errno.EIO,
        f"Could not write {path}: {reason}. Nothing was written under "
        "that name (a previous version is left as it was).")


def _umask():
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_mode(path, directory=False):
    """Gives a temporary (`mkstemp`/`mkdtemp`: private, 0600/0700) the
    mode an ordinary `open`/`mkdir` would: 0666/0777 less the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def check_free_space(path, needed):
    """Raises `WriteError` (ENOSPC) when the filesystem of `path` has less
    than `needed` bytes free.

    Checked before writers that crash instead of raising on a full disk:
    h5py (the `.weights.h5` backups, the weights inside `.keras` files)
    segfaults when a write fails with ENOSPC, killing the interpreter
    before any `except` runs, so the only safe check is before the write.
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        free = shutil.disk_usage(directory).free
    except OSError:  # Not a local path, or no statvfs: nothing to check.
        return
    if free < needed:
        raise WriteError(
            errno.ENOSPC,
            f"Not enough free space to write {path}: about {needed} bytes "
            f"needed, {free} free. Free some space or choose another output "
            "folder.")


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
        dir=directory, prefix=TMP_PREFIX + _owner(),
        suffix=os.path.basename(path)
    )
    os.close(fd)
    try:
        try:
            yield tmp
            publish_mode(tmp)
            fsync(tmp)
            os.replace(tmp, path)
        except WriteError:
            raise
        except OSError as e:  # ENOSPC, EDQUOT, EIO, ...: one line, named.
            raise _write_error(path, e) from e
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
        dir=parent, prefix=f".{os.path.basename(target)}.tmp-{_owner()}"
    )
    try:
        yield tmp
        # mkdtemp makes it 0700; the export is for others to read too.
        publish_mode(tmp, directory=True)
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


def _owner():
    """`HOST.PID-`, written into temporary names so that a later process
    can tell one of a killed process (on this host) from a live one's."""
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40]
    return f"{host}.{os.getpid()}-"


def _owner_dead(name):
    """True when `name` carries `HOST.PID-` of this host and that process
    is gone; False when alive, elsewhere or unknown."""
    match = re.search(r"tmp-([A-Za-z0-9_]+)\.(\d+)-", name)
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40]
    if not match or match.group(1) != host:
        return False
    try:
        os.kill(int(match.group(2)), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # alive but not ours, or no such pid
        return False
    return False


def remove_stale(directory, prefixes=(TMP_PREFIX,), max_age=3600.0):
    """Removes temporaries that killed processes left in `directory`.

    Only entries whose name starts with one of `prefixes` go, and only
    those of a process of this host that has ended (their names carry its
    host and pid) or, when that cannot be told, those nothing has written
    to for `max_age` seconds: a younger one may belong to a process still
    writing it (another Python session downloading, say), and removing it
    would make that process fail.

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
            if _owner_dead(name) or _last_modified(path) < cutoff:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
                removed.append(name)
    return removed


def _holder(path):
    """The pid written in a lock file, or "unknown"."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def folder_lock(folder, what="run"):
    """Holds an exclusive lock on `folder` (its `.lock` file) while the
    block runs, so that two processes never write one folder at once.

    `fcntl.flock`: POSIX only (Linux, macOS), and local or NFSv4 folders;
    elsewhere (Windows, `gs://` paths) the folder is not locked. The lock
    goes with the process: a killed run leaves the `.lock` file, not the
    lock, and the next run takes it. A finished run deletes the file while
    it still holds the lock; a process that locked the deleted file sees
    that the name now leads elsewhere and locks again.

    Raises:
        ValueError: another process holds the lock (names it and its pid).
    """
    folder = os.fspath(folder)
    try:
        import fcntl
    except ImportError:  # Windows.
        fcntl = None
    if fcntl is None or "://" in folder:
        yield
        return
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    fd = _lock(fcntl, path, folder, what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)  # Still locked: nobody else holds this file.
        os.close(fd)  # Releases the lock.
        if created:  # A run that failed before writing leaves no folder.
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # Only if empty.


def _lock(fcntl, path, folder, what):
    """An open descriptor of `path`, exclusively locked."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ValueError(
                f"Another {what} (pid {_holder(path)}) is writing to "
                f"{folder}; wait for it to end or choose another output "
                "folder.") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # Locked a file its holder has just deleted.

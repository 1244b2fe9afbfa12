"""Atomic output directories: written under a temporary name, then renamed."""

import contextlib
import os
import shutil
import tempfile


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

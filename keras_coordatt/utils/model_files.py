"""Saving and loading `.keras` model files with errors that name the file.

`save_model` checks the free space first and writes through `atomic_file`
(a full disk leaves no truncated `.keras` under the final name, and h5py
never reaches the full disk, where it segfaults); `load_model` turns what
Keras raises for a missing, damaged or foreign file (`BadZipFile` without
a name, "File not found" for a file that exists) into one `ValueError`
naming it.
"""

import os
import zipfile

import numpy as np

from keras_coordatt.utils.atomic import atomic_file
from keras_coordatt.utils.atomic import check_free_space

# HDF5 and zip headers, and what the estimate misses (the config, the
# metadata): added to the variables' bytes before comparing with the free
# space.
_OVERHEAD_FACTOR = 1.1
_OVERHEAD_BYTES = 1 << 20


def variables_bytes(model, optimizer=True):
    """The bytes of `model`'s variables (and its optimizer's)."""
    variables = list(model.weights)
    if optimizer and getattr(model, "optimizer", None) is not None:
        variables += list(model.optimizer.variables)
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
               for v in variables)


def needed_bytes(estimate):
    """`estimate` with a margin for headers and what it leaves out."""
    return int(estimate * _OVERHEAD_FACTOR) + _OVERHEAD_BYTES


def save_model(model, path):
    """`model.save(path)`, atomically, after checking the free space.

    Raises:
        WriteError: not enough space, or the write failed (names `path`).
    """
    check_free_space(path, needed_bytes(variables_bytes(model)))
    with atomic_file(path) as tmp:
        model.save(tmp)


def load_model(path, **kwargs):
    """`keras.saving.load_model(path, **kwargs)`, with one error naming
    the file when it cannot be loaded.

    Raises:
        ValueError: `path` is missing, a folder, not a `.keras` zip
            archive, or damaged (the reason and Keras' error follow).
    """
    import keras

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"The model file {path} does not exist. "
                         f"Received: model={path!r}")
    if os.path.isdir(path):
        raise ValueError(f"The model file {path} is a folder, not a "
                         f".keras file. Received: model={path!r}")
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        raise ValueError(
            f"The model file {path} is not a .keras (zip) archive: it is "
            f"damaged or truncated ({os.path.getsize(path)} bytes). "
            f"Received: model={path!r}")
    try:
        return keras.saving.load_model(path, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, EOFError,
            zipfile.BadZipFile) as e:
        first = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(
            f"The model file {path} could not be loaded "
            f"({type(e).__name__}: {first}); it may be damaged. "
            f"Received: model={path!r}") from e

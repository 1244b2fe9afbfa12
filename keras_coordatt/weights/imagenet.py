"""The authors' ImageNet checkpoint: fetched, verified, converted, cached.

`MobileNetV2CA(weights="imagenet")` downloads `mbv2_ca.pth` (once) from the
authors' repository at a pinned commit with `keras.utils.get_file` (progress
bar, `KERAS_HOME` cache), checks its git blob id, converts it and caches the
converted `.weights.h5` next to it; later calls load that file directly.
Every cache write goes to a temporary name first and is renamed into place,
so an interrupted or rejected download leaves nothing behind.

Environment variables (for mirrors and tests):
- `KERAS_COORDATT_IMAGENET_URL`: where to download the checkpoint from
  (`file://` works).
- `KERAS_COORDATT_IMAGENET_BLOB_ID`: the git blob id the file must have, for
  a checkpoint re-published under another id; the default pins the authors'.
"""

import os
import shutil
import tempfile

import keras

from keras_coordatt.weights.convert_torch import load_torch_weights
from keras_coordatt.weights.torch_checkpoint import git_blob_sha1

IMAGENET_URL = (
    "https://github.com/houqb/CoordAttention/raw/"
    "9c9d9cc234c1fc0e195816304eb07753ef308e00/mbv2_ca.pth"
)
IMAGENET_BLOB_ID = "07b6640600b7d767acfaebcf5ddb801b675073df"
CHECKPOINT_NAME = "mbv2_ca.pth"


class IntegrityError(ValueError):
    """A downloaded checkpoint does not have the expected git blob id."""


def cache_dir():
    """`$KERAS_HOME/models/keras_coordatt` (created if needed).

    `KERAS_HOME` defaults to `~/.keras`, as in Keras; it is read at each call.
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras"
    )
    path = os.path.join(home, "models", "keras_coordatt")
    os.makedirs(path, exist_ok=True)
    return path


def _atomic_write(final_path, write):
    """Calls `write(tmp_path)` and renames the result to `final_path`."""
    directory = os.path.dirname(final_path)
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=".tmp-", suffix=os.path.basename(final_path)
    )
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, final_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch_checkpoint(url=None, blob_id=None):
    """Returns the path of the verified checkpoint, downloading it if needed.

    Args:
        url: download URL; defaults to `$KERAS_COORDATT_IMAGENET_URL`, else
            the authors' file at the pinned commit.
        blob_id: expected git blob id; defaults to
            `$KERAS_COORDATT_IMAGENET_BLOB_ID`, else the authors' file's.

    Raises:
        IntegrityError: the file's blob id differs from the expected one
            (nothing is left in the cache).
    """
    url = url or os.environ.get("KERAS_COORDATT_IMAGENET_URL", IMAGENET_URL)
    blob_id = blob_id or os.environ.get(
        "KERAS_COORDATT_IMAGENET_BLOB_ID", IMAGENET_BLOB_ID
    )
    final_path = os.path.join(cache_dir(), f"{blob_id[:12]}-{CHECKPOINT_NAME}")
    if os.path.exists(final_path) and git_blob_sha1(final_path) == blob_id:
        return final_path
    staging = tempfile.mkdtemp(dir=cache_dir(), prefix=".download-")
    try:
        downloaded = keras.utils.get_file(
            CHECKPOINT_NAME, url, cache_dir=staging, cache_subdir="."
        )
        received = git_blob_sha1(downloaded)
        if received != blob_id:
            raise IntegrityError(
                f"The checkpoint downloaded from {url} failed its integrity "
                f"check: expected git blob id {blob_id}, received {received}. "
                "It was deleted; nothing was cached. Check the URL "
                "(KERAS_COORDATT_IMAGENET_URL) or the expected id "
                "(KERAS_COORDATT_IMAGENET_BLOB_ID)."
            )
        os.replace(downloaded, final_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final_path


def load_imagenet_weights(model, url=None, blob_id=None):
    """Loads the authors' ImageNet weights into a `MobileNetV2CA` (alpha 1.0).

    The converted weights are cached per checkpoint id and per head
    (`include_top` or not), so the conversion runs once.
    """
    blob_id = blob_id or os.environ.get(
        "KERAS_COORDATT_IMAGENET_BLOB_ID", IMAGENET_BLOB_ID
    )
    try:
        model.get_layer("predictions")
        variant = "top"
    except ValueError:
        variant = "notop"
    converted = os.path.join(
        cache_dir(), f"mobilenetv2_ca_1.0_{blob_id[:12]}_{variant}.weights.h5"
    )
    if os.path.exists(converted):
        model.load_weights(converted)
        return model
    load_torch_weights(model, fetch_checkpoint(url=url, blob_id=blob_id))
    _atomic_write(converted, model.save_weights)
    return model

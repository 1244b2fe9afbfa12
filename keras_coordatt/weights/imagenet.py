"""The authors' ImageNet checkpoint: fetched, verified, converted, cached.

`MobileNetV2CA(weights="imagenet")` downloads `mbv2_ca.pth` (once) from the
authors' repository at a pinned commit with `keras.utils.get_file` (progress
bar, `KERAS_HOME` cache), checks its git blob id, converts it and caches the
converted `.weights.h5` next to it; later calls load that file directly.

The cache heals itself:
- The checkpoint's git blob id is checked whenever it is used; the converted
  weights are checked on every load against the SHA-256 written beside them
  (`<name>.weights.h5.sha256`). A damaged, truncated or emptied entry, or
  one without its digest, is removed with a warning and rebuilt: converted
  again from the verified checkpoint, which is downloaded again if it is
  damaged too.
- The converted file's name holds the checkpoint id and the converter's
  version (`..._c2_top.weights.h5`), so a converter fix is never masked by
  an older conversion.
- Every write goes to a temporary name first and is renamed into place, so
  an interrupted or rejected download leaves no entry behind. What a killed
  process leaves (`.tmp-*` files, `.download-*` folders) is removed by the
  next call once nothing has written to it for `STALE_AFTER` seconds (an
  hour); a younger one may be a download still running in another process.

Environment variables (for mirrors and tests):
- `KERAS_COORDATT_IMAGENET_URL`: where to download the checkpoint from
  (`file://` works).
- `KERAS_COORDATT_IMAGENET_BLOB_ID`: the git blob id the file must have, for
  a checkpoint re-published under another id; the default pins the authors'.
"""

import hashlib
import os
import shutil
import tempfile
import warnings

import keras

from keras_coordatt.utils.atomic import TMP_PREFIX
from keras_coordatt.utils.atomic import atomic_file
from keras_coordatt.utils.atomic import remove_stale
from keras_coordatt.weights.convert_torch import CONVERTER_VERSION
from keras_coordatt.weights.convert_torch import ConversionError
from keras_coordatt.weights.convert_torch import load_torch_weights
from keras_coordatt.weights.torch_checkpoint import CheckpointError
from keras_coordatt.weights.torch_checkpoint import git_blob_sha1

IMAGENET_URL = (
    "https://github.com/houqb/CoordAttention/raw/"
    "9c9d9cc234c1fc0e195816304eb07753ef308e00/mbv2_ca.pth"
)
IMAGENET_BLOB_ID = "07b6640600b7d767acfaebcf5ddb801b675073df"
CHECKPOINT_NAME = "mbv2_ca.pth"
DIGEST_SUFFIX = ".sha256"
# Seconds without a write after which a temporary in the cache is stale.
STALE_AFTER = 3600.0
_DOWNLOAD_PREFIX = ".download-"


class IntegrityError(ValueError):
    """A downloaded checkpoint does not have the expected git blob id."""


class DownloadError(OSError):
    """The checkpoint could not be downloaded."""


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


def _clean_cache_dir():
    """`cache_dir()`, without what killed processes left there."""
    directory = cache_dir()
    remove_stale(directory, (TMP_PREFIX, _DOWNLOAD_PREFIX), STALE_AFTER)
    return directory


def _source(url, blob_id):
    url = url or os.environ.get("KERAS_COORDATT_IMAGENET_URL", IMAGENET_URL)
    blob_id = blob_id or os.environ.get(
        "KERAS_COORDATT_IMAGENET_BLOB_ID", IMAGENET_BLOB_ID
    )
    return url, blob_id


def _way_out(url, blob_id):
    """The end of every error here: what was asked for, and what else works."""
    return (
        f"Source: {url}; expected git blob id {blob_id}. For a mirror or a "
        "re-published file, set KERAS_COORDATT_IMAGENET_URL (file:// works) "
        "and KERAS_COORDATT_IMAGENET_BLOB_ID (`git hash-object FILE` prints "
        "it), or download the checkpoint yourself and pass weights=PATH (a "
        "local .pth of the authors' layout)."
    )


def _download(url, blob_id, staging):
    try:
        return keras.utils.get_file(
            CHECKPOINT_NAME, url, cache_dir=staging, cache_subdir="."
        )
    except Exception as err:  # get_file raises a bare Exception for URLs
        raise DownloadError(
            f"The ImageNet checkpoint could not be downloaded from {url} "
            f"({err}); received nothing, nothing was cached. "
            f"{_way_out(url, blob_id)}"
        ) from err


def fetch_checkpoint(url=None, blob_id=None):
    """Returns the path of the verified checkpoint, downloading it if needed.

    A cached checkpoint whose blob id no longer matches (altered or truncated
    on disk) is removed with a warning and downloaded again.

    Args:
        url: download URL; defaults to `$KERAS_COORDATT_IMAGENET_URL`, else
            the authors' file at the pinned commit.
        blob_id: expected git blob id; defaults to
            `$KERAS_COORDATT_IMAGENET_BLOB_ID`, else the authors' file's.

    Raises:
        IntegrityError: the file's blob id differs from the expected one
            (nothing is left in the cache).
        DownloadError: the URL could not be fetched.
    """
    url, blob_id = _source(url, blob_id)
    directory = _clean_cache_dir()
    final_path = os.path.join(directory, f"{blob_id[:12]}-{CHECKPOINT_NAME}")
    if os.path.exists(final_path):
        received = git_blob_sha1(final_path)
        if received == blob_id:
            return final_path
        warnings.warn(
            f"The cached checkpoint {final_path} has git blob id {received}, "
            f"expected {blob_id} (altered or truncated on disk); it was "
            f"removed and is downloaded again from {url}.", stacklevel=2,
        )
        os.remove(final_path)
    # get_file writes its own file, so the download gets a private folder;
    # the verified file is then renamed into place (same filesystem).
    staging = tempfile.mkdtemp(dir=directory, prefix=_DOWNLOAD_PREFIX)
    try:
        downloaded = _download(url, blob_id, staging)
        received = git_blob_sha1(downloaded)
        if received != blob_id:
            raise IntegrityError(
                f"The checkpoint downloaded from {url} failed its integrity "
                f"check: expected git blob id {blob_id}, received {received}. "
                f"It was deleted; nothing was cached. {_way_out(url, blob_id)}"
            )
        os.replace(downloaded, final_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final_path


def _sha256(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(*paths):
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def _entry_problem(path):
    """Why the cached file `path` cannot be trusted, or None if it can."""
    try:
        with open(path + DIGEST_SUFFIX, encoding="ascii") as f:
            recorded = f.read().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return f"have no readable digest ({path}{DIGEST_SUFFIX})"
    received = _sha256(path)
    if received != recorded:
        return (f"are damaged (altered, truncated or emptied): SHA-256 "
                f"{received}, recorded {recorded}")
    return None


def _load_cached(model, path):
    """Loads the converted weights if they verify; removes them if not.

    Returns:
        Whether `model` now holds the cached weights.
    """
    if not os.path.exists(path):
        _remove(path + DIGEST_SUFFIX)  # left by a run killed mid-write
        return False
    problem = _entry_problem(path)
    if problem is None:
        try:
            model.load_weights(path)
            return True
        except (OSError, ValueError) as err:  # verified, yet unreadable
            problem = f"do not load ({type(err).__name__}: {err})"
    warnings.warn(
        f"The cached ImageNet weights {path} {problem}. They were removed "
        "and are converted again from the verified checkpoint.", stacklevel=3,
    )
    _remove(path, path + DIGEST_SUFFIX)
    return False


def _save_cached(model, path):
    """Writes the converted weights and their digest, each atomically.

    The digest is renamed into place first: a run killed between the two
    renames leaves a digest without weights (a plain cache miss), never
    weights without a digest.
    """
    with atomic_file(path) as tmp:
        model.save_weights(tmp)
        with atomic_file(path + DIGEST_SUFFIX) as digest_tmp:
            with open(digest_tmp, "w", encoding="ascii") as f:
                f.write(f"{_sha256(tmp)}  {os.path.basename(path)}\n")


def _convert(model, checkpoint, url, blob_id):
    """Converts the verified checkpoint; its errors get the way out added."""
    try:
        load_torch_weights(model, checkpoint)
    except (CheckpointError, ConversionError) as err:
        raise type(err)(
            f"The ImageNet checkpoint {checkpoint} has the expected git blob "
            f"id (received {blob_id}) but could not be converted: {err}\n"
            f"{_way_out(url, blob_id)}"
        ) from None


def converted_name(model, blob_id):
    """The cache file name of `model`'s converted weights.

    It holds the checkpoint id, the converter version and the head, so a new
    checkpoint, a converter fix or the other head never reuses an entry.
    """
    try:
        model.get_layer("predictions")
        variant = "top"
    except ValueError:
        variant = "notop"
    return (f"mobilenetv2_ca_1.0_{blob_id[:12]}_c{CONVERTER_VERSION}_"
            f"{variant}.weights.h5")


def load_imagenet_weights(model, url=None, blob_id=None):
    """Loads the authors' ImageNet weights into a `MobileNetV2CA` (alpha 1.0).

    The converted weights are cached per checkpoint id, converter version
    and head (`include_top` or not), so the conversion runs once; they are
    verified on every load and rebuilt (with a warning) when damaged.

    Raises:
        IntegrityError, DownloadError: see `fetch_checkpoint`.
        CheckpointError, ConversionError: the verified checkpoint cannot be
            read or does not fit `model`.
    """
    url, blob_id = _source(url, blob_id)
    converted = os.path.join(_clean_cache_dir(),
                             converted_name(model, blob_id))
    if _load_cached(model, converted):
        return model
    _convert(model, fetch_checkpoint(url=url, blob_id=blob_id), url, blob_id)
    _save_cached(model, converted)
    return model

"""keras-hub-style preset folders: save a model, build it back.

A preset folder holds, as keras-hub's do:

- `config.json`: `keras.saving.serialize_keras_object(model)` (the
  functional graph, with `keras_coordatt>CoordinateAttention` layers);
- `model.weights.h5`: `model.save_weights(...)`;
- `metadata.json`: what the model is (see `keras_coordatt.export.metadata`),
  plus the SHA-256 of `model.weights.h5`, checked when loading.

`load_preset` accepts a local folder, or a `kaggle://`/`hf://` (or any
`tf.io.gfile` scheme such as `gs://`) handle, downloaded with keras-hub's
preset file resolver (`keras_hub.src.utils.preset_utils.get_file`), which
needs `pip install keras-hub` (plus `kagglehub` or `huggingface_hub`).
Such folders also satisfy `keras_hub.upload_preset(uri, folder)`'s checks
(config.json + model.weights.h5), so they can be published with it;
keras-hub's own `Backbone.from_preset` does not load them (these models are
not keras-hub Backbones): use `load_preset`.
"""

import hashlib
import json
import os

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
REMOTE_SCHEMES = ("kaggle", "hf", "gs")


def sha256(path):
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def save_preset(model, directory, metadata=None):
    """Saves `model` as a preset folder in `directory`.

    Args:
        model: a Keras model whose layers are serializable (every
            `keras_coordatt` model is).
        directory: the folder to write into (created if needed).
        metadata: optional dict stored in `metadata.json`; a `files` entry
            with the weights' SHA-256 is added.

    Returns:
        The list of file names written.
    """
    import keras

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    config = keras.saving.serialize_keras_object(model)
    write_json(os.path.join(directory, CONFIG_FILE), config)
    weights_path = os.path.join(directory, WEIGHTS_FILE)
    model.save_weights(weights_path)
    metadata = dict(metadata or {})
    metadata["files"] = {
        WEIGHTS_FILE: {"sha256": sha256(weights_path),
                       "bytes": os.path.getsize(weights_path)},
    }
    write_json(os.path.join(directory, METADATA_FILE), metadata)
    return [CONFIG_FILE, WEIGHTS_FILE, METADATA_FILE]


def _scheme(preset):
    if "://" in preset:
        return preset.split("://", 1)[0].lower()
    return None


def _keras_hub_get_file():
    try:
        from keras_hub.src.utils import preset_utils
    except ImportError as e:
        raise ImportError(
            "Loading a preset from a kaggle:// or hf:// handle uses "
            "keras-hub's preset downloader, which is not installed. Install "
            "it with `pip install keras-hub` (and `kagglehub` for kaggle://, "
            "`huggingface_hub` for hf://), or download the folder and pass "
            f"its local path. ({e})"
        ) from e
    return preset_utils.get_file


def preset_file(preset, name):
    """The local path of file `name` of `preset` (downloaded if remote).

    Args:
        preset: a local folder, or a `kaggle://`, `hf://` or `gs://` handle.
        name: a file name inside the preset, e.g. `"config.json"`.

    Raises:
        ImportError: a remote handle without keras-hub installed.
        FileNotFoundError: the folder or the file does not exist.
    """
    preset = os.fspath(preset)
    scheme = _scheme(preset)
    if scheme is not None:
        if scheme not in REMOTE_SCHEMES:
            raise ValueError(
                "A preset is a local folder or a kaggle://, hf:// or gs:// "
                f"handle. Received: {preset!r}"
            )
        return _keras_hub_get_file()(preset, name)
    if not os.path.isdir(preset):
        raise FileNotFoundError(f"No preset folder at {preset!r}.")
    path = os.path.join(preset, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`{name}` is missing from the preset folder {preset!r}."
        )
    return path


def load_preset_metadata(preset):
    """The `metadata.json` of a preset, as a dict."""
    with open(preset_file(preset, METADATA_FILE), encoding="utf-8") as f:
        return json.load(f)


def load_preset(preset, verify=True):
    """Builds the model of a preset folder back, with its weights.

    Args:
        preset: a local preset folder (`save_preset`, `keras-coordatt export
            --format keras`), or a `kaggle://{owner}/{model}/keras/{variant}`
            / `hf://{owner}/{repo}` handle (needs `pip install keras-hub`).
        verify: whether to check the weights file against the SHA-256
            recorded in `metadata.json` (when there is one).

    Returns:
        The `keras.Model`.

    Raises:
        ImportError: a remote handle without keras-hub installed.
        FileNotFoundError: a missing folder, config or weights file.
        ValueError: the weights file does not match its recorded SHA-256.
    """
    import keras

    import keras_coordatt  # noqa: F401 (registers CoordinateAttention)

    with open(preset_file(preset, CONFIG_FILE), encoding="utf-8") as f:
        config = json.load(f)
    weights_path = preset_file(preset, WEIGHTS_FILE)
    if verify:
        try:
            metadata = load_preset_metadata(preset)
        except FileNotFoundError:
            metadata = {}
        expected = metadata.get("files", {}).get(WEIGHTS_FILE, {}).get(
            "sha256"
        )
        if expected and sha256(weights_path) != expected:
            raise ValueError(
                f"{WEIGHTS_FILE} of preset {os.fspath(preset)!r} does not "
                f"match the SHA-256 in {METADATA_FILE} (expected {expected})."
            )
    model = keras.saving.deserialize_keras_object(config)
    model.load_weights(weights_path)
    return model

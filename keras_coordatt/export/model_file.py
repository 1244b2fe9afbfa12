"""`export --model PATH.keras`: the architecture read from the file.

A `.keras` file holds the whole network, so its input size, classes and
output activation come from it, never from flags; flags given anyway must
agree with it. What the file does not hold (the registered application and
its width multiplier) comes from the training run's `config.json` beside
it (`keras_coordatt.training.fit` writes one), when there is one.
"""

import collections
import json
import os

from keras_coordatt.applications.registry import application_names
from keras_coordatt.applications.registry import get_application_spec

RUN_CONFIG = "config.json"

ModelFile = collections.namedtuple(
    "ModelFile", ["path", "model", "kwargs", "model_name", "spec",
                  "run_config"])
ModelFile.__doc__ = """A model loaded from a `.keras` file, for export.

Fields: `path`; `model` (the variant to export); `kwargs` (the
architecture for metadata.json); `model_name` (a registered application,
from the run's config.json, or the model's own name); `spec` (its
`ApplicationSpec`, None when not registered); `run_config` (the run's
config.json as a dict, or None)."""


def is_model_file(name):
    """Whether `--model` names a `.keras` file rather than an application."""
    return os.fspath(name).endswith(".keras")


def read_run_config(path):
    """The training run's `config.json` beside `path`, or None.

    Raises:
        ValueError: the file exists but is not a JSON object (named).
    """
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)),
                               RUN_CONFIG)
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"The run config {config_path} beside the model file could not "
            f"be read ({type(e).__name__}: {e}). Received: model={path!r}"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"The run config {config_path} is not a JSON object. "
            f"Received: model={path!r}")
    return config


def _activation(model):
    """The name of the output layer's activation (None: linear/absent)."""
    import keras

    activation = getattr(model.layers[-1], "activation", None)
    if activation is None:
        return None
    name = keras.activations.serialize(activation)
    name = name if isinstance(name, str) else name.get("config", name)
    return None if name == "linear" else name


def _mismatch(flag, path, file_value, given):
    return ValueError(
        f"{flag} disagrees with the model file {path}, which holds "
        f"{file_value}; leave {flag} out (the file defines the "
        f"architecture) or pass its value. Received: {flag}={given}")


def check_flags(path, model, run_config, alpha=None, input_size=None,
                classes=None, logits=False, weights=None):
    """Raises a ValueError naming the first flag that disagrees with the
    file (None / False: not given)."""
    size = tuple(model.inputs[0].shape[1:3])
    if input_size is not None and (input_size, input_size) != size:
        raise _mismatch("--input-size", path,
                        f"{size[0]}x{size[1]} images", input_size)
    units = model.outputs[0].shape[-1]
    if classes is not None and classes != units:
        raise _mismatch("--classes", path, f"{units} classes", classes)
    activation = _activation(model)
    if logits and activation is not None:
        raise _mismatch("--logits", path,
                        f"a {activation} output (not logits)", True)
    if alpha is not None:
        known = (run_config or {}).get("alpha")
        if known is None:
            raise ValueError(
                f"--alpha cannot be checked against the model file {path}: "
                f"no {RUN_CONFIG} of its training run beside it names one; "
                "leave --alpha out. Received: --alpha=" f"{alpha}")
        if float(known) != float(alpha):
            raise _mismatch("--alpha", path, f"alpha={known} (its "
                            f"{RUN_CONFIG})", alpha)
    if weights is not None:
        raise ValueError(
            f"--weights does not apply to a model file: {path} holds its "
            f"weights. Received: --weights={weights}")


def feature_vector(model, path):
    """The model up to its pooled features: the input of the `predictions`
    layer, before the dropout that precedes it (identity at inference)."""
    import keras

    names = [layer.name for layer in model.layers]
    if "predictions" not in names:
        raise ValueError(
            f"The feature_vector variant needs a classifier layer named "
            f"'predictions' in {path}; its last layer is {names[-1]!r}. "
            "Received: variant='feature_vector'")
    features = model.get_layer("predictions").input
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout) and \
                layer.output is features:
            features = layer.input
    return keras.Model(model.inputs, features,
                       name=f"{model.name}_feature_vector")


def _registered(run_config):
    """The run's registered application name, or None."""
    name = (run_config or {}).get("model")
    return name if name in application_names() else None


def _kwargs(model, run_config, variant):
    size = tuple(model.inputs[0].shape[1:3])
    kwargs = {"input_shape": [int(size[0]), int(size[1]), 3]}
    for key in ("alpha", "reduction", "attention"):
        if run_config and key in run_config:
            kwargs[key] = run_config[key]
    if variant == "classification":
        kwargs["classes"] = int(model.outputs[0].shape[-1])
        kwargs["classifier_activation"] = _activation(model)
    return kwargs


def load_model_file(path, variant="classification", **flags):
    """Loads a `.keras` file for export and checks the flags against it.

    Args:
        path: the `.keras` file (`keras-coordatt train`'s `model.keras`, or
            any model saved with `model.save`).
        variant: `"classification"` (the model as saved) or
            `"feature_vector"` (up to its pooled features).
        **flags: `alpha`, `input_size`, `classes`, `logits`, `weights` as
            given on the command line (None / False: not given).

    Returns:
        A `ModelFile`.

    Raises:
        ValueError: an unreadable file or run config, or a flag that
            disagrees with the file (naming the flag, the file's value and
            the given one).
    """
    from keras_coordatt.utils.model_files import load_model

    path = os.fspath(path)
    run_config = read_run_config(path)
    model = load_model(path)
    check_flags(path, model, run_config, **flags)
    kwargs = _kwargs(model, run_config, variant)
    if variant == "feature_vector":
        model = feature_vector(model, path)
    name = _registered(run_config)
    spec = get_application_spec(name) if name else None
    return ModelFile(path, model, kwargs, name or model.name, spec,
                     run_config)

"""Weights: loading files into the application models, the PyTorch reader,
the converter from the authors' layout, and the ImageNet download cache."""

import json
import os
import warnings
import zipfile

from keras_coordatt.weights.convert_torch import ConversionError
from keras_coordatt.weights.convert_torch import convert_state_dict
from keras_coordatt.weights.convert_torch import load_torch_weights
from keras_coordatt.weights.imagenet import load_imagenet_weights
from keras_coordatt.weights.torch_checkpoint import CheckpointError
from keras_coordatt.weights.torch_checkpoint import git_blob_sha1
from keras_coordatt.weights.torch_checkpoint import is_torch_checkpoint
from keras_coordatt.weights.torch_checkpoint import load_torch_state_dict

KERAS_SUFFIXES = (".weights.h5", ".keras", ".h5")


def load_weights(model, weights, family):
    """Loads `weights` (published weights or a file path) into a model.

    Args:
        model: a model built by a registered application
            (`applications.registry`).
        weights: the name of weights published for `family` (`"imagenet"`,
            see its `ApplicationSpec.weights`), a path to a `.weights.h5`,
            `.keras` or `.h5` file, or a `torch.save` checkpoint, recognised
            by its content whatever its suffix (`.pth`, `.pt`, `.pth.tar`,
            `.bin`, ...), for a family with a `torch_loader` (the authors'
            `mbv2_ca.pth` layout, converted on the fly).
        family: the registered application name (`"mobilenetv2_ca"`).

    Returns:
        The model.

    Raises:
        FileNotFoundError: `weights` is a path that does not exist.
        ValueError: an unknown family, weights not published for it, or a
            file of no known kind or that does not fit `model`.
    """
    # Imported here: the registry imports the application modules, which
    # import this one.
    from keras_coordatt.applications import registry

    spec = registry.get_application_spec(family)
    if isinstance(weights, str) and weights in spec.weights:
        return registry.resolve(spec.weights[weights].loader)(model)
    if isinstance(weights, str) and weights == "imagenet":
        published = registry.names_with(lambda s: "imagenet" in s.weights)
        raise ValueError(
            f"No ImageNet weights were published for {family}; they were "
            f"for {', '.join(published) or 'no network'}. Received: "
            f"weights={weights!r}")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No weights file at {path!r}. Received: weights={path!r}")
    if is_torch_checkpoint(path):
        if spec.torch_loader is None:
            accepted = [registry.get_application(name).__name__ for name
                        in registry.names_with(lambda s: s.torch_loader)]
            raise ValueError(
                f"PyTorch checkpoints convert into {', '.join(accepted)} "
                "only (the layout of the authors' mbv2_ca.pth). Received: "
                f"weights={path!r} for {family}"
            )
        return registry.resolve(spec.torch_loader)(model, path)
    if not path.endswith(KERAS_SUFFIXES):
        raise ValueError(
            f"{path!r} is neither a torch.save checkpoint nor a Keras file "
            f"(name ending in {', '.join(KERAS_SUFFIXES)}). "
            f"Received: weights={path!r}"
        )
    return _load_keras_file(model, path)


def _saved_model(path):
    """Describes the model a `.keras` file holds, from its config.json."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))["config"]
        return f"the model {config['name']!r} ({len(config['layers'])} layers)"
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return "the weights of another model"


def _load_keras_file(model, path):
    # Keras warns once per layer that does not fit, then raises a summary
    # ("169 objects could not be loaded"): one error naming both models says
    # it better.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.load_weights(path)
        except ValueError as err:
            # Keras' summary, without its per-layer example.
            first_line = str(err).strip().splitlines()[0].split(" Example")[0]
            raise ValueError(
                f"weights={path!r} holds {_saved_model(path)}, which does not "
                f"fit the model {model.name!r} ({len(model.layers)} layers): "
                "build the model with the arguments the file was saved with "
                f"(alpha, classes, input_shape, attention). Keras: "
                f"{first_line}"
            ) from None
        except OSError as err:  # h5py: truncated or not HDF5 at all
            raise ValueError(
                f"weights={path!r} could not be read as Keras weights; the "
                f"file is damaged or of another kind ({err})"
            ) from None
    return model


__all__ = [
    "CheckpointError",
    "ConversionError",
    "convert_state_dict",
    "git_blob_sha1",
    "is_torch_checkpoint",
    "load_imagenet_weights",
    "load_torch_state_dict",
    "load_torch_weights",
    "load_weights",
]

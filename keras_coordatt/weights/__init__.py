"""Weights: loading files into the application models, the PyTorch reader,
the converter from the authors' layout, and the ImageNet download cache."""

import os

from keras_coordatt.weights.convert_torch import convert_state_dict
from keras_coordatt.weights.convert_torch import load_torch_weights
from keras_coordatt.weights.imagenet import load_imagenet_weights
from keras_coordatt.weights.torch_checkpoint import CheckpointError
from keras_coordatt.weights.torch_checkpoint import git_blob_sha1
from keras_coordatt.weights.torch_checkpoint import load_torch_state_dict

TORCH_SUFFIXES = (".pth", ".pt")


def load_weights(model, weights, family):
    """Loads `weights` ("imagenet" or a file path) into an application model.

    Args:
        model: a model built by `MobileNetV2CA` or `MobileNeXtCA`.
        weights: `"imagenet"` or a path to a `.weights.h5`, `.keras`, `.h5`,
            `.pth` or `.pt` file. PyTorch files must have the layout of the
            authors' `mbv2_ca.pth` and are converted on the fly.
        family: `"mobilenetv2_ca"` or `"mobilenext_ca"`.

    Returns:
        The model.
    """
    if weights == "imagenet":
        return load_imagenet_weights(model)
    path = os.fspath(weights)
    if path.endswith(TORCH_SUFFIXES):
        if family != "mobilenetv2_ca":
            raise ValueError(
                "PyTorch checkpoints convert into MobileNetV2CA only (the "
                "layout of the authors' mbv2_ca.pth). Received: "
                f"weights={path!r} for {family}"
            )
        return load_torch_weights(model, path)
    model.load_weights(path)
    return model


__all__ = [
    "CheckpointError",
    "convert_state_dict",
    "git_blob_sha1",
    "load_imagenet_weights",
    "load_torch_state_dict",
    "load_torch_weights",
    "load_weights",
]

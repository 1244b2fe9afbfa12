"""Weights: loading files into the application models, the PyTorch reader,
the converter from the authors' layout, and the ImageNet download cache."""

import os


def load_weights(model, weights, family, alpha=1.0):
    """Loads `weights` ("imagenet" or a file path) into an application model.

    Args:
        model: a model built by `MobileNetV2CA` or `MobileNeXtCA`.
        weights: `"imagenet"` or a path to a `.weights.h5`, `.keras`, `.h5`,
            `.pth` or `.pt` file.
        family: `"mobilenetv2_ca"` or `"mobilenext_ca"`.
        alpha: the model's width multiplier.
    """
    if weights == "imagenet":
        raise NotImplementedError("imagenet weights: next issue")
    path = os.fspath(weights)
    if path.endswith((".pth", ".pt")):
        raise NotImplementedError(".pth: next issue")
    model.load_weights(path)

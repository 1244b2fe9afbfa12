"""The argument checks of the application constructors.

They mirror `keras.applications` (same arguments, same errors, same
warnings), so a model here behaves like `keras.applications.MobileNetV2`.
"""

import math
import numbers
import os
import warnings

import keras

from keras_coordatt.layers.registry import attention_names

# Square sizes that select a default input size, as in keras.applications.
DEFAULT_SIZES = (96, 128, 160, 192, 224)


def validate_arguments(weights, include_top, classes, alpha, pooling,
                       attention, published=True):
    """Every check of the application constructors' plain arguments.

    `input_shape` and `input_tensor` are checked by `application_input`.

    Returns:
        The normalised `attention` (see `validate_attention`).
    """
    validate_alpha(alpha)
    validate_classes(classes, include_top)
    validate_weights(weights, include_top, classes, published)
    validate_pooling(pooling)
    return validate_attention(attention)


def validate_weights(weights, include_top, classes, published=True):
    """The `weights`/`classes` checks of keras.applications.

    Raises:
        FileNotFoundError: `weights` is a path to nothing (a typo of
            "imagenet" included).
        ValueError: any other value that is not accepted.
    """
    accepted = (
        "The `weights` argument should be either `None` (random "
        "initialization), `imagenet` (pre-training on ImageNet), or the "
        "path to the weights file to be loaded (.weights.h5, .keras, .h5 "
        f"or a torch.save checkpoint). Received: weights={weights!r}"
    )
    if isinstance(weights, str) and weights == "imagenet":
        if not published:
            raise ValueError(
                "No ImageNet weights were published for this network (the "
                "authors released weights for MobileNetV2 + CA only). Use "
                "`weights=None` or a path to a weights file. "
                f"Received: weights={weights!r}"
            )
        if include_top and classes != 1000:
            raise ValueError(
                'If using `weights="imagenet"` with `include_top` as true, '
                f"`classes` should be 1000. Received: classes={classes}. "
                "For other classes, put a new classifier on the pretrained "
                "network without its top (`include_top=False`; on the "
                "command line `keras-coordatt train --config transfer "
                "--weights imagenet`)."
            )
        return
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(accepted)
    if not os.path.exists(weights):
        raise FileNotFoundError(
            f"No such file: {os.fspath(weights)!r}. {accepted}")
    if not os.path.isfile(weights):
        raise ValueError(f"{os.fspath(weights)!r} is not a file. {accepted}")


def validate_classes(classes, include_top):
    """`classes` sizes the top layer: a positive integer (not a bool)."""
    if not include_top:
        return  # unused without the top, as in keras.applications
    if isinstance(classes, bool) or not isinstance(
            classes, numbers.Integral) or classes < 1:
        raise ValueError(
            "`classes` must be a positive integer, the number of outputs of "
            f"the top layer. Received: classes={classes!r}"
        )


def validate_attention(attention):
    """Checks `attention`: True, False, None, a registered kind or a
    callable.

    Returns:
        A registered kind (`"ca"` for True), the callable, or `None` (False
        or None: no attention blocks).
    """
    if callable(attention) and not isinstance(attention, type):
        return attention
    # `in` compares with ==, which would let 1, 0 and 0.0 pass as booleans.
    # The registry is read now: kinds registered after import count.
    choices = (True, False, None) + attention_names()
    if not (isinstance(attention, (bool, str, type(None)))
            and attention in choices):
        raise ValueError(
            f"`attention` must be one of {choices} or a callable "
            "that returns a layer for a channel count. "
            f"Received: attention={attention!r}"
        )
    if attention is True:
        return "ca"
    return None if attention is False else attention


def validate_input_shape(input_shape, data_format):
    """Returns `input_shape` as a tuple of ints (or None), or raises.

    Three entries, each a positive integer; height and width may be None
    (a static shape is then needed only with the top, checked later).
    """
    if input_shape is None:
        return None
    message = (
        "`input_shape` must be a tuple of three positive integers (height "
        "and width may be None). Received: "
        f"input_shape={input_shape!r}"
    )
    if isinstance(input_shape, (str, bytes)) or not hasattr(
            input_shape, "__len__") or len(input_shape) != 3:
        raise ValueError(message)
    channel = 0 if data_format == "channels_first" else 2
    for i, value in enumerate(input_shape):
        if value is None and i != channel:
            continue
        if isinstance(value, bool) or not isinstance(
                value, numbers.Integral) or value < 1:
            raise ValueError(message)
    return tuple(None if v is None else int(v) for v in input_shape)


def _spatial(shape, data_format):
    return (shape[1], shape[2]) if data_format == "channels_first" else (
        shape[0],
        shape[1],
    )


def _default_size(input_shape, input_tensor, data_format):
    if input_shape is None and input_tensor is not None:
        rows, cols = _spatial(tuple(input_tensor.shape)[1:], data_format)
    elif input_shape is not None:
        rows, cols = _spatial(tuple(input_shape), data_format)
    else:
        return 224
    return rows if rows == cols and rows in DEFAULT_SIZES else 224


def _obtain_input_shape(
    input_shape, default_size, min_size, data_format, include_top, weights
):
    channels_first = data_format == "channels_first"
    if weights != "imagenet" and input_shape and len(input_shape) == 3:
        channels = input_shape[0] if channels_first else input_shape[-1]
        if channels not in {1, 3}:
            warnings.warn(
                "This model usually expects 1 or 3 input channels. However, "
                f"it was passed an input_shape with {channels} input channels.",
                stacklevel=3,
            )
        default_shape = (
            (channels, default_size, default_size)
            if channels_first
            else (default_size, default_size, channels)
        )
    else:
        default_shape = (
            (3, default_size, default_size)
            if channels_first
            else (default_size, default_size, 3)
        )
    if weights == "imagenet" and include_top:
        if input_shape is not None and tuple(input_shape) != default_shape:
            raise ValueError(
                "When setting `include_top=True` and loading `imagenet` "
                f"weights, `input_shape` should be {default_shape}. "
                f"Received: input_shape={input_shape}"
            )
        return default_shape
    if input_shape:
        input_shape = tuple(input_shape)
        if len(input_shape) != 3:
            raise ValueError(
                "`input_shape` must be a tuple of three integers. "
                f"Received: input_shape={input_shape}"
            )
        channels = input_shape[0] if channels_first else input_shape[-1]
        if channels != 3 and weights == "imagenet":
            raise ValueError(
                "The input must have 3 channels; "
                f"Received: input_shape={input_shape}"
            )
        rows, cols = _spatial(input_shape, data_format)
        if (rows is not None and rows < min_size) or (
            cols is not None and cols < min_size
        ):
            raise ValueError(
                f"Input size must be at least {min_size}x{min_size}; "
                f"Received: input_shape={input_shape}"
            )
    elif include_top:
        input_shape = default_shape
    else:
        input_shape = (3, None, None) if channels_first else (None, None, 3)
    if include_top and None in input_shape:
        raise ValueError(
            "If `include_top` is True, you should specify a static "
            f"`input_shape`. Received: input_shape={input_shape}"
        )
    return input_shape


def application_input(input_shape, input_tensor, include_top, weights,
                      input_layer=None):
    """Validates the input arguments and returns `(img_input, rows, cols)`.

    Follows keras.applications: `input_shape` and `input_tensor` must agree,
    `input_shape` defaults from `input_tensor`, the minimum size is 32x32, and
    `include_top=True` needs a static shape. `input_layer` makes the input
    when there is no `input_tensor` (default `keras.layers.Input`).
    """
    data_format = keras.config.image_data_format()
    input_shape = validate_input_shape(input_shape, data_format)
    if input_tensor is not None and not keras.backend.is_keras_tensor(
        input_tensor
    ):
        if not hasattr(input_tensor, "shape"):
            raise ValueError(
                "`input_tensor` must be a Keras tensor or a tensor. "
                f"Received: input_tensor={input_tensor!r} of type "
                f"{type(input_tensor)}"
            )
    if input_shape is not None and input_tensor is not None:
        tensor_shape = tuple(input_tensor.shape)[1:]
        if len(tensor_shape) != len(tuple(input_shape)) or any(
            a is not None and b is not None and a != b
            for a, b in zip(tensor_shape, input_shape)
        ):
            raise ValueError(
                "`input_shape` must match the shape of `input_tensor`. "
                f"Received: input_tensor.shape={tuple(input_tensor.shape)}, "
                f"input_shape={tuple(input_shape)}"
            )
    default_size = _default_size(input_shape, input_tensor, data_format)
    if input_shape is None and input_tensor is not None:
        input_shape = tuple(input_tensor.shape)[1:]
    input_shape = _obtain_input_shape(
        input_shape,
        default_size=default_size,
        min_size=32,
        data_format=data_format,
        include_top=include_top,
        weights=weights,
    )
    rows, cols = _spatial(input_shape, data_format)
    if input_tensor is None:
        input_layer = input_layer or keras.layers.Input
        img_input = input_layer(shape=input_shape, name="image")
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = keras.layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor
    return img_input, rows, cols


def warn_if_unusual_size(rows, cols):
    """The keras.applications warning for sizes without published weights."""
    if rows != cols or rows not in DEFAULT_SIZES:
        warnings.warn(
            "`input_shape` is undefined or non-square, or `rows` is not in "
            f"{list(DEFAULT_SIZES)}. Weights for input shape (224, 224) will "
            "be loaded as the default.",
            stacklevel=3,
        )


def validate_classifier_activation(classifier_activation, weights):
    """Only `None` and `softmax` go with pretrained weights."""
    if weights is None:
        return
    activation = keras.activations.get(classifier_activation)
    if activation not in {
        keras.activations.get("softmax"),
        keras.activations.get(None),
    }:
        raise ValueError(
            "Only `None` and `softmax` activations are allowed for the "
            "`classifier_activation` argument when using pretrained weights, "
            "with `include_top=True`; "
            f"Received: classifier_activation={classifier_activation}"
        )


def validate_pooling(pooling):
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            "`pooling` must be one of None, 'avg' or 'max'. "
            f"Received: pooling={pooling!r}"
        )


def validate_alpha(alpha):
    """The width multiplier: a finite number > 0 (not a bool)."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or (
        not math.isfinite(alpha) or alpha <= 0
    ):
        raise ValueError(
            "`alpha` must be a positive, finite number. "
            f"Received: alpha={alpha!r}"
        )


# Bounds on architecture arguments read from files (keras-hub presets' and
# the tfmot bridge's config.json / application.json): such a file is a few
# bytes, yet `alpha=300` would build tens of GB of weights before anything
# refuses. The published networks use alpha <= 1.4 and 224-pixel inputs;
# raise these module attributes (as Pillow's `Image.MAX_IMAGE_PIXELS`) to
# load a larger network on purpose.
MAX_FILE_ALPHA = 4.0
MAX_FILE_IMAGE_SIDE = 4096


def check_file_architecture(source, alpha=None, image_shape=None):
    """Raises unless `alpha` and `image_shape` read from the file `source`
    are within `MAX_FILE_ALPHA` and `MAX_FILE_IMAGE_SIDE`."""
    if alpha is not None:
        validate_alpha(alpha)
        if alpha > MAX_FILE_ALPHA:
            raise ValueError(
                f"{source}: `alpha` is larger than the files of this package "
                f"may build. Received: alpha={alpha!r}; accepted: up to "
                f"{MAX_FILE_ALPHA} (keras_coordatt.applications.arguments."
                "MAX_FILE_ALPHA, which you may raise)")
    if image_shape is not None:
        sides = list(image_shape)[:-1] if len(image_shape) == 3 else []
        bad = [s for s in sides if s is not None and (
            isinstance(s, bool) or not isinstance(s, int)
            or not 0 < s <= MAX_FILE_IMAGE_SIDE)]
        if len(image_shape) != 3 or bad:
            raise ValueError(
                f"{source}: the image shape must be (height, width, "
                f"channels) with sides of 1..{MAX_FILE_IMAGE_SIDE} pixels or "
                f"None. Received: {tuple(image_shape)!r} (keras_coordatt."
                "applications.arguments.MAX_FILE_IMAGE_SIDE may be raised)")

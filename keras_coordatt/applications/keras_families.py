"""keras.applications networks by name, with attention where it belongs.

A family is registered once, by `register_keras_family`: its
`keras.applications` constructor, which of its layers get an attention
block (`add_attention`'s `after`), its preprocessing and whether it takes a
width multiplier. `build_keras_application` builds one with the blocks
inserted (identity start: the new network first computes what the plain
one computes); `keras-coordatt train --model keras:NAME` trains one. No
other module lists family names.

>>> model = build_keras_application(  # doctest: +SKIP
...     "MobileNetV3Small", input_shape=(64, 64, 3), classes=10)
"""

import dataclasses
import re
import typing

import keras
import numpy as np

from keras_coordatt.insertion import add_attention

apps = keras.applications


@dataclasses.dataclass(frozen=True)
class KerasFamily:
    """What the package needs of one keras.applications network.

    Attributes:
        name: the registered name, the constructor's (`"MobileNetV2"`).
        constructor: the `keras.applications` constructor.
        after: `f(model) -> after`: `add_attention`'s `after` for a model
            the constructor built.
        preprocess_input: `f(x, data_format=None)` mapping RGB [0, 255]
            images to the network's input; None: the network rescales them
            itself (its `include_preprocessing`).
        alpha: whether the constructor takes a width multiplier `alpha`.
    """

    name: str
    constructor: typing.Callable
    after: typing.Callable
    preprocess_input: typing.Optional[typing.Callable] = None
    alpha: bool = False

    def preprocess(self, x, data_format=None):
        """The network's input for RGB [0, 255] images `x` (a numpy
        input is never modified)."""
        if self.preprocess_input is None:
            return x
        if isinstance(x, np.ndarray):
            x = x.astype("float32")  # keras' functions work in place.
        return self.preprocess_input(x, data_format=data_format)


_FAMILIES = {}


def register_keras_family(name, constructor, *, after, preprocess_input=None,
                          alpha=False, overwrite=False):
    """Registers a keras.applications network; returns its `KerasFamily`.

    Raises:
        ValueError: a name already registered (without `overwrite`) or a
            constructor or `after` that is not callable.
    """
    if not (callable(constructor) and callable(after)):
        raise ValueError(
            "`constructor` and `after` must be callable. Received: "
            f"constructor={constructor!r}, after={after!r}")
    if name.lower() in _FAMILIES and not overwrite:
        raise ValueError(
            f"A keras.applications family named {name!r} is already "
            f"registered; pass overwrite=True to replace it. "
            f"Received: name={name!r}")
    family = KerasFamily(name, constructor, after, preprocess_input, alpha)
    _FAMILIES[name.lower()] = family
    return family


def unregister_keras_family(name):
    """Removes a registered family (e.g. one a test registered)."""
    del _FAMILIES[get_keras_family(name).name.lower()]


def keras_family_names():
    """The registered names, in registration order."""
    return tuple(family.name for family in _FAMILIES.values())


def get_keras_family(name):
    """The `KerasFamily` registered under `name` (case-insensitive).

    Raises:
        ValueError: `name` is not registered; the message lists the names.
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in _FAMILIES:
        raise ValueError(
            f"Unknown keras.applications network. Received: name={name!r}; "
            f"accepted: {', '.join(keras_family_names())}")
    return _FAMILIES[key]


def build_keras_application(name, *, attention="ca", input_shape,
                            classes=1000, weights=None, alpha=None,
                            include_top=True, pooling=None,
                            classifier_activation="softmax",
                            **attention_kwargs):
    """The keras.applications network `name` with attention blocks.

    Args:
        name: a registered family (`keras_family_names()`).
        attention: a registered attention kind (`"ca"`; True is `"ca"`),
            or None / `"none"` / False for the plain network.
        input_shape, classes, weights, include_top, pooling,
        classifier_activation: the constructor's arguments (`weights`:
            None, `"imagenet"` or a weights file, loaded before the blocks
            are inserted).
        alpha: the width multiplier of a family that has one; None: the
            constructor's default.
        **attention_kwargs: the attention layer's arguments (`reduction`).

    Returns:
        A functional `keras.Model`; with attention, each block in an
        `IdentityInitAttention` (scale 0: the plain network's output).

    Raises:
        ValueError: an unknown name, or `alpha` for a family without one.
    """
    family = get_keras_family(name)
    kwargs = {}
    if alpha is not None:
        if not family.alpha:
            raise ValueError(
                f"{family.name} has no width multiplier. Received: "
                f"alpha={alpha!r}; accepted: None")
        kwargs["alpha"] = alpha
    base = family.constructor(
        input_shape=tuple(input_shape), classes=classes, weights=weights,
        include_top=include_top, pooling=pooling,
        classifier_activation=classifier_activation, **kwargs)
    if attention in (None, False, "none"):
        return base
    return add_attention(base, after=family.after(base),
                         attention="ca" if attention is True else attention,
                         **attention_kwargs)


def layers_named(pattern):
    """`after` for a family: the layers whose full name matches `pattern`."""
    def after(model):
        return lambda layer: re.fullmatch(pattern, layer.name) is not None
    return after


def mobilenet_v3_after(model):
    """The activations after each depthwise convolution's BatchNorm
    (MobileNetV3 names its activations by order only)."""
    names = set()
    for layer in model.layers:
        if layer.name.endswith("depthwise_bn"):
            for other in model.layers:
                if other.input is layer.output and isinstance(
                        other, (keras.layers.ReLU, keras.layers.Activation)):
                    names.add(other.name)
    return sorted(names)


# After each inverted residual's depthwise activation, as in the paper's
# MobileNetV2; after each residual block's output in ResNet50.
register_keras_family(
    "MobileNetV2", apps.MobileNetV2, after=layers_named(r".*depthwise_relu"),
    preprocess_input=apps.mobilenet_v2.preprocess_input, alpha=True)
register_keras_family(
    "MobileNetV3Small", apps.MobileNetV3Small, after=mobilenet_v3_after,
    alpha=True)
register_keras_family(
    "MobileNetV3Large", apps.MobileNetV3Large, after=mobilenet_v3_after,
    alpha=True)
register_keras_family(
    "EfficientNetB0", apps.EfficientNetB0,
    after=layers_named(r"block\d+[a-z]_activation"))
register_keras_family(
    "ResNet50", apps.ResNet50, after=layers_named(r"conv\d_block\d+_out"),
    preprocess_input=apps.resnet50.preprocess_input)

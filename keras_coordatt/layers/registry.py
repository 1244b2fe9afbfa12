"""The attention kinds of keras-coordatt by name: one spec per kind.

An attention kind is registered once, with everything the package needs of
it, by `register_attention` (timm's `create_attn` table, keras-hub's preset
registry): the layer class, the builder of its quantization-aware twin and,
optionally, its tf_keras twin for the tfmot recipe. The constructors'
`attention=` argument, `add_attention`, `keras-coordatt train --attention`,
`quantize_model` and the tfmot bridge all read this registry; no other module
lists kind names.

A layer class takes its own arguments as keywords (`reduction`, ...) plus
the base layer arguments, reads its channel count when it is built and
returns a tensor of its input's shape.

The twin builder is called as `builder(layer, momentum)` with a built float
layer and returns `(twin, weights)`: an unbuilt Keras layer computing the
layer's inference math with fake quantization where TFLite's int8 kernels
round (`keras_coordatt.quantization.layers`), and the float arrays to assign
to the twin's trainable weights in order. It may be given as a
`"module:function"` string, imported when first used, so that importing the
layers never imports the quantization package.
"""

import dataclasses
import importlib
import types
import typing

from keras_coordatt.layers.cbam import CBAM
from keras_coordatt.layers.coordinate_attention import CoordinateAttention
from keras_coordatt.layers.efficient_local_attention import (
    EfficientLocalAttention,
)
from keras_coordatt.layers.simple_coordinate_attention import (
    SimpleCoordAttention,
)
from keras_coordatt.layers.squeeze_excitation import SqueezeExcitation
from keras_coordatt.layers.strip_attention import StripAttention


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """Everything the package needs of one attention kind.

    Attributes:
        name: the lower-case kind name (`"ca"`), also the suffix of the
            blocks `add_attention` and the constructors insert
            (`block_3_ca`).
        layer: the Keras layer class.
        quantize: the twin builder `f(layer, momentum) -> (twin, weights)`
            or a `"module:function"` string naming it; None when the kind
            has no quantization-aware twin (`quantize_model` then refuses
            it with a message naming the kind).
        tf_keras: optional `"module:attr"` of a tf_keras twin for the tfmot
            recipe (`attr(name=..., reduction=...)(x)`).
        paper: where the kind comes from, for documentation.
    """

    name: str
    layer: type
    quantize: typing.Union[str, typing.Callable, None] = None
    tf_keras: typing.Optional[str] = None
    paper: str = ""

    def quantize_builder(self):
        """The twin builder (imported if given by name), or None."""
        return _resolve(self.quantize)

    def tf_keras_layer(self):
        """The tf_keras twin (imported if given by name), or None."""
        return _resolve(self.tf_keras)


_SPECS = {}
_LAYERS = {}
# name -> layer class, a live read-only view of the registry (the
# applications' `blocks.Namespace` takes a mapping of this form).
ATTENTIONS = types.MappingProxyType(_LAYERS)


def _resolve(target):
    if target is None or callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def register_attention(name, layer, *, quantize=None, tf_keras=None,
                       paper="", override=False):
    """Registers an attention kind; returns its `AttentionSpec`.

    Args:
        name: the kind's name, lower case letters, digits and `_`
            (`"ca"`, `"ela"`).
        layer: the Keras layer class (a `keras.layers.Layer` subclass).
        quantize: the twin builder or its `"module:function"` (see the
            module docstring); None: the kind cannot be quantized.
        tf_keras: optional `"module:attr"` of a tf_keras twin.
        paper: a reference (title or URL).
        override: whether `name` may replace a registered kind.

    Raises:
        ValueError: a malformed name, a `layer` that is no layer class, or
            a name already registered (without `override=True`).
    """
    import keras  # after the layer modules, which import it anyway

    if not (isinstance(name, str) and name and name == name.lower()
            and name.replace("_", "").isalnum()):
        raise ValueError(
            "`name` must be a lower-case identifier such as 'ca'. "
            f"Received: name={name!r}"
        )
    if not (isinstance(layer, type)
            and issubclass(layer, keras.layers.Layer)):
        raise ValueError(
            "`layer` must be a keras.layers.Layer subclass. "
            f"Received: layer={layer!r}"
        )
    if name in _SPECS and not override:
        raise ValueError(
            f"The attention kind {name!r} is already registered "
            f"({_SPECS[name].layer.__name__}); pass override=True to "
            f"replace it. Received: name={name!r}"
        )
    spec = AttentionSpec(name, layer, quantize, tf_keras, paper)
    _SPECS[name] = spec
    _LAYERS[name] = layer
    return spec


def unregister_attention(name):
    """Removes a registered kind (for tests and plug-ins)."""
    get_attention_spec(name)
    del _SPECS[name.lower()], _LAYERS[name.lower()]


def attention_names():
    """The registered names, in registration order (`("ca", "se", ...)`)."""
    return tuple(_SPECS)


def attention_specs():
    """The registered `AttentionSpec`s, in registration order."""
    return tuple(_SPECS.values())


def get_attention_spec(name):
    """The `AttentionSpec` registered under `name` (case-insensitive).

    Raises:
        ValueError: if `name` is not a registered name.
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in _SPECS:
        raise ValueError(
            f"Unknown attention {name!r}. Accepted names: "
            f"{', '.join(repr(n) for n in _SPECS)}. "
            f"Received: attention={name!r}"
        )
    return _SPECS[key]


def get_attention(name):
    """Returns the layer class registered under `name`.

    Args:
        name: a registered name (case-insensitive), e.g. `"ca"`.

    Returns:
        The layer class, e.g. `CoordinateAttention` for `"ca"`.

    Raises:
        ValueError: if `name` is not a registered name.
    """
    return get_attention_spec(name).layer


def spec_of_layer(layer):
    """The spec whose class is `layer`'s (or a base class of it), or None;
    the most derived class wins."""
    by_class = {spec.layer: spec for spec in _SPECS.values()}
    for cls in type(layer).__mro__:
        if cls in by_class:
            return by_class[cls]
    return None


_QAT = "keras_coordatt.quantization.qat"
register_attention(
    "ca", CoordinateAttention, quantize=f"{_QAT}:twin_coordinate_attention",
    tf_keras="keras_coordatt.quantization.tfmot_recipe:CoordinateAttention",
    paper="Coordinate Attention for Efficient Mobile Network Design "
          "(CVPR 2021), arXiv 2103.02907",
)
register_attention(
    "se", SqueezeExcitation, quantize=f"{_QAT}:twin_squeeze_excitation",
    paper="Squeeze-and-Excitation Networks (CVPR 2018), arXiv 1709.01507",
)
register_attention(
    "cbam", CBAM, quantize=f"{_QAT}:twin_cbam",
    paper="CBAM: Convolutional Block Attention Module (ECCV 2018), "
          "arXiv 1807.06521",
)
_FAMILY = "keras_coordatt.quantization.coord_family"
register_attention(
    "simple_ca", SimpleCoordAttention,
    quantize=f"{_FAMILY}:twin_simple_coordinate_attention",
    paper="timm layers/coord_attn.py SimpleCoordAttn, after Coordinate "
          "Attention (CVPR 2021), arXiv 2103.02907",
)
register_attention(
    "ela", EfficientLocalAttention,
    quantize=f"{_FAMILY}:twin_efficient_local_attention",
    paper="ELA: Efficient Local Attention for Deep Convolutional Neural "
          "Networks (Xu and Wan 2024), arXiv 2403.01123",
)
register_attention(
    "strip", StripAttention, quantize=f"{_FAMILY}:twin_strip_attention",
    paper="timm layers/coord_attn.py StripAttn",
)

"""What the coordinate-attention family shares: strip pools, gates, checks.

`SimpleCoordAttention`, `EfficientLocalAttention` and `StripAttention` (timm's
`layers/coord_attn.py`) all pool the feature map into one strip of H rows
and one of W columns and turn them into gates. Their sublayers work
channels_last whatever the block's data format, as in `CoordinateAttention`.
"""

import keras
from keras import ops

from keras_coordatt.layers.common import positive_int
from keras_coordatt.layers.common import to_channels_first
from keras_coordatt.layers.common import to_channels_last

GATES = ("sigmoid", "hard_sigmoid")


def strip_means(inputs, data_format):
    """The row and column means of `inputs`, channels_last:
    `(B, H, 1, C)` and `(B, 1, W, C)`."""
    if data_format == "channels_first":
        return (to_channels_last(ops.mean(inputs, axis=3, keepdims=True)),
                to_channels_last(ops.mean(inputs, axis=2, keepdims=True)))
    return (ops.mean(inputs, axis=2, keepdims=True),
            ops.mean(inputs, axis=1, keepdims=True))


def in_format(tensor, data_format):
    """A channels_last (strip) tensor laid out in `data_format`."""
    if data_format == "channels_first":
        return to_channels_first(tensor)
    return tensor


def gate_name(value):
    if value not in GATES:
        raise ValueError(
            f"`gate_activation` must be one of {GATES}. "
            f"Received: gate_activation={value!r}"
        )
    return value


def apply_gate(name, x):
    return ops.sigmoid(x) if name == "sigmoid" else ops.hard_sigmoid(x)


def boolean(name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )
    return value


def odd_kernel_size(value):
    # An even kernel with timm's padding k // 2 would lengthen the strip.
    positive_int("kernel_size", value)
    if value % 2 == 0:
        raise ValueError(
            "`kernel_size` must be an odd integer >= 1. "
            f"Received: kernel_size={value!r}"
        )
    return value


def positive_float(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not value > 0:
        raise ValueError(
            f"`{name}` must be a number > 0. Received: {name}={value!r}"
        )
    return float(value)


def strip_depthwise(kernel_size, along, use_bias, dtype_policy, name):
    """A depthwise convolution along the H strip (`along="h"`: kernel
    `(k, 1)`) or the W strip (`(1, k)`), 'same' padding, channels_last."""
    shape = (kernel_size, 1) if along == "h" else (1, kernel_size)
    return keras.layers.DepthwiseConv2D(
        shape, padding="same", use_bias=use_bias,
        data_format="channels_last", name=name, dtype=dtype_policy,
    )


def prepare(layer, inputs):
    """`inputs` as a tensor of the layer's compute dtype, the layer built
    (for `attention_maps` called before the layer)."""
    inputs = ops.convert_to_tensor(inputs, dtype=layer.compute_dtype)
    if not layer.built:
        layer.build(tuple(inputs.shape))
    return inputs


def channel_spec(channels, data_format):
    axis = -1 if data_format == "channels_last" else 1
    return keras.layers.InputSpec(ndim=4, axes={axis: channels})

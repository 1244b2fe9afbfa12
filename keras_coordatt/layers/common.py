"""What the attention layers share: argument checks and channel layout.

The sublayers of every attention block work channels_last whatever the
block's data format (TF's CPU kernels have no NCHW convolution, and the
pooled tensors they see are tiny, so transposing them costs nothing).
"""

import keras
from keras import ops

DATA_FORMATS = ("channels_last", "channels_first")


def positive_int(name, value):
    """`value` if it is an int >= 1 (not a bool), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{name}` must be an integer >= 1. Received: {name}={value!r}"
        )
    return value


def data_format_or_default(data_format):
    data_format = data_format or keras.config.image_data_format()
    if data_format not in DATA_FORMATS:
        raise ValueError(
            "`data_format` must be one of "
            f"{DATA_FORMATS} or None. Received: data_format={data_format!r}"
        )
    return data_format


def input_channels(layer_name, input_shape, data_format):
    """The channel count of a 4D `input_shape`, or a ValueError."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(
            f"{layer_name} expects a 4D input (batch, H, W, C) or "
            f"(batch, C, H, W). Received: input_shape={input_shape}"
        )
    channels = input_shape[-1 if data_format == "channels_last" else 1]
    if channels is None:
        raise ValueError(
            f"The channel dimension of the input to {layer_name} "
            f"must be known ({data_format}). "
            f"Received: input_shape={input_shape}"
        )
    return int(channels)


def conv(filters, dtype_policy, name, kernel_size=1, use_bias=True):
    # The sublayers work channels_last whatever the layer's data format, as
    # in CoordinateAttention: TF's CPU kernels have no NCHW convolution.
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        use_bias=use_bias,
        data_format="channels_last",
        name=name,
        dtype=dtype_policy,
    )


def to_channels_last(x):
    return ops.transpose(x, (0, 2, 3, 1))


def to_channels_first(x):
    return ops.transpose(x, (0, 3, 1, 2))

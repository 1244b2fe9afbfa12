"""The squeeze-and-excitation block (Hu, Shen, Sun, CVPR 2018)."""

import keras
from keras import ops

from keras_coordatt.layers.common import conv as _conv
from keras_coordatt.layers.common import data_format_or_default as _data_format
from keras_coordatt.layers.common import input_channels as _input_channels
from keras_coordatt.layers.common import positive_int as _positive_int
from keras_coordatt.layers.common import to_channels_first as _to_channels_first
from keras_coordatt.layers.common import to_channels_last as _to_channels_last


@keras.saving.register_keras_serializable(package="keras_coordatt")
class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-and-excitation: one sigmoid gate per channel.

    The block needs only the channel count of its input, which it reads when it
    is built. It squeezes the feature map into one value per channel (global
    average pooling), excites it through a bottleneck of two 1x1 convolutions
    with bias (`channels -> hidden`, activation, `hidden -> channels`) and a
    sigmoid, and returns `inputs * gate`. The bottleneck width is
    `hidden_channels = max(min_channels, channels // reduction)`, the rule of
    `CoordinateAttention` (the paper's `C / r`, floored, never narrower than
    `min_channels`).

    The default `reduction=24` is the one that reproduces the 3.89M parameters
    the coordinate attention paper quotes for MobileNetV2 + SE with the blocks
    at CA's places (after the depthwise convolution of every inverted residual
    block with expansion > 1): MobileNetV2 at alpha 1.0 has 3,504,872
    trainable parameters, its 16 SE blocks (hidden widths 96 ... 960, all
    multiples of 24) add 385,264, 3,890,136 in all. Reductions 4, 8, 16 and 32
    give 5,769,368, 4,640,672, 4,076,710 and 3,799,448.

    Args:
        reduction: int >= 1, the channel reduction ratio `r` of the
            bottleneck. Defaults to 24 (see above; the SE paper uses 16 in
            ResNets).
        min_channels: int >= 1, the smallest bottleneck width. Defaults to 8.
        activation: activation of the bottleneck (name or callable).
            Defaults to `"relu"`, as in the paper.
        gate_activation: the gating function (name or callable). Defaults to
            `"sigmoid"`, as in the paper (MobileNetV3 uses `"hard_sigmoid"`).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape: 4D tensor `(batch, H, W, C)` (channels_last) or
        `(batch, C, H, W)` (channels_first); H and W may be unknown.
    Output shape: same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = SqueezeExcitation(reduction=16)(x)

    Reference:
    - [Squeeze-and-Excitation Networks](https://arxiv.org/abs/1709.01507)
        (CVPR 2018)
    """

    def __init__(
        self,
        reduction=24,
        min_channels=8,
        activation="relu",
        gate_activation="sigmoid",
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction = _positive_int("reduction", reduction)
        self.min_channels = _positive_int("min_channels", min_channels)
        self.activation = keras.activations.get(activation)
        self.gate_activation = keras.activations.get(gate_activation)
        self.data_format = _data_format(data_format)
        self.channels = None
        self.hidden_channels = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.channels = _input_channels(
            "SqueezeExcitation", input_shape, self.data_format
        )
        self.hidden_channels = max(
            self.min_channels, self.channels // self.reduction
        )
        self.reduce = _conv(self.hidden_channels, self.dtype_policy, "reduce")
        self.expand = _conv(self.channels, self.dtype_policy, "expand")
        pooled = (None, 1, 1, self.channels)
        self.reduce.build(pooled)
        self.expand.build(self.reduce.compute_output_shape(pooled))
        channel_axis = -1 if self.data_format == "channels_last" else 1
        self.input_spec = keras.layers.InputSpec(
            ndim=4, axes={channel_axis: self.channels}
        )

    def _gate(self, inputs):
        """The channel gate, broadcastable against `inputs`."""
        first = self.data_format == "channels_first"
        squeezed = ops.mean(inputs, axis=(2, 3) if first else (1, 2),
                            keepdims=True)
        if first:
            squeezed = _to_channels_last(squeezed)  # (B, 1, 1, C)
        excited = self.expand(self.activation(self.reduce(squeezed)))
        gate = self.gate_activation(excited)
        return _to_channels_first(gate) if first else gate

    def call(self, inputs):
        return inputs * self._gate(inputs)

    def attention_maps(self, inputs, training=False):
        """Returns the gates `(gate,)` the layer applies to `inputs`.

        A 1-tuple, so that for every attention layer of this package
        `call(x)` is `x` times the product of `attention_maps(x)`.

        Args:
            inputs: a batch in the layer's data format.
            training: unused (the block has no BatchNorm); accepted for the
                common interface.

        Returns:
            `(gate,)` with `gate` of shape `(B, 1, 1, C)` (channels_last) or
            `(B, C, 1, 1)` (channels_first), values in (0, 1) for the sigmoid
            gate; `call(x) == x * gate`.
        """
        del training
        inputs = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
        if not self.built:
            self.build(tuple(inputs.shape))
        return (self._gate(inputs),)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "reduction": self.reduction,
                "min_channels": self.min_channels,
                "activation": keras.activations.serialize(self.activation),
                "gate_activation": keras.activations.serialize(
                    self.gate_activation
                ),
                "data_format": self.data_format,
            }
        )
        return config

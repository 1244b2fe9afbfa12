"""Strip attention (timm's `StripAttn`)."""

import keras

from keras_coordatt.layers import strip_pooling as strips
from keras_coordatt.layers.common import data_format_or_default
from keras_coordatt.layers.common import input_channels


@keras.saving.register_keras_serializable(package="keras_coordatt")
class StripAttention(keras.layers.Layer):
    """Strip attention: one gate from the sum of the row and column means.

    The row strip `x_h` (mean over W) and the column strip `x_w` (mean over
    H), each optionally through a depthwise convolution along its strip
    (`(kernel_size, 1)` and `(1, kernel_size)`, 'same' padding), are added
    by broadcasting into a full-size map; the output is
    `inputs * gate(x_h + x_w)`, plus `inputs` with `residual=True`. This is
    timm's `StripAttn`, the lightest member of the coordinate-attention
    family: `2 * kernel_size * channels` weights, or none without the
    convolutions.

    Args:
        use_conv: whether the strips go through depthwise convolutions.
            Defaults to True.
        kernel_size: odd int >= 1, the length of the strip convolutions.
            Defaults to 3.
        use_bias: whether the strip convolutions have biases. Defaults to
            False.
        gate_activation: `"sigmoid"` (default) or `"hard_sigmoid"`.
        residual: whether `inputs` is added to the output (timm's
            `has_skip`). Defaults to False.
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape: 4D tensor `(batch, H, W, C)` (channels_last) or
        `(batch, C, H, W)` (channels_first); H and W may be unknown.
    Output shape: same as the input.

    Example:

    >>> x = keras.Input((None, None, 64))
    >>> y = StripAttention(kernel_size=3)(x)

    Reference:
    - timm, `timm/layers/coord_attn.py` (`StripAttn`), after
      [Coordinate Attention for Efficient Mobile Network Design](
        https://arxiv.org/abs/2103.02907) (CVPR 2021)
    """

    def __init__(
        self,
        use_conv=True,
        kernel_size=3,
        use_bias=False,
        gate_activation="sigmoid",
        residual=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.use_conv = strips.boolean("use_conv", use_conv)
        self.kernel_size = strips.odd_kernel_size(kernel_size)
        self.use_bias = strips.boolean("use_bias", use_bias)
        self.gate_activation = strips.gate_name(gate_activation)
        self.residual = strips.boolean("residual", residual)
        self.data_format = data_format_or_default(data_format)
        self.channels = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.channels = input_channels("StripAttention", input_shape,
                                       self.data_format)
        self.conv_h = self.conv_w = None
        if self.use_conv:
            policy = self.dtype_policy
            self.conv_h = strips.strip_depthwise(
                self.kernel_size, "h", self.use_bias, policy, "conv_h")
            self.conv_w = strips.strip_depthwise(
                self.kernel_size, "w", self.use_bias, policy, "conv_w")
            self.conv_h.build((None, None, 1, self.channels))
            self.conv_w.build((None, 1, None, self.channels))
        self.input_spec = strips.channel_spec(self.channels, self.data_format)

    def _gate(self, inputs):
        x_h, x_w = strips.strip_means(inputs, self.data_format)
        if self.use_conv:
            x_h, x_w = self.conv_h(x_h), self.conv_w(x_w)
        # Laid out apart first: the sum is the only full-size tensor.
        x_h = strips.in_format(x_h, self.data_format)
        x_w = strips.in_format(x_w, self.data_format)
        return strips.apply_gate(self.gate_activation, x_h + x_w)

    def call(self, inputs):
        out = inputs * self._gate(inputs)
        return out + inputs if self.residual else out

    def attention_maps(self, inputs, training=False):
        """Returns the gate `(gate,)` the layer applies to `inputs`.

        Args:
            inputs: a batch in the layer's data format.
            training: unused; accepted for the common interface.

        Returns:
            `(gate,)`, the gate of `inputs`' shape, values in (0, 1);
            `call(x) == x * gate` (`x * gate + x` with `residual=True`).
        """
        del training
        return (self._gate(strips.prepare(self, inputs)),)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "use_conv": self.use_conv,
            "kernel_size": self.kernel_size,
            "use_bias": self.use_bias,
            "gate_activation": self.gate_activation,
            "residual": self.residual,
            "data_format": self.data_format,
        })
        return config

"""Efficient local attention, ELA (Xu and Wan 2024; timm's
`EfficientLocalAttn`)."""

import keras
from keras import ops

from keras_coordatt.layers import strip_pooling as strips
from keras_coordatt.layers.common import data_format_or_default
from keras_coordatt.layers.common import input_channels
from keras_coordatt.layers.common import positive_int


@keras.saving.register_keras_serializable(package="keras_coordatt")
class EfficientLocalAttention(keras.layers.Layer):
    """Efficient local attention: 1D depthwise convolutions on the strips.

    The row strip `x_h` (mean over W, one value per row and channel) goes
    through a depthwise `(kernel_size, 1)` convolution along H, the column
    strip `x_w` (mean over H) through a depthwise `(1, kernel_size)` one
    along W ('same' padding), then each through its own GroupNorm (timm's
    `GroupNorm1`: one group, statistics over the strip's positions and
    channels per example, per-channel scale and offset, epsilon 1e-5), the
    activation and the gate. The output is `inputs * a_h * a_w`, plus
    `inputs` with `residual=True`. No channel reduction: the block is
    `2 * kernel_size * channels` weights plus the norms' `4 * channels`.

    Args:
        kernel_size: odd int >= 1, the length of the strip convolutions.
            Defaults to 7 (timm's default; the paper's ELA-S/-B/-L
            use 5 or 7).
        use_bias: whether the strip convolutions have biases. Defaults to
            False (the norm's offset follows them).
        activation: activation after the norm (name or callable).
            Defaults to `"silu"`.
        gate_activation: `"sigmoid"` (default) or `"hard_sigmoid"`.
        use_norm: whether each strip is group-normalized. Defaults to True.
        norm_groups: int >= 1 dividing the channels, the GroupNorm groups.
            Defaults to 1 (timm's `GroupNorm1`).
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
    >>> y = EfficientLocalAttention(kernel_size=7)(x)

    Reference:
    - [ELA: Efficient Local Attention for Deep Convolutional Neural
        Networks](https://arxiv.org/abs/2403.01123) (Xu and Wan, 2024)
    """

    def __init__(
        self,
        kernel_size=7,
        use_bias=False,
        activation="silu",
        gate_activation="sigmoid",
        use_norm=True,
        norm_groups=1,
        residual=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_size = strips.odd_kernel_size(kernel_size)
        self.use_bias = strips.boolean("use_bias", use_bias)
        self.activation = keras.activations.get(activation)
        self.gate_activation = strips.gate_name(gate_activation)
        self.use_norm = strips.boolean("use_norm", use_norm)
        self.norm_groups = positive_int("norm_groups", norm_groups)
        self.residual = strips.boolean("residual", residual)
        self.data_format = data_format_or_default(data_format)
        self.channels = None
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.channels = input_channels("EfficientLocalAttention",
                                       input_shape, self.data_format)
        if self.use_norm and self.channels % self.norm_groups:
            raise ValueError(
                "`norm_groups` must divide the input channels "
                f"({self.channels}). Received: norm_groups={self.norm_groups}"
            )
        policy = self.dtype_policy
        self.conv_h = strips.strip_depthwise(self.kernel_size, "h",
                                             self.use_bias, policy, "conv_h")
        self.conv_w = strips.strip_depthwise(self.kernel_size, "w",
                                             self.use_bias, policy, "conv_w")
        self.conv_h.build((None, None, 1, self.channels))
        self.conv_w.build((None, 1, None, self.channels))
        self.norm_h = self.norm_w = None
        if self.use_norm:
            self.norm_h = self._norm("norm_h", (None, None, 1, self.channels))
            self.norm_w = self._norm("norm_w", (None, 1, None, self.channels))
        self.input_spec = strips.channel_spec(self.channels, self.data_format)

    def _norm(self, name, shape):
        norm = keras.layers.GroupNormalization(
            groups=self.norm_groups, axis=-1, epsilon=1e-5, name=name,
            dtype=self.dtype_policy,
        )
        norm.build(shape)
        return norm

    def _group_norm(self, y, norm):
        """`norm(y)`, with one group written as MEAN, SUB, MUL, ADD, RSQRT.

        Keras' GroupNormalization lowers to NEG and SQUARE ops that TFLite's
        post-training int8 conversion leaves in float; these ops (the QAT
        twin's) all have int8 kernels. The norm's own `gamma` and `beta` are
        used, so saved models keep their weights. Statistics in float32, as
        Keras' layer computes them under mixed precision.
        """
        if self.norm_groups != 1:
            return norm(y)
        dtype = y.dtype
        y = ops.cast(y, "float32")
        axes = (1, 2, 3)  # one group: the strip's positions and channels
        centered = y - ops.mean(y, axis=axes, keepdims=True)
        variance = ops.mean(centered * centered, axis=axes, keepdims=True)
        normalized = centered * ops.rsqrt(variance + norm.epsilon)
        out = (normalized * ops.cast(norm.gamma, "float32")
               + ops.cast(norm.beta, "float32"))
        return ops.cast(out, dtype)

    def _strip_gate(self, pooled, conv, norm):
        y = conv(pooled)
        if norm is not None:
            y = self._group_norm(y, norm)
        gate = strips.apply_gate(self.gate_activation, self.activation(y))
        return strips.in_format(gate, self.data_format)

    def _gates(self, inputs):
        pooled_h, pooled_w = strips.strip_means(inputs, self.data_format)
        return (self._strip_gate(pooled_h, self.conv_h, self.norm_h),
                self._strip_gate(pooled_w, self.conv_w, self.norm_w))

    def call(self, inputs):
        gate_h, gate_w = self._gates(inputs)
        out = inputs * gate_h * gate_w
        return out + inputs if self.residual else out

    def attention_maps(self, inputs, training=False):
        """Returns the gates `(a_h, a_w)` the layer applies to `inputs`.

        Args:
            inputs: a batch in the layer's data format.
            training: unused (GroupNorm has no moving statistics);
                accepted for the common interface.

        Returns:
            `a_h` of shape `(B, H, 1, C)` and `a_w` of shape `(B, 1, W, C)`
            (channels_last) or `(B, C, H, 1)` and `(B, C, 1, W)`
            (channels_first); `call(x) == x * a_h * a_w` (plus `x` with
            `residual=True`).
        """
        del training
        return self._gates(strips.prepare(self, inputs))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "kernel_size": self.kernel_size,
            "use_bias": self.use_bias,
            "activation": keras.activations.serialize(self.activation),
            "gate_activation": self.gate_activation,
            "use_norm": self.use_norm,
            "norm_groups": self.norm_groups,
            "residual": self.residual,
            "data_format": self.data_format,
        })
        return config

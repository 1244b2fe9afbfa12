"""Simple coordinate attention (timm's `SimpleCoordAttn`)."""

import keras

from keras_coordatt.layers import strip_pooling as strips
from keras_coordatt.layers.common import conv as _conv
from keras_coordatt.layers.common import data_format_or_default
from keras_coordatt.layers.common import input_channels
from keras_coordatt.layers.common import positive_int


def make_divisible(value, divisor, min_value=None):
    """timm's `make_divisible` with `round_limit=0`: the nearest multiple of
    `divisor` (halves up), at least `min_value or divisor`."""
    return max(min_value or divisor,
               int(value + divisor / 2) // divisor * divisor)


@keras.saving.register_keras_serializable(package="keras_coordatt")
class SimpleCoordAttention(keras.layers.Layer):
    """Simple coordinate attention: one additive gate from row and column.

    The row strip `x_h` (mean over W) and the column strip `x_w` (mean over
    H) go through one shared 1x1 convolution `channels -> hidden` and the
    activation, then through their own 1x1 convolutions `hidden ->
    channels` into `a_h` and `a_w`. The output is
    `inputs * gate(a_h + a_w)` (one gate from the broadcast sum, not a
    product of two gates as in `CoordinateAttention`), plus `inputs` with
    `residual=True`. No normalization. This is timm's `SimpleCoordAttn`
    (a squeeze-excitation-like simplification of coordinate attention);
    the hidden width is timm's
    `make_divisible(channels * reduction_ratio * se_factor, divisor)`.

    Args:
        reduction_ratio: float > 0, the hidden width as a fraction of the
            channels (before `se_factor`). Defaults to 0.25.
        hidden_channels: optional int >= 1 that overrides the computed
            hidden width.
        divisor: int >= 1, the hidden width is a multiple of it (at least
            `divisor`). Defaults to 8.
        se_factor: float > 0, a further factor on the hidden width.
            Defaults to 2/3.
        use_bias: whether the three convolutions have biases. Defaults to
            True.
        activation: activation of the shared encoding (name or callable).
            Defaults to `"silu"`.
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
    >>> y = SimpleCoordAttention(reduction_ratio=0.25)(x)

    Reference:
    - timm, `timm/layers/coord_attn.py` (`SimpleCoordAttn`), after
      [Coordinate Attention for Efficient Mobile Network Design](
        https://arxiv.org/abs/2103.02907) (CVPR 2021)
    """

    def __init__(
        self,
        reduction_ratio=0.25,
        hidden_channels=None,
        divisor=8,
        se_factor=2.0 / 3.0,
        use_bias=True,
        activation="silu",
        gate_activation="sigmoid",
        residual=False,
        data_format=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.reduction_ratio = strips.positive_float("reduction_ratio",
                                                     reduction_ratio)
        self.hidden_channels_arg = (
            None if hidden_channels is None
            else positive_int("hidden_channels", hidden_channels))
        self.divisor = positive_int("divisor", divisor)
        self.se_factor = strips.positive_float("se_factor", se_factor)
        self.use_bias = strips.boolean("use_bias", use_bias)
        self.activation = keras.activations.get(activation)
        self.gate_activation = strips.gate_name(gate_activation)
        self.residual = strips.boolean("residual", residual)
        self.data_format = data_format_or_default(data_format)
        self.channels = None
        self.hidden_channels = self.hidden_channels_arg
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.channels = input_channels("SimpleCoordAttention", input_shape,
                                       self.data_format)
        self.hidden_channels = self.hidden_channels_arg or make_divisible(
            self.channels * self.reduction_ratio * self.se_factor,
            self.divisor)
        policy = self.dtype_policy
        self.fc1 = _conv(self.hidden_channels, policy, "fc1",
                         use_bias=self.use_bias)
        self.fc_h = _conv(self.channels, policy, "fc_h",
                          use_bias=self.use_bias)
        self.fc_w = _conv(self.channels, policy, "fc_w",
                          use_bias=self.use_bias)
        strip = (None, None, 1, self.channels)
        self.fc1.build(strip)
        hidden = self.fc1.compute_output_shape(strip)
        self.fc_h.build(hidden)
        self.fc_w.build(hidden)
        self.input_spec = strips.channel_spec(self.channels, self.data_format)

    def _gate(self, inputs):
        pooled_h, pooled_w = strips.strip_means(inputs, self.data_format)
        a_h = self.fc_h(self.activation(self.fc1(pooled_h)))  # (B, H, 1, C)
        a_w = self.fc_w(self.activation(self.fc1(pooled_w)))  # (B, 1, W, C)
        # Laid out apart first: the sum is the only full-size tensor.
        a_h = strips.in_format(a_h, self.data_format)
        a_w = strips.in_format(a_w, self.data_format)
        return strips.apply_gate(self.gate_activation, a_h + a_w)

    def call(self, inputs):
        out = inputs * self._gate(inputs)
        return out + inputs if self.residual else out

    def attention_maps(self, inputs, training=False):
        """Returns the gate `(gate,)` the layer applies to `inputs`.

        Args:
            inputs: a batch in the layer's data format.
            training: unused (the block has no BatchNorm); accepted for the
                common interface.

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
            "reduction_ratio": self.reduction_ratio,
            "hidden_channels": self.hidden_channels_arg,
            "divisor": self.divisor,
            "se_factor": self.se_factor,
            "use_bias": self.use_bias,
            "activation": keras.activations.serialize(self.activation),
            "gate_activation": self.gate_activation,
            "residual": self.residual,
            "data_format": self.data_format,
        })
        return config

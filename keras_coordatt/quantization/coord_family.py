"""Quantization-aware twins of the coordinate-attention family.

`SimpleCoordAttention`, `EfficientLocalAttention` (ELA) and
`StripAttention` become `QuantSimpleCoordAttention`,
`QuantEfficientLocalAttention` and `QuantStripAttention` in
`quantize_model`, through the builders registered with their kinds
(`layers.registry`, `"simple_ca"`, `"ela"`, `"strip"`). Each twin computes
its float layer's inference math channels_last, with fake quantization
after every op TFLite runs, so that `convert_qat` gives an all-int8 graph:

- SiLU is `y * sigmoid(y)`: LOGISTIC (fixed output range, scale 1/256)
  and MUL, both int8 (TFLite has no int8 SILU kernel to rely on);
- ELA's GroupNorm (one group) depends on the data at inference, so it is
  computed in int8 ops: MEAN (the strip mean), SUB, MUL (the square),
  MEAN (the variance), ADD (epsilon), RSQRT, MUL (the normalized strip),
  and the per-channel scale and offset as a 1x1 DEPTHWISE_CONV_2D.
  TFLite runs RSQRT in int8, but XNNPACK does not: the two RSQRTs stay on
  the builtin kernels (two delegate partitions instead of one). GroupNorm
  with several groups has no twin (the builder says so); `use_norm=False`
  needs none;
- the strip convolutions are DEPTHWISE_CONV_2D with per-channel int8
  weights, the shared encoding of `SimpleCoordAttention` one CONV_2D run on
  each strip;
- the gates are sigmoids only: a `hard_sigmoid` gate is refused.
"""

import keras
from keras import ops

from keras_coordatt.quantization.layers import SIGMOID_RANGE
from keras_coordatt.quantization.layers import ActivationQuantizer
from keras_coordatt.quantization.layers import QuantConv2D
from keras_coordatt.quantization.layers import fake_quant_weights
from keras_coordatt.quantization.qat import _activation_name
from keras_coordatt.quantization.qat import _check_channels_last
from keras_coordatt.quantization.qat import _fold

_PACKAGE = "keras_coordatt"
# The encodings' activations the twins compute in int8: SiLU as LOGISTIC +
# MUL, ReLU and ReLU6 fused into the convolution before them.
ACTIVATIONS = ("silu", "relu", "relu6")


def _checked_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {ACTIVATIONS}. "
            f"Received: activation={activation!r}"
        )
    return activation


def _silu_quantizers(activation, momentum, prefix):
    """The quantizers of `y * sigmoid(y)` (LOGISTIC, MUL) for SiLU; None
    for a ReLU, which TFLite fuses into the convolution before it."""
    if activation != "silu":
        return None
    return (ActivationQuantizer(fixed_range=SIGMOID_RANGE,
                                name=f"{prefix}sigmoid_quantizer"),
            ActivationQuantizer(momentum, name=f"{prefix}silu_quantizer"))


def _silu(y, quantizers, training):
    sigmoid_quantizer, product_quantizer = quantizers
    return product_quantizer(y * sigmoid_quantizer(ops.sigmoid(y)),
                             training=training)


def _strip_means(inputs, quantizers, training):
    """The quantized row and column means `(B, H, 1, C)`, `(B, 1, W, C)`."""
    pooled_h = ops.mean(inputs, axis=2, keepdims=True)
    pooled_w = ops.mean(inputs, axis=1, keepdims=True)
    return (quantizers[0](pooled_h, training=training),
            quantizers[1](pooled_w, training=training))


def _build_quantizers(*quantizers):
    """Builds quantizers (nested in tuples, dicts or None) in the parent's
    `build`, so that a loaded `.keras` file finds their variables."""
    for item in quantizers:
        if item is None:
            continue
        if isinstance(item, dict):
            item = tuple(item.values())
        if isinstance(item, (tuple, list)):
            _build_quantizers(*item)
        else:
            item.build(())


class _TwinBase(keras.layers.Layer):
    """The quantizers every family twin has: both strip pools, the product
    with the gate(s), the residual sum."""

    def __init__(self, channels, residual=False, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.residual = bool(residual)
        self.momentum = momentum
        self.pool_quantizers = (
            ActivationQuantizer(momentum, name="pool_h_quantizer"),
            ActivationQuantizer(momentum, name="pool_w_quantizer"),
        )
        self.output_quantizer = ActivationQuantizer(
            momentum, name="output_quantizer")
        self.residual_quantizer = (
            ActivationQuantizer(momentum, name="residual_quantizer")
            if self.residual else None)

    def _build_own_quantizers(self):
        _build_quantizers(self.pool_quantizers, self.output_quantizer,
                          self.residual_quantizer)

    def _finish(self, inputs, gated, training):
        out = self.output_quantizer(gated, training=training)
        if self.residual:
            out = self.residual_quantizer(out + inputs, training=training)
        return out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"channels": self.channels, "residual": self.residual,
                       "momentum": self.momentum})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantSimpleCoordAttention(_TwinBase):
    """The inference math of `SimpleCoordAttention`, fake-quantized.

    `p_h, p_w = q(mean_W(x)), q(mean_H(x))`; the shared 1x1 convolution
    (per-channel int8 weights) and the activation on each strip; `a_h`,
    `a_w` from their own 1x1 convolutions; `g = q_fixed(sigmoid(q(a_h +
    a_w)))` (a broadcasting ADD) and the output `q(x * g)` (`q(. + x)` with
    `residual`). Int8 ops: MEAN, CONV_2D, LOGISTIC, MUL, ADD.

    Args:
        channels: input channels.
        hidden_channels: width of the shared encoding.
        activation: `"silu"`, `"relu"` or `"relu6"`.
        residual: whether the input is added to the output.
        momentum: moving-average decay of the activation ranges.
        **kwargs: base layer arguments.
    """

    def __init__(self, channels, hidden_channels, activation="silu",
                 residual=False, momentum=0.99, **kwargs):
        super().__init__(channels, residual, momentum, **kwargs)
        self.hidden_channels = int(hidden_channels)
        self.activation = _checked_activation(activation)
        q = lambda name: ActivationQuantizer(momentum, name=name)
        # Per strip: the encoding (before SiLU, or after a fused ReLU).
        self.encode_quantizers = (q("encode_h_quantizer"),
                                  q("encode_w_quantizer"))
        self.silu_quantizers = (
            _silu_quantizers(self.activation, momentum, "h_"),
            _silu_quantizers(self.activation, momentum, "w_"))
        self.fc_h = QuantConv2D(self.channels, momentum=momentum,
                                name="fc_h")
        self.fc_w = QuantConv2D(self.channels, momentum=momentum,
                                name="fc_w")
        self.sum_quantizer = q("sum_quantizer")
        self.gate_quantizer = ActivationQuantizer(
            fixed_range=SIGMOID_RANGE, name="gate_quantizer")

    def build(self, input_shape):
        # The shared 1x1 convolution of both strips.
        self.kernel = self.add_weight(
            shape=(1, 1, self.channels, self.hidden_channels),
            initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.hidden_channels,),
                                    initializer="zeros", name="bias")
        self.fc_h.build((None, None, 1, self.hidden_channels))
        self.fc_w.build((None, 1, None, self.hidden_channels))
        self._build_own_quantizers()
        _build_quantizers(self.encode_quantizers, self.silu_quantizers,
                          self.sum_quantizer, self.gate_quantizer)

    def _encode(self, pooled, kernel, strip, training):
        y = ops.conv(pooled, kernel, data_format="channels_last") + self.bias
        if self.activation == "relu":
            y = ops.relu(y)
        elif self.activation == "relu6":
            y = ops.relu6(y)
        y = self.encode_quantizers[strip](y, training=training)
        if self.activation == "silu":
            y = _silu(y, self.silu_quantizers[strip], training)
        return y

    def call(self, inputs, training=None):
        pooled_h, pooled_w = _strip_means(inputs, self.pool_quantizers,
                                          training)
        kernel = fake_quant_weights(self.kernel)
        a_h = self.fc_h(self._encode(pooled_h, kernel, 0, training),
                        training=training)
        a_w = self.fc_w(self._encode(pooled_w, kernel, 1, training),
                        training=training)
        logits = self.sum_quantizer(a_h + a_w, training=training)
        gate = self.gate_quantizer(ops.sigmoid(logits))
        return self._finish(inputs, inputs * gate, training)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_channels": self.hidden_channels,
                       "activation": self.activation})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantStripBranch(keras.layers.Layer):
    """One strip of `QuantEfficientLocalAttention`: the depthwise strip
    convolution, the one-group GroupNorm in int8 ops, the activation and
    the sigmoid gate, on a quantized strip mean (channels_last).

    Args:
        channels: input channels.
        kernel_size: the convolution's `(kh, kw)`: `(k, 1)` for the H
            strip, `(1, k)` for the W strip.
        activation: `"silu"`, `"relu"` or `"relu6"`.
        use_norm: whether the GroupNorm is computed.
        epsilon: the GroupNorm's epsilon.
        momentum: moving-average decay of the activation ranges.
        **kwargs: base layer arguments.
    """

    def __init__(self, channels, kernel_size, activation="silu",
                 use_norm=True, epsilon=1e-5, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.activation = _checked_activation(activation)
        self.use_norm = bool(use_norm)
        self.epsilon = float(epsilon)
        self.momentum = momentum
        # A ReLU is fused into the last convolution before it.
        fused = "linear" if self.activation == "silu" else self.activation
        self.conv = QuantConv2D(
            kernel_size=self.kernel_size, padding="same", depthwise=True,
            activation="linear" if self.use_norm else fused,
            momentum=momentum, name="conv")
        self.norm_quantizers = None
        self.affine = None
        if self.use_norm:
            self.norm_quantizers = {
                name: ActivationQuantizer(momentum, name=f"{name}_quantizer")
                for name in ("mean", "centered", "square", "variance",
                             "variance_eps", "rsqrt", "normalized")
            }
            # The per-channel scale and offset: a 1x1 depthwise convolution.
            self.affine = QuantConv2D(depthwise=True, activation=fused,
                                      momentum=momentum, name="affine")
        self.silu_quantizers = _silu_quantizers(self.activation, momentum,
                                                "")
        self.gate_quantizer = ActivationQuantizer(
            fixed_range=SIGMOID_RANGE, name="gate_quantizer")

    def build(self, input_shape):
        strip = tuple(input_shape)
        self.conv.build(strip)
        if self.affine is not None:
            self.affine.build(strip)
        _build_quantizers(self.norm_quantizers, self.silu_quantizers,
                          self.gate_quantizer)

    def _group_norm(self, y, training):
        q = lambda name, v: self.norm_quantizers[name](v, training=training)
        axes = (1, 2, 3)  # one group: the strip's positions and channels
        centered = q("centered", y - q("mean", ops.mean(y, axis=axes,
                                                        keepdims=True)))
        variance = q("variance", ops.mean(q("square", centered * centered),
                                          axis=axes, keepdims=True))
        rsqrt = q("rsqrt", ops.rsqrt(q("variance_eps",
                                       variance + self.epsilon)))
        return self.affine(q("normalized", centered * rsqrt),
                           training=training)

    def call(self, pooled, training=None):
        y = self.conv(pooled, training=training)
        if self.use_norm:
            y = self._group_norm(y, training)
        if self.activation == "silu":
            y = _silu(y, self.silu_quantizers, training)
        return self.gate_quantizer(ops.sigmoid(y))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({
            "channels": self.channels, "kernel_size": self.kernel_size,
            "activation": self.activation, "use_norm": self.use_norm,
            "epsilon": self.epsilon, "momentum": self.momentum,
        })
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantEfficientLocalAttention(_TwinBase):
    """The inference math of `EfficientLocalAttention`, fake-quantized.

    Each strip mean goes through a `QuantStripBranch` (depthwise strip
    convolution, int8 GroupNorm, activation, sigmoid gate); the output is
    `q(q(x * a_h) * a_w)` (`q(. + x)` with `residual`).

    Args:
        channels: input channels.
        kernel_size: odd int, the strip convolutions' length.
        activation: `"silu"`, `"relu"` or `"relu6"`.
        use_norm: whether the strips are group-normalized (one group).
        epsilon: the GroupNorm's epsilon.
        residual: whether the input is added to the output.
        momentum: moving-average decay of the activation ranges.
        **kwargs: base layer arguments.
    """

    def __init__(self, channels, kernel_size=7, activation="silu",
                 use_norm=True, epsilon=1e-5, residual=False, momentum=0.99,
                 **kwargs):
        super().__init__(channels, residual, momentum, **kwargs)
        self.kernel_size = int(kernel_size)
        self.activation = _checked_activation(activation)
        self.use_norm = bool(use_norm)
        self.epsilon = float(epsilon)
        branch = lambda shape, name: QuantStripBranch(
            self.channels, shape, self.activation, self.use_norm,
            self.epsilon, momentum, name=name)
        self.branch_h = branch((self.kernel_size, 1), "branch_h")
        self.branch_w = branch((1, self.kernel_size), "branch_w")
        self.mul_h_quantizer = ActivationQuantizer(momentum,
                                                   name="mul_h_quantizer")

    def build(self, input_shape):
        self.branch_h.build((None, None, 1, self.channels))
        self.branch_w.build((None, 1, None, self.channels))
        self._build_own_quantizers()
        _build_quantizers(self.mul_h_quantizer)

    def call(self, inputs, training=None):
        pooled_h, pooled_w = _strip_means(inputs, self.pool_quantizers,
                                          training)
        gate_h = self.branch_h(pooled_h, training=training)
        gate_w = self.branch_w(pooled_w, training=training)
        x = self.mul_h_quantizer(inputs * gate_h, training=training)
        return self._finish(inputs, x * gate_w, training)

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size,
                       "activation": self.activation,
                       "use_norm": self.use_norm, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantStripAttention(_TwinBase):
    """The inference math of `StripAttention`, fake-quantized.

    `p_h, p_w` the quantized strip means, optionally through depthwise
    strip convolutions (per-channel int8 weights);
    `g = q_fixed(sigmoid(q(p_h + p_w)))` (a broadcasting ADD) and the
    output `q(x * g)` (`q(. + x)` with `residual`). Int8 ops: MEAN,
    DEPTHWISE_CONV_2D, ADD, LOGISTIC, MUL.

    Args:
        channels: input channels.
        kernel_size: odd int, the strip convolutions' length.
        use_conv: whether the strips are convolved.
        residual: whether the input is added to the output.
        momentum: moving-average decay of the activation ranges.
        **kwargs: base layer arguments.
    """

    def __init__(self, channels, kernel_size=3, use_conv=True,
                 residual=False, momentum=0.99, **kwargs):
        super().__init__(channels, residual, momentum, **kwargs)
        self.kernel_size = int(kernel_size)
        self.use_conv = bool(use_conv)
        self.conv_h = self.conv_w = None
        if self.use_conv:
            k = self.kernel_size
            self.conv_h = QuantConv2D(kernel_size=(k, 1), padding="same",
                                      depthwise=True, momentum=momentum,
                                      name="conv_h")
            self.conv_w = QuantConv2D(kernel_size=(1, k), padding="same",
                                      depthwise=True, momentum=momentum,
                                      name="conv_w")
        self.sum_quantizer = ActivationQuantizer(momentum,
                                                 name="sum_quantizer")
        self.gate_quantizer = ActivationQuantizer(
            fixed_range=SIGMOID_RANGE, name="gate_quantizer")

    def build(self, input_shape):
        if self.use_conv:
            self.conv_h.build((None, None, 1, self.channels))
            self.conv_w.build((None, 1, None, self.channels))
        self._build_own_quantizers()
        _build_quantizers(self.sum_quantizer, self.gate_quantizer)

    def call(self, inputs, training=None):
        x_h, x_w = _strip_means(inputs, self.pool_quantizers, training)
        if self.use_conv:
            x_h = self.conv_h(x_h, training=training)
            x_w = self.conv_w(x_w, training=training)
        logits = self.sum_quantizer(x_h + x_w, training=training)
        gate = self.gate_quantizer(ops.sigmoid(logits))
        return self._finish(inputs, inputs * gate, training)

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size,
                       "use_conv": self.use_conv})
        return config


# ---------------------------------------------------------------- builders


def _check_float_layer(layer, activation=True):
    """The checks every family builder makes: channels_last, a sigmoid
    gate and (where the layer has one) an activation the twin computes."""
    _check_channels_last(layer)
    kind = type(layer).__name__
    if layer.gate_activation != "sigmoid":
        raise ValueError(
            f"Layer {layer.name!r}: {kind} is quantized with a sigmoid gate "
            f"only. Received: gate_activation={layer.gate_activation!r}"
        )
    if not activation:
        return None
    name = _activation_name(layer.activation)
    name = "silu" if name == "swish" else name
    if name not in ACTIVATIONS:
        raise ValueError(
            f"Layer {layer.name!r}: {kind} is quantized with a "
            f"{', '.join(ACTIVATIONS)} activation only. Received: "
            f"activation={name!r}"
        )
    return name


def twin_simple_coordinate_attention(layer, momentum):
    """`(QuantSimpleCoordAttention, weights)` of a built
    `SimpleCoordAttention` (the registry's twin-builder contract)."""
    activation = _check_float_layer(layer)
    new = QuantSimpleCoordAttention(
        layer.channels, layer.hidden_channels, activation=activation,
        residual=layer.residual, momentum=momentum, name=layer.name)
    return new, (_fold(layer.fc1, None) + _fold(layer.fc_h, None)
                 + _fold(layer.fc_w, None))


def _branch_weights(conv, norm):
    """A `QuantStripBranch`'s weights: the strip convolution's, then the
    GroupNorm's scale and offset as a 1x1 depthwise kernel and bias."""
    weights = _fold(conv, None)
    if norm is None:
        return weights
    get = lambda v: keras.ops.convert_to_numpy(v).astype("float32")
    channels = norm.gamma.shape[0]
    return weights + (get(norm.gamma).reshape(1, 1, channels, 1),
                      get(norm.beta))


def twin_efficient_local_attention(layer, momentum):
    """`(QuantEfficientLocalAttention, weights)` of a built
    `EfficientLocalAttention`; a ValueError for a GroupNorm of several
    groups (its int8 graph would need 5D reductions)."""
    activation = _check_float_layer(layer)
    if layer.use_norm and layer.norm_groups != 1:
        raise ValueError(
            f"Layer {layer.name!r}: EfficientLocalAttention is quantized "
            "with a one-group GroupNorm (norm_groups=1, timm's GroupNorm1) "
            "or use_norm=False only. Received: "
            f"norm_groups={layer.norm_groups}"
        )
    new = QuantEfficientLocalAttention(
        layer.channels, layer.kernel_size, activation=activation,
        use_norm=layer.use_norm,
        epsilon=layer.norm_h.epsilon if layer.use_norm else 1e-5,
        residual=layer.residual, momentum=momentum, name=layer.name)
    return new, (_branch_weights(layer.conv_h, layer.norm_h)
                 + _branch_weights(layer.conv_w, layer.norm_w))


def twin_strip_attention(layer, momentum):
    """`(QuantStripAttention, weights)` of a built `StripAttention`."""
    _check_float_layer(layer, activation=False)
    new = QuantStripAttention(
        layer.channels, layer.kernel_size, use_conv=layer.use_conv,
        residual=layer.residual, momentum=momentum, name=layer.name)
    if not layer.use_conv:
        return new, ()
    return new, _fold(layer.conv_h, None) + _fold(layer.conv_w, None)

"""Quantization-aware layers: fake-quant on weights and activations.

Every layer here computes in float and rounds where TFLite's int8 kernels
round, through `keras.quantizers.fake_quant_with_min_max_vars`. On the
TensorFlow backend that function lowers to TF's `FakeQuantWithMinMaxVars*`
ops, which the TFLite converter folds into int8 tensors; on JAX and PyTorch
it is the same rounding in plain ops with a straight-through gradient.

- weights: per-channel (output channel), symmetric, narrow range
  ([-127, 127]), ranges taken from the current weights at every step;
- activations: per-tensor, asymmetric ([-128, 127]), ranges tracked as
  exponential moving averages of the batch min and max during training
  (`ActivationQuantizer`), frozen at inference.
"""

import keras
from keras import ops

_PACKAGE = "keras_coordatt"
_ACTIVATIONS = ("linear", "relu", "relu6", "hard_swish")


def fake_quant_weights(kernel, depthwise=False, per_channel=True):
    """Per-channel symmetric narrow-range int8 fake quantization of a kernel.

    The channel axis is the last one (Conv2D `(kh, kw, in, out)`, Dense
    `(in, out)`). A depthwise kernel `(kh, kw, in, multiplier)` is viewed as
    `(kh, kw, 1, in * multiplier)`, TFLite's channel order, so that the
    channels come last on every backend (JAX's fake quant broadcasts its
    per-channel ranges along the last axis only).

    Args:
        kernel: the float kernel.
        depthwise: whether `kernel` is a depthwise kernel.
        per_channel: False for one symmetric range over the whole kernel.

    Returns:
        The fake-quantized kernel, same shape and dtype.
    """
    shape = ops.shape(kernel)
    if depthwise:
        kernel = ops.reshape(kernel, (shape[0], shape[1], 1, -1))
    axes = tuple(range(len(kernel.shape) - (1 if per_channel else 0)))
    bound = ops.max(ops.abs(kernel), axis=axes)
    bound = ops.maximum(bound, 1e-8)
    quantized = keras.quantizers.fake_quant_with_min_max_vars(
        kernel, -bound, bound, num_bits=8, narrow_range=True,
        axis=-1 if per_channel else None,
    )
    if depthwise:
        quantized = ops.reshape(quantized, shape)
    return quantized


def _apply_activation(x, activation):
    if activation == "linear":
        return x
    if activation == "relu":
        return ops.relu(x)
    if activation == "relu6":
        return ops.relu6(x)
    if activation == "hard_swish":
        return ops.hard_swish(x)
    raise ValueError(
        f"`activation` must be one of {_ACTIVATIONS}. "
        f"Received: activation={activation!r}"
    )


def _fake_quant_range(inputs, low, high):
    # A degenerate range (a dead ReLU) still needs a positive scale.
    high = ops.maximum(high, ops.add(low, 1e-6))
    return keras.quantizers.fake_quant_with_min_max_vars(
        inputs, low, high, num_bits=8, narrow_range=False
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ActivationQuantizer(keras.layers.Layer):
    """Per-tensor int8 fake quantization with moving-average ranges.

    In training the range is an exponential moving average of the batch
    minimum and maximum (the first batch sets it; the range always contains
    0, as TFLite's zero point must be exact); at inference the stored range
    is used. With `fixed_range=(lo, hi)` the range never moves: the outputs
    of `sigmoid` and `softmax` use `(0, 255 / 256)`, the scale 1/256 and zero
    point -128 that TFLite's int8 kernels require.

    Args:
        momentum: float in [0, 1), the moving-average decay. Defaults to 0.99.
        fixed_range: optional `(min, max)` pair that replaces the moving
            ranges.
        **kwargs: base layer arguments.
    """

    def __init__(self, momentum=0.99, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(
                "`momentum` must be in [0, 1). "
                f"Received: momentum={momentum!r}"
            )
        self.momentum = float(momentum)
        if fixed_range is not None:
            fixed_range = tuple(float(v) for v in fixed_range)
            if len(fixed_range) != 2 or not (
                fixed_range[0] <= 0.0 <= fixed_range[1]
                and fixed_range[0] < fixed_range[1]
            ):
                raise ValueError(
                    "`fixed_range` must be a pair (min, max) with "
                    f"min <= 0 <= max. Received: fixed_range={fixed_range!r}"
                )
        self.fixed_range = fixed_range

    def build(self, input_shape):
        # "mean" aggregation: replicas of a tf.distribute strategy update
        # their ranges in replica context, as BatchNormalization does.
        self.range_min = self.add_weight(
            shape=(), initializer="zeros", trainable=False, autocast=False,
            aggregation="mean", name="range_min",
        )
        self.range_max = self.add_weight(
            shape=(), initializer="zeros", trainable=False, autocast=False,
            aggregation="mean", name="range_max",
        )
        self.initialized = self.add_weight(
            shape=(), initializer="zeros", trainable=False, autocast=False,
            aggregation="mean", name="initialized",
        )

    def call(self, inputs, training=None):
        if self.fixed_range is not None:
            low, high = self.fixed_range
        elif training:
            x = ops.stop_gradient(ops.cast(inputs, "float32"))
            batch_min = ops.minimum(ops.min(x), 0.0)
            batch_max = ops.maximum(ops.max(x), 0.0)
            seen = ops.greater(self.initialized, 0.5)
            m = self.momentum
            low = ops.where(
                seen, m * self.range_min + (1.0 - m) * batch_min, batch_min
            )
            high = ops.where(
                seen, m * self.range_max + (1.0 - m) * batch_max, batch_max
            )
            self.range_min.assign(low)
            self.range_max.assign(high)
            self.initialized.assign(1.0)
        else:
            low, high = self.range_min, self.range_max
        return _fake_quant_range(inputs, low, high)

    def quantize_stored(self, inputs):
        """Fake-quantizes `inputs` with this quantizer's current range,
        which it leaves as it is.

        For a tensor that TFLite puts on the scale of another one (the
        inputs of a CONCATENATION or a REDUCE_MAX share their output's
        scale): called after this quantizer's own call in the same step, it
        uses the range that call has just set.
        """
        if self.fixed_range is not None:
            low, high = self.fixed_range
        else:
            low, high = self.range_min, self.range_max
        return _fake_quant_range(inputs, low, high)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "fixed_range": self.fixed_range}
        )
        return config


SIGMOID_RANGE = (0.0, 255.0 / 256.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantConv2D(keras.layers.Layer):
    """Conv2D or DepthwiseConv2D with BatchNorm folded in, fake-quantized.

    Computes `quant(act(conv(x, quant_w(kernel)) + bias))`: the kernel and
    bias hold the folded BatchNorm, the kernel is fake-quantized per output
    channel (or per tensor), and the output per tensor. `relu` and `relu6`
    are fused before the output quantizer, as TFLite fuses them into its
    convolutions; `hard_swish` is a separate TFLite op, so its input is
    quantized too.

    Args:
        filters: output channels (ignored when `depthwise`).
        kernel_size: int or pair.
        strides: int or pair.
        padding: `"valid"` or `"same"`.
        depthwise: whether this is a depthwise convolution.
        depth_multiplier: the depthwise channel multiplier.
        activation: one of `"linear"`, `"relu"`, `"relu6"`, `"hard_swish"`.
        momentum: moving-average decay of the activation ranges.
        per_channel: whether the kernel has one int8 range per output
            channel (True) or one for the whole kernel.
        **kwargs: base layer arguments.
    """

    def __init__(self, filters=None, kernel_size=1, strides=1,
                 padding="valid", depthwise=False, depth_multiplier=1,
                 activation="linear", momentum=0.99, per_channel=True,
                 **kwargs):
        super().__init__(**kwargs)
        pair = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v, v)
        self.filters = filters
        self.kernel_size = pair(kernel_size)
        self.strides = pair(strides)
        if padding not in ("valid", "same"):
            raise ValueError(
                "`padding` must be 'valid' or 'same'. "
                f"Received: padding={padding!r}"
            )
        self.padding = padding
        self.depthwise = bool(depthwise)
        self.depth_multiplier = int(depth_multiplier)
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"`activation` must be one of {_ACTIVATIONS}. "
                f"Received: activation={activation!r}"
            )
        self.activation = activation
        self.momentum = momentum
        self.per_channel = bool(per_channel)
        if not self.depthwise and filters is None:
            raise ValueError(
                "`filters` is required unless `depthwise=True`. "
                "Received: filters=None"
            )
        self.pre_activation_quantizer = (
            ActivationQuantizer(momentum, name="pre_activation_quantizer")
            if activation == "hard_swish" else None
        )
        self.output_quantizer = ActivationQuantizer(
            momentum, name="output_quantizer"
        )

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if self.depthwise:
            shape = self.kernel_size + (channels, self.depth_multiplier)
            out = channels * self.depth_multiplier
        else:
            shape = self.kernel_size + (channels, self.filters)
            out = self.filters
        self.kernel = self.add_weight(
            shape=shape, initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(
            shape=(out,), initializer="zeros", name="bias"
        )
        out_shape = self.compute_output_shape(input_shape)
        if self.pre_activation_quantizer is not None:
            self.pre_activation_quantizer.build(out_shape)
        self.output_quantizer.build(out_shape)

    def call(self, inputs, training=None):
        kernel = fake_quant_weights(self.kernel, depthwise=self.depthwise,
                                    per_channel=self.per_channel)
        if self.depthwise:
            x = ops.depthwise_conv(
                inputs, kernel, strides=self.strides, padding=self.padding,
                data_format="channels_last",
            )
        else:
            x = ops.conv(
                inputs, kernel, strides=self.strides, padding=self.padding,
                data_format="channels_last",
            )
        x = ops.add(x, self.bias)
        if self.pre_activation_quantizer is not None:
            x = self.pre_activation_quantizer(x, training=training)
        x = _apply_activation(x, self.activation)
        return self.output_quantizer(x, training=training)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        for i in (1, 2):
            size = shape[i]
            if size is None:
                continue
            k, s = self.kernel_size[i - 1], self.strides[i - 1]
            if self.padding == "same":
                shape[i] = -(-size // s)
            else:
                shape[i] = (size - k) // s + 1
        if self.depthwise:
            shape[-1] = int(input_shape[-1]) * self.depth_multiplier
        else:
            shape[-1] = self.filters
        return tuple(shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "depthwise": self.depthwise,
                "depth_multiplier": self.depth_multiplier,
                "activation": self.activation,
                "momentum": self.momentum,
                "per_channel": self.per_channel,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantDense(keras.layers.Layer):
    """Dense layer with fake-quantized weights (symmetric, per tensor).

    The logits are quantized per tensor; with `activation="softmax"` the
    probabilities are quantized to TFLite's fixed softmax range.

    Args:
        units: output units.
        activation: `"linear"` or `"softmax"`.
        momentum: moving-average decay of the activation ranges.
        **kwargs: base layer arguments.
    """

    def __init__(self, units, activation="linear", momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        if activation not in ("linear", "softmax"):
            raise ValueError(
                "`activation` must be 'linear' or 'softmax'. "
                f"Received: activation={activation!r}"
            )
        self.units = int(units)
        self.activation = activation
        self.momentum = momentum
        self.output_quantizer = ActivationQuantizer(
            momentum, name="output_quantizer"
        )
        self.softmax_quantizer = (
            ActivationQuantizer(fixed_range=SIGMOID_RANGE,
                                name="softmax_quantizer")
            if activation == "softmax" else None
        )

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(int(input_shape[-1]), self.units),
            initializer="glorot_uniform", name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.units,), initializer="zeros", name="bias"
        )
        out_shape = tuple(input_shape[:-1]) + (self.units,)
        self.output_quantizer.build(out_shape)
        if self.softmax_quantizer is not None:
            self.softmax_quantizer.build(out_shape)

    def call(self, inputs, training=None):
        # Per-tensor: TFLite transposes the (in, out) kernel to its
        # (out, in) layout, which the converter cannot do for per-channel
        # fake-quantized MatMul weights.
        kernel = fake_quant_weights(self.kernel, per_channel=False)
        x = ops.matmul(inputs, kernel) + self.bias
        x = self.output_quantizer(x, training=training)
        if self.softmax_quantizer is not None:
            x = self.softmax_quantizer(ops.softmax(x, axis=-1))
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "activation": self.activation,
                "momentum": self.momentum,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantCoordinateAttention(keras.layers.Layer):
    """The inference math of `CoordinateAttention`, fake-quantized.

    Channels_last only. BatchNorm is folded into the shared 1x1 convolution
    (frozen statistics), and each strip has its own activation ranges:

    `p_h = q(mean_W(x))`, `p_w = q(mean_H(x))` (then transposed),
    `e = q(conv(p))` and `y = q(e * q(relu6(e + 3)))` (6 x hard-swish, as
    `CoordinateAttention` computes it: int8 ADD and MUL, which XNNPACK runs,
    where a HARD_SWISH op would not be) for each strip,
    `a = q_fixed(sigmoid(q(conv_gate(y))))` with the 1/6 folded into the
    gate kernels, and the output `q(q(x * a_h) * a_w)`.

    The two gate convolutions have one weight range per kernel by default:
    per-channel ranges cost an int8 file a float32 scale and an int64 zero
    point per channel for the weights and again for the biases (28 bytes a
    channel against the 8 to 40 bytes of int8 weights behind it), 7 % of a
    MobileNetV2CA int8 file; a sigmoid gate tolerates the coarser rounding.

    Args:
        channels: input channels.
        hidden_channels: width of the shared encoding.
        momentum: moving-average decay of the activation ranges.
        per_channel_gates: whether the gate convolutions' kernels are
            quantized per output channel. Defaults to False.
        **kwargs: base layer arguments.
    """

    def __init__(self, channels, hidden_channels, momentum=0.99,
                 per_channel_gates=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.hidden_channels = int(hidden_channels)
        self.momentum = momentum
        self.per_channel_gates = bool(per_channel_gates)
        q = lambda name, **kw: ActivationQuantizer(momentum, name=name, **kw)
        self.pool_h_quantizer = q("pool_h_quantizer")
        self.pool_w_quantizer = q("pool_w_quantizer")
        self.encode_h_quantizer = q("encode_h_quantizer")
        self.encode_w_quantizer = q("encode_w_quantizer")
        self.relu6_h_quantizer = q("relu6_h_quantizer")
        self.relu6_w_quantizer = q("relu6_w_quantizer")
        self.act_h_quantizer = q("act_h_quantizer")
        self.act_w_quantizer = q("act_w_quantizer")
        self.conv_h = QuantConv2D(channels, momentum=momentum,
                                  per_channel=self.per_channel_gates,
                                  name="conv_h")
        self.conv_w = QuantConv2D(channels, momentum=momentum,
                                  per_channel=self.per_channel_gates,
                                  name="conv_w")
        self.gate_h_quantizer = q("gate_h_quantizer",
                                  fixed_range=SIGMOID_RANGE)
        self.gate_w_quantizer = q("gate_w_quantizer",
                                  fixed_range=SIGMOID_RANGE)
        self.mul_h_quantizer = q("mul_h_quantizer")
        self.output_quantizer = q("output_quantizer")

    def build(self, input_shape):
        # The shared 1x1 convolution, BatchNorm folded in.
        self.kernel = self.add_weight(
            shape=(1, 1, self.channels, self.hidden_channels),
            initializer="glorot_uniform", name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.hidden_channels,), initializer="zeros", name="bias"
        )
        strip = (None, None, 1, self.channels)
        hidden = (None, None, 1, self.hidden_channels)
        for layer in (self.pool_h_quantizer, self.pool_w_quantizer):
            layer.build(strip)
        for layer in (self.encode_h_quantizer, self.encode_w_quantizer,
                      self.relu6_h_quantizer, self.relu6_w_quantizer,
                      self.act_h_quantizer, self.act_w_quantizer):
            layer.build(hidden)
        self.conv_h.build(hidden)
        self.conv_w.build(hidden)
        for layer in (self.gate_h_quantizer, self.gate_w_quantizer,
                      self.mul_h_quantizer, self.output_quantizer):
            layer.build(tuple(input_shape))

    def _encode(self, pooled, kernel, quantizers, training):
        pre_quantizer, relu6_quantizer, quantizer = quantizers
        x = ops.conv(pooled, kernel, padding="valid",
                     data_format="channels_last")
        x = pre_quantizer(ops.add(x, self.bias), training=training)
        t = relu6_quantizer(ops.relu6(x + 3.0), training=training)
        return quantizer(x * t, training=training)

    def call(self, inputs, training=None):
        pooled_h = ops.mean(inputs, axis=2, keepdims=True)  # (B, H, 1, C)
        pooled_w = ops.mean(inputs, axis=1, keepdims=True)  # (B, 1, W, C)
        pooled_h = self.pool_h_quantizer(pooled_h, training=training)
        pooled_w = self.pool_w_quantizer(pooled_w, training=training)
        pooled_w = ops.transpose(pooled_w, (0, 2, 1, 3))  # (B, W, 1, C)
        kernel = fake_quant_weights(self.kernel)
        y_h = self._encode(pooled_h, kernel, (
            self.encode_h_quantizer, self.relu6_h_quantizer,
            self.act_h_quantizer), training)
        y_w = self._encode(pooled_w, kernel, (
            self.encode_w_quantizer, self.relu6_w_quantizer,
            self.act_w_quantizer), training)
        gate_h = self.gate_h_quantizer(
            ops.sigmoid(self.conv_h(y_h, training=training))
        )
        gate_w = self.gate_w_quantizer(
            ops.sigmoid(self.conv_w(y_w, training=training))
        )
        gate_w = ops.transpose(gate_w, (0, 2, 1, 3))  # (B, 1, W, C)
        x = self.mul_h_quantizer(inputs * gate_h, training=training)
        return self.output_quantizer(x * gate_w, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "hidden_channels": self.hidden_channels,
                "momentum": self.momentum,
                "per_channel_gates": self.per_channel_gates,
            }
        )
        return config


# The bottleneck activations the twins fuse into their convolutions, as
# TFLite fuses them (no separate op, nothing outside XNNPACK).
FUSED_ACTIVATIONS = ("relu", "relu6")


def _fused_activation(activation):
    if activation not in FUSED_ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {FUSED_ACTIVATIONS}. "
            f"Received: activation={activation!r}"
        )
    return activation


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantSqueezeExcitation(keras.layers.Layer):
    """The inference math of `SqueezeExcitation`, fake-quantized.

    Channels_last only: `p = q(mean_HW(x))`, `h = q(act(conv_reduce(p)))`
    (ReLU or ReLU6 fused into the convolution, as TFLite fuses it),
    `g = q_fixed(sigmoid(q(conv_expand(h))))` and the output `q(x * g)`:
    MEAN, CONV_2D, LOGISTIC and MUL in the int8 graph, all run by XNNPACK.

    As in `QuantCoordinateAttention`, the reducing convolution has one
    weight range per output channel and the gate (expanding) convolution
    one per kernel by default.

    Args:
        channels: input channels.
        hidden_channels: width of the bottleneck.
        activation: the bottleneck activation, `"relu"` or `"relu6"`.
        momentum: moving-average decay of the activation ranges.
        per_channel_gates: whether the expanding convolution's kernel is
            quantized per output channel. Defaults to False.
        **kwargs: base layer arguments.
    """

    def __init__(self, channels, hidden_channels, activation="relu",
                 momentum=0.99, per_channel_gates=False, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.hidden_channels = int(hidden_channels)
        self.activation = _fused_activation(activation)
        self.momentum = momentum
        self.per_channel_gates = bool(per_channel_gates)
        self.pool_quantizer = ActivationQuantizer(
            momentum, name="pool_quantizer"
        )
        self.reduce = QuantConv2D(self.hidden_channels,
                                  activation=self.activation,
                                  momentum=momentum, name="reduce")
        self.expand = QuantConv2D(self.channels, momentum=momentum,
                                  per_channel=self.per_channel_gates,
                                  name="expand")
        self.gate_quantizer = ActivationQuantizer(
            fixed_range=SIGMOID_RANGE, name="gate_quantizer"
        )
        self.output_quantizer = ActivationQuantizer(
            momentum, name="output_quantizer"
        )

    def build(self, input_shape):
        pooled = (None, 1, 1, self.channels)
        self.pool_quantizer.build(pooled)
        self.reduce.build(pooled)
        self.expand.build((None, 1, 1, self.hidden_channels))
        self.gate_quantizer.build(pooled)
        self.output_quantizer.build(tuple(input_shape))

    def call(self, inputs, training=None):
        pooled = self.pool_quantizer(
            ops.mean(inputs, axis=(1, 2), keepdims=True), training=training
        )
        hidden = self.reduce(pooled, training=training)
        gate = self.gate_quantizer(
            ops.sigmoid(self.expand(hidden, training=training))
        )
        return self.output_quantizer(inputs * gate, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "hidden_channels": self.hidden_channels,
                "activation": self.activation,
                "momentum": self.momentum,
                "per_channel_gates": self.per_channel_gates,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantCBAM(keras.layers.Layer):
    """The inference math of `CBAM`, fake-quantized.

    Channels_last only. Channel gate: `a = q(mean_HW(x))` and
    `m = max_HW(x)` (a max keeps its input's int8 scale, as TFLite's
    REDUCE_MAX does), `h_a = q(act(conv(a)))` and `h_m = q(act(conv(m)))`
    through the shared reducing convolution (ReLU or ReLU6 fused), then
    `g_c = q_fixed(sigmoid(q(conv_expand(q(h_a + h_m)))))`: the descriptors
    are summed before the (linear) expansion, whose bias is doubled, the
    float layer's `mlp(a) + mlp(m)` with one expanding convolution instead
    of two. `y = q(x * g_c)`. Spatial gate: the channel mean and max of `y`
    are concatenated on `y`'s own int8 scale (TFLite gives a CONCATENATION
    and a REDUCE_MAX the scale of their inputs; the mean is rounded to it
    here), `g_s = q_fixed(sigmoid(q(conv_spatial(.))))` with the spatial
    BatchNorm folded into the convolution, and the output `q(y * g_s)`.

    In the int8 graph that is MEAN, REDUCE_MAX, CONV_2D, ADD, LOGISTIC, MUL
    and CONCATENATION, all run by XNNPACK.

    Args:
        channels: input channels.
        hidden_channels: width of the shared MLP.
        kernel_size: size of the spatial convolution (odd int).
        activation: the MLP activation, `"relu"` or `"relu6"`.
        momentum: moving-average decay of the activation ranges.
        per_channel_gates: whether the expanding convolution's kernel is
            quantized per output channel. Defaults to False.
        **kwargs: base layer arguments.
    """

    def __init__(self, channels, hidden_channels, kernel_size=7,
                 activation="relu", momentum=0.99, per_channel_gates=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.hidden_channels = int(hidden_channels)
        self.kernel_size = int(kernel_size)
        self.activation = _fused_activation(activation)
        self.momentum = momentum
        self.per_channel_gates = bool(per_channel_gates)
        q = lambda name, **kw: ActivationQuantizer(momentum, name=name, **kw)
        self.avg_quantizer = q("avg_quantizer")
        self.hidden_avg_quantizer = q("hidden_avg_quantizer")
        self.hidden_max_quantizer = q("hidden_max_quantizer")
        self.hidden_sum_quantizer = q("hidden_sum_quantizer")
        self.mlp_expand = QuantConv2D(self.channels, momentum=momentum,
                                      per_channel=self.per_channel_gates,
                                      name="mlp_expand")
        self.channel_gate_quantizer = q("channel_gate_quantizer",
                                        fixed_range=SIGMOID_RANGE)
        self.channel_quantizer = q("channel_quantizer")
        self.spatial_conv = QuantConv2D(1, self.kernel_size, padding="same",
                                        momentum=momentum,
                                        name="spatial_conv")
        self.spatial_gate_quantizer = q("spatial_gate_quantizer",
                                        fixed_range=SIGMOID_RANGE)
        self.output_quantizer = q("output_quantizer")

    def build(self, input_shape):
        # The shared reducing convolution, applied to both descriptors.
        self.kernel = self.add_weight(
            shape=(1, 1, self.channels, self.hidden_channels),
            initializer="glorot_uniform", name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.hidden_channels,), initializer="zeros", name="bias"
        )
        pooled = (None, 1, 1, self.channels)
        hidden = (None, 1, 1, self.hidden_channels)
        self.avg_quantizer.build(pooled)
        for layer in (self.hidden_avg_quantizer, self.hidden_max_quantizer,
                      self.hidden_sum_quantizer):
            layer.build(hidden)
        self.mlp_expand.build(hidden)
        self.channel_gate_quantizer.build(pooled)
        input_shape = tuple(input_shape)
        self.channel_quantizer.build(input_shape)
        maps = input_shape[:-1] + (2,)
        self.spatial_conv.build(maps)
        self.spatial_gate_quantizer.build(input_shape[:-1] + (1,))
        self.output_quantizer.build(input_shape)

    def _hidden(self, descriptor, kernel, quantizer, training):
        x = ops.conv(descriptor, kernel, padding="valid",
                     data_format="channels_last")
        x = _apply_activation(ops.add(x, self.bias), self.activation)
        return quantizer(x, training=training)

    def _channel_gate(self, inputs, training):
        avg = self.avg_quantizer(
            ops.mean(inputs, axis=(1, 2), keepdims=True), training=training
        )
        max_ = ops.max(inputs, axis=(1, 2), keepdims=True)
        kernel = fake_quant_weights(self.kernel)
        hidden = self.hidden_sum_quantizer(
            self._hidden(avg, kernel, self.hidden_avg_quantizer, training)
            + self._hidden(max_, kernel, self.hidden_max_quantizer,
                           training),
            training=training,
        )
        logits = self.mlp_expand(hidden, training=training)
        return self.channel_gate_quantizer(ops.sigmoid(logits))

    def _spatial_gate(self, x, training):
        # `x` is the output of `channel_quantizer`: the mean goes on its
        # scale, the max is on it already.
        maps = ops.concatenate(
            [self.channel_quantizer.quantize_stored(
                ops.mean(x, axis=-1, keepdims=True)),
             ops.max(x, axis=-1, keepdims=True)],
            axis=-1,
        )
        logits = self.spatial_conv(maps, training=training)
        return self.spatial_gate_quantizer(ops.sigmoid(logits))

    def call(self, inputs, training=None):
        x = self.channel_quantizer(
            inputs * self._channel_gate(inputs, training), training=training
        )
        gated = x * self._spatial_gate(x, training)
        return self.output_quantizer(gated, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "hidden_channels": self.hidden_channels,
                "kernel_size": self.kernel_size,
                "activation": self.activation,
                "momentum": self.momentum,
                "per_channel_gates": self.per_channel_gates,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantIdentityInitAttention(keras.layers.Wrapper):
    """The identity-start block `x + s * (A(x) - x)`, fake-quantized.

    The twin of `keras_coordatt.insertion.IdentityInitAttention`: `layer` is
    the twin of `A`, then `d = q(A(x) - x)`, `m = q(d * s)` with `s`
    fake-quantized as a one-value weight, and the output `q(x + m)`: SUB,
    MUL by an int8 constant and ADD in the int8 graph, all run by XNNPACK.
    Its own trainable weight, `scale`, comes before `layer`'s.

    Args:
        layer: the quantization-aware twin of the attention layer.
        momentum: moving-average decay of the activation ranges.
        **kwargs: base layer arguments.
    """

    def __init__(self, layer, momentum=0.99, **kwargs):
        super().__init__(layer, **kwargs)
        self.momentum = momentum
        q = lambda name: ActivationQuantizer(momentum, name=name)
        self.difference_quantizer = q("difference_quantizer")
        self.blend_quantizer = q("blend_quantizer")
        self.output_quantizer = q("output_quantizer")

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(), initializer="zeros", trainable=True)
        if not self.layer.built:
            self.layer.build(input_shape)
        for quantizer in (self.difference_quantizer, self.blend_quantizer,
                          self.output_quantizer):
            quantizer.build(input_shape)

    def call(self, inputs, training=None):
        attended = self.layer(inputs, training=training)
        difference = self.difference_quantizer(attended - inputs,
                                               training=training)
        scale = fake_quant_weights(ops.reshape(self.scale, (1,)),
                                   per_channel=False)
        blend = self.blend_quantizer(difference * scale, training=training)
        return self.output_quantizer(inputs + blend, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config["momentum"] = self.momentum
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantAffine(keras.layers.Layer):
    """`x * scale + offset` with fixed constants, fake-quantized: the twin
    of `Rescaling` and `Normalization` (a network's built-in
    preprocessing).

    The constants (a scalar or one per channel) are quantized per tensor
    like weights, symmetric over their largest magnitude (a scalar is then
    exact), and the product has its own activation range: MUL and ADD by
    int8 constants in the int8 graph. They are not trained.

    Args:
        scale, offset: floats or per-channel lists.
        momentum: moving-average decay of the product's range.
        **kwargs: base layer arguments.
    """

    def __init__(self, scale, offset, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.scale = [float(v) for v in ops.convert_to_numpy(
            ops.reshape(ops.convert_to_tensor(scale, "float32"), (-1,)))]
        self.offset = [float(v) for v in ops.convert_to_numpy(
            ops.reshape(ops.convert_to_tensor(offset, "float32"), (-1,)))]
        self.momentum = momentum
        self.product_quantizer = ActivationQuantizer(
            momentum, name="product_quantizer")

    def build(self, input_shape):
        def constant(name, values):
            return self.add_weight(
                name=name, shape=(len(values),), trainable=False,
                initializer=keras.initializers.Constant(values))

        self.scale_weight = constant("scale", self.scale)
        self.offset_weight = constant("offset", self.offset)
        self.product_quantizer.build(input_shape)

    def call(self, inputs, training=None):
        scale = fake_quant_weights(self.scale_weight, per_channel=False)
        offset = fake_quant_weights(self.offset_weight, per_channel=False)
        product = self.product_quantizer(inputs * scale, training=training)
        return product + offset

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "offset": self.offset,
                       "momentum": self.momentum})
        return config

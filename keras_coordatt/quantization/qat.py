"""The native Keras 3 QAT recipe: a float model's fake-quantized twin.

`quantize_model` rebuilds a functional model layer by layer:

- `Conv2D`/`DepthwiseConv2D` [+ `BatchNormalization`] [+ `ReLU`] become one
  `QuantConv2D` whose kernel and bias hold the folded BatchNorm (moving
  statistics), with per-channel symmetric int8 weights and the activation
  quantized after the (fused) ReLU, as TFLite's int8 convolutions compute;
- `Dense` becomes `QuantDense` (per-tensor weights, quantized logits, fixed
  softmax range);
- `CoordinateAttention` becomes `QuantCoordinateAttention` (quantized pools,
  encodings, gates and both products; hard-swish as `y * relu6(y + 3)` with
  the 1/6 folded into the gate kernels, which are quantized per tensor);
  `SqueezeExcitation` and `CBAM` become `QuantSqueezeExcitation` and
  `QuantCBAM` (their ReLU fused, gate kernels per tensor, CBAM's spatial
  BatchNorm folded into its convolution); every attention kind's twin
  comes from its registered spec (`layers.registry.register_attention`,
  `quantize=`);
- `Add`, `Multiply`, `Concatenate`, `GlobalAveragePooling2D`, standalone
  activations and the model input get an `ActivationQuantizer` after them;
- `ZeroPadding2D`, `Dropout`, `Flatten`, `Reshape`, max pools are copied
  (they keep their input's quantization).

The twin trains with `model.fit` on any backend, saves as `.keras` (all its
layers are registered serializables) and converts to an all-int8 TFLite
model with `keras_coordatt.quantization.convert_qat`.
"""

import keras
import numpy as np

from keras_coordatt import graph as graph_lib
from keras_coordatt.insertion import IdentityInitAttention
from keras_coordatt.layers.registry import attention_specs
from keras_coordatt.layers.registry import spec_of_layer
from keras_coordatt.quantization.layers import FUSED_ACTIVATIONS
from keras_coordatt.quantization.layers import ActivationQuantizer
from keras_coordatt.quantization.layers import QuantCBAM
from keras_coordatt.quantization.layers import QuantConv2D
from keras_coordatt.quantization.layers import QuantCoordinateAttention
from keras_coordatt.quantization.layers import QuantDense
from keras_coordatt.quantization.layers import QuantAffine
from keras_coordatt.quantization.layers import QuantIdentityInitAttention
from keras_coordatt.quantization.layers import SIGMOID_RANGE
from keras_coordatt.quantization.layers import QuantSqueezeExcitation

_COPIED = (
    keras.layers.ZeroPadding2D,
    keras.layers.Dropout,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.MaxPooling2D,
)
_QUANTIZED_AFTER = (
    keras.layers.Add,
    keras.layers.Multiply,
    keras.layers.Concatenate,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.AveragePooling2D,
)
# Built-in preprocessing: `QuantAffine` (MUL and ADD by int8 constants), a
# quantizer after it.
_AFFINE = (
    keras.layers.Rescaling,
    keras.layers.Normalization,
)
_SUPPORTED = (
    "InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization (after a "
    "convolution)", "ReLU", "Activation", "Dense", "keras.ops operations "
    "(element-wise)",
) + tuple(c.__name__ for c in _COPIED + _QUANTIZED_AFTER + _AFFINE)


def _relu_kind(layer):
    """'relu'/'relu6' for a plain (capped) ReLU layer, else None."""
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope or layer.threshold:
            return None
        if layer.max_value is None:
            return "relu"
        if float(layer.max_value) == 6.0:
            return "relu6"
        return None
    if isinstance(layer, keras.layers.Activation):
        name = keras.activations.serialize(layer.activation)
        name = name if isinstance(name, str) else name.get("config", name)
        return name if name in ("relu", "relu6") else None
    return None


def _activation_name(activation):
    name = keras.activations.serialize(activation)
    if isinstance(name, dict):
        name = name.get("config", name)
    return name


def _fold(layer, bn):
    """Folded `(kernel, bias)` of a convolution and the BatchNorm after it."""
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype("float64")
    out = (
        kernel.shape[2] * kernel.shape[3]
        if isinstance(layer, keras.layers.DepthwiseConv2D)
        else kernel.shape[-1]
    )
    bias = (
        keras.ops.convert_to_numpy(layer.bias).astype("float64")
        if layer.use_bias else np.zeros(out)
    )
    if bn is not None:
        get = lambda v: keras.ops.convert_to_numpy(v).astype("float64")
        var = get(bn.moving_variance)
        scale = 1.0 / np.sqrt(var + bn.epsilon)
        if bn.scale:
            scale = scale * get(bn.gamma)
        shift = -get(bn.moving_mean) * scale
        if bn.center:
            shift = shift + get(bn.beta)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
        else:
            kernel = kernel * scale
        bias = bias * scale + shift
    return kernel.astype("float32"), bias.astype("float32")


def _check_channels_last(layer):
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt != "channels_last":
        raise ValueError(
            "quantize_model supports channels_last models only (TFLite's "
            f"layout). Received: layer {layer.name!r} with data_format="
            f"{fmt!r}"
        )


def _quant_conv(layer, bn, activation, momentum, own_activation=True):
    """The twin of a convolution [+ BN] [+ ReLU]; `own_activation=False`:
    the layer's own activation is applied after the twin instead."""
    _check_channels_last(layer)
    if layer.dilation_rate not in ((1, 1), 1) or (
        isinstance(layer, keras.layers.Conv2D) and layer.groups != 1
    ):
        raise ValueError(
            f"Layer {layer.name!r}: dilated or grouped convolutions are not "
            "supported. Received: dilation_rate="
            f"{layer.dilation_rate}, groups={getattr(layer, 'groups', 1)}"
        )
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    own = _activation_name(layer.activation) if own_activation else "linear"
    if own != "linear":
        if activation != "linear" or own not in ("relu", "relu6"):
            raise ValueError(
                f"Layer {layer.name!r}: only linear, relu and relu6 "
                f"activations can be quantized here. Received: activation="
                f"{own!r}"
            )
        activation = own
    new = QuantConv2D(
        filters=None if depthwise else layer.filters,
        kernel_size=layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        depthwise=depthwise,
        depth_multiplier=layer.depth_multiplier if depthwise else 1,
        activation=activation,
        momentum=momentum,
        name=layer.name,
    )
    return new, _fold(layer, bn)


def _quant_dense(layer, momentum):
    activation = _activation_name(layer.activation)
    if activation not in ("linear", "softmax"):
        raise ValueError(
            f"Layer {layer.name!r}: Dense activations 'linear' and 'softmax' "
            f"are supported. Received: activation={activation!r}"
        )
    new = QuantDense(
        layer.units, activation=activation, momentum=momentum,
        name=layer.name,
    )
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    bias = (
        keras.ops.convert_to_numpy(layer.bias) if layer.use_bias
        else np.zeros(layer.units, "float32")
    )
    return new, [kernel, bias]


def twin_coordinate_attention(layer, momentum):
    _check_channels_last(layer)
    if _activation_name(layer.activation) not in ("hard_swish", "hard_silu"):
        raise ValueError(
            f"Layer {layer.name!r}: CoordinateAttention is quantized with "
            "its default hard_swish activation only. Received: activation="
            f"{_activation_name(layer.activation)!r}"
        )
    new = QuantCoordinateAttention(
        layer.channels, layer.hidden_channels, momentum=momentum,
        name=layer.name,
    )
    kernel, bias = _fold(layer.conv, layer.bn)
    h_kernel, h_bias = _fold(layer.conv_h, None)
    w_kernel, w_bias = _fold(layer.conv_w, None)
    # The twin's encoding is 6 x hard_swish: the 1/6 goes into the gates.
    return new, (kernel, bias, h_kernel / 6.0, h_bias, w_kernel / 6.0, w_bias)


def _bottleneck_activation(layer):
    """The name of an SE/CBAM bottleneck activation the twin can fuse."""
    name = _activation_name(layer.activation)
    if name not in FUSED_ACTIVATIONS:
        raise ValueError(
            f"Layer {layer.name!r}: {type(layer).__name__} is quantized with "
            f"a {' or '.join(FUSED_ACTIVATIONS)} bottleneck only (fused into "
            f"its convolution). Received: activation={name!r}"
        )
    return name


def twin_squeeze_excitation(layer, momentum):
    _check_channels_last(layer)
    gate = _activation_name(layer.gate_activation)
    if gate != "sigmoid":
        raise ValueError(
            f"Layer {layer.name!r}: SqueezeExcitation is quantized with its "
            "default sigmoid gate only. Received: gate_activation="
            f"{gate!r}"
        )
    new = QuantSqueezeExcitation(
        layer.channels, layer.hidden_channels,
        activation=_bottleneck_activation(layer), momentum=momentum,
        name=layer.name,
    )
    return new, _fold(layer.reduce, None) + _fold(layer.expand, None)


def twin_cbam(layer, momentum):
    _check_channels_last(layer)
    new = QuantCBAM(
        layer.channels, layer.hidden_channels,
        kernel_size=layer.kernel_size,
        activation=_bottleneck_activation(layer), momentum=momentum,
        name=layer.name,
    )
    kernel, bias = _fold(layer.mlp_reduce, None)
    e_kernel, e_bias = _fold(layer.mlp_expand, None)
    s_kernel, s_bias = _fold(layer.spatial_conv, layer.spatial_bn)
    # The twin expands the sum of the two descriptors' hidden vectors: one
    # convolution, its bias counted for both.
    return new, (kernel, bias, e_kernel, 2.0 * e_bias, s_kernel, s_bias)


def _attention_twin(layer):
    """The registered twin builder of `layer`'s attention kind; None for a
    layer of no registered kind; a ValueError for a kind without one."""
    spec = spec_of_layer(layer)
    if spec is None:
        return None
    builder = spec.quantize_builder()
    if builder is None:
        raise ValueError(
            f"quantize_model cannot quantize layer {layer.name!r}: the "
            f"attention kind {spec.name!r} ({type(layer).__name__}) was "
            "registered without a quantization-aware twin. Register it "
            "with `register_attention(..., quantize=builder)`."
        )
    return builder


def _identity_init_twin(layer, momentum):
    """The twin of an identity-start block `x + s * (A(x) - x)`: the twin
    of `A` and the quantized blend (SUB, MUL by the int8 constant `s`,
    ADD in the int8 graph)."""
    inner = _attention_twin(layer.layer)
    if inner is None:
        raise ValueError(
            f"quantize_model cannot quantize layer {layer.name!r}: its "
            f"attention layer is a {type(layer.layer).__name__}, which is "
            "no registered attention kind. Register it with "
            "`keras_coordatt.layers.registry.register_attention(..., "
            "quantize=builder)`."
        )
    twin, weights = inner(layer.layer, momentum)
    new = QuantIdentityInitAttention(twin, momentum=momentum,
                                     name=layer.name)
    scale = keras.ops.convert_to_numpy(layer.scale).reshape(())
    return new, [scale] + list(weights)  # its own weight comes first


def _affine_twin(layer, momentum):
    """`QuantAffine` computing a Rescaling or Normalization layer."""
    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = layer.scale, layer.offset
    else:
        if layer.invert:
            raise ValueError(
                f"Layer {layer.name!r}: Normalization(invert=True) cannot be "
                "quantized. Received: invert=True")
        get = lambda v: keras.ops.convert_to_numpy(v).astype("float64")
        std = np.maximum(np.sqrt(get(layer.variance)), keras.config.epsilon())
        scale = 1.0 / std
        offset = -get(layer.mean) * scale
    new = QuantAffine(np.ravel(scale), np.ravel(offset), momentum=momentum,
                      name=layer.name)
    return new, []


def supported_layers():
    """The layer types `quantize_model` accepts, for messages."""
    return _SUPPORTED + ("IdentityInitAttention",) + tuple(
        s.layer.__name__ for s in attention_specs() if s.quantize is not None)


def _set_weights(layer, values):
    for variable, value in zip(layer.trainable_weights, values):
        variable.assign(value)


def check_functional(model):
    """Raises a ValueError unless `model` is a functional `keras.Model` with
    a single (image) input, as both QAT recipes need."""
    if not isinstance(model, keras.Model) or not hasattr(
        model, "_nodes_by_depth"
    ):
        raise ValueError(
            "`model` must be a functional keras.Model. "
            f"Received: model of type {type(model).__name__}"
        )
    if len(model.inputs) != 1:
        raise ValueError(
            "`model` must have a single image input. "
            f"Received: {len(model.inputs)} inputs"
        )


def quantize_model(model, calibration_data=None, calibration_steps=8,
                   momentum=0.99, name=None):
    """Returns the quantization-aware twin of a float functional model.

    The twin computes what an int8 TFLite model computes (see the module
    docstring for the layer mapping) and trains with `model.fit` like any
    Keras model. Fine-tune it with a small learning rate, then convert it
    with `convert_qat`.

    Activation ranges start empty: they are set by the first training
    batch, or by `calibration_data` here (recommended: inference before any
    training step would otherwise use empty ranges).

    Args:
        model: a functional `keras.Model` (e.g. `MobileNetV2CA`,
            `MobileNeXtCA`) in channels_last layout, built from the layers
            listed by `supported_layers()`.
        calibration_data: optional images (numpy array, or an iterable /
            `tf.data.Dataset` of batches or `(images, labels)` batches) used
            to initialise the activation ranges.
        calibration_steps: int >= 1, at most how many batches of
            `calibration_data` to use. Defaults to 8.
        momentum: float in [0, 1), the moving-average decay of the
            activation ranges. Defaults to 0.99.
        name: name of the twin; defaults to `"{model.name}_qat"`.

    Returns:
        A new functional `keras.Model` with the same inputs and outputs.

    Raises:
        ValueError: for a model that is not functional, is channels_first,
            or holds a layer this recipe cannot quantize.
    """
    check_functional(model)
    rebuild = _Quantize(model, momentum)
    twin = rebuild.run(model, name or f"{model.name}_qat")
    for layer, weights in rebuild.pending:
        _set_weights(layer, weights)
    if calibration_data is not None:
        calibrate(twin, calibration_data, steps=calibration_steps)
    return twin


_ACTIVATIONS = ("relu", "relu6", "hard_swish", "hard_silu", "sigmoid",
                "hard_sigmoid", "silu", "swish", "linear", "softmax")
# Outputs in [0, 1]: the fixed range of TFLite's int8 LOGISTIC / SOFTMAX.
_SIGMOIDS = ("sigmoid", "hard_sigmoid", "softmax")


class _Quantize(graph_lib.Rewrite):
    """One `quantize_model` pass over a float graph: each layer's twin,
    the BatchNorm and ReLU after a convolution folded into its twin (they
    pass their input through), quantizers after merges and activations,
    and the twins' weights to set once the new model is built."""

    def __init__(self, model, momentum):
        super().__init__()
        self.momentum = momentum
        self.consumers = graph_lib.consumers(model)
        self.outputs = {id(t) for t in model.outputs}
        self.absorbed = set()  # id(layer) folded into a convolution
        self.pending = []  # (new layer, weights)
        self.model_inputs = {}  # id(new input) -> its quantized tensor
        # id(convolution) -> its own activation, when it cannot be fused
        # (silu, sigmoid, ...): applied after the twin, quantized apart.
        self.separate = {}

    def quantized(self, tensor, layer_name, activation=None):
        # Outputs in [0, 1] get the fixed range TFLite's int8 kernels use.
        fixed = SIGMOID_RANGE if activation in _SIGMOIDS else None
        quantizer = ActivationQuantizer(self.momentum, fixed_range=fixed,
                                        name=f"{layer_name}_quant")
        return quantizer(tensor)

    def begin(self, inputs):
        for tensor in keras.tree.flatten(inputs):
            self.model_inputs[id(tensor)] = self.quantized(tensor,
                                                           tensor.name)

    def inputs(self, args, kwargs):
        # Every layer reads the quantized model inputs.
        swap = lambda x: self.model_inputs.get(id(x), x)
        return keras.tree.map_structure(swap, args), kwargs

    def replace(self, layer):
        if id(layer) in self.absorbed:
            return graph_lib.PASS_THROUGH
        if len(keras.tree.flatten(layer.output)) != 1:
            raise ValueError(
                f"Layer {layer.name!r} has several outputs; quantize_model "
                "supports single-output layers only."
            )
        if isinstance(layer, (keras.layers.Conv2D,
                              keras.layers.DepthwiseConv2D)) and not \
                isinstance(layer, keras.layers.Conv2DTranspose):
            return self.twin(*self.convolution(layer))
        if isinstance(layer, keras.layers.Dense):
            return self.twin(*_quant_dense(layer, self.momentum))
        if isinstance(layer, IdentityInitAttention):
            return self.twin(*_identity_init_twin(layer, self.momentum))
        attention_twin = _attention_twin(layer)
        if attention_twin is not None:
            return self.twin(*attention_twin(layer, self.momentum))
        return self.copy(layer)

    def after(self, original, outputs):
        separate = self.separate.get(id(original))
        if separate is not None:
            outputs = keras.layers.Activation(
                separate, name=f"{original.name}_{separate}")(outputs)
            return self.quantized(outputs, f"{original.name}_{separate}",
                                  separate)
        if isinstance(original, (keras.layers.ReLU, keras.layers.Activation)):
            name = _relu_kind(original) or _activation_name(
                original.activation)
            return self.quantized(outputs, original.name, name)
        if not isinstance(original, keras.layers.Layer) or isinstance(
                original, _QUANTIZED_AFTER + _AFFINE + (
                    keras.layers.ReLU, keras.layers.Activation)):
            # keras.ops nodes too (hard-swish written as `x * relu6(x + 3)
            # / 6`, constants added or multiplied): each result is an int8
            # tensor of its own range.
            return self.quantized(outputs, original.name)
        return outputs

    def twin(self, new, weights):
        self.pending.append((new, weights))
        return new

    def follower(self, tensor, cls):
        """The one layer of class `cls` that takes `tensor`, or None."""
        takers = self.consumers.get(id(tensor), [])
        if len(takers) != 1 or id(tensor) in self.outputs:
            return None
        return takers[0] if isinstance(takers[0], cls) else None

    def convolution(self, layer):
        """The twin of a convolution with the BatchNormalization and ReLU
        after it folded in (they are marked to pass through)."""
        own = _activation_name(layer.activation)
        if own not in ("linear", "relu", "relu6"):
            if own not in _ACTIVATIONS:
                raise ValueError(
                    f"Layer {layer.name!r}: activation {own!r} cannot be "
                    f"quantized; accepted: {', '.join(_ACTIVATIONS)}.")
            self.separate[id(layer)] = own
            return _quant_conv(layer, None, "linear", self.momentum,
                               own_activation=False)
        if own != "linear":  # BN after an activation is not foldable
            return _quant_conv(layer, None, "linear", self.momentum)
        last, bn = layer.output, None
        follower = self.follower(last, keras.layers.BatchNormalization)
        if follower is not None and follower.axis in (-1, 3):
            bn = follower
            self.absorbed.add(id(bn))
            last = bn.output
        activation = "linear"
        act = self.follower(last, (keras.layers.ReLU,
                                   keras.layers.Activation))
        if act is not None and _relu_kind(act) \
                and _activation_name(layer.activation) == "linear":
            activation = _relu_kind(act)
            self.absorbed.add(id(act))
        return _quant_conv(layer, bn, activation, self.momentum)

    def copy(self, layer):
        """A copy of a weightless layer or of preprocessing (a quantizer
        follows merges, activations and keras.ops nodes, see `after`)."""
        if not isinstance(layer, keras.layers.Layer):
            return layer  # a keras.ops node: stateless, reused
        if isinstance(layer, _AFFINE):
            return self.twin(*_affine_twin(layer, self.momentum))
        activation = (keras.layers.ReLU, keras.layers.Activation)
        if not isinstance(layer, _COPIED + _QUANTIZED_AFTER + activation):
            raise ValueError(
                f"quantize_model cannot quantize layer {layer.name!r} of "
                f"type {type(layer).__name__}. Accepted: "
                f"{', '.join(supported_layers())}."
            )
        if isinstance(layer, activation):
            name = _relu_kind(layer) or _activation_name(layer.activation)
            if name not in _ACTIVATIONS:
                raise ValueError(
                    f"Layer {layer.name!r}: activation {name!r} cannot "
                    f"be quantized; accepted: {', '.join(_ACTIVATIONS)}."
                )
        return layer.__class__.from_config(layer.get_config())


def _batches(data, steps):
    """Yields up to `steps` image batches from arrays or iterables."""
    if isinstance(data, np.ndarray):
        batch = max(1, -(-len(data) // steps))
        for i in range(0, len(data), batch):
            yield data[i:i + batch]
        return
    for i, batch in enumerate(data):
        if i >= steps:
            return
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        elif isinstance(batch, dict):
            batch = next(iter(batch.values()))
        yield batch


def calibrate(qat_model, data, steps=8):
    """Sets the activation ranges of a QAT twin from sample images.

    Runs the twin in training mode (only the quantizers change: the twin has
    no BatchNorm, and Dropout has no state) on up to `steps` batches.

    Args:
        qat_model: a model returned by `quantize_model`.
        data: images as a numpy array (split into `steps` batches), or an
            iterable / `tf.data.Dataset` of batches or `(images, labels)`.
        steps: int >= 1, at most how many batches to use.

    Returns:
        `qat_model`, calibrated.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"`steps` must be an integer >= 1. Received: steps={steps!r}"
        )
    for batch in _batches(data, steps):
        qat_model(keras.ops.convert_to_tensor(np.asarray(batch)),
                  training=True)
    return qat_model

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

from keras_coordatt.layers.registry import attention_specs
from keras_coordatt.layers.registry import spec_of_layer
from keras_coordatt.quantization.layers import FUSED_ACTIVATIONS
from keras_coordatt.quantization.layers import ActivationQuantizer
from keras_coordatt.quantization.layers import QuantCBAM
from keras_coordatt.quantization.layers import QuantConv2D
from keras_coordatt.quantization.layers import QuantCoordinateAttention
from keras_coordatt.quantization.layers import QuantDense
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
_SUPPORTED = (
    "InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization (after a "
    "convolution)", "ReLU", "Activation", "Dense",
) + tuple(c.__name__ for c in _COPIED + _QUANTIZED_AFTER)


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


def _quant_conv(layer, bn, activation, momentum):
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
    own = _activation_name(layer.activation)
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


def supported_layers():
    """The layer types `quantize_model` accepts, for messages."""
    return _SUPPORTED + tuple(s.layer.__name__ for s in attention_specs()
                              if s.quantize is not None)


def _graph_nodes(model):
    """The nodes of a functional model, inputs first."""
    for depth in sorted(model._nodes_by_depth, reverse=True):
        yield from model._nodes_by_depth[depth]


def _consumers(model):
    """Maps id(KerasTensor) -> list of nodes of `model` that consume it."""
    consumers = {}
    for node in _graph_nodes(model):
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)
    return consumers


def _single_consumer(consumers, tensor, cls, outputs):
    nodes = consumers.get(id(tensor), [])
    if len(nodes) != 1 or id(tensor) in outputs:
        return None
    if not isinstance(nodes[0].operation, cls):
        return None
    return nodes[0]


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
    rebuild = _Rebuild(model, momentum)
    for node in _graph_nodes(model):
        rebuild.node(node)
    twin = rebuild.model(name or f"{model.name}_qat")
    if calibration_data is not None:
        calibrate(twin, calibration_data, steps=calibration_steps)
    return twin


_ACTIVATIONS = ("relu", "relu6", "hard_swish", "hard_silu", "sigmoid")


class _Rebuild:
    """The state of one `quantize_model` pass over a float graph: which
    float tensor each new tensor stands for, which nodes were folded into a
    convolution, and the new layers' weights to set once they are built."""

    def __init__(self, model, momentum):
        self.source = model
        self.momentum = momentum
        self.consumers = _consumers(model)
        self.outputs = {id(t) for t in model.outputs}
        self.tensors = {}  # id(float tensor) -> (new Input or None, tensor)
        self.absorbed = set()
        self.pending = []  # (new layer, weights)

    def quantized(self, tensor, layer_name):
        quantizer = ActivationQuantizer(self.momentum,
                                        name=f"{layer_name}_quant")
        return quantizer(tensor)

    def node(self, node):
        if id(node) in self.absorbed:
            return
        layer = node.operation
        if node.is_input:
            source = node.output_tensors[0]
            new_input = keras.Input(batch_shape=source.shape,
                                    dtype=source.dtype, name=layer.name)
            self.tensors[id(source)] = (
                new_input, self.quantized(new_input, layer.name))
            return
        if len(node.output_tensors) != 1:
            raise ValueError(
                f"Layer {layer.name!r} has several outputs; quantize_model "
                "supports single-output layers only."
            )
        inputs = [self.tensors[id(t)][1] for t in node.input_tensors]
        if isinstance(layer, (keras.layers.Conv2D,
                              keras.layers.DepthwiseConv2D)) and not \
                isinstance(layer, keras.layers.Conv2DTranspose):
            last, result = self.convolution(node, inputs[0])
        else:
            last, result = node.output_tensors[0], self.layer(layer, inputs)
        self.tensors[id(last)] = (None, result)

    def follower(self, tensor, cls):
        return _single_consumer(self.consumers, tensor, cls, self.outputs)

    def convolution(self, node, inputs):
        """A convolution with the BatchNormalization and ReLU after it
        folded in: `(the last float tensor it covers, the new tensor)`."""
        layer, last = node.operation, node.output_tensors[0]
        bn_node = self.follower(last, keras.layers.BatchNormalization)
        bn = None
        if bn_node is not None and bn_node.operation.axis in (-1, 3):
            bn = bn_node.operation
            self.absorbed.add(id(bn_node))
            last = bn_node.output_tensors[0]
        activation = "linear"
        act_node = self.follower(
            last, (keras.layers.ReLU, keras.layers.Activation))
        if act_node is not None and _relu_kind(act_node.operation) \
                and _activation_name(layer.activation) == "linear":
            activation = _relu_kind(act_node.operation)
            self.absorbed.add(id(act_node))
            last = act_node.output_tensors[0]
        return last, self.twin(*_quant_conv(layer, bn, activation,
                                            self.momentum), inputs)

    def twin(self, new, weights, inputs):
        self.pending.append((new, weights))
        return new(inputs)

    def layer(self, layer, inputs):
        """Any other layer: its quantized twin, a copy, or a copy with an
        activation quantizer after it."""
        attention_twin = _attention_twin(layer)
        if isinstance(layer, keras.layers.Dense):
            return self.twin(*_quant_dense(layer, self.momentum), inputs[0])
        if attention_twin is not None:
            return self.twin(*attention_twin(layer, self.momentum),
                             inputs[0])
        activation = (keras.layers.ReLU, keras.layers.Activation)
        if not isinstance(layer, _COPIED + _QUANTIZED_AFTER + activation):
            raise ValueError(
                f"quantize_model cannot quantize layer {layer.name!r} of "
                f"type {type(layer).__name__}. Accepted: "
                f"{', '.join(supported_layers())}."
            )
        copy = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, _COPIED):
            return copy(*inputs)
        if isinstance(layer, _QUANTIZED_AFTER):
            merged = copy(inputs if len(inputs) > 1 else inputs[0])
            return self.quantized(merged, layer.name)
        name = _relu_kind(layer) or _activation_name(
            getattr(layer, "activation", None))
        if name not in _ACTIVATIONS:
            raise ValueError(
                f"Layer {layer.name!r}: activation {name!r} cannot "
                "be quantized; accepted: relu, relu6, hard_swish, sigmoid."
            )
        return self.quantized(copy(inputs[0]), layer.name)

    def model(self, name):
        new_inputs = [self.tensors[id(t)][0] for t in self.source.inputs]
        try:
            new_outputs = [self.tensors[id(t)][1]
                           for t in self.source.outputs]
        except KeyError as error:
            raise ValueError(
                "A model output is a BatchNormalization or ReLU folded into "
                "a convolution that feeds other layers; quantize_model "
                "cannot rebuild it."
            ) from error
        twin = keras.Model(
            new_inputs[0],
            new_outputs[0] if len(new_outputs) == 1 else new_outputs,
            name=name,
        )
        for layer, weights in self.pending:
            _set_weights(layer, weights)
        return twin


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

"""The tfmot recipe, tf_keras side: rebuild, tfmot QAT, full-int8 TFLite.

For users who stay on tf_keras (Keras 2), and the baseline the native Keras 3
recipe (`keras_coordatt.quantization.quantize_model`) is compared with.

Importing this module imports tf_keras and TensorFlow Model Optimization and
sets `TF_USE_LEGACY_KERAS=1` in the process environment (tfmot does so
itself): do it only in a process meant for tf_keras. From Keras 3, call
`keras_coordatt.quantization.tfmot_quantize`, which runs this module in a
subprocess:

    python -m keras_coordatt.quantization.tfmot_recipe \\
        --description DIR --data data.npz --epochs 2 \\
        --output model_int8.tflite --json report.json

`DIR` holds `description.json` and `weights.npz`, written from the Keras 3
model by `keras_coordatt.quantization.export_tf_keras_description`;
`data.npz` holds `x_train`, `y_train` and optionally `x_test`, `y_test`
(preprocessed images, integer labels) and `parity_x` (images whose float
outputs are written to `--outputs`).

The rebuilt network is the Keras 3 one layer for layer, with each
`CoordinateAttention` spelled out in plain tf_keras layers that tfmot can
wrap (the authors' layout, with the two pooled strips concatenated around
the shared 1x1 convolution + BatchNorm):

    pool_h = StripPool(2)(x)                  (B, H, 1, C)
    pool_w = StripPool(1)(x)                  (B, W, 1, C)
    y = Concatenate(1)([pool_h, pool_w])      (B, H + W, 1, C)
    y = HardSwish()(BatchNormalization()(Conv2D(hidden, 1)(y)))
    y_h, y_w = StripSplit("h"), StripSplit("w")  (B, H, 1, c), (B, 1, W, c)
    a_h = Activation("sigmoid")(Conv2D(C, 1)(y_h))
    a_w = Activation("sigmoid")(Conv2D(C, 1)(y_w))
    out = Multiply()([Multiply()([x, a_h]), a_w])

and these custom QuantizeConfigs (tfmot's default scheme knows none of the
custom layers, nor `Multiply`):

- `PassThroughQuantizeConfig` for the pools and the splits: no quantizer of
  their own; the pools take the concat's range (TFLite's int8 concatenation
  wants one scale for its inputs and output; the converter adds one int8
  requantize after the W strip's transpose), the splits keep the
  hard-swish's;
- `OutputQuantizeConfig` (per-tensor, moving-average range) for the
  concat, the hard-swish and both products;
- `FixedRangeQuantizeConfig(0, 255/256)` for the sigmoid gates: the scale
  1/256 and zero point -128 of TFLite's int8 LOGISTIC, so that training
  sees the rounding the int8 kernel does.

Everything else (conv + BN + ReLU6 folding patterns, Add, pooling, Dense)
uses tfmot's default 8-bit scheme, as a tf_keras user gets it, which makes
this recipe the baseline of the native one. Two of its traits show in the
results: activation ranges start at [-6, 6] and move by an EMA of decay
0.999 (no calibration step), and depthwise kernels are fake-quantized per
tensor with BatchNorm kept apart during training, then folded and
re-quantized per channel by the converter, so the TFLite model does not run
exactly the depthwise weights QAT trained.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from keras_coordatt.quantization.tfmot_bridge import DESCRIPTION_FILE
from keras_coordatt.quantization.tfmot_bridge import FORMAT
from keras_coordatt.quantization.tfmot_bridge import INSTALL_HINT
from keras_coordatt.quantization.tfmot_bridge import WEIGHTS_FILE

# tfmot switches TensorFlow to tf_keras for this whole process.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
try:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras
except ImportError as _error:  # pragma: no cover - depends on the extra
    IMPORT_ERROR = ImportError(
        "The tfmot recipe needs TensorFlow Model Optimization and tf_keras: "
        f"`{INSTALL_HINT}`. ({_error})"
    )
else:
    IMPORT_ERROR = None

# The range TFLite's int8 LOGISTIC and SOFTMAX outputs use: scale 1/256,
# zero point -128.
SIGMOID_RANGE = (0.0, 255.0 / 256.0)
_PACKAGE = "keras_coordatt_tfmot"


def _require():
    if IMPORT_ERROR is not None:
        raise IMPORT_ERROR


if IMPORT_ERROR is None:
    _quantizers = tfmot.quantization.keras.quantizers

    @tf_keras.utils.register_keras_serializable(package=_PACKAGE)
    class StripPool(tf_keras.layers.Layer):
        """Average over one spatial axis of an NHWC map, as a strip.

        `axis=2` averages the width: `(B, H, 1, C)`. `axis=1` averages the
        height and lays the result out as `(B, W, 1, C)`, so that both
        strips concatenate along axis 1.
        """

        def __init__(self, axis, **kwargs):
            super().__init__(**kwargs)
            if axis not in (1, 2):
                raise ValueError(
                    f"`axis` must be 1 or 2. Received: axis={axis!r}"
                )
            self.axis = axis

        def call(self, inputs):
            pooled = tf.reduce_mean(inputs, axis=self.axis, keepdims=True)
            if self.axis == 1:
                pooled = tf.transpose(pooled, (0, 2, 1, 3))
            return pooled

        def compute_output_shape(self, input_shape):
            shape = tf.TensorShape(input_shape).as_list()
            length = shape[1] if self.axis == 2 else shape[2]
            return tf.TensorShape([shape[0], length, 1, shape[3]])

        def get_config(self):
            return {**super().get_config(), "axis": self.axis}

    @tf_keras.utils.register_keras_serializable(package=_PACKAGE)
    class StripSplit(tf_keras.layers.Layer):
        """Splits the joint `(B, H + W, 1, c)` encoding back into a strip.

        Called on `[joint, pooled_h]` (the H strip gives H): `part="h"`
        returns `(B, H, 1, c)`, `part="w"` returns `(B, 1, W, c)`.
        """

        def __init__(self, part, **kwargs):
            super().__init__(**kwargs)
            if part not in ("h", "w"):
                raise ValueError(
                    f"`part` must be 'h' or 'w'. Received: part={part!r}"
                )
            self.part = part

        def call(self, inputs):
            joint, reference = inputs
            length = reference.shape[1]
            if length is None:
                length = tf.shape(reference)[1]
            if self.part == "h":
                return joint[:, :length]
            return tf.transpose(joint[:, length:], (0, 2, 1, 3))

        def compute_output_shape(self, input_shape):
            joint, reference = [tf.TensorShape(s).as_list()
                                for s in input_shape]
            if self.part == "h":
                return tf.TensorShape([joint[0], reference[1], 1, joint[3]])
            width = None if None in (joint[1], reference[1]) else \
                joint[1] - reference[1]
            return tf.TensorShape([joint[0], 1, width, joint[3]])

        def get_config(self):
            return {**super().get_config(), "part": self.part}

    @tf_keras.utils.register_keras_serializable(package=_PACKAGE)
    class HardSwish(tf_keras.layers.Layer):
        """`x * relu6(x + 3) / 6`, Keras 3's `hard_swish` (TFLite HARD_SWISH).
        """

        def call(self, inputs):
            return inputs * (tf.nn.relu6(inputs + 3.0) / 6.0)

        def compute_output_shape(self, input_shape):
            return input_shape

    class _Config(tfmot.quantization.keras.QuantizeConfig):
        """A QuantizeConfig without weights or activation attributes."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_config(self):
            return {}

    @tf_keras.utils.register_keras_serializable(package=_PACKAGE)
    class OutputQuantizeConfig(_Config):
        """Quantizes the layer's output: per tensor, asymmetric int8, range
        tracked by moving averages (tfmot's activation quantizer)."""

        def get_output_quantizers(self, layer):
            return [_quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False,
                narrow_range=False)]

    @tf_keras.utils.register_keras_serializable(package=_PACKAGE)
    class PassThroughQuantizeConfig(_Config):
        """No quantizer: a layout op that keeps its input's quantization (or
        takes the one of the op it feeds, as concat inputs do)."""

        def get_output_quantizers(self, layer):
            return []

    @tf_keras.utils.register_keras_serializable(package=_PACKAGE)
    class FixedRangeQuantizeConfig(_Config):
        """Quantizes the output to a fixed range (default: the sigmoid's)."""

        def __init__(self, low=SIGMOID_RANGE[0], high=SIGMOID_RANGE[1]):
            self.low = float(low)
            self.high = float(high)

        def get_output_quantizers(self, layer):
            return [_quantizers.FixedQuantizer(
                num_bits=8, init_min=self.low, init_max=self.high,
                narrow_range=False)]

        def get_config(self):
            return {"low": self.low, "high": self.high}

    CUSTOM_OBJECTS = {
        "StripPool": StripPool,
        "StripSplit": StripSplit,
        "HardSwish": HardSwish,
        "OutputQuantizeConfig": OutputQuantizeConfig,
        "PassThroughQuantizeConfig": PassThroughQuantizeConfig,
        "FixedRangeQuantizeConfig": FixedRangeQuantizeConfig,
    }


# ------------------------------------------------------------- rebuild


def _load_description(description):
    if isinstance(description, (str, os.PathLike)):
        directory = os.fspath(description)
        with open(os.path.join(directory, DESCRIPTION_FILE),
                  encoding="utf-8") as f:
            description = json.load(f)
        with np.load(os.path.join(directory, WEIGHTS_FILE)) as data:
            weights = {k: data[k] for k in data.files}
        return description, weights
    raise ValueError(
        "`description` must be the folder written by "
        "`export_tf_keras_description`. "
        f"Received: {type(description).__name__}"
    )


def _activation_layer(name, layer_name):
    if name == "hard_silu":
        return HardSwish(name=layer_name)
    return tf_keras.layers.Activation(name, name=layer_name)


def _build_layer(spec):
    cfg, name, L = spec["config"], spec["name"], tf_keras.layers
    kind = spec["class_name"]
    if kind == "Conv2D":
        return L.Conv2D(cfg["filters"], cfg["kernel_size"],
                        strides=cfg["strides"], padding=cfg["padding"],
                        use_bias=cfg["use_bias"],
                        activation=cfg["activation"], name=name)
    if kind == "DepthwiseConv2D":
        return L.DepthwiseConv2D(cfg["kernel_size"], strides=cfg["strides"],
                                 padding=cfg["padding"],
                                 depth_multiplier=cfg["depth_multiplier"],
                                 use_bias=cfg["use_bias"],
                                 activation=cfg["activation"], name=name)
    if kind == "BatchNormalization":
        return L.BatchNormalization(name=name, **cfg)
    if kind == "Dense":
        return L.Dense(cfg["units"], activation=cfg["activation"],
                       use_bias=cfg["use_bias"], name=name)
    if kind == "ReLU":
        return L.ReLU(name=name, **cfg)
    if kind == "Activation":
        return _activation_layer(cfg["activation"], name)
    if kind == "ZeroPadding2D":
        return L.ZeroPadding2D(tuple(tuple(p) for p in cfg["padding"]),
                               name=name)
    if kind in ("Add", "Multiply", "Flatten"):
        return getattr(L, kind)(name=name)
    if kind == "Concatenate":
        return L.Concatenate(axis=cfg["axis"], name=name)
    if kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return getattr(L, kind)(keepdims=cfg["keepdims"], name=name)
    if kind in ("AveragePooling2D", "MaxPooling2D"):
        return getattr(L, kind)(cfg["pool_size"], strides=cfg["strides"],
                                padding=cfg["padding"], name=name)
    if kind == "Dropout":
        return L.Dropout(cfg["rate"], name=name)
    if kind == "Reshape":
        return L.Reshape(tuple(cfg["target_shape"]), name=name)
    raise ValueError(f"Layer {name!r}: unknown class {kind!r} in the "
                     "description.")


def _coordinate_attention(x, spec):
    """The CA block in tf_keras layers; returns `(output, assignments)`."""
    n, cfg, L = spec["name"], spec["config"], tf_keras.layers
    conv = L.Conv2D(cfg["hidden_channels"], 1, name=f"{n}_conv")
    bn = L.BatchNormalization(name=f"{n}_bn", **cfg["bn"])
    conv_h = L.Conv2D(cfg["channels"], 1, name=f"{n}_conv_h")
    conv_w = L.Conv2D(cfg["channels"], 1, name=f"{n}_conv_w")
    pool_h = StripPool(2, name=f"{n}_pool_h")(x)
    pool_w = StripPool(1, name=f"{n}_pool_w")(x)
    y = L.Concatenate(axis=1, name=f"{n}_concat")([pool_h, pool_w])
    y = HardSwish(name=f"{n}_hswish")(bn(conv(y)))
    y_h = StripSplit("h", name=f"{n}_split_h")([y, pool_h])
    y_w = StripSplit("w", name=f"{n}_split_w")([y, pool_h])
    a_h = L.Activation("sigmoid", name=f"{n}_gate_h")(conv_h(y_h))
    a_w = L.Activation("sigmoid", name=f"{n}_gate_w")(conv_w(y_w))
    out = L.Multiply(name=f"{n}_mul_h")([x, a_h])
    out = L.Multiply(name=f"{n}_mul_w")([out, a_w])
    assignments = [(conv, f"{n}/conv"), (bn, f"{n}/bn"),
                   (conv_h, f"{n}/conv_h"), (conv_w, f"{n}/conv_w")]
    return out, assignments


def _assign(layer, prefix, weights):
    """Copies the described weights of one layer into its tf_keras twin."""
    names = {
        "kernel": "depthwise_kernel" if isinstance(
            layer, tf_keras.layers.DepthwiseConv2D) else "kernel",
        "bias": "bias", "gamma": "gamma", "beta": "beta",
        "moving_mean": "moving_mean", "moving_variance": "moving_variance",
    }
    expected = {n for n in names if getattr(layer, names[n], None)
                is not None}
    given = {k[len(prefix) + 1:] for k in weights
             if k.startswith(prefix + "/") and "/" not in k[len(prefix) + 1:]}
    if given != expected:
        raise ValueError(
            f"Layer {layer.name!r}: the description holds weights "
            f"{sorted(given)}, the tf_keras layer expects {sorted(expected)}."
        )
    for key in expected:
        variable = getattr(layer, names[key])
        value = weights[f"{prefix}/{key}"]
        if tuple(variable.shape) != value.shape:
            raise ValueError(
                f"Layer {layer.name!r}: weight {key!r} has shape "
                f"{value.shape}, the tf_keras layer expects "
                f"{tuple(variable.shape)}."
            )
        variable.assign(value)


def build_tf_keras_model(description):
    """Rebuilds a described Keras 3 model in tf_keras, weights transferred.

    Args:
        description: the folder written by
            `keras_coordatt.quantization.export_tf_keras_description`.

    Returns:
        A functional `tf_keras.Model` computing the same function in float
        (each `CoordinateAttention` spelled out in tf_keras layers, see the
        module docstring), with the same layer names elsewhere.
    """
    _require()
    description, weights = _load_description(description)
    if description.get("format") != FORMAT:
        raise ValueError(
            f"Not a keras_coordatt tf_keras description: format "
            f"{description.get('format')!r} (expected {FORMAT!r})."
        )
    tensors, assignments, model_input = {}, [], None
    for spec in description["layers"]:
        name = spec["name"]
        if spec["class_name"] == "InputLayer":
            if model_input is not None:
                raise ValueError("Only single-input models are supported.")
            cfg = spec["config"]
            model_input = tf_keras.Input(tuple(cfg["shape"]), name=name,
                                         dtype=cfg.get("dtype", "float32"))
            tensors[name] = model_input
            continue
        inputs = [tensors[i] for i in spec["inbound"]]
        if spec["class_name"] == "CoordinateAttention":
            tensors[name], parts = _coordinate_attention(inputs[0], spec)
            assignments.extend(parts)
            continue
        layer = _build_layer(spec)
        tensors[name] = layer(inputs if len(inputs) > 1 else inputs[0])
        if any(k.startswith(name + "/") for k in weights):
            assignments.append((layer, name))
    outputs = [tensors[name] for name in description["outputs"]]
    model = tf_keras.Model(model_input,
                           outputs[0] if len(outputs) == 1 else outputs,
                           name=description["name"])
    for layer, prefix in assignments:
        _assign(layer, prefix, weights)
    return model


# ----------------------------------------------------------------- QAT


def _quantize_config(layer):
    """The custom QuantizeConfig of a CA layer, or None (tfmot default)."""
    if isinstance(layer, (StripPool, StripSplit)):
        return PassThroughQuantizeConfig()
    if isinstance(layer, (HardSwish, tf_keras.layers.Multiply)):
        return OutputQuantizeConfig()
    if isinstance(layer, tf_keras.layers.Concatenate):
        return OutputQuantizeConfig()
    if isinstance(layer, tf_keras.layers.Activation):
        activation = getattr(layer.activation, "__name__", "")
        if activation == "sigmoid":
            return FixedRangeQuantizeConfig(*SIGMOID_RANGE)
    return None


def quantize_tf_keras_model(model):
    """Applies tfmot QAT to a tf_keras model from `build_tf_keras_model`.

    Annotates every layer (custom QuantizeConfigs for the coordinate
    attention ops and `Multiply`, tfmot's default 8-bit scheme elsewhere)
    and calls `tfmot.quantization.keras.quantize_apply` in a
    `quantize_scope` holding the custom layers and configs.

    Args:
        model: a functional `tf_keras.Model`.

    Returns:
        The quantization-aware tf_keras model (weights copied from `model`).
    """
    _require()
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer):
        config = _quantize_config(layer)
        if config is None:
            return annotate(layer)
        return annotate(layer, quantize_config=config)

    annotated = tf_keras.models.clone_model(model, clone_function=clone)
    with tfmot.quantization.keras.quantize_scope(CUSTOM_OBJECTS):
        return tfmot.quantization.keras.quantize_apply(annotated)


def _output_is_probability(model):
    layer = model.layers[-1]
    inner = getattr(layer, "layer", layer)  # QuantizeWrapper
    activation = getattr(inner, "activation", None)
    name = getattr(activation, "__name__", "") or getattr(
        getattr(activation, "activation", None), "__name__", "")
    return name == "softmax"


def fine_tune(qat_model, x, y, epochs=1, batch_size=32, learning_rate=1e-4,
              verbose=0):
    """Compiles (Adam, sparse categorical cross-entropy) and fits."""
    _require()
    qat_model.compile(
        tf_keras.optimizers.Adam(learning_rate),
        tf_keras.losses.SparseCategoricalCrossentropy(
            from_logits=not _output_is_probability(qat_model)),
        metrics=["accuracy"],
    )
    if not epochs:
        return {}
    history = qat_model.fit(x, y, batch_size=batch_size, epochs=epochs,
                            verbose=verbose)
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def _representative(images, count):
    def generator():
        for image in images[:count]:
            yield [image[None].astype("float32")]

    return generator


def convert_tf_keras_qat(qat_model, representative_data, int8_io=False,
                         representative_samples=8):
    """Converts a tfmot QAT model to a full-int8 TFLite model.

    `Optimize.DEFAULT` with `TFLITE_BUILTINS_INT8` only (no float fallback,
    no Flex op); the result is checked with
    `keras_coordatt.quantization.check_int8`.

    TF 2.21's converter validates its options before it looks at the graph,
    so `TFLITE_BUILTINS_INT8` needs a representative dataset even for a
    fake-quantized model. The scales still come from the QAT ranges: with or
    without these images (and with `TFLITE_BUILTINS`), the converted models
    are identical, tensor for tensor; only a tensor without a fake-quant
    range would be calibrated on them.

    Args:
        qat_model: the model returned by `quantize_tf_keras_model`.
        representative_data: images `(N, H, W, C)` preprocessed for the
            model (a few training images).
        int8_io: whether the model's input and output are int8.
        representative_samples: int >= 1, how many images to use.

    Returns:
        The TFLite flatbuffer bytes.
    """
    _require()
    from keras_coordatt.quantization.convert import check_int8

    if isinstance(representative_samples, bool) or not isinstance(
        representative_samples, int
    ) or representative_samples < 1:
        raise ValueError(
            "`representative_samples` must be an integer >= 1. "
            f"Received: representative_samples={representative_samples!r}"
        )
    representative_data = np.asarray(representative_data, dtype="float32")
    if representative_data.ndim != 4 or not len(representative_data):
        raise ValueError(
            "`representative_data` must be a non-empty (N, H, W, C) array. "
            f"Received: shape {representative_data.shape}"
        )
    shape = (1,) + tuple(qat_model.inputs[0].shape[1:])
    if None in shape:
        raise ValueError(
            "The model's input needs a static shape to convert to int8 "
            f"TFLite. Received: input shape {tuple(qat_model.inputs[0].shape)}"
        )

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32,
                                                name="image")])
    def serve(images):
        return qat_model(images, training=False)

    # No trackable object: the converter then freezes the function's graph
    # directly instead of saving the tf_keras model as a SavedModel first
    # (which traces every wrapped layer: minutes for a MobileNetV2CA).
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()]
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8
    ]
    converter.representative_dataset = _representative(
        representative_data, representative_samples
    )
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    model_bytes = converter.convert()
    check_int8(model_bytes, int8_io=int8_io)
    return model_bytes


# ---------------------------------------------------------------- main


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m keras_coordatt.quantization.tfmot_recipe",
        description="tfmot QAT of a keras_coordatt model rebuilt in "
                    "tf_keras, converted to full-int8 TFLite.",
    )
    p.add_argument("--description", required=True,
                   help="folder with description.json and weights.npz")
    p.add_argument("--data", required=True,
                   help=".npz with x_train, y_train [x_test, y_test] "
                        "[parity_x]")
    p.add_argument("--float-only", action="store_true",
                   help="only rebuild and write the float outputs on "
                        "parity_x to --outputs")
    p.add_argument("--outputs", default=None,
                   help=".npz for the float outputs on parity_x")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--representative-samples", type=int, default=8,
                   help="training images given to the converter (TF 2.21 "
                        "demands some for TFLITE_BUILTINS_INT8; the QAT "
                        "ranges set the scales)")
    p.add_argument("--int8-io", action="store_true")
    p.add_argument("--output", default=None, help="int8 .tflite path")
    p.add_argument("--json", default=None, help="report path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2)
    return p


def run(args):
    """The recipe; returns the report dict (also written to --json)."""
    from keras_coordatt.quantization.convert import check_int8
    from keras_coordatt.quantization.evaluate import evaluate_tflite

    tf_keras.utils.set_random_seed(args.seed)
    data = np.load(args.data)
    timings = {}
    start = time.perf_counter()
    float_model = build_tf_keras_model(args.description)
    timings["rebuild_s"] = time.perf_counter() - start
    if "parity_x" in data.files and args.outputs:
        np.savez(args.outputs, float_outputs=float_model.predict(
            data["parity_x"], verbose=0))
    if args.float_only:
        return {"timings": timings}
    x_train, y_train = data["x_train"], data["y_train"]
    has_test = "x_test" in data.files
    report = {"tfmot_version": tfmot.__version__,
              "tf_keras_version": tf_keras.__version__,
              "tensorflow_version": tf.__version__}
    if has_test:
        x_test, y_test = data["x_test"], data["y_test"]
        report["float_accuracy"] = float(np.mean(
            float_model.predict(x_test, verbose=0).argmax(-1) == y_test))
        report["num_test"] = int(len(y_test))
    start = time.perf_counter()
    qat_model = quantize_tf_keras_model(float_model)
    timings["quantize_apply_s"] = time.perf_counter() - start
    report["wrapped_layers"] = sum(
        type(layer).__name__.startswith("QuantizeWrapper")
        for layer in qat_model.layers)
    start = time.perf_counter()
    report["history"] = fine_tune(
        qat_model, x_train, y_train, epochs=args.epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate,
        verbose=args.verbose,
    )
    timings["fit_s"] = time.perf_counter() - start
    start = time.perf_counter()
    blob = convert_tf_keras_qat(
        qat_model, x_train, int8_io=args.int8_io,
        representative_samples=args.representative_samples,
    )
    timings["convert_s"] = time.perf_counter() - start
    check = check_int8(blob, int8_io=args.int8_io)
    report.update({
        "tflite_size_bytes": len(blob),
        "op_counts": check["op_counts"],
        "tensor_types": check["tensor_types"],
        "input_types": check["input_types"],
        "output_types": check["output_types"],
    })
    if has_test:
        evaluation = evaluate_tflite(blob, (x_test, y_test))
        keras_pred = qat_model.predict(x_test, verbose=0).argmax(-1)
        report["int8_accuracy"] = evaluation["accuracy"]
        report["qat_keras_accuracy"] = float(np.mean(keras_pred == y_test))
        report["agreement"] = float(np.mean(
            keras_pred == evaluation["predictions"]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)),
                    exist_ok=True)
        with open(args.output, "wb") as f:
            f.write(blob)
    report["timings"] = timings
    return report


def main(argv=None):
    """Entry point; exit status 0, 1 (error), 2 (usage), 3 (extra missing).
    """
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if IMPORT_ERROR is not None:
        print(str(IMPORT_ERROR), file=sys.stderr)
        return 3
    for flag, low in (("epochs", 0), ("representative_samples", 1),
                      ("batch_size", 1)):
        if getattr(args, flag) < low:
            print(f"--{flag.replace('_', '-')} must be >= {low}. Received: "
                  f"{getattr(args, flag)}", file=sys.stderr)
            return 2
    report = run(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

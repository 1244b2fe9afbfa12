"""The tfmot recipe, tf_keras side: the network in tf_keras, tfmot QAT,
full-int8 TFLite.

For users who stay on tf_keras (Keras 2), and the baseline the native Keras 3
recipe (`keras_coordatt.quantization.quantize_model`) is compared with.

TensorFlow Model Optimization 0.8 wraps tf_keras layers only, and a Keras 3
model cannot be loaded as a tf_keras one. So this module builds the network
again with the constructor that built the Keras 3 model, called with
`TF_KERAS`, tf_keras's layer namespace (`applications.blocks.Namespace`):
the stage tables and block functions are the Keras 3 ones, the layer names
too, and the weights are copied in by name. Its one tf_keras-specific layer
is `CoordinateAttention`, the attention block spelled out in plain tf_keras
layers that tfmot can wrap (the authors' layout, with the two pooled strips
concatenated around the shared 1x1 convolution + BatchNorm):

    pool_h = StripPool(2)(x)                  (B, H, 1, C)
    pool_w = StripPool(1)(x)                  (B, W, 1, C)
    y = Concatenate(1)([pool_h, pool_w])      (B, H + W, 1, C)
    y = HardSwish()(BatchNormalization()(Conv2D(hidden, 1)(y)))
    y_h, y_w = StripSplit("h"), StripSplit("w")  (B, H, 1, c), (B, 1, W, c)
    a_h = Activation("sigmoid")(Conv2D(C, 1)(y_h))
    a_w = Activation("sigmoid")(Conv2D(C, 1)(y_w))
    out = Multiply()([Multiply()([x, a_h]), a_w])

with these custom `OutputQuantizeConfig`s (tfmot's default scheme knows
none of the custom layers, nor `Multiply`):

- `"pass"` for the pools and the splits: no quantizer of their own; the
  pools take the concat's range (TFLite's int8 concatenation wants one
  scale for its inputs and output; the converter adds one int8 requantize
  after the W strip's transpose), the splits keep the hard-swish's;
- `"moving_average"` (per-tensor range) for the concat, the hard-swish and
  both products;
- `"sigmoid"`, the fixed range [0, 255/256], for the gates: the scale 1/256
  and zero point -128 of TFLite's int8 LOGISTIC, so that training sees the
  rounding the int8 kernel does.

Everything else (conv + BN + ReLU6 folding patterns, Add, pooling, Dense)
uses tfmot's default 8-bit scheme, as a tf_keras user gets it, which makes
this recipe the baseline of the native one. Two of its traits show in the
results: activation ranges start at [-6, 6] and move by an EMA of decay
0.999 (no calibration step), and depthwise kernels are fake-quantized per
tensor with BatchNorm kept apart during training, then folded and
re-quantized per channel by the converter, so the TFLite model does not run
exactly the depthwise weights QAT trained.

Importing this module imports tf_keras and tfmot and sets
`TF_USE_LEGACY_KERAS=1` in the process environment (tfmot does so itself):
do it only in a process meant for tf_keras. From Keras 3, call
`keras_coordatt.quantization.tfmot_quantize`, which runs

    python -m keras_coordatt.quantization.tfmot_recipe \\
        --model DIR --data data.npz --epochs 2 \\
        --output model_int8.tflite --json report.json

`DIR` holds `application.json` and `weights.npz`, written by
`keras_coordatt.quantization.tfmot_bridge.export_for_tf_keras`; `data.npz`
holds `x_train`, `y_train` and optionally `x_test`, `y_test` (preprocessed
images, integer labels) and `parity_x` (images whose float outputs are
written to `--outputs`).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from keras_coordatt.applications.arguments import check_file_architecture
from keras_coordatt.applications.blocks import Namespace
from keras_coordatt.applications.registry import get_application
from keras_coordatt.quantization.tfmot_bridge import APPLICATION_FILE
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
# The constructor arguments `application.json` may set.
_ARGUMENTS = ("input_shape", "alpha", "include_top", "pooling", "classes",
              "classifier_activation", "name", "reduction", "attention")


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
            self.axis = axis

        def call(self, inputs):
            pooled = tf.reduce_mean(inputs, axis=self.axis, keepdims=True)
            if self.axis == 1:
                pooled = tf.transpose(pooled, (0, 2, 1, 3))
            return pooled

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
            self.part = part

        def call(self, inputs):
            joint, reference = inputs
            length = reference.shape[1]
            if length is None:
                length = tf.shape(reference)[1]
            if self.part == "h":
                return joint[:, :length]
            return tf.transpose(joint[:, length:], (0, 2, 1, 3))

        def get_config(self):
            return {**super().get_config(), "part": self.part}

    @tf_keras.utils.register_keras_serializable(package=_PACKAGE)
    class HardSwish(tf_keras.layers.Layer):
        """`x * relu6(x + 3) / 6`, Keras 3's `hard_swish` (TFLite HARD_SWISH).
        """

        def call(self, inputs):
            return inputs * (tf.nn.relu6(inputs + 3.0) / 6.0)

    @tf_keras.utils.register_keras_serializable(package=_PACKAGE)
    class OutputQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """Quantizes the output of a layer without weights, by `mode`:
        `"moving_average"` (per tensor, asymmetric int8, the range tracked
        by moving averages: tfmot's activation quantizer), `"sigmoid"`
        (the fixed `SIGMOID_RANGE`) or `"pass"` (no quantizer: a layout op
        that keeps its input's quantization, or takes the one of the op it
        feeds, as concat inputs do)."""

        def __init__(self, mode="moving_average"):
            self.mode = mode

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            if self.mode == "pass":
                return []
            if self.mode == "sigmoid":
                return [_quantizers.FixedQuantizer(
                    num_bits=8, init_min=SIGMOID_RANGE[0],
                    init_max=SIGMOID_RANGE[1], narrow_range=False)]
            return [_quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False,
                narrow_range=False)]

        def get_config(self):
            return {"mode": self.mode}

    CUSTOM_OBJECTS = {cls.__name__: cls for cls in (
        StripPool, StripSplit, HardSwish, OutputQuantizeConfig)}


class CoordinateAttention:
    """`keras_coordatt.layers.CoordinateAttention` in tf_keras layers.

    Called on a channels_last tensor, it adds the layers of the module
    docstring's graph. Its convolutions and BatchNorm are named
    `{name}_conv`, `{name}_bn`, `{name}_conv_h`, `{name}_conv_w`: the keys
    under which `tfmot_bridge.weight_arrays` stores the Keras 3 layer's
    sublayers `conv`, `bn`, `conv_h`, `conv_w`. The Keras 3 layer folds the
    hard-swish's 1/6 into the gate kernels at call time; its stored kernels
    are the plain ones this graph uses.

    Args:
        reduction, min_channels: as the Keras 3 layer's (hard-swish
            encoding, BatchNorm momentum 0.9 and epsilon 1e-5, as there).
        name: the Keras 3 layer's name.
    """

    def __init__(self, reduction=32, min_channels=8, name="ca"):
        self.reduction = reduction
        self.min_channels = min_channels
        self.name = name

    def __call__(self, x):
        n, L = self.name, tf_keras.layers
        channels = x.shape[-1]
        hidden = max(self.min_channels, channels // self.reduction)
        pool_h = StripPool(2, name=f"{n}_pool_h")(x)
        pool_w = StripPool(1, name=f"{n}_pool_w")(x)
        y = L.Concatenate(axis=1, name=f"{n}_concat")([pool_h, pool_w])
        y = L.Conv2D(hidden, 1, name=f"{n}_conv")(y)
        y = L.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                 name=f"{n}_bn")(y)
        y = HardSwish(name=f"{n}_hswish")(y)
        gates = []
        for part in ("h", "w"):
            strip = StripSplit(part, name=f"{n}_split_{part}")([y, pool_h])
            logits = L.Conv2D(channels, 1, name=f"{n}_conv_{part}")(strip)
            gates.append(L.Activation("sigmoid",
                                      name=f"{n}_gate_{part}")(logits))
        out = L.Multiply(name=f"{n}_mul_h")([x, gates[0]])
        return L.Multiply(name=f"{n}_mul_w")([out, gates[1]])


def _tf_keras_attentions():
    """Kind -> tf_keras twin of every registered kind that has one. A twin
    defined here is taken from this module's globals: run as `python -m`,
    this module is `__main__`, and importing it by name would load a second
    copy whose layer classes the saved models do not name."""
    from keras_coordatt.layers.registry import attention_specs

    this = "keras_coordatt.quantization.tfmot_recipe"
    twins = {}
    for spec in attention_specs():
        if spec.tf_keras:
            module, _, attr = spec.tf_keras.partition(":")
            twins[spec.name] = (globals()[attr] if module == this
                                else spec.tf_keras_layer())
    return twins


if IMPORT_ERROR is None:
    TF_KERAS = Namespace(tf_keras.layers, tf_keras.Model,
                         _tf_keras_attentions(), lambda: "channels_last")


# ------------------------------------------------------------ the network


def copy_weights(model, arrays):
    """Assigns `arrays` (`tfmot_bridge.weight_arrays` keys) to `model`.

    Every weight of `model` needs an array of its shape under
    `{layer name}/{weight}` (tf_keras's `depthwise_kernel` is Keras 3's
    `kernel`), and every array a weight.

    Raises:
        ValueError: listing every missing, unused and misshapen array.
    """
    targets = {}
    for layer in model.layers:
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            short = "kernel" if short == "depthwise_kernel" else short
            targets[f"{layer.name}/{short}"] = weight
    problems = [f"no array for {key}" for key in sorted(
        targets.keys() - arrays.keys())]
    problems += [f"no weight for {key}" for key in sorted(
        arrays.keys() - targets.keys())]
    problems += [
        f"{key} has shape {arrays[key].shape}, the tf_keras weight "
        f"{tuple(targets[key].shape)}"
        for key in sorted(targets.keys() & arrays.keys())
        if arrays[key].shape != tuple(targets[key].shape)]
    if problems:
        raise ValueError(
            f"The weights do not fit the tf_keras network {model.name!r} "
            f"({len(problems)} problems): " + "; ".join(problems))
    for key, weight in targets.items():
        weight.assign(arrays[key])


def build_tf_keras_model(directory):
    """The tf_keras network of a Keras 3 model, weights copied in.

    Args:
        directory: the folder `tfmot_bridge.export_for_tf_keras` wrote.

    Returns:
        The functional `tf_keras.Model` that the registered constructor of
        `application.json` builds with `TF_KERAS`, holding the arrays of
        `weights.npz` (`copy_weights`).
    """
    _require()
    with open(os.path.join(directory, APPLICATION_FILE),
              encoding="utf-8") as f:
        spec = json.load(f)
    arguments = dict(spec.get("arguments") or {})
    unknown = sorted(set(arguments) - set(_ARGUMENTS))
    if unknown:
        raise ValueError(
            f"{APPLICATION_FILE}: unknown constructor arguments. Received: "
            f"{unknown}; accepted: {', '.join(_ARGUMENTS)}"
        )
    if "input_shape" in arguments:
        arguments["input_shape"] = tuple(arguments["input_shape"])
    check_file_architecture(
        os.path.join(directory, APPLICATION_FILE),
        alpha=arguments.get("alpha"),
        image_shape=arguments.get("input_shape"))
    constructor = get_application(spec.get("application"))
    model = constructor(weights=None, namespace=TF_KERAS, **arguments)
    with np.load(os.path.join(directory, WEIGHTS_FILE),
                 allow_pickle=False) as data:
        copy_weights(model, {key: data[key] for key in data.files})
    return model


# ------------------------------------------------------------------- QAT


def _quantize_config(layer):
    """The custom QuantizeConfig of a CA layer, or None (tfmot default)."""
    if isinstance(layer, (StripPool, StripSplit)):
        return OutputQuantizeConfig("pass")
    if isinstance(layer, (HardSwish, tf_keras.layers.Multiply,
                          tf_keras.layers.Concatenate)):
        return OutputQuantizeConfig()
    if isinstance(layer, tf_keras.layers.Activation):
        if getattr(layer.activation, "__name__", "") == "sigmoid":
            return OutputQuantizeConfig("sigmoid")
    return None


def quantize_tf_keras_model(model):
    """Applies tfmot QAT to a tf_keras model from `build_tf_keras_model`.

    Annotates every layer (custom QuantizeConfigs for the coordinate
    attention ops and `Multiply`, tfmot's default 8-bit scheme elsewhere)
    and calls `tfmot.quantization.keras.quantize_apply` in a
    `quantize_scope` holding the custom layers and configs.

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


def convert_tf_keras_qat(qat_model, representative_data, int8_io=False,
                         representative_samples=8):
    """Converts a tfmot QAT model to a full-int8 TFLite model.

    `Optimize.DEFAULT` with `TFLITE_BUILTINS_INT8` only (no float fallback,
    no Flex op), checked with `keras_coordatt.quantization.check_int8`.
    TF 2.21's converter demands a representative dataset for
    `TFLITE_BUILTINS_INT8` even for a fake-quantized model; the scales still
    come from the QAT ranges (with or without these images, and with
    `TFLITE_BUILTINS`, the converted models are identical, tensor for
    tensor): only a tensor without a fake-quant range would be calibrated.

    Args:
        qat_model: the model returned by `quantize_tf_keras_model`.
        representative_data: non-empty images `(N, H, W, C)` preprocessed
            for the model (a few training images).
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
    images = np.asarray(representative_data, dtype="float32")
    if images.ndim != 4 or not len(images):
        raise ValueError(
            "`representative_data` must be a non-empty (N, H, W, C) array. "
            f"Received: shape {images.shape}"
        )
    shape = (1,) + tuple(qat_model.inputs[0].shape[1:])
    if None in shape:
        raise ValueError(
            "The model's input needs a static shape to convert to int8 "
            f"TFLite. Received: input shape {tuple(qat_model.inputs[0].shape)}"
        )

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32,
                                                name="image")])
    def serve(batch):
        return qat_model(batch, training=False)

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
    converter.representative_dataset = lambda: (
        [image[None]] for image in images[:representative_samples])
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    model_bytes = converter.convert()
    check_int8(model_bytes, int8_io=int8_io)
    return model_bytes


# ------------------------------------------------------------------ main


def _at_least(low):
    def parse(text):
        if int(text) < low:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {low}. Received: {text}")
        return int(text)

    parse.__name__ = "integer"  # argparse's "invalid integer value" wording
    return parse


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m keras_coordatt.quantization.tfmot_recipe",
        description="tfmot QAT of a keras_coordatt network built in "
                    "tf_keras, converted to full-int8 TFLite.",
    )
    p.add_argument("--model", required=True,
                   help=f"folder with {APPLICATION_FILE} and {WEIGHTS_FILE}")
    p.add_argument("--data", required=True,
                   help=".npz with x_train, y_train [x_test, y_test] "
                        "[parity_x]")
    p.add_argument("--float-only", action="store_true",
                   help="only build the network and write its float "
                        "outputs on parity_x to --outputs")
    p.add_argument("--outputs", default=None,
                   help=".npz for the float outputs on parity_x")
    p.add_argument("--epochs", type=_at_least(0), default=1)
    p.add_argument("--batch-size", type=_at_least(1), default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--representative-samples", type=_at_least(1), default=8,
                   help="training images given to the converter (TF 2.21 "
                        "demands some for TFLITE_BUILTINS_INT8; the QAT "
                        "ranges set the scales)")
    p.add_argument("--int8-io", action="store_true")
    p.add_argument("--output", default=None, help="int8 .tflite path")
    p.add_argument("--json", default=None, help="report path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", type=int, default=2)
    return p


def _timed(timings, key, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    timings[key] = time.perf_counter() - start
    return result


def _accuracy(model, x, y):
    return float(np.mean(model.predict(x, verbose=0).argmax(-1) == y))


def _quantize_and_convert(args, float_model, data, timings):
    """QAT, fine-tune, int8 conversion; returns `(report, tflite bytes)`."""
    from keras_coordatt.quantization.convert import check_int8

    qat_model = _timed(timings, "quantize_apply_s", quantize_tf_keras_model,
                       float_model)
    report = {"wrapped_layers": sum(
        type(layer).__name__.startswith("QuantizeWrapper")
        for layer in qat_model.layers)}
    report["history"] = _timed(
        timings, "fit_s", fine_tune, qat_model, data["x_train"],
        data["y_train"], epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, verbose=args.verbose)
    blob = _timed(timings, "convert_s", convert_tf_keras_qat, qat_model,
                  data["x_train"], int8_io=args.int8_io,
                  representative_samples=args.representative_samples)
    check = check_int8(blob, int8_io=args.int8_io)
    report["tflite_size_bytes"] = len(blob)
    for key in ("op_counts", "tensor_types", "input_types", "output_types"):
        report[key] = check[key]
    if "x_test" in data:
        report["qat_keras_accuracy"] = _accuracy(qat_model, data["x_test"],
                                                 data["y_test"])
        report["qat_predictions"] = qat_model.predict(
            data["x_test"], verbose=0).argmax(-1)
    return report, blob


def run(args):
    """The recipe; returns the report dict (also written to --json)."""
    from keras_coordatt.quantization.evaluate import evaluate_tflite

    tf_keras.utils.set_random_seed(args.seed)
    with np.load(args.data, allow_pickle=False) as arrays:
        data = {key: arrays[key] for key in arrays.files}
    timings = {}
    float_model = _timed(timings, "rebuild_s", build_tf_keras_model,
                         args.model)
    if "parity_x" in data and args.outputs:
        np.savez(args.outputs, float_outputs=float_model.predict(
            data["parity_x"], verbose=0))
    if args.float_only:
        return {"timings": timings}
    report = {"tfmot_version": tfmot.__version__,
              "tf_keras_version": tf_keras.__version__,
              "tensorflow_version": tf.__version__}
    if "x_test" in data:
        report["float_accuracy"] = _accuracy(float_model, data["x_test"],
                                             data["y_test"])
        report["num_test"] = int(len(data["y_test"]))
    qat_report, blob = _quantize_and_convert(args, float_model, data,
                                             timings)
    report.update(qat_report)
    if "x_test" in data:
        evaluation = evaluate_tflite(blob, (data["x_test"], data["y_test"]))
        report["int8_accuracy"] = evaluation["accuracy"]
        report["agreement"] = float(np.mean(
            report.pop("qat_predictions") == evaluation["predictions"]))
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
    report = run(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

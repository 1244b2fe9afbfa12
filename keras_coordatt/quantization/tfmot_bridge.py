"""The Keras 3 side of the tfmot recipe: export a model, run tf_keras apart.

TensorFlow Model Optimization (tfmot 0.8) quantizes tf_keras (Keras 2)
models only, and importing it sets `TF_USE_LEGACY_KERAS=1` in the process
environment. A Keras 3 model and tf_keras cannot share a process, so the
recipe is split in two:

1. `export_tf_keras_description(model, directory)` (here, Keras 3) writes
   the functional graph as plain data: `description.json` (layers, their
   arguments and inbound layers) and `weights.npz` (numpy arrays);
2. `keras_coordatt.quantization.tfmot_recipe` (tf_keras + tfmot, run as
   `python -m keras_coordatt.quantization.tfmot_recipe`) rebuilds the same
   network in tf_keras from that description, applies tfmot QAT with custom
   QuantizeConfigs for the coordinate attention ops, fine-tunes it with
   `fit` and converts it to a full-int8 TFLite model.

`tfmot_quantize` and `tf_keras_float_outputs` run step 2 in a subprocess,
so a Keras 3 user calls plain functions and their own process never imports
tf_keras or tfmot, nor sees its environment change. Nothing here imports
TensorFlow.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from keras_coordatt.layers import CoordinateAttention
from keras_coordatt.quantization.qat import check_functional

FORMAT = "keras_coordatt.tf_keras_description"
FORMAT_VERSION = 1
DESCRIPTION_FILE = "description.json"
WEIGHTS_FILE = "weights.npz"
INSTALL_HINT = 'pip install "keras-coordatt[tfmot]"'
_EXTRA_MODULES = ("tensorflow_model_optimization", "tf_keras")

# Activations the tf_keras rebuild supports inside Conv2D/Dense/Activation
# (names as Keras 3 serializes them); tfmot quantizes these.
_ACTIVATIONS = ("linear", "relu", "relu6", "sigmoid", "softmax", "tanh",
                "hard_silu")


def _name(activation):
    name = keras.activations.serialize(activation)
    if isinstance(name, dict):
        name = name.get("config", name)
    return "hard_silu" if name == "hard_swish" else name


def _activation(layer, allowed=_ACTIVATIONS):
    name = _name(layer.activation)
    if name not in allowed:
        raise ValueError(
            f"Layer {layer.name!r}: activation {name!r} has no tf_keras "
            f"rebuild here. Accepted: {', '.join(allowed)}."
        )
    return name


def _channels_last(layer):
    fmt = getattr(layer, "data_format", "channels_last")
    if fmt != "channels_last":
        raise ValueError(
            "The tfmot recipe supports channels_last models only (TFLite's "
            f"layout). Received: layer {layer.name!r} with data_format="
            f"{fmt!r}"
        )


def _np(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable), dtype="float32")


def _conv_weights(layer):
    weights = {"kernel": _np(layer.kernel)}
    if layer.use_bias:
        weights["bias"] = _np(layer.bias)
    return weights


def _bn_weights(layer):
    weights = {"moving_mean": _np(layer.moving_mean),
               "moving_variance": _np(layer.moving_variance)}
    if layer.scale:
        weights["gamma"] = _np(layer.gamma)
    if layer.center:
        weights["beta"] = _np(layer.beta)
    return weights


def _bn_config(layer):
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        axis = list(axis)
        if len(axis) != 1:
            raise ValueError(
                f"Layer {layer.name!r}: BatchNormalization over several axes "
                f"is not supported. Received: axis={layer.axis}"
            )
        axis = axis[0]
    if axis not in (-1, 3):
        raise ValueError(
            f"Layer {layer.name!r}: BatchNormalization must normalize the "
            f"channels (last axis). Received: axis={layer.axis}"
        )
    return {"axis": -1, "momentum": float(layer.momentum),
            "epsilon": float(layer.epsilon), "center": bool(layer.center),
            "scale": bool(layer.scale)}


def _check_plain_conv(layer):
    _channels_last(layer)
    if tuple(layer.dilation_rate) not in ((1, 1),) or getattr(
        layer, "groups", 1
    ) != 1:
        raise ValueError(
            f"Layer {layer.name!r}: dilated or grouped convolutions are not "
            f"supported. Received: dilation_rate={layer.dilation_rate}, "
            f"groups={getattr(layer, 'groups', 1)}"
        )


def _describe_layer(layer):
    """`(class_name, config, weights)` of one layer for the tf_keras side."""
    cls = type(layer)
    L = keras.layers
    if isinstance(layer, CoordinateAttention):
        _channels_last(layer)
        if _name(layer.activation) != "hard_silu":
            raise ValueError(
                f"Layer {layer.name!r}: the tfmot recipe rebuilds "
                "CoordinateAttention with its default hard_swish activation "
                f"only. Received: activation={_name(layer.activation)!r}"
            )
        weights = {}
        for part in ("conv", "conv_h", "conv_w"):
            for key, value in _conv_weights(getattr(layer, part)).items():
                weights[f"{part}/{key}"] = value
        for key, value in _bn_weights(layer.bn).items():
            weights[f"bn/{key}"] = value
        config = {"channels": layer.channels,
                  "hidden_channels": layer.hidden_channels,
                  "bn": _bn_config(layer.bn)}
        return "CoordinateAttention", config, weights
    if cls is L.Conv2D:
        _check_plain_conv(layer)
        return "Conv2D", {
            "filters": layer.filters,
            "kernel_size": list(layer.kernel_size),
            "strides": list(layer.strides), "padding": layer.padding,
            "use_bias": bool(layer.use_bias),
            "activation": _activation(layer, ("linear", "relu", "sigmoid")),
        }, _conv_weights(layer)
    if cls is L.DepthwiseConv2D:
        _check_plain_conv(layer)
        return "DepthwiseConv2D", {
            "kernel_size": list(layer.kernel_size),
            "strides": list(layer.strides), "padding": layer.padding,
            "depth_multiplier": layer.depth_multiplier,
            "use_bias": bool(layer.use_bias),
            "activation": _activation(layer, ("linear", "relu")),
        }, _conv_weights(layer)
    if cls is L.BatchNormalization:
        return "BatchNormalization", _bn_config(layer), _bn_weights(layer)
    if cls is L.Dense:
        return "Dense", {
            "units": layer.units, "use_bias": bool(layer.use_bias),
            "activation": _activation(layer, ("linear", "relu", "softmax",
                                              "sigmoid")),
        }, _conv_weights(layer)
    if cls is L.ReLU:
        max_value = layer.max_value
        return "ReLU", {
            "max_value": None if max_value is None else float(max_value),
            "negative_slope": float(layer.negative_slope),
            "threshold": float(layer.threshold),
        }, {}
    if cls is L.Activation:
        return "Activation", {"activation": _activation(layer)}, {}
    if cls is L.ZeroPadding2D:
        _channels_last(layer)
        return "ZeroPadding2D", {
            "padding": [list(p) for p in layer.padding]
        }, {}
    if cls in (L.Add, L.Multiply):
        return cls.__name__, {}, {}
    if cls is L.Concatenate:
        return "Concatenate", {"axis": int(layer.axis)}, {}
    if cls in (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D):
        _channels_last(layer)
        return cls.__name__, {"keepdims": bool(layer.keepdims)}, {}
    if cls in (L.AveragePooling2D, L.MaxPooling2D):
        _channels_last(layer)
        return cls.__name__, {
            "pool_size": list(layer.pool_size),
            "strides": list(layer.strides), "padding": layer.padding,
        }, {}
    if cls is L.Dropout:
        return "Dropout", {"rate": float(layer.rate)}, {}
    if cls is L.Flatten:
        return "Flatten", {}, {}
    if cls is L.Reshape:
        return "Reshape", {"target_shape": list(layer.target_shape)}, {}
    raise ValueError(
        f"The tfmot recipe cannot rebuild layer {layer.name!r} of type "
        f"{cls.__name__} in tf_keras. Accepted: {', '.join(SUPPORTED_LAYERS)}."
    )


SUPPORTED_LAYERS = (
    "InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "Dense",
    "ReLU", "Activation", "ZeroPadding2D", "Add", "Multiply", "Concatenate",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "AveragePooling2D",
    "MaxPooling2D", "Dropout", "Flatten", "Reshape", "CoordinateAttention",
)


def _graph_nodes(model):
    for depth in sorted(model._nodes_by_depth, reverse=True):
        yield from model._nodes_by_depth[depth]


def describe_model(model):
    """The plain description of a functional model: `(description, weights)`.

    Args:
        model: a functional `keras.Model` with one image input (e.g.
            `MobileNetV2CA`, `MobileNeXtCA`), channels_last, built from
            `SUPPORTED_LAYERS`, each layer called once.

    Returns:
        `description`, a JSON-serializable dict (format, name, input,
        layers in topological order with their config and inbound layer
        names, outputs), and `weights`, a dict `"layer/weight" -> float32
        array`.

    Raises:
        ValueError: for a model the tf_keras side cannot rebuild (naming the
            layer).
    """
    check_functional(model)
    produced = {}  # id(KerasTensor) -> producing layer name
    layers, weights, seen = [], {}, set()
    for node in _graph_nodes(model):
        layer = node.operation
        if layer.name in seen:
            raise ValueError(
                f"Layer {layer.name!r} is called more than once; the tfmot "
                "recipe rebuilds models whose layers are each used once."
            )
        seen.add(layer.name)
        if len(node.output_tensors) != 1:
            raise ValueError(
                f"Layer {layer.name!r} has several outputs; only "
                "single-output layers are supported."
            )
        out = node.output_tensors[0]
        produced[id(out)] = layer.name
        if node.is_input:
            shape = list(out.shape[1:])
            layers.append({"name": layer.name, "class_name": "InputLayer",
                           "config": {"shape": shape,
                                      "dtype": str(out.dtype)},
                           "inbound": []})
            continue
        class_name, config, layer_weights = _describe_layer(layer)
        inbound = [produced[id(t)] for t in node.input_tensors]
        layers.append({"name": layer.name, "class_name": class_name,
                       "config": config, "inbound": inbound})
        for key, value in layer_weights.items():
            weights[f"{layer.name}/{key}"] = value
    description = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": model.name,
        "keras_version": keras.__version__,
        "layers": layers,
        "outputs": [produced[id(t)] for t in model.outputs],
    }
    return description, weights


def export_tf_keras_description(model, directory):
    """Writes `description.json` and `weights.npz` of a model to `directory`.

    The tf_keras side (`tfmot_recipe.build_tf_keras_model(directory)`)
    rebuilds the same network from them, weights included.

    Args:
        model: see `describe_model`.
        directory: output folder (created if needed).

    Returns:
        The `directory` path.
    """
    description, weights = describe_model(model)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, DESCRIPTION_FILE), "w",
              encoding="utf-8") as f:
        json.dump(description, f, indent=1)
    np.savez(os.path.join(directory, WEIGHTS_FILE), **weights)
    return directory


def tfmot_available():
    """Whether the `tfmot` extra (tfmot + tf_keras) is installed.

    Checks that the modules can be found, without importing them (importing
    tfmot would set TF_USE_LEGACY_KERAS in this process).
    """
    return all(importlib.util.find_spec(m) is not None
               for m in _EXTRA_MODULES)


def _require_extra(python=None):
    if python is not None:
        return  # another interpreter: its worker reports a missing extra
    missing = [m for m in _EXTRA_MODULES
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            "The tfmot recipe needs TensorFlow Model Optimization and "
            f"tf_keras (missing: {', '.join(missing)}). Install them with "
            f"`{INSTALL_HINT}`."
        )


def _worker_env():
    env = dict(os.environ)
    # The child uses tf_keras; the Keras 3 import of the package itself runs
    # on TensorFlow, whatever backend this process uses.
    env["TF_USE_LEGACY_KERAS"] = "1"
    env["KERAS_BACKEND"] = "tensorflow"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A source checkout: the child imports this very package.
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    return env


def _run_worker(args, python=None, timeout=None, verbose=False):
    command = [python or sys.executable, "-m",
               "keras_coordatt.quantization.tfmot_recipe", *args]
    result = subprocess.run(
        command, env=_worker_env(), timeout=timeout,
        stdout=None if verbose else subprocess.PIPE,
        stderr=None if verbose else subprocess.PIPE, text=True,
    )
    if result.returncode == 3:  # the worker's "extra missing" status
        raise ImportError((result.stderr or "").strip().splitlines()[-1]
                          if result.stderr else
                          f"The tfmot recipe needs `{INSTALL_HINT}`.")
    if result.returncode != 0:
        tail = (result.stderr or "")[-4000:]
        raise RuntimeError(
            "The tfmot recipe failed in its tf_keras subprocess (exit "
            f"status {result.returncode}): {tail}"
        )
    return result


def _check_arrays(name, images, labels=None):
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4:
        raise ValueError(
            f"`{name}` images must be a 4D array (N, H, W, C). Received: "
            f"shape {images.shape}"
        )
    if labels is None:
        return images, None
    labels = np.asarray(labels)
    if labels.ndim > 1:
        labels = labels.argmax(-1)
    if len(labels) != len(images):
        raise ValueError(
            f"`{name}`: {len(images)} images but {len(labels)} labels."
        )
    return images, labels.astype("int32")


def tf_keras_float_outputs(model, images, python=None, timeout=None):
    """Outputs of the tf_keras rebuild of `model` on `images` (float).

    Runs the rebuild in a tf_keras subprocess; compare the result with
    `model.predict(images)` to check the weight transfer.

    Args:
        model: see `describe_model`.
        images: float array `(N, H, W, C)` preprocessed for the model.
        python: interpreter of the subprocess (default: this one).
        timeout: optional limit in seconds.

    Returns:
        The float32 outputs, shape `(N, ...)`.
    """
    images, _ = _check_arrays("images", images)
    describe_model(model)
    _require_extra(python)
    with tempfile.TemporaryDirectory(prefix="kca_tfmot_") as work:
        export_tf_keras_description(model, work)
        data = os.path.join(work, "data.npz")
        np.savez(data, parity_x=images)
        out = os.path.join(work, "outputs.npz")
        _run_worker(["--description", work, "--data", data,
                     "--float-only", "--outputs", out],
                    python=python, timeout=timeout)
        return np.load(out)["float_outputs"]


_MINIMUM = {"epochs": 0, "batch_size": 1, "representative_samples": 1,
            "parity_samples": 0}


def tfmot_quantize(model, train_data, test_data=None, output=None,
                   epochs=1, batch_size=32, learning_rate=1e-4,
                   int8_io=False, representative_samples=8, parity_samples=32,
                   workdir=None, python=None, timeout=None, verbose=False):
    """The tfmot QAT recipe on a Keras 3 model, run in a tf_keras process.

    Exports the model (`export_tf_keras_description`), then a subprocess
    (`python -m keras_coordatt.quantization.tfmot_recipe`) rebuilds it in
    tf_keras with the weights transferred, checks the float outputs against
    the Keras 3 model's, annotates the coordinate attention ops with custom
    QuantizeConfigs, applies `tfmot.quantization.keras.quantize_apply`,
    fine-tunes with `fit` (Adam, sparse categorical cross-entropy), converts
    to full-int8 TFLite (`Optimize.DEFAULT`, `TFLITE_BUILTINS_INT8` only),
    checks it with `check_int8` and evaluates it with the LiteRT
    interpreter. This process imports neither tfmot nor tf_keras.

    Args:
        model: a trained functional Keras 3 model (see `describe_model`),
            softmax or logits output.
        train_data: `(images, labels)` arrays for the QAT fine-tune (images
            preprocessed for the model, integer labels).
        test_data: optional `(images, labels)` arrays: held-out accuracy of
            the float tf_keras rebuild, the tfmot QAT Keras model and its
            int8 TFLite model.
        output: optional path of the int8 `.tflite` to write.
        epochs: int >= 0, QAT epochs.
        batch_size: fit batch size.
        learning_rate: Adam learning rate of the fine-tune.
        int8_io: whether the TFLite input and output are int8.
        representative_samples: int >= 1, how many training images go to
            the converter as its representative dataset (TF 2.21 demands one
            for `TFLITE_BUILTINS_INT8`; the scales come from the QAT ranges,
            see `tfmot_recipe.convert_tf_keras_qat`).
        parity_samples: how many images (test, else training) check the
            float parity of the rebuild.
        workdir: optional folder for the hand-off files (description,
            weights, data, report); a temporary folder otherwise.
        python: interpreter of the subprocess (default: this one).
        timeout: optional limit in seconds.
        verbose: stream the subprocess's output (fit progress).

    Returns:
        The report dict: `float_parity_max_abs_diff`, `tflite_size_bytes`,
        `op_counts`, `tensor_types`, `float_accuracy` / `qat_keras_accuracy`
        / `int8_accuracy` / `agreement` (with `test_data`), `history`,
        timings, and `tflite` (the model bytes).

    Raises:
        ImportError: the `tfmot` extra is not installed.
        ValueError: the model cannot be rebuilt, or bad arguments.
        RuntimeError: the subprocess failed (its stderr tail attached).
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("representative_samples", representative_samples),
                        ("parity_samples", parity_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or \
                value < _MINIMUM[name]:
            raise ValueError(
                f"`{name}` must be an integer >= {_MINIMUM[name]}. "
                f"Received: {name}={value!r}"
            )
    x_train, y_train = _check_arrays("train_data", *train_data)
    arrays = {"x_train": x_train, "y_train": y_train}
    if test_data is not None:
        arrays["x_test"], arrays["y_test"] = _check_arrays("test_data",
                                                           *test_data)
    parity_x = (arrays.get("x_test", x_train))[:parity_samples]
    if len(parity_x):
        arrays["parity_x"] = parity_x
    describe_model(model)  # unsupported layers fail here, in this process
    _require_extra(python)
    with tempfile.TemporaryDirectory(prefix="kca_tfmot_") as tmp:
        work = workdir or tmp
        export_tf_keras_description(model, work)
        data = os.path.join(work, "data.npz")
        np.savez(data, **arrays)
        tflite = os.path.abspath(output) if output else os.path.join(
            work, "tfmot_int8.tflite")
        report_path = os.path.join(work, "report.json")
        outputs = os.path.join(work, "outputs.npz")
        args = ["--description", work, "--data", data, "--output", tflite,
                "--json", report_path, "--outputs", outputs,
                "--epochs", str(epochs), "--batch-size", str(batch_size),
                "--learning-rate", repr(float(learning_rate)),
                "--representative-samples", str(representative_samples)]
        if int8_io:
            args.append("--int8-io")
        _run_worker(args, python=python, timeout=timeout, verbose=verbose)
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
        if len(parity_x):
            reference = np.asarray(model.predict(parity_x, verbose=0))
            rebuilt = np.load(outputs)["float_outputs"]
            report["float_parity_max_abs_diff"] = float(
                np.abs(reference - rebuilt).max()
            )
        with open(tflite, "rb") as f:
            report["tflite"] = f.read()
    return report

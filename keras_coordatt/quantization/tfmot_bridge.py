"""The Keras 3 side of the tfmot recipe: what travels to the tf_keras process.

TensorFlow Model Optimization (tfmot 0.8) quantizes tf_keras (Keras 2)
models only, no library turns a Keras 3 model into a tf_keras one, and
importing tfmot sets `TF_USE_LEGACY_KERAS=1` for the whole process. So the
recipe builds the network a second time, in tf_keras, in a subprocess:

1. here, `application_arguments(model)` finds the registered constructor
   call (`MobileNetV2CA(...)`, `MobileNeXtCA(...)`) that builds `model`'s
   network, checked layer by layer against a fresh build, and
   `export_for_tf_keras` writes it to a folder: `application.json` (the
   constructor's name and keyword arguments) and `weights.npz` (the arrays,
   keyed `layer/weight`);
2. `keras_coordatt.quantization.tfmot_recipe`, run as
   `python -m keras_coordatt.quantization.tfmot_recipe`, calls that
   constructor with tf_keras's layer namespace, so the same stage tables and
   block functions build the same layers under the same names, copies the
   arrays in by name, and runs tfmot QAT and the int8 conversion.

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

from keras_coordatt.applications.registry import application_names
from keras_coordatt.applications.registry import get_application
from keras_coordatt.layers.registry import attention_specs
from keras_coordatt.layers.registry import spec_of_layer
from keras_coordatt.quantization.qat import check_functional

APPLICATION_FILE = "application.json"
WEIGHTS_FILE = "weights.npz"
INSTALL_HINT = 'pip install "keras-coordatt[tfmot]"'
_EXTRA_MODULES = ("tensorflow_model_optimization", "tf_keras")
# Builds per constructor while searching alpha: 1.0, then the ratios of the
# widest convolutions (the first ratio fits the usual widths).
_MAX_BUILDS = 4
# Two networks of one constructor at different widths differ in a few
# residual Adds at most; two constructors share far fewer layer names.
_SAME_LAYOUT = 0.9


def _read_arguments(model):
    """The constructor arguments a model shows directly (all but alpha)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(
                "The tfmot recipe rebuilds the networks of the registered "
                "constructors, whose layers sit at the top level. Received: "
                f"a model with the nested model {layer.name!r} (a backbone "
                "under a new head, as build_model(transfer=True) makes)"
            )
        data_format = getattr(layer, "data_format", "channels_last")
        if data_format != "channels_last":
            raise ValueError(
                "The tfmot recipe supports channels_last models only "
                f"(TFLite's layout). Received: layer {layer.name!r} with "
                f"data_format={data_format!r}"
            )
    layers = {layer.name: layer for layer in model.layers}
    arguments = {"input_shape": tuple(model.inputs[0].shape[1:]),
                 "name": model.name}
    top = layers.get("predictions")
    if isinstance(top, keras.layers.Dense):
        arguments.update(include_top=True, classes=int(top.units),
                         classifier_activation=keras.activations.serialize(
                             top.activation))
    else:
        arguments.update(include_top=False, pooling=(
            "avg" if "avg_pool" in layers
            else "max" if "max_pool" in layers else None))
    found = [(spec_of_layer(layer).name, layer) for layer in model.layers
             if spec_of_layer(layer) is not None]
    kind = found[0][0] if found else None
    accepted = [spec.name for spec in attention_specs() if spec.tf_keras]
    if kind not in (None, *accepted):
        raise ValueError(
            "The tfmot recipe has tf_keras layers for the attention kinds "
            f"{', '.join(map(repr, accepted))} only. Received: a model with "
            f"attention {kind!r}; accepted: "
            f"{', '.join(map(repr, accepted))} or none"
        )
    arguments["attention"] = kind
    arguments["reduction"] = found[0][1].reduction if found else None
    return arguments


def _layer_configs(model):
    """Each layer's serialized config and inbound layers, JSON-normalised
    (tuples as lists, as a `.keras` file gives them back), without the
    `trainable` flags that training changes."""
    layers = json.loads(json.dumps(model.get_config()["layers"]))
    for entry in layers:
        entry["config"].pop("trainable", None)
    return layers


def _difference(model, candidate):
    """None when both functional models are one network, else the first
    difference in words."""
    ours, theirs = _layer_configs(model), _layer_configs(candidate)
    for mine, built in zip(ours, theirs):
        if mine["name"] != built["name"]:
            return f"layer {mine['name']!r} where it builds {built['name']!r}"
        if mine != built:
            keys = [key for key in sorted(set(mine["config"])
                                          | set(built["config"]))
                    if mine["config"].get(key) != built["config"].get(key)]
            return (f"layer {mine['name']!r} differs in "
                    f"{', '.join(keys) or 'its inputs'}")
    if len(ours) != len(theirs):
        return f"{len(ours)} layers where it builds {len(theirs)}"
    return None


def _alpha_candidates(model, reference):
    """Widths to try: each convolution's filters over its filters at alpha
    1 (`reference`), widest first; none when `reference` shares too few
    layer names with `model` to be its constructor's."""
    names = {layer.name for layer in reference.layers}
    if np.mean([layer.name in names for layer in model.layers]) \
            < _SAME_LAYOUT:
        return []
    ours = {layer.name: layer.filters for layer in model.layers
            if type(layer) is keras.layers.Conv2D}
    pairs = sorted((layer.filters, ours[layer.name])
                   for layer in reference.layers
                   if type(layer) is keras.layers.Conv2D
                   and layer.name in ours)
    return list(dict.fromkeys(own / ref for ref, own in reversed(pairs)))


def application_arguments(model):
    """The registered constructor call that builds `model`'s network.

    Reads the arguments the layers show (input shape, top or pooling,
    classes, classifier activation, attention kind, reduction), tries the
    width multiplier 1.0 and then the ratios of the model's widest
    convolutions to their width at 1.0, and accepts a call only when it
    builds the same layers with the same configurations and connections
    (`trainable` flags aside).

    Args:
        model: a functional Keras 3 model, e.g. from `MobileNetV2CA` or
            `MobileNeXtCA`, or such a model loaded from a `.keras` file.

    Returns:
        `(name, kwargs)`: the registered name (`applications.registry`) and
        JSON-serializable keyword arguments (without `weights`).

    Raises:
        ValueError: no registered constructor builds this network, or it
            holds a layer the tf_keras network has no twin for; the message
            says what differs.
    """
    check_functional(model)
    arguments = _read_arguments(model)
    differences = []
    for name in application_names():
        alphas, tried = [1.0], []
        while alphas and len(tried) < _MAX_BUILDS:
            alpha = alphas.pop(0)
            if alpha in tried:
                continue
            tried.append(alpha)
            try:
                candidate = get_application(name)(
                    weights=None, alpha=alpha, **arguments)
            except ValueError as error:
                differences.append(f"{name}: {error}")
                break
            difference = _difference(model, candidate)
            if difference is None:
                arguments["input_shape"] = list(arguments["input_shape"])
                return name, {**arguments, "alpha": alpha}
            differences.append(f"{name}(alpha={alpha:g}): {difference}")
            if len(tried) == 1:
                alphas += _alpha_candidates(model, candidate)
    raise ValueError(
        "The tfmot recipe rebuilds networks of the registered constructors "
        f"({', '.join(application_names())}) in tf_keras. Received: a "
        f"model {model.name!r} that none of them builds: "
        + "; ".join(differences)
    )


def weight_arrays(model):
    """The model's weights as float32 arrays keyed `layer/weight`.

    The weights of a sublayer `s` of layer `l` (a coordinate attention
    block's convolutions and BatchNorm) go under `l_s/weight`: the name the
    tf_keras network gives that sublayer.
    """
    arrays = {}
    for layer in model.layers:
        for variable in layer.weights:
            *scopes, weight = variable.path.split("/")
            inner = scopes[scopes.index(layer.name) + 1:]
            key = "_".join([layer.name, *inner]) + "/" + weight
            arrays[key] = np.asarray(keras.ops.convert_to_numpy(variable),
                                     dtype="float32")
    return arrays


def export_for_tf_keras(model, directory):
    """Writes `application.json` and `weights.npz` of `model` to
    `directory` (created if needed), for `tfmot_recipe.build_tf_keras_model`.

    `application.json` holds `{"application": name, "arguments": kwargs}`
    from `application_arguments`; `weights.npz` the arrays of
    `weight_arrays`. Neither holds anything but names, numbers and arrays.

    Returns:
        `(name, kwargs)` of `application_arguments`.
    """
    name, arguments = application_arguments(model)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, APPLICATION_FILE), "w",
              encoding="utf-8") as f:
        json.dump({"application": name, "arguments": arguments}, f,
                  indent=1)
    np.savez(os.path.join(directory, WEIGHTS_FILE), **weight_arrays(model))
    return name, arguments


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
        model: see `application_arguments`.
        images: float array `(N, H, W, C)` preprocessed for the model.
        python: interpreter of the subprocess (default: this one).
        timeout: optional limit in seconds.

    Returns:
        The float32 outputs, shape `(N, ...)`.
    """
    images, _ = _check_arrays("images", images)
    with tempfile.TemporaryDirectory(prefix="kca_tfmot_") as work:
        export_for_tf_keras(model, work)  # an unsupported model fails here
        _require_extra(python)
        data = os.path.join(work, "data.npz")
        np.savez(data, parity_x=images)
        out = os.path.join(work, "outputs.npz")
        _run_worker(["--model", work, "--data", data, "--float-only",
                     "--outputs", out], python=python, timeout=timeout)
        with np.load(out, allow_pickle=False) as outputs:
            return outputs["float_outputs"]


_MINIMUM = {"epochs": 0, "batch_size": 1, "representative_samples": 1,
            "parity_samples": 0}


def _recipe_arrays(train_data, test_data, parity_samples, **counts):
    """Checks the counts and data of `tfmot_quantize`; returns the arrays
    for the worker's `data.npz`."""
    for name, value in dict(counts, parity_samples=parity_samples).items():
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
    parity_x = arrays.get("x_test", x_train)[:parity_samples]
    if len(parity_x):
        arrays["parity_x"] = parity_x
    return arrays


def tfmot_quantize(model, train_data, test_data=None, output=None,
                   epochs=1, batch_size=32, learning_rate=1e-4,
                   int8_io=False, representative_samples=8, parity_samples=32,
                   workdir=None, python=None, timeout=None, verbose=False):
    """The tfmot QAT recipe on a Keras 3 model, run in a tf_keras process.

    Writes the model's constructor call and weights (`export_for_tf_keras`);
    the subprocess builds the same network in tf_keras, applies tfmot QAT
    (custom QuantizeConfigs for the attention ops), fine-tunes it with `fit`
    (Adam, sparse categorical cross-entropy), converts it to full-int8
    TFLite, checks it with `check_int8` and evaluates it with LiteRT
    (`tfmot_recipe`). This process imports neither tfmot nor tf_keras.

    Args:
        model: a trained model (see `application_arguments`), softmax or
            logits output.
        train_data: `(images, labels)` arrays for the QAT fine-tune (images
            preprocessed for the model, integer labels).
        test_data: optional `(images, labels)`: held-out accuracy of the
            float tf_keras network, the QAT Keras model and the int8 model.
        output: optional path of the int8 `.tflite` to write.
        epochs: int >= 0, QAT epochs.
        batch_size: fit batch size.
        learning_rate: Adam learning rate of the fine-tune.
        int8_io: whether the TFLite input and output are int8.
        representative_samples: int >= 1, training images given to the
            converter (see `tfmot_recipe.convert_tf_keras_qat`).
        parity_samples: how many images (test, else training) check the
            float parity of the tf_keras network.
        workdir: optional folder for the hand-off files (application,
            weights, data, report); a temporary folder otherwise.
        python: interpreter of the subprocess (default: this one).
        timeout: optional limit in seconds.
        verbose: stream the subprocess's output (fit progress).

    Returns:
        The report dict: `application`, `float_parity_max_abs_diff`,
        `tflite_size_bytes`, `op_counts`, `tensor_types`, `float_accuracy` /
        `qat_keras_accuracy` / `int8_accuracy` / `agreement` (with
        `test_data`), `history`, timings, and `tflite` (the model bytes).

    Raises:
        ImportError: the `tfmot` extra is not installed.
        ValueError: the model cannot be rebuilt, or bad arguments.
        RuntimeError: the subprocess failed (its stderr tail attached).
    """
    arrays = _recipe_arrays(
        train_data, test_data, parity_samples, epochs=epochs,
        batch_size=batch_size, representative_samples=representative_samples)
    with tempfile.TemporaryDirectory(prefix="kca_tfmot_") as tmp:
        work = workdir or tmp
        # An unsupported model fails here, before the extra is looked for.
        application = export_for_tf_keras(model, work)
        _require_extra(python)
        paths = {name: os.path.join(work, name) for name in (
            "data.npz", "report.json", "outputs.npz", "tfmot_int8.tflite")}
        np.savez(paths["data.npz"], **arrays)
        tflite = os.path.abspath(output) if output else \
            paths["tfmot_int8.tflite"]
        args = ["--model", work, "--data", paths["data.npz"],
                "--output", tflite, "--json", paths["report.json"],
                "--outputs", paths["outputs.npz"], "--epochs", str(epochs),
                "--batch-size", str(batch_size),
                "--learning-rate", repr(float(learning_rate)),
                "--representative-samples", str(representative_samples)]
        _run_worker(args + ["--int8-io"] * bool(int8_io), python=python,
                    timeout=timeout, verbose=verbose)
        with open(paths["report.json"], encoding="utf-8") as f:
            report = json.load(f)
        report["application"] = dict(zip(("name", "arguments"), application))
        if "parity_x" in arrays:
            reference = np.asarray(model.predict(arrays["parity_x"],
                                                 verbose=0))
            with np.load(paths["outputs.npz"], allow_pickle=False) as out:
                rebuilt = out["float_outputs"]
            report["float_parity_max_abs_diff"] = float(
                np.abs(reference - rebuilt).max())
        with open(tflite, "rb") as f:
            report["tflite"] = f.read()
    return report

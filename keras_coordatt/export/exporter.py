"""`export_model`: build a model, export it, check it, describe it.

The steps, in order: the arguments are checked (nothing is written before
that), the model is built with its weights, the artifact is written into a
temporary folder next to the output, read back with its own runtime and
compared with the Keras model on random images, described in
`metadata.json`, and only then renamed to the output path. Any failure
removes the temporary folder.
"""

import datetime
import json
import math
import os

import numpy as np

from keras_coordatt.applications.registry import DEFAULT_APPLICATION
from keras_coordatt.applications.registry import application_names
from keras_coordatt.applications.registry import get_application
from keras_coordatt.applications.registry import get_application_spec
from keras_coordatt.applications.registry import names_with
from keras_coordatt.export import formats
from keras_coordatt.utils.atomic import atomic_directory
from keras_coordatt.utils.layer_weights import copy_weights_by_name

# The application names registered at import (`applications.registry`);
# the checks read the registry itself, which may have grown since.
MODELS = application_names()
VARIANTS = ("classification", "feature_vector")
OUTPUT_NAMES = {"classification": "predictions",
                "feature_vector": "feature_vector"}
ARTIFACT_FILES = {"litert": "model.tflite", "onnx": "model.onnx"}
# Largest |artifact - keras| allowed on the verification images, for every
# float format: the .keras file and the SavedModel run the same float32
# TensorFlow graph (measured: 0); LiteRT and ONNX fold BatchNorm into the kernels and
# sum in another order (measured on the trained digits model: 4e-7).
FLOAT_TOLERANCE = 1e-5
# No float32 runtime can agree with the Keras model more closely than float32
# rounding allows, and an untrained deep network amplifies rounding layer after
# layer (random kernels, calibrated BatchNorm: the Keras model itself is 1.8e-5
# off a float64 evaluation of its softmax). So the bound is the larger of
# FLOAT_TOLERANCE and ROUNDING_FACTOR x the Keras model's own distance from
# its float64 evaluation: an artifact as accurate as Keras is within 2x of
# it; 3x leaves it room to be half as accurate again.
ROUNDING_FACTOR = 3.0
CODE_LICENSE = "MIT"


def check_arguments(model_name, weights, export_format, variant, int8=False,
                    representative=None):
    """Raises a clear error for bad arguments, before anything is written.

    Raises:
        ValueError: unknown model, format or variant; `int8` without
            `litert` or without representative data.
        FileNotFoundError: a weights or representative file that does not
            exist.
        RuntimeError: `int8` without `keras_coordatt.quantization`.
    """
    spec = get_application_spec(model_name)
    check_format(export_format, variant, int8, representative)
    published_name = isinstance(weights, str) and weights in spec.weights
    if weights not in (None, "imagenet") and not published_name:
        if not os.path.isfile(os.fspath(weights)):
            raise FileNotFoundError(
                f"Weights file not found: {os.fspath(weights)!r} (--weights "
                "takes 'imagenet', 'none' or the path of a .weights.h5, "
                ".keras, .h5, .pth or .pt file)."
            )
    if weights == "imagenet" and not published_name:
        published = names_with(lambda other: "imagenet" in other.weights)
        raise ValueError(
            "ImageNet weights were published for "
            f"{', '.join(published) or 'no network'} only. "
            f"Received: model={model_name!r}"
        )


def check_format(export_format, variant, int8=False, representative=None):
    """The checks of `check_arguments` that do not depend on the model
    (also those of a model read from a `.keras` file)."""
    if export_format not in formats.FORMATS:
        raise ValueError(
            f"Unknown format {export_format!r}; expected one of "
            f"{', '.join(formats.FORMATS)}."
        )
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown variant {variant!r}; expected one of "
            f"{', '.join(VARIANTS)}."
        )
    if int8:
        if export_format != "litert":
            raise ValueError(
                f"int8 applies to the litert format only. Received: "
                f"format={export_format!r}"
            )
        if representative is None:
            raise ValueError(
                "int8 LiteRT export needs a representative dataset "
                "(--representative: a .npy of RGB images in [0, 255], or a "
                "folder of images)."
            )
        if isinstance(representative, (str, os.PathLike)) and not \
                os.path.exists(representative):
            raise FileNotFoundError(
                f"Representative dataset not found: {representative!r}"
            )
        formats._quantization_module()
    if export_format == "keras-hub":
        _require_keras_hub()


def _require_keras_hub():
    try:
        import keras_hub  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "The keras-hub format needs keras-hub: pip install "
            "'keras-coordatt[hub]'. Received: format='keras-hub'"
        ) from None


def build_model(model_name=DEFAULT_APPLICATION, alpha=1.0, weights="imagenet",
                variant="classification", input_size=None, classes=1000,
                classifier_activation="softmax"):
    """Builds an application model for export.

    The classification variant is the full network (`include_top=True`).
    The feature-vector variant is `include_top=False, pooling="avg"` with
    the same weights (the classifier dropped): a weights file of either
    head loads into it.

    Args:
        model_name: a registered application (`applications.registry`).
        alpha: width multiplier.
        weights: `"imagenet"`, `None` (random) or a weights file path.
        variant: `"classification"` or `"feature_vector"`.
        input_size: the (square) image size, or an `(H, W)` pair; None:
            the application's `default_input_size`.
        classes: classes of the classifier (classification and weights
            files with a classifier).
        classifier_activation: `"softmax"` or `None` (logits).

    Returns:
        `(model, kwargs)`: the model and its constructor keyword arguments
        (without `weights`).
    """
    check_arguments(model_name, weights, "keras", variant)
    constructor = get_application(model_name)
    if input_size is None:
        input_size = get_application_spec(model_name).default_input_size
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    kwargs = dict(
        input_shape=(int(input_size[0]), int(input_size[1]), 3),
        alpha=alpha,
        classes=classes,
        classifier_activation=classifier_activation,
    )
    if variant == "classification":
        kwargs.update(include_top=True, pooling=None)
        return constructor(weights=weights, **kwargs), kwargs
    kwargs.update(include_top=False, pooling="avg")
    if weights in (None, "imagenet"):
        return constructor(weights=weights, **kwargs), kwargs
    try:  # a weights file without the classifier
        return constructor(weights=weights, **kwargs), kwargs
    except ValueError as notop_error:  # a file with it: load, drop it
        top_kwargs = dict(kwargs, include_top=True, pooling=None)
        try:
            full = constructor(weights=weights, **top_kwargs)
        except ValueError:
            raise notop_error from None
        model = constructor(weights=None, **kwargs)
        copy_weights_by_name(full, [(layer, layer.name)
                                    for layer in model.layers])
        return model, kwargs


def _count(variables):
    return int(sum(math.prod(v.shape) for v in variables))


def _weights_metadata(spec, weights):
    if spec is not None and isinstance(weights, str) and \
            weights in spec.weights:
        published = spec.weights[weights]
        return {"source": weights, **published.source,
                "description": published.description}
    if weights is None:
        return {"source": "random",
                "description": "Random initialization (untrained)."}
    from keras_coordatt.weights import git_blob_sha1

    path = os.fspath(weights)
    return {
        "source": "file",
        "file": os.path.basename(path),
        "sha256": formats.sha256(path),
        "git_blob_id": git_blob_sha1(path),
    }


def _public_path(function):
    """`keras_coordatt.X` for what the package exports, else its module
    path (a network registered by a user)."""
    import keras_coordatt

    name = function.__name__
    if getattr(keras_coordatt, name, None) is function:
        return f"keras_coordatt.{name}"
    return f"{function.__module__}.{function.__qualname__}"


def _license(spec, weights):
    if spec is not None and isinstance(weights, str) and \
            weights in spec.weights:
        return spec.weights[weights].license or CODE_LICENSE
    if weights is None:
        return CODE_LICENSE
    return (f"{CODE_LICENSE} (code); weights: as licensed by the owner of "
            "the weights file")


def make_metadata(model, kwargs, model_name, weights, variant,
                  export_format):
    """The metadata.json content of an exported model; the preprocessing,
    published weights and constructor are those of the model's
    `ApplicationSpec`."""
    spec = get_application_spec(model_name)
    return describe(model, kwargs, model_name, spec,
                    _public_path(spec.constructor), weights, variant,
                    export_format)


def _preprocessing(spec):
    """The input's value range and the preprocessing of `spec` (None, None
    for a model of no registered application: unknown)."""
    if spec is None:
        return None, None
    mean = [float(m) for m in spec.mean]
    std = [float(s) for s in spec.std]
    low = min((0.0 - m) / s for m, s in zip(mean, std))
    high = max((1.0 - m) / s for m, s in zip(mean, std))
    return [round(low, 6), round(high, 6)], {
        "function": _public_path(spec.preprocess_input),
        "mode": spec.preprocessing_mode,
        "scale": "1/255",
        "mean": mean,
        "std": std,
        "formula": "(x / 255 - mean) / std, per RGB channel",
    }


def describe(model, kwargs, model_name, spec, constructor, weights, variant,
             export_format):
    """`make_metadata` for any model: `spec` (None: not a registered
    application) gives the preprocessing, `constructor` (a public path or
    None) the architecture."""
    import keras

    import keras_coordatt

    value_range, preprocessing = _preprocessing(spec)
    output_shape = [None] + list(model.outputs[0].shape[1:])
    arch = {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in kwargs.items()}
    return {
        "name": model.name,
        "model": model_name,
        "variant": variant,
        "format": export_format,
        "architecture": {
            "constructor": constructor,
            "kwargs": arch,
        },
        "parameter_count": {
            "total": _count(model.weights),
            "trainable": _count(model.trainable_weights),
            "non_trainable": _count(model.non_trainable_weights),
        },
        "input": {
            "name": "image",
            "shape": [None] + list(kwargs["input_shape"]),
            "dtype": "float32",
            "data_format": "channels_last",
            "color_order": "RGB",
            "value_range": value_range,
            "raw_value_range": [0, 255],
        },
        "output": {
            "name": OUTPUT_NAMES[variant],
            "shape": output_shape,
            "dtype": "float32",
            "activation": (kwargs.get("classifier_activation")
                           if variant == "classification" else None),
        },
        "preprocessing": preprocessing,
        "weights": _weights_metadata(spec, weights),
        # What a user who only has the files must do to load them: the
        # classes are registered by the package (`keras_coordatt.hub`
        # right after keras-hub is imported).
        "requires": {"import": "keras_coordatt",
                     "pip": "keras-coordatt[hub]"
                     if export_format == "keras-hub" else "keras-coordatt"},
        "license": _license(spec, weights),
        "versions": {"keras": keras.__version__,
                     "keras_coordatt": keras_coordatt.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }


def random_images(shape, num_images=4, seed=0, preprocess_input=None):
    """Random preprocessed images: uniform RGB in [0, 255], normalized by
    `preprocess_input` (None: `keras_coordatt.preprocess_input`)."""
    if preprocess_input is None:
        from keras_coordatt import preprocess_input

    rng = np.random.default_rng(seed)
    raw = rng.uniform(0, 255, (num_images,) + tuple(shape)).astype("float32")
    return np.asarray(preprocess_input(raw, data_format="channels_last"),
                      "float32")


def compare(reference, outputs, classification):
    """Max absolute difference and top-1 agreement of two output batches."""
    reference = np.asarray(reference, "float64")
    outputs = np.asarray(outputs, "float64")
    result = {"max_abs_diff": float(np.max(np.abs(reference - outputs)))}
    if classification:
        result["top1_agreement"] = float(np.mean(
            reference.argmax(-1) == outputs.argmax(-1)))
    return result


def run_artifact(export_format, path, images):
    """Runs an exported artifact (folder) on `images`; dict of outputs."""
    if export_format == "keras":
        return {"keras": formats.predict_keras(path, images)}
    if export_format == "keras-hub":
        from keras_coordatt.hub.from_application import predict_hub_preset

        return {"keras_hub": predict_hub_preset(path, images)}
    if export_format == "saved_model":
        return {
            "serve": formats.predict_saved_model(path, images),
            "serving_default": formats.predict_saved_model(
                path, images, signature=True),
            "tfsm_layer": formats.predict_tfsm_layer(path, images),
        }
    name = ARTIFACT_FILES[export_format]
    runner = {"litert": formats.predict_litert,
              "onnx": formats.predict_onnx}[export_format]
    return {export_format: runner(os.path.join(path, name), images)}


def float64_outputs(model, images):
    """The model's outputs evaluated in float64 (same weights), or None.

    A twin of `model` built from its config with every dtype set to float64
    (the layers of this package follow their dtype policy), given the
    model's weights. Returns None when the model cannot be rebuilt that way.
    """
    def to_float64(config):
        if isinstance(config, dict):
            return {k: "float64" if k == "dtype" else to_float64(v)
                    for k, v in config.items()}
        if isinstance(config, list):
            return [to_float64(v) for v in config]
        return config

    try:
        twin = type(model).from_config(to_float64(model.get_config()))
        twin.set_weights([np.asarray(w, "float64")
                          for w in model.get_weights()])
        return np.asarray(twin.predict(np.asarray(images, "float64"),
                                       verbose=0), "float64")
    except Exception:  # a model that cannot be cloned from its config
        return None


def float_tolerance(reference, exact):
    """`max(FLOAT_TOLERANCE, ROUNDING_FACTOR * |reference - exact|)`, with
    `exact` the float64 outputs (FLOAT_TOLERANCE alone when None)."""
    if exact is None:
        return FLOAT_TOLERANCE
    rounding = float(np.max(np.abs(np.asarray(reference, "float64") - exact)))
    return max(FLOAT_TOLERANCE, ROUNDING_FACTOR * rounding)


def quantized_agreement(reference, outputs, step, classification):
    """How an int8 artifact's outputs sit against the float ones, in output
    quantization steps (`step`: the output's int8 scale)."""
    diff = np.abs(np.asarray(outputs, "float64") -
                  np.asarray(reference, "float64"))
    result = compare(reference, outputs, classification)
    result.update({
        "output_step": step,
        "max_abs_diff_steps": float(diff.max() / step),
        "mean_abs_diff_steps": float(diff.mean() / step),
        "within_one_step": float(np.mean(diff <= step * (1 + 1e-6))),
    })
    return result


def verify_artifact(model, export_format, path, variant, num_images=4,
                    seed=0, tolerance="auto", images=None):
    """Compares an artifact with the Keras model on random images.

    Float artifacts must agree within `tolerance`; `"auto"` is
    `float_tolerance`: 1e-5, or 3x the Keras model's own float32 rounding
    error (its distance from a float64 evaluation) when that is larger.
    Int8 LiteRT artifacts are not bounded; their difference is reported in
    output quantization steps.

    Args:
        model: the Keras model the artifact was made from.
        export_format: one of `formats.FORMATS`.
        path: the artifact's folder.
        variant: `"classification"` or `"feature_vector"`.
        num_images: how many random images to compare on.
        seed: seed of the random images.
        tolerance: `"auto"`, a number, or None (not enforced).
        images: preprocessed images to use instead of random ones.

    Returns:
        A dict per runtime with `max_abs_diff` (and `top1_agreement` for
        classification; for float, `max_abs_diff_vs_float64`; for int8,
        the difference in output steps), plus `tolerance` and
        `float32_rounding` (|Keras - float64|).

    Raises:
        AssertionError: a float artifact differs by more than `tolerance`.
    """
    if images is None:
        images = random_images(tuple(model.inputs[0].shape[1:]), num_images,
                               seed)
    images = np.asarray(images, "float32")
    reference = np.asarray(model.predict(images, verbose=0))
    classification = variant == "classification"
    report = {"num_images": len(images), "seed": seed}
    step = exact = None
    if export_format == "litert":
        step = formats.litert_output_step(
            os.path.join(path, ARTIFACT_FILES["litert"]))
    if step is None:
        exact = float64_outputs(model, images)
        if tolerance == "auto":
            tolerance = float_tolerance(reference, exact)
        if exact is not None:
            report["float32_rounding"] = float(
                np.max(np.abs(reference - exact)))
    else:
        tolerance = None
    report["tolerance"] = tolerance
    for runtime, outputs in run_artifact(export_format, path, images).items():
        if step is None:
            result = compare(reference, outputs, classification)
            if exact is not None:
                result["max_abs_diff_vs_float64"] = float(
                    np.max(np.abs(np.asarray(outputs, "float64") - exact)))
        else:
            result = quantized_agreement(reference, outputs, step,
                                         classification)
        report[runtime] = result
        if tolerance is not None and result["max_abs_diff"] > tolerance:
            raise AssertionError(
                f"The {export_format} artifact ({runtime}) differs from the "
                f"Keras model by {result['max_abs_diff']:.3g} > "
                f"{tolerance:g}; the export was discarded."
            )
    return report


def load_representative(source, shape, limit=200, preprocess_input=None):
    """Preprocessed calibration images from a `.npy` file or a folder.

    Args:
        source: a numpy array or `.npy` file of RGB images in [0, 255]
            `(N, H, W, 3)`, or a folder of image files (resized to `shape`).
        shape: the model's `(H, W, 3)`.
        limit: at most this many images.
        preprocess_input: the model's (its `ApplicationSpec`'s); None:
            `keras_coordatt.preprocess_input`.
    """
    import keras

    if preprocess_input is None:
        from keras_coordatt import preprocess_input

    if isinstance(source, np.ndarray):
        raw = source
    elif os.path.isdir(source):
        names = sorted(n for n in os.listdir(source) if n.lower().endswith(
            (".jpg", ".jpeg", ".png", ".bmp", ".gif")))[:limit]
        if not names:
            raise ValueError(f"No image files in {source!r}.")
        raw = np.stack([
            keras.utils.img_to_array(keras.utils.load_img(
                os.path.join(source, n), target_size=shape[:2]))
            for n in names
        ])
    else:
        raw = np.load(source)
    raw = np.asarray(raw, "float32")[:limit]
    if raw.ndim != 4 or tuple(raw.shape[1:]) != tuple(shape):
        raise ValueError(
            f"Representative images must have shape (N, {shape[0]}, "
            f"{shape[1]}, {shape[2]}). Received: {raw.shape}"
        )
    return np.asarray(preprocess_input(raw, data_format="channels_last"),
                      "float32")


def export_model(output, export_format, model_name=DEFAULT_APPLICATION,
                 alpha=1.0, weights="imagenet", variant="classification",
                 input_size=None, classes=1000, classifier_activation="softmax",
                 int8=False, representative=None, num_samples=200,
                 overwrite=False, verify=True, num_verify_images=4, model=None,
                 model_kwargs=None):
    """Exports an application model to one hub format, atomically.

    Args:
        output: the folder to produce (must not exist unless `overwrite`).
        export_format: `"keras"` (`model.keras`), `"keras-hub"` (keras-hub
            preset of the `keras_coordatt.hub` twin), `"saved_model"`,
            `"litert"` or `"onnx"`.
        model_name: a registered application (`applications.registry`).
        alpha: width multiplier.
        weights: `"imagenet"`, `None` (random) or a weights file path.
        variant: `"classification"` or `"feature_vector"`.
        input_size: the square image size (or `(H, W)`); None: the
            application's `default_input_size`.
        classes: number of classes of the classifier.
        classifier_activation: `"softmax"` or `None`.
        int8: with `litert`, post-training int8 quantization (needs
            `keras_coordatt.quantization` and `representative`).
        representative: calibration images: array or `.npy` of RGB images in
            [0, 255], or a folder of images.
        num_samples: how many calibration images to use.
        overwrite: replace an existing `output` (once the new one is done).
        verify: compare the artifact with the Keras model on random images
            (results in metadata.json): float formats must agree within
            `float_tolerance`, int8 differences are reported in output
            quantization steps (see `verify_artifact`).
        num_verify_images: how many random images to compare on.
        model: optional prebuilt model (from `build_model`), with
            `model_kwargs`, to skip building it again.
        model_kwargs: the constructor kwargs returned by `build_model`.

    Returns:
        The metadata dict written to `<output>/metadata.json`.

    Raises:
        ValueError, FileNotFoundError, FileExistsError, RuntimeError: bad
            arguments, before anything is written.
        AssertionError: the artifact failed verification (nothing written).
    """
    check_arguments(model_name, weights, export_format, variant, int8,
                    representative)
    _check_output(output, overwrite)
    if model is None:
        model, model_kwargs = build_model(
            model_name, alpha, weights, variant, input_size, classes,
            classifier_activation)
    spec = get_application_spec(model_name)
    metadata = make_metadata(model, model_kwargs, model_name, weights,
                             variant, export_format)
    hub_args = (model_name, model_kwargs["alpha"], {})
    return _write(output, export_format, model, metadata, variant, hub_args,
                  spec.preprocess_input, overwrite=overwrite, verify=verify,
                  num_verify_images=num_verify_images, int8=int8,
                  representative=representative, num_samples=num_samples)


def export_model_file(output, export_format, source, variant="classification",
                      int8=False, representative=None, num_samples=200,
                      overwrite=False, verify=True, num_verify_images=4,
                      **flags):
    """Exports the model of a `.keras` file, its architecture read from it.

    Args:
        output, export_format, variant, int8, representative, num_samples,
        overwrite, verify, num_verify_images: as for `export_model`.
        source: the `.keras` file, or a `ModelFile` it was loaded into
            (`model_file.load_model_file`, which the CLI calls first, so
            that bad flags exit before any export starts).
        **flags: `alpha`, `input_size`, `classes`, `logits`: checked
            against the file, never used to build anything.

    Returns:
        The metadata dict written to `<output>/metadata.json`: the model
        and alpha of the run's `config.json` beside the file when there is
        one, else the model's own name and `"constructor": null`.

    Raises:
        ValueError: a flag that disagrees with the file; `keras-hub` for a
            model that is not a registered application.
    """
    from keras_coordatt.export import model_file

    check_format(export_format, variant, int8, representative)
    _check_output(output, overwrite)
    if not isinstance(source, model_file.ModelFile):
        source = model_file.load_model_file(source, variant, **flags)
    hub_args = None
    if export_format == "keras-hub":
        from keras_coordatt.hub.from_application import find_application

        hub_args = find_application(source.model, source.run_config,
                                    source.path)
    spec, config = source.spec, source.run_config or {}
    constructor = None  # the run's application, unless it added a head
    if spec is not None and not config.get("transfer") and config.get(
            "task", "classification") == "classification":
        constructor = _public_path(spec.constructor)
    metadata = describe(source.model, source.kwargs, source.model_name, spec,
                        constructor, source.path, variant, export_format)
    return _write(output, export_format, source.model, metadata, variant,
                  hub_args, spec.preprocess_input if spec else None,
                  overwrite=overwrite, verify=verify,
                  num_verify_images=num_verify_images, int8=int8,
                  representative=representative, num_samples=num_samples)


def _check_output(output, overwrite):
    output = os.path.abspath(os.fspath(output))
    if os.path.lexists(output) and not overwrite:
        raise FileExistsError(
            f"The output {output!r} already exists; choose another path or "
            "pass --overwrite."
        )


def _write(output, export_format, model, metadata, variant, hub_args,
           preprocess_input, overwrite, verify, num_verify_images, int8,
           representative, num_samples):
    """Writes the artifact into a temporary folder, verifies it, adds
    metadata.json and moves the folder to `output`."""
    output = os.path.abspath(os.fspath(output))
    with atomic_directory(output, overwrite=overwrite) as tmp:
        if export_format == "keras":
            metadata["files"] = formats.export_keras(model, tmp)
        elif export_format == "keras-hub":
            model_name, alpha, hub_kwargs = hub_args
            hub_metadata = formats.export_keras_hub(model, tmp, model_name,
                                                    alpha, **hub_kwargs)
        elif export_format == "saved_model":
            metadata["saved_model"] = formats.export_saved_model(
                model, tmp, output_name=OUTPUT_NAMES[variant])
        elif export_format == "litert":
            data = None
            if int8:
                data = load_representative(
                    representative, tuple(model.inputs[0].shape[1:]),
                    num_samples, preprocess_input)
            metadata["litert"] = formats.export_litert(
                model, os.path.join(tmp, ARTIFACT_FILES["litert"]),
                int8=int8, representative_data=data,
                num_samples=num_samples)
        else:
            metadata["onnx"] = formats.export_onnx(
                model, os.path.join(tmp, ARTIFACT_FILES["onnx"]),
                output_name=OUTPUT_NAMES[variant])
        if verify:
            metadata["verification"] = verify_artifact(
                model, export_format, tmp, variant, num_verify_images,
                tolerance="auto")
        # keras-hub's own metadata.json (versions, tasks) stays as it wrote
        # it, for the hubs that show it; ours goes under one key.
        write_json(os.path.join(tmp, "metadata.json"), metadata if
                   export_format != "keras-hub" else
                   dict(hub_metadata, keras_coordatt=metadata))
    return metadata


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")

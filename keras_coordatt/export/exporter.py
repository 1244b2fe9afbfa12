"""`export_model`: build a model, export it, check it, describe it.

The steps, in order: the arguments are checked (nothing is written before
that), the model is built with its weights, the artifact is written into a
temporary folder next to the output, read back with its own runtime and
compared with the Keras model on random images, described in
`metadata.json`, and only then renamed to the output path. Any failure
removes the temporary folder.
"""

import datetime
import math
import os

import numpy as np

from keras_coordatt.export import formats
from keras_coordatt.export._atomic import atomic_directory
from keras_coordatt.export.preset import write_json

MODELS = {
    "mobilenetv2_ca": "MobileNetV2CA",
    "mobilenext_ca": "MobileNeXtCA",
}
VARIANTS = ("classification", "feature_vector")
OUTPUT_NAMES = {"classification": "predictions",
                "feature_vector": "feature_vector"}
ARTIFACT_FILES = {"litert": "model.tflite", "onnx": "model.onnx"}
# Largest |artifact - keras| allowed on the verification images.
# The SavedModel (serve, serving_default, TFSMLayer) and the preset run the
# same float32 TensorFlow graph (measured: 0).
FLOAT_TOLERANCE = 1e-5
# LiteRT and ONNX (tf2onnx) fold BatchNorm into the convolution weights and
# their runtimes (XNNPACK, onnxruntime's MLAS) sum in another order: float32
# rounding, measured 1e-5 to 4e-5 on the softmax outputs of a random
# alpha-0.35 network, so 1e-5 does not hold for them.
FOLDED_TOLERANCE = 1e-4
TOLERANCES = {"keras": FLOAT_TOLERANCE, "saved_model": FLOAT_TOLERANCE,
              "onnx": FOLDED_TOLERANCE, "litert": FOLDED_TOLERANCE}
IMAGENET_LICENSE = "MIT, weights by the authors of Coordinate Attention"
CODE_LICENSE = "MIT"


def _constructor(model_name):
    import keras_coordatt

    return getattr(keras_coordatt, MODELS[model_name])


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
    if model_name not in MODELS:
        raise ValueError(
            f"Unknown model {model_name!r}; expected one of "
            f"{', '.join(MODELS)}."
        )
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
    if weights not in (None, "imagenet"):
        if not os.path.isfile(os.fspath(weights)):
            raise FileNotFoundError(
                f"Weights file not found: {os.fspath(weights)!r} (--weights "
                "takes 'imagenet', 'none' or the path of a .weights.h5, "
                ".keras, .h5, .pth or .pt file)."
            )
    if weights == "imagenet" and model_name != "mobilenetv2_ca":
        raise ValueError(
            "ImageNet weights were published for mobilenetv2_ca only. "
            f"Received: model={model_name!r}"
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


def _copy_weights_by_name(source, target):
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def build_model(model_name="mobilenetv2_ca", alpha=1.0, weights="imagenet",
                variant="classification", input_size=224, classes=1000,
                classifier_activation="softmax"):
    """Builds an application model for export.

    The classification variant is the full network (`include_top=True`).
    The feature-vector variant is `include_top=False, pooling="avg"` with
    the same weights (the classifier dropped): a weights file of either
    head loads into it.

    Args:
        model_name: `"mobilenetv2_ca"` or `"mobilenext_ca"`.
        alpha: width multiplier.
        weights: `"imagenet"`, `None` (random) or a weights file path.
        variant: `"classification"` or `"feature_vector"`.
        input_size: the (square) image size, or an `(H, W)` pair.
        classes: classes of the classifier (classification and weights
            files with a classifier).
        classifier_activation: `"softmax"` or `None` (logits).

    Returns:
        `(model, kwargs)`: the model and its constructor keyword arguments
        (without `weights`).
    """
    check_arguments(model_name, weights, "keras", variant)
    constructor = _constructor(model_name)
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
    except Exception as notop_error:  # a file with it: load, then drop it
        top_kwargs = dict(kwargs, include_top=True, pooling=None)
        try:
            full = constructor(weights=weights, **top_kwargs)
        except Exception:
            raise notop_error from None
        model = constructor(weights=None, **kwargs)
        _copy_weights_by_name(full, model)
        return model, kwargs


def _count(variables):
    return int(sum(math.prod(v.shape) for v in variables))


def _weights_metadata(weights):
    from keras_coordatt.export.preset import sha256

    if weights == "imagenet":
        from keras_coordatt.weights import imagenet

        return {
            "source": "imagenet",
            "checkpoint_url": imagenet.IMAGENET_URL,
            "checkpoint_git_blob_id": imagenet.IMAGENET_BLOB_ID,
            "description": "The authors' ImageNet-1k checkpoint mbv2_ca.pth "
                           "(74.3 % top-1), converted to Keras.",
        }
    if weights is None:
        return {"source": "random",
                "description": "Random initialization (untrained)."}
    from keras_coordatt.weights import git_blob_sha1

    path = os.fspath(weights)
    return {
        "source": "file",
        "file": os.path.basename(path),
        "sha256": sha256(path),
        "git_blob_id": git_blob_sha1(path),
    }


def make_metadata(model, kwargs, model_name, weights, variant,
                  export_format):
    """The metadata.json content of an exported model."""
    import keras

    import keras_coordatt
    from keras_coordatt.applications import imagenet_utils

    mean = list(imagenet_utils.IMAGENET_MEAN)
    std = list(imagenet_utils.IMAGENET_STD)
    low = min((0.0 - m) / s for m, s in zip(mean, std))
    high = max((1.0 - m) / s for m, s in zip(mean, std))
    output_shape = [None] + list(model.outputs[0].shape[1:])
    arch = {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in kwargs.items()}
    return {
        "name": model.name,
        "model": model_name,
        "variant": variant,
        "format": export_format,
        "architecture": {
            "constructor": f"keras_coordatt.{MODELS[model_name]}",
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
            "value_range": [round(low, 6), round(high, 6)],
            "raw_value_range": [0, 255],
        },
        "output": {
            "name": OUTPUT_NAMES[variant],
            "shape": output_shape,
            "dtype": "float32",
            "activation": (kwargs.get("classifier_activation")
                           if variant == "classification" else None),
        },
        "preprocessing": {
            "function": "keras_coordatt.preprocess_input",
            "mode": "torch",
            "scale": "1/255",
            "mean": mean,
            "std": std,
            "formula": "(x / 255 - mean) / std, per RGB channel",
        },
        "weights": _weights_metadata(weights),
        "license": (IMAGENET_LICENSE if weights == "imagenet" else
                    CODE_LICENSE if weights is None else
                    f"{CODE_LICENSE} (code); weights: as licensed by the "
                    "owner of the weights file"),
        "versions": {"keras": keras.__version__,
                     "keras_coordatt": keras_coordatt.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }


def random_images(shape, num_images=4, seed=0):
    """Random preprocessed images: uniform RGB in [0, 255], normalized."""
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
        return {"preset": formats.predict_preset(path, images)}
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


def verify_artifact(model, export_format, path, variant, num_images=4,
                    seed=0, tolerance="auto"):
    """Compares an artifact with the Keras model on random images.

    Returns:
        A dict per runtime with `max_abs_diff` (and `top1_agreement` for
        classification), plus `tolerance` (`"auto"`: the format's entry of
        `TOLERANCES`; None: not enforced, as for int8).

    Raises:
        AssertionError: a float artifact differs by more than `tolerance`.
    """
    if tolerance == "auto":
        tolerance = TOLERANCES[export_format]
    shape = tuple(model.inputs[0].shape[1:])
    images = random_images(shape, num_images, seed)
    reference = np.asarray(model.predict(images, verbose=0))
    report = {"num_images": num_images, "seed": seed, "tolerance": tolerance}
    for runtime, outputs in run_artifact(export_format, path, images).items():
        result = compare(reference, outputs, variant == "classification")
        report[runtime] = result
        if tolerance is not None and result["max_abs_diff"] > tolerance:
            raise AssertionError(
                f"The {export_format} artifact ({runtime}) differs from the "
                f"Keras model by {result['max_abs_diff']:.3g} > "
                f"{tolerance:g}; the export was discarded."
            )
    return report


def load_representative(source, shape, limit=200):
    """Preprocessed calibration images from a `.npy` file or a folder.

    Args:
        source: a numpy array or `.npy` file of RGB images in [0, 255]
            `(N, H, W, 3)`, or a folder of image files (resized to `shape`).
        shape: the model's `(H, W, 3)`.
        limit: at most this many images.
    """
    import keras

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


def export_model(output, export_format, model_name="mobilenetv2_ca",
                 alpha=1.0, weights="imagenet", variant="classification",
                 input_size=224, classes=1000, classifier_activation="softmax",
                 int8=False, representative=None, num_samples=200,
                 overwrite=False, verify=True, num_verify_images=4, model=None,
                 model_kwargs=None):
    """Exports an application model to one hub format, atomically.

    Args:
        output: the folder to produce (must not exist unless `overwrite`).
        export_format: `"keras"` (preset folder), `"saved_model"`,
            `"litert"` or `"onnx"`.
        model_name: `"mobilenetv2_ca"` or `"mobilenext_ca"`.
        alpha: width multiplier.
        weights: `"imagenet"`, `None` (random) or a weights file path.
        variant: `"classification"` or `"feature_vector"`.
        input_size: the square image size (or `(H, W)`).
        classes: number of classes of the classifier.
        classifier_activation: `"softmax"` or `None`.
        int8: with `litert`, post-training int8 quantization (needs
            `keras_coordatt.quantization` and `representative`).
        representative: calibration images: array or `.npy` of RGB images in
            [0, 255], or a folder of images.
        num_samples: how many calibration images to use.
        overwrite: replace an existing `output` (once the new one is done).
        verify: compare the artifact with the Keras model on random images
            (results in metadata.json; float formats must agree within
            `TOLERANCES`).
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
    output = os.path.abspath(os.fspath(output))
    if os.path.lexists(output) and not overwrite:
        raise FileExistsError(
            f"The output {output!r} already exists; choose another path or "
            "pass --overwrite."
        )
    if model is None:
        model, model_kwargs = build_model(
            model_name, alpha, weights, variant, input_size, classes,
            classifier_activation)
    output_name = OUTPUT_NAMES[variant]
    metadata = make_metadata(model, model_kwargs, model_name, weights,
                             variant, export_format)
    with atomic_directory(output, overwrite=overwrite) as tmp:
        if export_format == "keras":
            metadata["files"] = {}
            formats.export_keras(model, tmp, metadata)
            metadata = _read_json(os.path.join(tmp, "metadata.json"))
        elif export_format == "saved_model":
            metadata["saved_model"] = formats.export_saved_model(
                model, tmp, output_name=output_name)
        elif export_format == "litert":
            data = None
            if int8:
                data = load_representative(
                    representative, tuple(model.inputs[0].shape[1:]),
                    num_samples)
            metadata["litert"] = formats.export_litert(
                model, os.path.join(tmp, ARTIFACT_FILES["litert"]),
                int8=int8, representative_data=data,
                num_samples=num_samples)
        else:
            metadata["onnx"] = formats.export_onnx(
                model, os.path.join(tmp, ARTIFACT_FILES["onnx"]),
                output_name=output_name)
        if verify:
            metadata["verification"] = verify_artifact(
                model, export_format, tmp, variant, num_verify_images,
                tolerance=None if int8 else "auto")
        write_json(os.path.join(tmp, "metadata.json"), metadata)
    return metadata


def _read_json(path):
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)

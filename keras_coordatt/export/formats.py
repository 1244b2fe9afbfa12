"""One exporter per format, and the runtimes that read each format back.

Every exporter takes a built Keras model with a static image size and writes
one artifact; none of them creates directories other than the one it is
given. `keras_coordatt.export.export_model` wraps them with argument checks,
metadata, verification and an atomic output directory.

Formats:
- `keras`: the native Keras file `model.keras` (`export_keras`, written
  atomically by `keras_coordatt.utils.model_files.save_model`), loaded back
  with `keras.saving.load_model` (safe mode) after `import keras_coordatt`.
- `keras-hub`: a keras-hub preset of the model's keras-hub twin
  (`keras_coordatt.hub`: an `ImageClassifier` with its preprocessor, or a
  `Backbone`), written by keras-hub's `save_to_preset`: it loads with
  `keras_hub.models.ImageClassifier.from_preset` (a local folder, or a
  `kaggle://` / `hf://` handle, which keras-hub downloads itself) and uploads
  with `keras_hub.upload_preset("hf://USER/NAME", folder)` (or `kaggle://`).
  The package's only preset format is keras-hub's.
- `saved_model`: a TF SavedModel written by `keras.export.ExportArchive`
  with a `serve` endpoint (tensor in, tensor out: what
  `keras.layers.TFSMLayer` calls) and a `serving_default` signature (named
  input `image`, named output, for TF Serving).
- `litert`: a `.tflite` flatbuffer; float models use builtin ops only, with
  variables frozen into constants; int8 models come from
  `keras_coordatt.quantization` when that package is present.
- `onnx`: keras' own ONNX exporter (`model.export(format="onnx")`, through
  `tf2onnx` on the TensorFlow backend), with the graph's input and output
  renamed to stable names.

TensorFlow, ONNX and LiteRT are imported inside the functions that need
them.
"""

import os

import numpy as np

from keras_coordatt import litert
from keras_coordatt.backend import require_tensorflow

FORMATS = ("keras", "keras-hub", "saved_model", "litert", "onnx")
# Ops that betray unfrozen variables in a TFLite model.
VARIABLE_OPS = ("VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE")
SAVED_MODEL_ENDPOINT = "serve"
SIGNATURE_KEY = "serving_default"


def _tf():
    return require_tensorflow("Exporting to SavedModel, LiteRT or ONNX")


def _image_shape(model):
    if len(model.inputs) != 1:
        raise ValueError(
            "Only single-input models can be exported. Received: "
            f"{len(model.inputs)} inputs"
        )
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            "The exported models have a fixed image size: build the model "
            f"with a static `input_shape`. Received: input shape "
            f"{tuple(model.inputs[0].shape)}"
        )
    return shape


KERAS_FILE = "model.keras"


def export_keras(model, directory):
    """Writes `model` as `directory/model.keras` (atomically, after a
    free-space check: `keras_coordatt.utils.model_files.save_model`).

    Args:
        model: a Keras model.
        directory: an existing directory.

    Returns:
        `{"model.keras": {"sha256": ..., "bytes": ...}}`, for the
        metadata's `files`: a copy whose hash differs is not this export.
    """
    from keras_coordatt.utils.model_files import save_model

    path = os.path.join(os.fspath(directory), KERAS_FILE)
    save_model(model, path)
    return {KERAS_FILE: {"sha256": sha256(path),
                         "bytes": os.path.getsize(path)}}


def sha256(path):
    """The hex SHA-256 of a file."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_keras_hub(model, directory, model_name, alpha, **hub_kwargs):
    """Writes the keras-hub twin of an application model (see
    `keras_coordatt.hub.from_application.hub_model`, which takes
    `hub_kwargs`: `reduction`, `attention`) into `directory` with keras-hub's
    `save_to_preset`; returns keras-hub's metadata.json."""
    import json

    from keras_coordatt.hub.from_application import hub_model

    hub_model(model, model_name, alpha=alpha, **hub_kwargs).save_to_preset(
        os.fspath(directory))
    with open(os.path.join(directory, "metadata.json"),
              encoding="utf-8") as f:
        return json.load(f)


def export_saved_model(model, directory, input_name="image",
                       output_name="predictions"):
    """Exports `model` as a TF SavedModel for serving and `TFSMLayer`.

    The SavedModel has two functions over the same graph: the `serve`
    endpoint, a float32 batch `(None, H, W, C)` in and a tensor out (the
    endpoint `keras.layers.TFSMLayer` and `tf.saved_model.load(...).serve`
    call), and the `serving_default` signature, a dict in (`input_name`) and
    a dict out (`output_name`), as TF Serving expects. Variables stay
    variables, so the model can be fine-tuned after loading.

    Args:
        model: a Keras model (TensorFlow backend) with a static image size.
        directory: where to write the SavedModel (created; must not exist
            or be empty).
        input_name: the signature's input name.
        output_name: the `serving_default` output name.

    Returns:
        A dict describing the endpoints (for metadata.json).
    """
    import keras

    tf = _tf()
    shape = (None,) + _image_shape(model)
    spec = tf.TensorSpec(shape, tf.float32, name=input_name)
    archive = keras.export.ExportArchive()
    archive.track(model)

    serve = archive.add_endpoint(
        SAVED_MODEL_ENDPOINT,
        lambda images: model(images, training=False),
        input_signature=[spec],
    )

    # Calls the traced `serve` function: the graph is traced once.
    @tf.function(input_signature=[spec])
    def serving_default(images):
        return {output_name: serve(images)}

    archive.add_endpoint(SIGNATURE_KEY, serving_default)
    archive.write_out(os.fspath(directory), verbose=False)
    out_shape = [None] + list(model.outputs[0].shape[1:])
    tensor = {"shape": list(shape), "dtype": "float32"}
    return {
        "endpoints": {
            SAVED_MODEL_ENDPOINT: {"input": tensor, "output": {
                "shape": out_shape, "dtype": "float32"}},
        },
        "signatures": {
            SIGNATURE_KEY: {
                "inputs": {input_name: tensor},
                "outputs": {output_name: {"shape": out_shape,
                                          "dtype": "float32"}},
            },
        },
    }


# The LiteRT helpers live in `keras_coordatt.litert`; the exporter reads
# them under these names.
tflite_op_names = litert.op_names
litert_output_step = litert.output_step


def check_builtin_float(model_bytes):
    """Raises if a float TFLite model has Flex or variable ops.

    Returns:
        The model's op names.
    """
    ops = tflite_op_names(model_bytes)
    flex = [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    variables = [op for op in ops if op in VARIABLE_OPS]
    if flex or variables:
        raise ValueError(
            "The LiteRT model is not a frozen builtin-ops model: "
            f"flex/custom ops {flex}, variable ops {variables}."
        )
    return ops


def export_litert(model, path, int8=False, representative_data=None,
                  num_samples=200):
    """Exports `model` as a LiteRT (`.tflite`) flatbuffer, batch size 1.

    Float: `keras_coordatt.quantization.convert_float` (a `(1, H, W, C)`
    float32 input named `image`, variables frozen into constants so that
    BatchNorm folds into the convolutions, `TFLITE_BUILTINS` only), checked
    here to hold no Flex and no variable (`VAR_HANDLE`/`READ_VARIABLE`) op.

    Int8: post-training full-integer quantization by
    `keras_coordatt.quantization.convert_ptq` (float input and output,
    int8 compute), calibrated on `representative_data`.

    Args:
        model: a Keras model (TensorFlow backend) with a static image size.
        path: the `.tflite` file to write.
        int8: whether to quantize to int8.
        representative_data: with `int8`, preprocessed images `(N, H, W, C)`
            (numpy array or iterable of batches).
        num_samples: with `int8`, how many images calibrate the ranges.

    Returns:
        A dict describing the model (op names, input and output details).
    """
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"LiteRT files end in .tflite. Received: {path!r}")
    quantization = _quantization_module()
    if int8:
        if representative_data is None:
            raise ValueError(
                "int8 LiteRT export needs a representative dataset "
                "(--representative)."
            )
        model_bytes = quantization.convert_ptq(
            model, representative_data, num_samples=num_samples
        )
        ops = tflite_op_names(model_bytes)
    else:
        model_bytes = quantization.convert_float(model)
        ops = check_builtin_float(model_bytes)
    with open(path, "wb") as f:
        f.write(model_bytes)
    interpreter = litert.interpreter(model_bytes, 1, allocate=True)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    return {
        "ops": ops,
        "signatures": interpreter.get_signature_list(),
        "input": {"name": inp["name"], "shape": inp["shape"].tolist(),
                  "dtype": np.dtype(inp["dtype"]).name},
        "output": {"name": out["name"], "shape": out["shape"].tolist(),
                   "dtype": np.dtype(out["dtype"]).name,
                   "quantization": list(out["quantization"])},
        "int8": bool(int8),
    }


def _quantization_module():
    """`keras_coordatt.quantization`, or a clear error when it is absent."""
    try:
        import keras_coordatt.quantization as quantization
    except ImportError as e:
        raise RuntimeError(
            "int8 LiteRT export requires keras_coordatt.quantization, which "
            f"could not be imported ({e})."
        ) from e
    if not hasattr(quantization, "convert_ptq"):
        raise RuntimeError(
            "int8 LiteRT export requires keras_coordatt.quantization."
            "convert_ptq, which this installation lacks."
        )
    return quantization


def int8_available():
    """Whether `keras_coordatt.quantization.convert_ptq` can be used."""
    try:
        _quantization_module()
    except RuntimeError:
        return False
    return True


def export_onnx(model, path, input_name="image", output_name="predictions",
                opset=None):
    """Exports `model` to ONNX with keras' exporter and renames its I/O.

    The graph takes a float32 `(batch, H, W, C)` input named `input_name`
    (dynamic batch) and returns one output named `output_name`.

    Args:
        model: a Keras model (TensorFlow backend) with a static image size.
        path: the `.onnx` file to write.
        input_name: the graph input's name.
        output_name: the graph output's name.
        opset: ONNX opset (keras' default when None).

    Returns:
        A dict describing the graph (opset, input, output).
    """
    tf = _tf()
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"ONNX files end in .onnx. Received: {path!r}")
    try:
        import onnx
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "ONNX export needs `onnx` and `tf2onnx` (pip install onnx "
            f"tf2onnx onnxruntime): {e}"
        ) from e
    spec = tf.TensorSpec((None,) + _image_shape(model), tf.float32,
                         name=input_name)
    model.export(path, format="onnx", input_signature=[spec],
                 opset_version=opset, verbose=False)
    graph_model = onnx.load(path)
    graph = graph_model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError("Expected a single-input, single-output ONNX graph.")
    renames = {graph.input[0].name: input_name,
               graph.output[0].name: output_name}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    graph.input[0].name = input_name
    graph.output[0].name = output_name
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.dim_param = "batch"
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, path)

    def describe(value):
        dims = value.type.tensor_type.shape.dim
        return {"name": value.name,
                "shape": [d.dim_param or d.dim_value for d in dims],
                "dtype": "float32"}

    return {
        "opset": max(o.version for o in graph_model.opset_import
                     if o.domain in ("", "ai.onnx")),
        "input": describe(graph.input[0]),
        "output": describe(graph.output[0]),
    }


# Runtimes: read an artifact back and run it on a float32 batch.


def predict_saved_model(directory, images, signature=False):
    """Runs a SavedModel's `serve` endpoint (or `serving_default`)."""
    tf = _tf()
    loaded = tf.saved_model.load(os.fspath(directory))
    x = tf.constant(np.asarray(images, "float32"))
    if signature:
        outputs = loaded.signatures[SIGNATURE_KEY](x)
        (value,) = outputs.values()
        return value.numpy()
    return loaded.serve(x).numpy()


def predict_tfsm_layer(directory, images):
    """Runs a SavedModel through `keras.layers.TFSMLayer` (`serve`)."""
    import keras

    layer = keras.layers.TFSMLayer(os.fspath(directory),
                                   call_endpoint=SAVED_MODEL_ENDPOINT)
    return keras.ops.convert_to_numpy(layer(np.asarray(images, "float32")))


def predict_litert(path, images):
    """Runs a `.tflite` model image by image with the LiteRT interpreter."""
    return litert.predict(os.fspath(path), np.asarray(images, "float32"),
                          num_threads=1)[0]


def predict_onnx(path, images):
    """Runs a `.onnx` model with onnxruntime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(
        os.fspath(path), providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.asarray(images, "float32")})[0]


def predict_keras(directory, images):
    """Loads `directory/model.keras` with `keras.saving.load_model` in safe
    mode (no Python code from the file runs) and runs it."""
    from keras_coordatt.utils.model_files import load_model

    model = load_model(os.path.join(os.fspath(directory), KERAS_FILE),
                       safe_mode=True)
    return np.asarray(model.predict(np.asarray(images, "float32"),
                                    verbose=0))

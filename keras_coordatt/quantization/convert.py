"""Keras -> TFLite conversion: float, post-training int8, QAT int8.

Every converter here needs the TensorFlow backend (the TFLite converter
traces TF graphs). A QAT twin trained on JAX or PyTorch converts after a
`.keras` round trip in a TensorFlow process.

The int8 converters restrict the op set to `TFLITE_BUILTINS_INT8` (never
`SELECT_TF_OPS`, so nothing silently becomes a Flex op) and check the result
with `check_int8`, which raises naming any op that would compute in float.
"""

import os

import numpy as np

from keras_coordatt.backend import require_tensorflow
# The int8 check and the op listing run the LiteRT interpreter, in
# `keras_coordatt.litert`; these names stay importable from here.
from keras_coordatt.litert import check_int8
from keras_coordatt.litert import inspect as inspect_tflite  # noqa: F401
from keras_coordatt.quiet import native_output_hidden


def _tf():
    return require_tensorflow("TFLite conversion")


def _converter(model, batch_size=1, freeze=False):
    """A TFLiteConverter for the inference function of a Keras model
    (`freeze`: its variables become constants first)."""
    tf = _tf()
    if len(model.inputs) != 1:
        raise ValueError(
            "Only single-input models can be converted. "
            f"Received: {len(model.inputs)} inputs"
        )
    shape = (batch_size,) + tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            "The model's input needs a static shape to convert to int8 "
            f"TFLite. Received: input shape {tuple(model.inputs[0].shape)}"
        )
    spec = tf.TensorSpec(shape, tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def serve(images):
        return model(images, training=False)

    concrete = serve.get_concrete_function()
    if freeze:
        from tensorflow.python.framework import convert_to_constants

        concrete = convert_to_constants.convert_variables_to_constants_v2(
            concrete
        )
        # An (empty) trackable keeps the `serving_default` signature.
        return tf.lite.TFLiteConverter.from_concrete_functions(
            [concrete], tf.Module()
        )
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete])


def _representative(data, steps):
    """A representative_dataset generator of single float32 images."""
    def generator():
        count = 0
        source = data
        if isinstance(data, np.ndarray):
            source = (data[i:i + 1] for i in range(len(data)))
        for batch in source:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            batch = np.asarray(batch, dtype="float32")
            for image in batch:
                if count >= steps:
                    return
                count += 1
                yield [image[None]]

    return generator


def _set_int8_io(converter, int8_io):
    tf = _tf()
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8


def _write(model_bytes, path):
    """Writes the `.tflite` under a temporary name renamed into place: a
    full disk raises `WriteError` naming `path` and leaves no truncated
    file under it."""
    from keras_coordatt.utils.atomic import atomic_file

    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            f.write(model_bytes)
    return model_bytes


def convert_float(model, path=None):
    """Converts a Keras model to a float32 TFLite model (builtin ops only).

    The variables are frozen into constants first, so BatchNorm folds into
    the convolutions and no variable op is left; the input is a `(1, H, W,
    C)` float32 tensor named `image`.

    Args:
        model: a Keras model (TensorFlow backend), static input shape.
        path: optional `.tflite` path to write.

    Returns:
        The TFLite flatbuffer as bytes.
    """
    tf = _tf()
    converter = _converter(model, freeze=True)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with native_output_hidden():
        model_bytes = converter.convert()
    return _write(model_bytes, path)


def convert_ptq(model, representative_data, num_samples=200, int8_io=False,
                path=None):
    """Post-training full-integer quantization (the baseline).

    Args:
        model: the float Keras model (TensorFlow backend).
        representative_data: images preprocessed as the model expects: a
            numpy array `(N, H, W, C)`, or an iterable / `tf.data.Dataset`
            of batches or `(images, labels)` batches.
        num_samples: int >= 1, how many images calibrate the ranges.
        int8_io: whether the model's input and output are int8 (else float
            with QUANTIZE/DEQUANTIZE at the boundary).
        path: optional `.tflite` path to write.

    Returns:
        The TFLite flatbuffer as bytes, checked by `check_int8`.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) \
            or num_samples < 1:
        raise ValueError(
            "`num_samples` must be an integer >= 1. "
            f"Received: num_samples={num_samples!r}"
        )
    tf = _tf()
    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(
        representative_data, num_samples
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8
    ]
    _set_int8_io(converter, int8_io)
    with native_output_hidden():
        model_bytes = converter.convert()
    check_int8(model_bytes, int8_io=int8_io)
    return _write(model_bytes, path)


def convert_qat(qat_model, int8_io=False, path=None):
    """Converts a QAT twin (`quantize_model`) to an all-int8 TFLite model.

    The fake-quant ranges learnt in training become the int8 scales; no
    representative dataset is needed.

    Args:
        qat_model: a model returned by `quantize_model` (or loaded from its
            `.keras` file), TensorFlow backend.
        int8_io: whether the model's input and output are int8.
        path: optional `.tflite` path to write.

    Returns:
        The TFLite flatbuffer as bytes, checked by `check_int8`.
    """
    tf = _tf()
    converter = _converter(qat_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # Builtins only (no SELECT_TF_OPS). TFLITE_BUILTINS_INT8 cannot be set
    # here: TF 2.21's converter then demands a representative dataset even
    # for fake-quantized graphs. `check_int8` enforces int8 instead.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    _set_int8_io(converter, int8_io)
    with native_output_hidden():
        model_bytes = converter.convert()
    check_int8(model_bytes, int8_io=int8_io)
    return _write(model_bytes, path)

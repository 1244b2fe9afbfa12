"""Running a `.tflite` classifier over a dataset with the LiteRT interpreter."""

import os

import numpy as np


def interpreter(model, num_threads=None):
    """A LiteRT interpreter for a `.tflite` model (tensors not allocated
    yet: before allocation its op list is the model's own, without the
    delegate nodes).

    Args:
        model: TFLite flatbuffer bytes or a `.tflite` path.
        num_threads: interpreter threads (None: LiteRT's default).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:  # pragma: no cover - depends on the extra
        raise ImportError(
            "Running TFLite models needs the LiteRT interpreter: "
            "`pip install keras-coordatt[litert]` (ai-edge-litert)."
        ) from error
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model),
                           num_threads=num_threads)
    return Interpreter(model_path=os.fspath(model), num_threads=num_threads)


def _iterate(data, batch_size):
    """Yields `(images, labels)` numpy batches; labels may be None."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(
        data[0], np.ndarray
    ):
        images, labels = data
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size], np.asarray(labels[i:i + batch_size])
        return
    if isinstance(data, np.ndarray):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size], None
        return
    for batch in data:
        if isinstance(batch, (tuple, list)):
            yield np.asarray(batch[0]), np.asarray(batch[1])
        else:
            yield np.asarray(batch), None


def predict_tflite(model, data, batch_size=32, num_threads=None):
    """Runs a TFLite model over images and returns its float outputs.

    Int8 inputs are quantized with the model's input scale and zero point,
    and int8 outputs dequantized, so float and int8-I/O models compare
    directly.

    Args:
        model: TFLite flatbuffer bytes or a `.tflite` path.
        data: images `(N, H, W, C)` preprocessed as the Keras model expects;
            or `(images, labels)` arrays; or an iterable / `tf.data.Dataset`
            of image batches or `(images, labels)` batches.
        batch_size: int >= 1, the interpreter batch for array inputs.
        num_threads: interpreter threads (None: LiteRT's default).

    Returns:
        `(outputs, labels)`: float32 array `(N, ...)` and the labels (None
        when the data has none).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or \
            batch_size < 1:
        raise ValueError(
            "`batch_size` must be an integer >= 1. "
            f"Received: batch_size={batch_size!r}"
        )
    runner = interpreter(model, num_threads)
    inp = runner.get_input_details()[0]
    out = runner.get_output_details()[0]
    current = None
    outputs, labels = [], []
    # A static batch (the converters' default, batch 1) runs image by image.
    dynamic = int(inp["shape_signature"][0]) == -1
    for images, batch_labels in _iterate(data, batch_size):
        images = np.asarray(images, dtype="float32")
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            images = np.clip(np.round(images / scale + zero), -128, 127)
            images = images.astype(np.int8)
        chunks = [images] if dynamic else [images[i:i + 1]
                                           for i in range(len(images))]
        for chunk in chunks:
            if current != chunk.shape:
                if dynamic:
                    runner.resize_tensor_input(inp["index"], chunk.shape)
                runner.allocate_tensors()
                current = chunk.shape
            runner.set_tensor(inp["index"], chunk)
            runner.invoke()
            result = runner.get_tensor(out["index"])
            if out["dtype"] == np.int8:
                scale, zero = out["quantization"]
                result = (result.astype("float32") - zero) * scale
            outputs.append(result.astype("float32"))
        if batch_labels is not None:
            labels.append(batch_labels)
    outputs = np.concatenate(outputs) if outputs else np.zeros((0,))
    labels = np.concatenate(labels) if labels else None
    return outputs, labels


def evaluate_tflite(model, data, batch_size=32, num_threads=None):
    """Top-1 accuracy of a TFLite classifier on labelled data.

    Args:
        model: TFLite flatbuffer bytes or a `.tflite` path.
        data: `(images, labels)` arrays, or an iterable / `tf.data.Dataset`
            of `(images, labels)` batches; labels are class indices or
            one-hot rows.
        batch_size: interpreter batch for array inputs.
        num_threads: interpreter threads.

    Returns:
        A dict: `accuracy` (float in [0, 1]), `predictions` (int array of
        top-1 classes), `num_samples`.
    """
    outputs, labels = predict_tflite(model, data, batch_size, num_threads)
    if labels is None:
        raise ValueError(
            "`data` must hold labels: (images, labels) arrays or batches. "
            "Received: images only"
        )
    if labels.ndim > 1:
        labels = labels.argmax(-1)
    predictions = outputs.reshape(len(outputs), -1).argmax(-1)
    return {
        "accuracy": float(np.mean(predictions == labels.reshape(-1))),
        "predictions": predictions,
        "num_samples": int(len(predictions)),
    }

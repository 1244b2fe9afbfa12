"""Running a `.tflite` classifier over a dataset with the LiteRT interpreter."""

import numpy as np

# The LiteRT runners live in `keras_coordatt.litert`; these names stay
# importable from here.
from keras_coordatt.litert import interpreter  # noqa: F401
from keras_coordatt.litert import predict as predict_tflite


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

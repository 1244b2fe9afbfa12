"""What needs TensorFlow says so, in one place.

Training (tf.distribute, tf.data), TFLite conversion and SavedModel/ONNX
export run on the TensorFlow backend only; the layer and the applications
run on every Keras backend.
"""

import keras


def require_tensorflow(purpose):
    """Returns the `tensorflow` module, or raises if Keras runs another
    backend.

    Args:
        purpose: what needs TensorFlow, for the message (e.g. "TFLite
            conversion").

    Raises:
        RuntimeError: naming the backend in use and what to set instead.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{purpose} needs the TensorFlow backend. Received: "
            f"KERAS_BACKEND={backend!r}; run it in a process with "
            "KERAS_BACKEND=tensorflow (a model saved as `.keras` on another "
            "backend loads there)."
        )
    import tensorflow as tf

    return tf

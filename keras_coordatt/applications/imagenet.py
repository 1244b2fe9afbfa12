"""ImageNet I/O of the application networks: the preprocessing the authors'
weights expect and the class names of their 1000 outputs."""

import json
import os

import keras
import numpy as np

# The preprocessing the authors' PyTorch weights expect (torchvision's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CLASS_INDEX_PATH = os.path.join(
    os.path.dirname(__file__), "imagenet_class_index.json"
)
_CLASS_INDEX = None


def preprocess_input(x, data_format=None):
    """Preprocesses a batch of RGB images in [0, 255] for these models.

    The authors' weights expect torchvision's normalisation: scale to [0, 1],
    subtract the ImageNet mean (0.485, 0.456, 0.406) and divide by the
    standard deviation (0.229, 0.224, 0.225), per channel ("torch" mode of
    `keras.applications.imagenet_utils.preprocess_input`).

    Args:
        x: float numpy array or tensor of shape `(..., H, W, 3)` (or
            `(..., 3, H, W)` for channels_first), RGB values in [0, 255].
        data_format: image data format; defaults to
            `keras.config.image_data_format()`.

    Returns:
        The preprocessed batch, float32, same shape. A numpy input is never
        modified (Keras' own function works in place on float arrays).
    """
    if isinstance(x, np.ndarray):
        x = x.astype("float32")  # A copy, always.
    return keras.applications.imagenet_utils.preprocess_input(
        x, data_format=data_format, mode="torch"
    )


def _class_index():
    global _CLASS_INDEX
    if _CLASS_INDEX is None:
        with open(_CLASS_INDEX_PATH, encoding="utf-8") as f:
            _CLASS_INDEX = json.load(f)
    return _CLASS_INDEX


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions into `(class_id, name, score)` tuples.

    Works offline: the 1000-class index ships with the package.

    Args:
        preds: array of shape `(batch, 1000)` (probabilities or logits).
        top: how many of the best classes to return per sample.

    Returns:
        A list (one per sample) of lists of `(wnid, name, score)` tuples,
        best first.
    """
    preds = keras.ops.convert_to_numpy(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions, a 2D array "
            f"of shape (samples, 1000). Received: preds.shape={preds.shape}"
        )
    index = _class_index()
    results = []
    for row in preds:
        best = np.argsort(row)[-top:][::-1]
        results.append(
            [(*index[str(i)], float(row[i])) for i in best]
        )
    return results

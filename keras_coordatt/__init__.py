"""keras-coordatt: Coordinate Attention (CVPR 2021) for Keras 3."""

from keras_coordatt.applications import MobileNetV2CA
from keras_coordatt.applications import MobileNeXtCA
from keras_coordatt.applications import decode_predictions
from keras_coordatt.applications import preprocess_input
from keras_coordatt.layers import CoordinateAttention

__version__ = "0.1.0"

__all__ = [
    "CoordinateAttention",
    "MobileNetV2CA",
    "MobileNeXtCA",
    "decode_predictions",
    "preprocess_input",
]

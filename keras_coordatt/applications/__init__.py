"""Application models in the style of `keras.applications`."""

from keras_coordatt.applications import mobilenet_v2_ca
from keras_coordatt.applications import mobilenext_ca
from keras_coordatt.applications.imagenet import decode_predictions
from keras_coordatt.applications.imagenet import preprocess_input
from keras_coordatt.applications.mobilenet_v2_ca import MobileNetV2CA
from keras_coordatt.applications.mobilenext_ca import MobileNeXtCA
from keras_coordatt.applications.pyramid import pyramid_outputs

__all__ = [
    "MobileNetV2CA",
    "MobileNeXtCA",
    "decode_predictions",
    "mobilenet_v2_ca",
    "mobilenext_ca",
    "preprocess_input",
    "pyramid_outputs",
]

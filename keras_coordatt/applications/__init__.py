"""Application models in the style of `keras.applications`."""

from keras_coordatt.applications import mobilenet_v2_ca
from keras_coordatt.applications import mobilenext_ca
from keras_coordatt.applications.imagenet import decode_predictions
from keras_coordatt.applications.imagenet import preprocess_input
from keras_coordatt.applications.keras_families import build_keras_application
from keras_coordatt.applications.keras_families import keras_family_names
from keras_coordatt.applications.keras_families import register_keras_family
from keras_coordatt.applications.mobilenet_v2_ca import MobileNetV2CA
from keras_coordatt.applications.mobilenext_ca import MobileNeXtCA
from keras_coordatt.applications.pyramid import pyramid_outputs
from keras_coordatt.applications.registry import ApplicationSpec
from keras_coordatt.applications.registry import PublishedWeights
from keras_coordatt.applications.registry import application_names
from keras_coordatt.applications.registry import get_application
from keras_coordatt.applications.registry import get_application_spec
from keras_coordatt.applications.registry import register_application

__all__ = [
    "ApplicationSpec",
    "MobileNetV2CA",
    "MobileNeXtCA",
    "PublishedWeights",
    "application_names",
    "build_keras_application",
    "decode_predictions",
    "get_application",
    "get_application_spec",
    "keras_family_names",
    "mobilenet_v2_ca",
    "mobilenext_ca",
    "preprocess_input",
    "pyramid_outputs",
    "register_application",
    "register_keras_family",
]

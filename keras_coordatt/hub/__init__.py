"""keras-hub classes for the application networks (the `hub` extra).

`MobileNetV2CABackbone` / `MobileNeXtCABackbone` are `keras_hub.models.
Backbone`s with `pyramid_outputs`, so keras-hub's dense heads take them as
they are (`DeepLabV3Backbone(image_encoder=...)`), and they save and load as
keras-hub presets (`save_to_preset`, `from_preset`). Importing
`keras_coordatt` does not import this package or keras-hub.
"""

from keras_coordatt.hub.backbone import MobileNetV2CABackbone
from keras_coordatt.hub.backbone import MobileNeXtCABackbone
from keras_coordatt.hub.image_classifier import MobileNetV2CAImageClassifier
from keras_coordatt.hub.image_classifier import MobileNeXtCAImageClassifier
from keras_coordatt.hub.image_classifier_preprocessor import (
    MobileNetV2CAImageClassifierPreprocessor,
)
from keras_coordatt.hub.image_classifier_preprocessor import (
    MobileNeXtCAImageClassifierPreprocessor,
)
from keras_coordatt.hub.image_converter import MobileNetV2CAImageConverter
from keras_coordatt.hub.image_converter import MobileNeXtCAImageConverter

__all__ = [
    "MobileNeXtCABackbone",
    "MobileNeXtCAImageClassifier",
    "MobileNeXtCAImageClassifierPreprocessor",
    "MobileNeXtCAImageConverter",
    "MobileNetV2CABackbone",
    "MobileNetV2CAImageClassifier",
    "MobileNetV2CAImageClassifierPreprocessor",
    "MobileNetV2CAImageConverter",
]

"""keras-hub image classifiers (pooling, dropout, dense) on our backbones."""

import keras
from keras_hub.models import ImageClassifier

from keras_coordatt.hub.backbone import MobileNetV2CABackbone
from keras_coordatt.hub.backbone import MobileNeXtCABackbone
from keras_coordatt.hub.image_classifier_preprocessor import (
    MobileNetV2CAImageClassifierPreprocessor,
)
from keras_coordatt.hub.image_classifier_preprocessor import (
    MobileNeXtCAImageClassifierPreprocessor,
)


@keras.saving.register_keras_serializable(package="keras_coordatt")
class MobileNetV2CAImageClassifier(ImageClassifier):
    backbone_cls = MobileNetV2CABackbone
    preprocessor_cls = MobileNetV2CAImageClassifierPreprocessor


@keras.saving.register_keras_serializable(package="keras_coordatt")
class MobileNeXtCAImageClassifier(ImageClassifier):
    backbone_cls = MobileNeXtCABackbone
    preprocessor_cls = MobileNeXtCAImageClassifierPreprocessor

"""keras-hub classifier preprocessors: the torch-mode image converters."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from keras_coordatt.hub.backbone import MobileNetV2CABackbone
from keras_coordatt.hub.backbone import MobileNeXtCABackbone
from keras_coordatt.hub.image_converter import MobileNetV2CAImageConverter
from keras_coordatt.hub.image_converter import MobileNeXtCAImageConverter


@keras.saving.register_keras_serializable(package="keras_coordatt")
class MobileNetV2CAImageClassifierPreprocessor(ImageClassifierPreprocessor):
    backbone_cls = MobileNetV2CABackbone
    image_converter_cls = MobileNetV2CAImageConverter


@keras.saving.register_keras_serializable(package="keras_coordatt")
class MobileNeXtCAImageClassifierPreprocessor(ImageClassifierPreprocessor):
    backbone_cls = MobileNeXtCABackbone
    image_converter_cls = MobileNeXtCAImageConverter

"""keras-hub image converters with the authors' (torchvision) normalisation:
`(x / 255 - mean) / std`, as `keras_coordatt.preprocess_input`."""

import keras
from keras_hub.layers import ImageConverter

from keras_coordatt.applications.imagenet import IMAGENET_MEAN
from keras_coordatt.applications.imagenet import IMAGENET_STD
from keras_coordatt.hub.backbone import MobileNetV2CABackbone
from keras_coordatt.hub.backbone import MobileNeXtCABackbone

SCALE = tuple(1.0 / (255.0 * s) for s in IMAGENET_STD)
OFFSET = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))


class _TorchModeConverter(ImageConverter):
    def __init__(self, image_size=None, scale=SCALE, offset=OFFSET,
                 **kwargs):
        super().__init__(image_size=image_size, scale=scale, offset=offset,
                         **kwargs)


@keras.saving.register_keras_serializable(package="keras_coordatt")
class MobileNetV2CAImageConverter(_TorchModeConverter):
    backbone_cls = MobileNetV2CABackbone


@keras.saving.register_keras_serializable(package="keras_coordatt")
class MobileNeXtCAImageConverter(_TorchModeConverter):
    backbone_cls = MobileNeXtCABackbone

"""keras-hub classes for the application networks (the `hub` extra).

Every registered application (`applications.registry`) has a keras-hub
`Backbone` with `pyramid_outputs`, so keras-hub's dense heads take it as it
is (`DeepLabV3Backbone(image_encoder=...)`), and an `ImageClassifier`,
preprocessor and image converter; they save and load as keras-hub presets
(`save_to_preset`, `from_preset`). `hub_classes(name)` returns them; those
of the networks registered when this package is imported are also its
attributes (`MobileNetV2CABackbone`, `MobileNeXtCAImageClassifier`, ...).
`InsertedBackbone` is what `add_attention` returns for a keras-hub
`Backbone`: its pyramid kept, saved and loaded with it.
Importing `keras_coordatt` does not import this package or keras-hub.
"""

from keras_coordatt.applications.registry import application_names
from keras_coordatt.hub.backbone import ApplicationBackbone
from keras_coordatt.hub.factory import HubClasses
from keras_coordatt.hub.factory import hub_classes
from keras_coordatt.hub.factory import make_hub_classes
from keras_coordatt.hub.image_converter import ApplicationImageConverter
from keras_coordatt.hub.inserted import InsertedBackbone


def _export_registered():
    """Makes (and registers with Keras, for `from_preset`) the classes of
    every application registered now; returns their names."""
    names = []
    for name in application_names():
        for cls in hub_classes(name):
            globals()[cls.__name__] = cls
            names.append(cls.__name__)
    return names


__all__ = [
    "ApplicationBackbone",
    "ApplicationImageConverter",
    "HubClasses",
    "InsertedBackbone",
    "hub_classes",
    "make_hub_classes",
    *_export_registered(),
]

"""The keras-hub classes of a registered application, made from its spec.

`make_hub_classes(spec)` creates the four classes keras-hub needs of a
network (`{prefix}Backbone`, `{prefix}ImageClassifier`,
`{prefix}ImageClassifierPreprocessor`, `{prefix}ImageConverter`, with
`prefix` the constructor's name), registered for Keras serialization under
`keras_coordatt>{class name}` so that keras-hub presets of them load with
`Backbone.from_preset` / `ImageClassifier.from_preset`. `hub_classes(name)`
returns them for a registered name, made once per spec.
"""

import typing

import keras
from keras_hub.models import ImageClassifier
from keras_hub.models import ImageClassifierPreprocessor

from keras_coordatt.applications.registry import get_application_spec
from keras_coordatt.applications.registry import resolve
from keras_coordatt.hub.backbone import ApplicationBackbone
from keras_coordatt.hub.image_converter import ApplicationImageConverter

PACKAGE = "keras_coordatt"


class HubClasses(typing.NamedTuple):
    """The keras-hub classes of one application."""

    backbone: type
    classifier: type
    preprocessor: type
    converter: type


# name -> (the spec the classes were made from, its HubClasses).
_MADE = {}


def hub_classes(name):
    """The `HubClasses` of registered application `name`.

    Made by the spec's `hub_classes` function on first use, again only if
    the name was registered anew since.

    Raises:
        ValueError: `name` is not registered (the message lists the names).
    """
    spec = get_application_spec(name)
    made = _MADE.get(name)
    if made is None or made[0] is not spec:
        made = (spec, resolve(spec.hub_classes)(spec))
        _MADE[name] = made
    return made[1]


def _make(name, base, doc, **attributes):
    cls = type(name, (base,), dict(attributes, __doc__=doc,
                                   __module__="keras_coordatt.hub"))
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def make_hub_classes(spec):
    """Creates and registers the four keras-hub classes of `spec`."""
    prefix = spec.prefix
    summary = (spec.constructor.__doc__ or spec.name).strip().splitlines()[0]
    backbone = _make(
        f"{prefix}Backbone", ApplicationBackbone,
        f"`{spec.constructor.__name__}` without its classifier as a "
        f"keras-hub `Backbone` ({summary}); `pyramid_outputs` "
        f"{', '.join(spec.pyramid_levels)}.",
        application=staticmethod(spec.constructor))
    converter = _make(
        f"{prefix}ImageConverter", ApplicationImageConverter,
        f"The image converter of {prefix}: `(x / 255 - mean) / std`.",
        backbone_cls=backbone, mean=tuple(spec.mean), std=tuple(spec.std))
    preprocessor = _make(
        f"{prefix}ImageClassifierPreprocessor", ImageClassifierPreprocessor,
        f"The classifier preprocessor of {prefix}.",
        backbone_cls=backbone, image_converter_cls=converter)
    classifier = _make(
        f"{prefix}ImageClassifier", ImageClassifier,
        f"An image classifier (pooling, dropout, dense) on {prefix}.",
        backbone_cls=backbone, preprocessor_cls=preprocessor)
    return HubClasses(backbone, classifier, preprocessor, converter)

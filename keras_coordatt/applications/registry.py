"""The application networks by name: one `ApplicationSpec` per network.

A spec holds everything the package needs of a network: its
`keras.applications`-style constructor, the weights published for it, its
preprocessing (function, and mean / std for metadata and image converters),
its pyramid levels, its default input size, and where its keras-hub classes
come from (resolved lazily, so importing `keras_coordatt` never imports
keras-hub). Training, quantization, export, the weights loader and the hub
classes all read the specs; a new backbone is one `register_application`
call:

>>> register_application(name="my_net", constructor=MyNet)  # doctest: +SKIP
>>> get_application("my_net") is MyNet  # doctest: +SKIP
True
"""

import dataclasses
import importlib
import typing

from keras_coordatt.applications.imagenet import IMAGENET_MEAN
from keras_coordatt.applications.imagenet import IMAGENET_STD
from keras_coordatt.applications.imagenet import preprocess_input
from keras_coordatt.applications.mobilenet_v2_ca import MobileNetV2CA
from keras_coordatt.applications.mobilenext_ca import MobileNeXtCA
from keras_coordatt.weights.imagenet import IMAGENET_BLOB_ID
from keras_coordatt.weights.imagenet import IMAGENET_URL

PYRAMID_LEVELS = ("P1", "P2", "P3", "P4", "P5")
# The network the command lines and `export_model` build by default.
DEFAULT_APPLICATION = "mobilenetv2_ca"
# Builds the four keras-hub classes of a spec that names none of its own.
GENERIC_HUB_CLASSES = "keras_coordatt.hub.factory:make_hub_classes"


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """Weights published for a network, loaded by `weights=<their name>`.

    Attributes:
        loader: `"module:attr"` of a function `loader(model) -> model`
            (resolved when the weights are loaded).
        description: what they are, for metadata.json.
        license: their license, for metadata.json.
        source: extra metadata.json entries (e.g. the checkpoint's URL).
            The loader may also be the function itself.
    """

    loader: typing.Union[str, typing.Callable]
    description: str = ""
    license: str = ""
    source: typing.Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ApplicationSpec:
    """What the package knows of one application network.

    Attributes:
        name: the registered name (`--model`, `TrainConfig.model`).
        constructor: the `keras.applications`-style constructor
            (`input_shape, alpha, include_top, weights, input_tensor,
            pooling, classes, classifier_activation, name, reduction,
            attention`), whose models carry `pyramid_outputs`.
        weights: published weight name (`"imagenet"`) -> `PublishedWeights`.
        torch_loader: `"module:attr"` of `loader(model, path)` converting a
            `torch.save` checkpoint into the network, or None (none does).
        preprocess_input: `f(x, data_format=None)` mapping RGB [0, 255]
            images to the network's input.
        preprocessing_mode: its `keras.applications` mode (`"torch"`).
        mean, std: per-channel mean and standard deviation of
            `preprocess_input` on [0, 1] images: `(x / 255 - mean) / std`.
        pyramid_levels: the `pyramid_outputs` keys its models have.
        default_input_size: the image side it is built and exported at.
        hub_classes: `"module:attr"` of a function `f(spec) -> HubClasses`
            (`keras_coordatt.hub.factory`): the keras-hub Backbone,
            ImageClassifier, preprocessor and image converter classes.
        class_prefix: prefix of those classes' names (`"MobileNetV2CA"` ->
            `MobileNetV2CABackbone`); None: the constructor's name.
    """

    name: str
    constructor: typing.Callable
    weights: typing.Mapping[str, PublishedWeights] = dataclasses.field(
        default_factory=dict)
    torch_loader: typing.Union[str, typing.Callable, None] = None
    preprocess_input: typing.Callable = preprocess_input
    preprocessing_mode: str = "torch"
    mean: typing.Tuple[float, ...] = IMAGENET_MEAN
    std: typing.Tuple[float, ...] = IMAGENET_STD
    pyramid_levels: typing.Tuple[str, ...] = PYRAMID_LEVELS
    default_input_size: int = 224
    hub_classes: typing.Union[str, typing.Callable] = GENERIC_HUB_CLASSES
    class_prefix: typing.Optional[str] = None

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name):
            raise ValueError(
                "An application's name must be a non-empty string. "
                f"Received: name={self.name!r}")
        if not callable(self.constructor):
            raise ValueError(
                f"The constructor of {self.name!r} must be callable. "
                f"Received: constructor={self.constructor!r}")
        if len(self.mean) != len(self.std) or not all(self.std):
            raise ValueError(
                "`mean` and `std` need one value per channel, std non-zero. "
                f"Received: mean={self.mean}, std={self.std}")

    @property
    def prefix(self):
        """The keras-hub class name prefix."""
        return self.class_prefix or self.constructor.__name__


def resolve(reference):
    """The object a `"module:attr"` string names (imported now); any other
    object as it is."""
    if not isinstance(reference, str):
        return reference
    module, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            "Expected a 'module:attribute' reference to an importable "
            f"object. Received: {reference!r} ({err})") from None


_IMAGENET = PublishedWeights(
    loader="keras_coordatt.weights.imagenet:load_imagenet_weights",
    description="The authors' ImageNet-1k checkpoint mbv2_ca.pth "
                "(74.3 % top-1), converted to Keras.",
    license="MIT, weights by the authors of Coordinate Attention",
    source={"checkpoint_url": IMAGENET_URL,
            "checkpoint_git_blob_id": IMAGENET_BLOB_ID},
)
_SPECS = {}


def register_application(spec=None, /, *, overwrite=False, **fields):
    """Registers an application network; returns its `ApplicationSpec`.

    Args:
        spec: an `ApplicationSpec`; or None and its fields as keywords
            (`register_application(name="toy", constructor=Toy)`).
        overwrite: replace a network registered under the same name.

    Raises:
        ValueError: both or neither of `spec` and fields, bad fields, or a
            name already registered (without `overwrite`).
    """
    if (spec is None) == (not fields):
        raise ValueError(
            "Pass an ApplicationSpec or its fields as keywords, not both. "
            f"Received: spec={spec!r}, fields={sorted(fields)}")
    if spec is None:
        spec = ApplicationSpec(**fields)
    if not isinstance(spec, ApplicationSpec):
        raise ValueError(
            f"Expected an ApplicationSpec. Received: spec={spec!r}")
    if spec.name in _SPECS and not overwrite:
        raise ValueError(
            f"An application named {spec.name!r} is already registered; pass "
            f"overwrite=True to replace it. Received: name={spec.name!r}")
    _SPECS[spec.name] = spec
    return spec


def unregister_application(name):
    """Removes a registered network (e.g. one registered by a test)."""
    get_application_spec(name)
    del _SPECS[name]


def application_names():
    """The registered names, in registration order."""
    return tuple(_SPECS)


def get_application_spec(name):
    """The `ApplicationSpec` registered under `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the names.
    """
    if name not in _SPECS:
        raise ValueError(
            f"Unknown model. Received: model={name!r}; accepted: "
            f"{', '.join(_SPECS)}"
        )
    return _SPECS[name]


def get_application(name):
    """Returns the constructor registered under `name`.

    Raises:
        ValueError: `name` is not registered; the message lists the names.
    """
    return get_application_spec(name).constructor


def preprocess_for(name):
    """The `preprocess_input` of model `name` ([0, 255] RGB -> input)."""
    return get_application_spec(name).preprocess_input


def names_with(predicate):
    """The registered names whose spec satisfies `predicate` (for errors
    that list what is accepted)."""
    return tuple(name for name, spec in _SPECS.items() if predicate(spec))


register_application(
    name="mobilenetv2_ca", constructor=MobileNetV2CA,
    weights={"imagenet": _IMAGENET},
    torch_loader="keras_coordatt.weights.convert_torch:load_torch_weights",
)
register_application(name="mobilenext_ca", constructor=MobileNeXtCA)

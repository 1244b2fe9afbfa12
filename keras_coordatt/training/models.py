"""The trainable networks by name, with their preprocessing.

`TrainConfig.model` (`--model`) takes three spellings:

- a registered application (`"mobilenetv2_ca"`, `applications.registry`);
- `"keras:NAME"`, a keras.applications network with attention inserted
  (`applications.keras_families`, e.g. `"keras:MobileNetV3Small"`);
- the path of a `.keras` file: a classifier fine-tuned as it is
  (classification), or an image encoder with `pyramid_outputs` (a keras-hub
  `Backbone`, with or without attention inserted by `add_attention`) under
  the head of a dense task (`TaskSpec.encoder_levels`).
"""

import json
import os
import re

import keras

from keras_coordatt.applications import keras_families
from keras_coordatt.applications.registry import DEFAULT_APPLICATION
from keras_coordatt.applications.registry import application_names
from keras_coordatt.applications.registry import get_application
from keras_coordatt.applications.registry import preprocess_for as _app_prep
from keras_coordatt.training.tasks import get_task
from keras_coordatt.utils import model_files

KERAS_PREFIX = "keras:"
MODEL_FILE_SUFFIX = ".keras"
# A run folder's config (fit.CONFIG_FILE): the model a file was trained as.
_RUN_CONFIG = "config.json"
# Bound on file -> its run's config -> file ... when finding preprocessing.
_MAX_FILE_CHAIN = 8


def is_model_file(name):
    """Whether `name` spells a `.keras` file."""
    return isinstance(name, str) and name.endswith(MODEL_FILE_SUFFIX)


def keras_family(name):
    """The `KerasFamily` of a `"keras:NAME"` spelling, else None.

    Raises:
        ValueError: an unregistered NAME (the message lists the names).
    """
    if isinstance(name, str) and name.startswith(KERAS_PREFIX):
        return keras_families.get_keras_family(name[len(KERAS_PREFIX):])
    return None


def accepted_models(task="classification"):
    """The spellings `task` accepts, for error messages."""
    names = ", ".join(application_names())
    keras_names = ", ".join(KERAS_PREFIX + name for name in
                            keras_families.keras_family_names())
    if task != "classification":
        levels = "/".join(get_task(task).encoder_levels or ())
        if not levels:
            return names
        return (f"{names}, {keras_names} (pyramid by strides) or a "
                f"{MODEL_FILE_SUFFIX} file of an encoder with "
                f"pyramid_outputs {levels} (a keras-hub Backbone)")
    return f"{names}, {keras_names} or a {MODEL_FILE_SUFFIX} file"


def check_model(name, task="classification"):
    """Raises ValueError unless `task` can build `name` (`keras:` networks
    train classification and, as encoders with a pyramid by strides, the
    tasks with `encoder_levels`; `.keras` files the tasks that take a given
    model or an encoder)."""
    if name in application_names():
        return
    spec = get_task(task)
    if is_model_file(name) and (spec.given_model or spec.encoder_levels):
        return
    known = is_model_file(name)
    if isinstance(name, str) and name.startswith(KERAS_PREFIX):
        known = name[len(KERAS_PREFIX):].lower() in {
            n.lower() for n in keras_families.keras_family_names()}
    if not known or not (task == "classification" or spec.encoder_levels):
        raise ValueError(
            f"Unknown model for task {task!r}. Received: model={name!r}; "
            f"accepted: {accepted_models(task)}")


def model_slug(name):
    """`name` as part of a folder name (`runs/{slug}-{dataset}`)."""
    if is_model_file(name):
        name = os.path.splitext(os.path.basename(name))[0]
    return re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-") or "model"


def preprocess_for(name):
    """The `preprocess_input` of model `name` ([0, 255] RGB -> input).

    A `.keras` file takes the preprocessing of the model its run folder's
    config.json names (what `keras-coordatt train` trained it as); a file
    outside a run folder that of the default application, as the
    `keras-coordatt quantize --model FILE` of earlier versions did.
    """
    for _ in range(_MAX_FILE_CHAIN):
        if not is_model_file(name):
            break
        name = _trained_as(name)
    else:
        name = DEFAULT_APPLICATION
    family = keras_family(name)
    return family.preprocess if family else _app_prep(name)


def _trained_as(path):
    """The model of the run that wrote `path`, else the default."""
    config = os.path.join(os.path.dirname(os.path.abspath(path)),
                          _RUN_CONFIG)
    try:
        with open(config, encoding="utf-8") as f:
            name = json.load(f).get("model")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_APPLICATION
    # Itself (a run fine-tuned in its own folder) or nonsense: the default.
    same = is_model_file(name) and (
        os.path.abspath(name) == os.path.abspath(path))
    try:
        check_model(name)
    except ValueError:
        return DEFAULT_APPLICATION
    return DEFAULT_APPLICATION if same else name


def file_signature(path):
    """`(image_size, classes)` of the `.keras` model at `path`: an image
    classifier, or an image encoder with `pyramid_outputs` (`classes`
    None); `image_size` is None when its input takes any size.

    Raises:
        ValueError: the file does not load, or is neither (one `(H, W, C)`
            input and one `(classes,)` output, or a pyramid).
    """
    model = model_files.load_model(path)
    if _pyramid(model):
        return _input_size(model, path), None
    return _signature(model, path)


def _pyramid(model):
    pyramid = getattr(model, "pyramid_outputs", None)
    return pyramid if isinstance(pyramid, dict) else {}


def _signature(model, path):
    shapes = [tuple(t.shape) for t in model.inputs + model.outputs]
    if len(shapes) != 2 or len(shapes[0]) != 4 or len(shapes[1]) != 2:
        raise ValueError(
            f"The model file {path} is not an image classifier: expected "
            "one (batch, H, W, C) input and one (batch, classes) output. "
            f"Received: shapes {shapes}")
    return _input_size(model, path), shapes[1][1]


def _input_size(model, path):
    """The square input side of `model` (None: any), or a ValueError."""
    shapes = [tuple(t.shape) for t in model.inputs]
    if len(shapes) != 1 or len(shapes[0]) != 4:
        raise ValueError(
            f"The model file {path} does not take one batch of images: "
            f"expected one (batch, H, W, C) input. Received: input shapes "
            f"{shapes}")
    height, width = shapes[0][1:3]
    if height != width and None not in (height, width):
        raise ValueError(
            f"The model file {path} takes {height}x{width} images; training "
            f"crops square images. Received: model={path!r}")
    return height if height == width else None


def load_encoder(path, levels, *, task, image_size, weights=None):
    """The image encoder in the `.keras` file `path`, put under the head
    of `task`, which reads its pyramid `levels`.

    Call it inside the strategy's scope.

    Raises:
        ValueError: the file does not load, lacks one of `levels` in its
            `pyramid_outputs`, takes another image size, or `weights` is
            given (the file holds them).
    """
    if weights is not None:
        raise ValueError(
            f"The model file {path} holds its weights; `weights` does not "
            f"apply to it. Received: weights={weights!r} with model="
            f"{path!r}")
    encoder = model_files.load_model(path)
    pyramid = _pyramid(encoder)
    missing = [key for key in levels if key not in pyramid]
    if missing:
        raise ValueError(
            f"The model file {path} is no encoder for {task}: its head "
            f"needs pyramid_outputs {', '.join(levels)}, the file's model "
            f"{encoder.name!r} has {', '.join(sorted(pyramid)) or 'none'} "
            "(save a keras-hub Backbone, with or without add_attention, "
            f"as .keras). Received: model={path!r}")
    size = _input_size(encoder, path)
    if size not in (None, image_size):
        raise ValueError(
            f"The model file {path} takes {size}x{size} images. Received: "
            f"image_size={image_size}; pass image_size={size} "
            f"(--image-size {size}) or leave it out")
    return encoder


def build_model(name, num_classes, *, image_size=224, alpha=1.0,
                weights=None, reduction=32, attention=True, transfer=False,
                head_dropout=0.2, finetune_batchnorm=False,
                policy="float32"):
    """Builds a classifier for `num_classes` classes.

    Call it inside the strategy's scope, after setting the dtype policy.

    Args:
        name: a registered application (`applications.registry`),
            `"keras:NAME"` (`applications.keras_families`) or a `.keras`
            file (loaded as it is: the architecture arguments do not
            apply; its input must take `image_size` and it must have
            `num_classes` outputs).
        num_classes: classes of the softmax output.
        image_size: square input side.
        alpha, reduction, attention: the application's arguments (`alpha`
            of a keras.applications family that has one; `attention`
            False: the plain network).
        weights: `None`, `"imagenet"` or a weights file (of the whole
            network; of the backbone with `transfer`).
        transfer: put a new head (dropout, dense softmax) on the pooled
            backbone instead of the network's own classifier.
        head_dropout: dropout of the transfer head.
        finetune_batchnorm: with `transfer`, whether the backbone's
            BatchNorm layers may use batch statistics once unfrozen (else
            they always run in inference mode).
        policy: the global dtype policy in force; with a mixed policy the
            softmax is computed in float32.

    Returns:
        `(model, backbone)`: the Keras model, and with `transfer` the
        backbone sub-model to freeze (else None).
    """
    if is_model_file(name):
        return _load_classifier(name, num_classes, image_size, transfer), None
    family = keras_family(name)
    if family is None:
        constructor = get_application(name)
        arguments = dict(alpha=alpha, reduction=reduction,
                         attention=attention)
    else:
        constructor = _keras_constructor(family, alpha, reduction)
        arguments = dict(attention=attention)
    mixed = policy != "float32"
    shape = (image_size, image_size, 3)
    if transfer:
        backbone = constructor(input_shape=shape, include_top=False,
                               weights=weights, pooling="avg", **arguments)
        inputs = keras.Input(shape, name="image")
        x = backbone(inputs, training=None if finetune_batchnorm else False)
        x = keras.layers.Dropout(head_dropout, name="head_dropout")(x)
        outputs = keras.layers.Dense(
            num_classes, activation="softmax", name="predictions",
            dtype="float32" if mixed else None,
        )(x)
        model = keras.Model(inputs, outputs, name=f"{backbone.name}_transfer")
        return model, backbone
    model = constructor(
        input_shape=shape, weights=weights, classes=num_classes,
        classifier_activation=None if mixed else "softmax", **arguments)
    if mixed:
        outputs = keras.layers.Activation(
            "softmax", dtype="float32", name="softmax_float32"
        )(model.outputs[0])
        model = keras.Model(model.inputs, outputs, name=model.name)
    return model, None


def _keras_constructor(family, alpha, reduction):
    """`build_keras_application` of `family` as an application constructor
    (`alpha` only where the family has one)."""
    extra = {} if reduction is None else {"reduction": reduction}

    def constructor(**kwargs):
        return keras_families.build_keras_application(
            family.name, alpha=alpha if family.alpha else None, **kwargs,
            **extra)
    return constructor


def _load_classifier(path, num_classes, image_size, transfer):
    """The classifier in the `.keras` file `path`, checked against the
    run's data."""
    if transfer:
        raise ValueError(
            "A .keras file is fine-tuned as it is; it takes no transfer "
            f"head. Received: model={path!r}, transfer=True")
    model = model_files.load_model(path)
    size, classes = _signature(model, path)
    if classes != num_classes:
        raise ValueError(
            f"The model file {path} classifies {classes} classes, the "
            f"dataset has {num_classes}. Received: model={path!r}; give a "
            f"model with {num_classes} outputs or the dataset it was "
            "trained on")
    if size not in (None, image_size):
        raise ValueError(
            f"The model file {path} takes {size}x{size} images. Received: "
            f"image_size={image_size}; pass image_size={size} "
            f"(--image-size {size}) or leave it out")
    return model

"""An application model as keras-hub objects, weights copied by layer name.

`keras-coordatt export --format keras-hub` writes what this returns with
keras-hub's own `save_to_preset`, so the folder loads with
`keras_hub.models.ImageClassifier.from_preset` / `Backbone.from_preset` and
uploads with `keras_hub.upload_preset`. keras-hub's `from_preset` also reads
such presets from `kaggle://` and `hf://` handles; keras-hub presets are the
package's only preset format.
"""

import keras

from keras_coordatt.hub.factory import hub_classes
from keras_coordatt.utils.layer_weights import copy_weights_by_name


def hub_model(model, model_name, *, alpha, reduction=None, attention="ca"):
    """The keras-hub twin of an application model, with its weights.

    Args:
        model: a model of a registered application: with its classifier
            (`include_top=True`: an `ImageClassifier` is returned, its
            preprocessor resizing to the model's input size) or without
            (a `Backbone`, any input size).
        model_name: its registered name (`applications.registry`).
        alpha, reduction, attention: the arguments it was built with.

    Returns:
        A keras-hub `ImageClassifier` or `Backbone`.

    Raises:
        ValueError: an unknown `model_name`, or layers of the twin that
            `model` lacks or holds with other shapes (all named at once:
            built with other alpha / attention / reduction).
    """
    backbone_cls, classifier_cls, preprocessor_cls, converter_cls = (
        hub_classes(model_name))
    backbone = backbone_cls(alpha=alpha, reduction=reduction,
                            attention=attention)
    pairs = [(layer, layer.name) for layer in backbone.layers]
    result = backbone
    if _has_layer(model, "predictions"):
        dense = model.get_layer("predictions")
        size = tuple(model.inputs[0].shape[1:3])
        result = classifier_cls(
            backbone=backbone, num_classes=dense.units,
            activation=_activation_name(dense.activation), pooling="avg",
            dropout=model.get_layer("dropout").rate,
            preprocessor=preprocessor_cls(converter_cls(image_size=size)),
        )
        pairs.append((result.output_dense, "predictions"))
    copy_weights_by_name(model, pairs)
    return result


def find_application(model, run_config=None, path=None):
    """The registered application a loaded model was built from.

    From the training run's config (`model`, `alpha`, `reduction`,
    `attention`) when there is one, else from the model's name as the
    application constructors set it (`{application}_{alpha}_{size}`);
    `hub_model` then checks every layer against it.

    Returns:
        `(model_name, alpha, hub_kwargs)`.

    Raises:
        ValueError: neither names a registered application, or the run
            trained a transfer head or another task (not one application).
    """
    from keras_coordatt.applications.registry import application_names

    names = application_names()
    config = run_config or {}
    if config.get("model") in names:
        if config.get("transfer") or config.get("task", "classification") \
                != "classification":
            raise _not_registered(path, model, "its run trained a transfer "
                                  "head or another task")
        return config["model"], float(config.get("alpha", 1.0)), {
            key: config[key] for key in ("reduction", "attention")
            if key in config}
    for name in names:
        rest = model.name[len(name) + 1:] if model.name.startswith(
            name + "_") else ""
        try:
            return name, float(rest.split("_")[0]), {}
        except ValueError:
            continue
    raise _not_registered(path, model, "it is none of them")


def _not_registered(path, model, reason):
    from keras_coordatt.applications.registry import application_names

    return ValueError(
        "keras-hub presets need a registered application "
        f"({', '.join(application_names())}): the model {model.name!r} of "
        f"{path} is not one ({reason}). Export it as keras, saved_model, "
        "litert or onnx. Received: format='keras-hub'")


def _activation_name(activation):
    name = keras.activations.serialize(activation)
    name = name if isinstance(name, str) else name.get("config", name)
    return None if name == "linear" else name


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


def predict_hub_preset(directory, images):
    """Loads a keras-hub preset folder (a task or a backbone) and runs it on
    preprocessed images: a task's outputs, or a backbone's pooled features.
    """
    import os

    import keras_hub
    import numpy as np

    images = keras.ops.convert_to_tensor(np.asarray(images, "float32"))
    if os.path.exists(os.path.join(directory, "task.json")):
        task = keras_hub.models.ImageClassifier.from_preset(directory)
        # Calling the task runs backbone and head, not the preprocessor.
        # convert_to_numpy, not np.asarray: torch outputs require grad.
        return keras.ops.convert_to_numpy(task(images, training=False))
    backbone = keras_hub.models.Backbone.from_preset(directory)
    features = backbone(images, training=False)
    return keras.ops.convert_to_numpy(keras.ops.mean(features, axis=(1, 2)))

"""The trainable networks by name, with their preprocessing."""

import keras

from keras_coordatt.applications.registry import get_application
from keras_coordatt.applications.registry import preprocess_for  # noqa: F401


def build_model(name, num_classes, *, image_size=224, alpha=1.0,
                weights=None, reduction=32, attention=True, transfer=False,
                head_dropout=0.2, finetune_batchnorm=False,
                policy="float32"):
    """Builds a classifier for `num_classes` classes.

    Call it inside the strategy's scope, after setting the dtype policy.

    Args:
        name: a registered application (`applications.registry`).
        num_classes: classes of the softmax output.
        image_size: square input side.
        alpha, reduction, attention: the application's arguments.
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
    constructor = get_application(name)
    mixed = policy != "float32"
    shape = (image_size, image_size, 3)
    if transfer:
        backbone = constructor(
            input_shape=shape, alpha=alpha, include_top=False,
            weights=weights, pooling="avg", reduction=reduction,
            attention=attention,
        )
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
        input_shape=shape, alpha=alpha, weights=weights, classes=num_classes,
        classifier_activation=None if mixed else "softmax",
        reduction=reduction, attention=attention,
    )
    if mixed:
        outputs = keras.layers.Activation(
            "softmax", dtype="float32", name="softmax_float32"
        )(model.outputs[0])
        model = keras.Model(model.inputs, outputs, name=model.name)
    return model, None

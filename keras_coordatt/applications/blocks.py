"""The building blocks of the application networks: convolution + BN
[+ ReLU6] with PyTorch's symmetric padding, the attention block at a given
place, the classifier head and the final model.

Every block takes the `Namespace` it builds with: `KERAS` (Keras 3) for the
constructors' models, or the tf_keras one of the tfmot recipe
(`keras_coordatt.quantization.tfmot_recipe.TF_KERAS`), so that both
libraries build the one network these functions and the stage tables
describe, with the same layer names.
"""

import inspect
import typing

import keras

from keras_coordatt.applications.arguments import validate_classifier_activation
from keras_coordatt.applications.pyramid import pyramid_outputs
from keras_coordatt.layers.registry import ATTENTIONS


class Namespace(typing.NamedTuple):
    """The library a network is built with.

    Attributes:
        layers: a module of layer classes with Keras' names and arguments
            (`Conv2D`, `DepthwiseConv2D`, `BatchNormalization`, `ReLU`,
            `Activation` (for `conv_bn`'s named activations),
            `ZeroPadding2D`, `Add`, `Dense`, `Dropout`,
            `GlobalAveragePooling2D`, `GlobalMaxPooling2D`) and `Input`.
        Model: the functional model class.
        attentions: attention kind (`"ca"`, ...) -> layer class, called as
            `cls(name=..., reduction=...)` then on a tensor.
        image_data_format: returns `"channels_last"` or `"channels_first"`.
    """

    layers: typing.Any
    Model: type
    attentions: typing.Mapping[str, typing.Callable]
    image_data_format: typing.Callable[[], str]


KERAS = Namespace(keras.layers, keras.Model, ATTENTIONS,
                  keras.config.image_data_format)


def namespace_or_default(namespace, weights, input_tensor):
    """`namespace` (None: `KERAS`), checked against the other arguments:
    weight files and input tensors are Keras 3 objects."""
    if namespace is None:
        return KERAS
    if not isinstance(namespace, Namespace):
        raise ValueError(
            "`namespace` must be a keras_coordatt.applications.blocks."
            f"Namespace or None. Received: namespace={namespace!r}"
        )
    if namespace is not KERAS and (weights is not None
                                   or input_tensor is not None):
        raise ValueError(
            "Weights and input tensors load into Keras 3 models only: with "
            "another `namespace`, pass `weights=None` and "
            f"`input_tensor=None`. Received: weights={weights!r}, "
            f"input_tensor={input_tensor!r}"
        )
    return namespace


def make_divisible(value, divisor=8, min_value=None):
    """Rounds a channel count to a multiple of `divisor` (at most -10 %)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def head(ns, x, include_top, pooling, classes, classifier_activation,
         weights, dropout):
    """Global pooling + dropout + classifier, or the optional pooling."""
    if include_top:
        x = ns.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = ns.layers.Dropout(dropout, name="dropout")(x)
        validate_classifier_activation(classifier_activation, weights)
        return ns.layers.Dense(
            classes, activation=classifier_activation, name="predictions"
        )(x)
    if pooling == "avg":
        return ns.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return ns.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def finish_model(ns, img_input, input_tensor, features, name, **head_kwargs):
    """Adds the head to `features` and wraps the graph in a model; Keras 3
    models also get their `pyramid_outputs` (`applications.pyramid`).

    The model's inputs follow `input_tensor` back to its sources, as in
    keras.applications. `head_kwargs` are `head()`'s arguments.
    """
    inputs = img_input
    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    model = ns.Model(inputs, head(ns, features, **head_kwargs), name=name)
    if ns is KERAS:  # keras-hub's heads read them; the probe is Keras 3's
        model.pyramid_outputs = pyramid_outputs(model)
    return model


def conv_bn(ns, x, filters, kernel_size, strides, name, bn_name,
            relu_name=None, depthwise=False, activation=None):
    """Conv (no bias, symmetric padding) + BN (eps 1e-5) [+ activation].

    3x3 convolutions pad one pixel on every side, as PyTorch's `padding=1`:
    TF's "same" padding at stride 2 would pad (0, 1) and shift the features.

    Args:
        relu_name: the name of the activation layer; None: no activation.
        activation: None (ReLU6, the networks of the paper), the name of a
            Keras activation (`"swish"`: an `Activation` layer), or a
            function `f(name) -> layer` (e.g. `lambda name:
            ns.layers.ReLU(name=name)`).
    """
    channel_axis = 1 if ns.image_data_format() == "channels_first" else -1
    if kernel_size > 1 and strides > 1:
        pad = kernel_size // 2
        x = ns.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    if depthwise:
        x = ns.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding=padding, use_bias=False,
            name=name,
        )(x)
    else:
        x = ns.layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding,
            use_bias=False, name=name,
        )(x)
    x = ns.layers.BatchNormalization(
        axis=channel_axis, momentum=0.9, epsilon=1e-5, name=bn_name
    )(x)
    if relu_name:
        x = activation_layer(ns, activation, relu_name)(x)
    return x


def activation_layer(ns, activation, name):
    """The layer of `conv_bn`'s `activation` argument, named `name`."""
    if activation is None:
        return ns.layers.ReLU(6.0, name=name)
    if isinstance(activation, str):
        return ns.layers.Activation(activation, name=name)
    if callable(activation):
        return activation(name)
    raise ValueError(
        "`activation` must be None (ReLU6), an activation name or a function "
        f"name -> layer. Received: activation={activation!r}")


def attention_block(ns, x, kind, reduction, prefix):
    """The attention block `kind` (validated) applied to `x`, or `x`.

    A registered kind is named `{prefix}{kind}` (`block_3_ca`, `block_3_se`)
    and built with `reduction` (None: the kind's own default); a callable is
    called with the channel count of `x` and keeps its layer's name.
    """
    if kind is None:
        return x
    if callable(kind):
        return kind(channels(ns, x))(x)
    if kind not in ns.attentions:
        raise ValueError(
            f"This namespace has no {kind!r} attention layer. Received: "
            f"attention={kind!r}; accepted: {', '.join(ns.attentions)}"
        )
    options = {} if reduction is None else {"reduction": reduction}
    layer_class = ns.attentions[kind]
    if options and "reduction" not in inspect.signature(
            layer_class.__init__).parameters:
        raise ValueError(
            f"The attention kind {kind!r} ({layer_class.__name__}) takes no "
            "`reduction`; pass reduction=None. Received: "
            f"reduction={reduction!r}, attention={kind!r}")
    return layer_class(name=f"{prefix}{kind}", **options)(x)


def channels(ns, x):
    axis = 1 if ns.image_data_format() == "channels_first" else -1
    return x.shape[axis]

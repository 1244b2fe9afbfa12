"""The building blocks of the application networks: convolution + BN
[+ ReLU6] with PyTorch's symmetric padding, the attention block at a given
place, the classifier head and the final `keras.Model`."""

import keras

from keras_coordatt.applications.arguments import validate_classifier_activation
from keras_coordatt.applications.pyramid import pyramid_outputs
from keras_coordatt.layers.registry import get_attention


def make_divisible(value, divisor=8, min_value=None):
    """Rounds a channel count to a multiple of `divisor` (at most -10 %)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def head(
    x, include_top, pooling, classes, classifier_activation, weights, dropout
):
    """Global pooling + dropout + classifier, or the optional pooling."""
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="dropout")(x)
        validate_classifier_activation(classifier_activation, weights)
        return keras.layers.Dense(
            classes, activation=classifier_activation, name="predictions"
        )(x)
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def finish_model(img_input, input_tensor, features, name, **head_kwargs):
    """Adds the head to `features` and wraps the graph in a `keras.Model`
    with its `pyramid_outputs` (`applications.pyramid`).

    The model's inputs follow `input_tensor` back to its sources, as in
    keras.applications. `head_kwargs` are `head()`'s arguments.
    """
    inputs = img_input
    if input_tensor is not None:
        inputs = keras.utils.get_source_inputs(input_tensor)
    model = keras.Model(inputs, head(features, **head_kwargs), name=name)
    model.pyramid_outputs = pyramid_outputs(model)
    return model


def conv_bn(x, filters, kernel_size, strides, name, bn_name, relu_name=None,
            depthwise=False):
    """Conv (no bias, symmetric padding) + BN (eps 1e-5) [+ ReLU6].

    3x3 convolutions pad one pixel on every side, as PyTorch's `padding=1`:
    TF's "same" padding at stride 2 would pad (0, 1) and shift the features.
    """
    channel_axis = 1 if keras.config.image_data_format() == "channels_first" \
        else -1
    if kernel_size > 1 and strides > 1:
        pad = kernel_size // 2
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    if depthwise:
        x = keras.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding=padding, use_bias=False,
            name=name,
        )(x)
    else:
        x = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding,
            use_bias=False, name=name,
        )(x)
    x = keras.layers.BatchNormalization(
        axis=channel_axis, momentum=0.9, epsilon=1e-5, name=bn_name
    )(x)
    if relu_name:
        x = keras.layers.ReLU(6.0, name=relu_name)(x)
    return x


def attention_block(x, kind, reduction, prefix):
    """The attention block `kind` (validated) applied to `x`, or `x`.

    A registered kind is named `{prefix}{kind}` (`block_3_ca`, `block_3_se`)
    and built with `reduction` (None: the kind's own default); a callable is
    called with the channel count of `x` and keeps its layer's name.
    """
    if kind is None:
        return x
    if callable(kind):
        return kind(channels(x))(x)
    options = {} if reduction is None else {"reduction": reduction}
    return get_attention(kind)(name=f"{prefix}{kind}", **options)(x)


def channels(x):
    axis = 1 if keras.config.image_data_format() == "channels_first" else -1
    return x.shape[axis]

"""MobileNeXt (sandglass blocks) with coordinate attention."""

import math

from keras_coordatt.applications import arguments
from keras_coordatt.applications import blocks
from keras_coordatt.applications.imagenet import decode_predictions  # noqa: F401
from keras_coordatt.applications.imagenet import preprocess_input  # noqa: F401
from keras_coordatt.weights import load_weights

# (reduction t, channels c, repeats n, first stride s), as in MobileNeXt.
STAGES = (
    (2, 96, 1, 2),
    (6, 144, 1, 1),
    (6, 192, 3, 2),
    (6, 288, 3, 2),
    (6, 384, 4, 1),
    (6, 576, 4, 2),
    (6, 960, 3, 1),
    (6, 1280, 1, 1),
)


def _sandglass_block(ns, x, filters, stride, reduction_t,
                     single_block_stage, block_id, attention, reduction):
    """One sandglass block; its shape depends on where it sits (see below).

    - first block (t == 2), single-block stride-1 stages, and blocks with
      cin == cout: dw3x3 + BN + ReLU6 [+ CA], 1x1 reduce + BN, 1x1 expand +
      BN + ReLU6, dw3x3 (stride s) + BN; residual when cin == cout, stride 1.
    - cin != cout, stride 1: 1x1 reduce + BN, 1x1 expand + BN + ReLU6.
    - cin != cout, stride 2: the same, then dw3x3 stride 2 + BN.
    """
    in_channels = blocks.channels(ns, x)
    hidden = in_channels // reduction_t
    if hidden < filters / 6.0:
        hidden = blocks.make_divisible(math.ceil(filters / 6.0), 16)
    prefix = f"block_{block_id}_"
    full = reduction_t == 2 or single_block_stage or in_channels == filters
    inputs = x
    if full:
        x = blocks.conv_bn(
            ns, x, None, 3, 1, f"{prefix}dw1", f"{prefix}dw1_BN",
            f"{prefix}dw1_relu", depthwise=True,
        )
        x = blocks.attention_block(ns, x, attention, reduction, prefix)
    x = blocks.conv_bn(
        ns, x, hidden, 1, 1, f"{prefix}reduce", f"{prefix}reduce_BN"
    )
    x = blocks.conv_bn(
        ns, x, filters, 1, 1, f"{prefix}expand", f"{prefix}expand_BN",
        f"{prefix}expand_relu",
    )
    if full or stride == 2:
        x = blocks.conv_bn(
            ns, x, None, 3, stride, f"{prefix}dw2", f"{prefix}dw2_BN",
            depthwise=True,
        )
    if stride == 1 and in_channels == filters:
        x = ns.layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def MobileNeXtCA(
    input_shape=None,
    alpha=1.0,
    include_top=True,
    weights=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
    reduction=None,
    attention=True,
    *,
    namespace=None,
):
    """Instantiates MobileNeXt with coordinate attention.

    MobileNeXt replaces MobileNetV2's inverted residuals by sandglass blocks
    (depthwise convolutions on the wide ends, the bottleneck in the middle).
    `CoordinateAttention` goes right after the first depthwise convolution of
    every block that starts with one, as the coordinate attention paper
    prescribes. There is no final 1x1 convolution: global average pooling,
    dropout 0.2 and the classifier follow the 1280-channel stage.

    The arguments, checks and conventions are those of
    `keras.applications.MobileNetV2`. No ImageNet weights were published for
    this network, so `weights` defaults to `None` and `"imagenet"` raises.

    Args:
        input_shape: optional shape tuple, `(224, 224, 3)` by default with
            `include_top`; at least 32x32.
        alpha: width multiplier; channel counts become
            `make_divisible(c * alpha, 8)` (the 1280 stage stays 1280 when
            alpha < 1).
        include_top: whether to include the classifier.
        weights: `None` (random initialization) or the path to a weights file
            (`.weights.h5` or `.keras`).
        input_tensor: optional Keras tensor to use as the image input.
        pooling: `None`, `"avg"` or `"max"`, when `include_top` is False.
        classes: number of classes, with `include_top` only.
        classifier_activation: activation of the top layer (`None` for
            logits).
        name: model name; defaults to `mobilenext_ca_{alpha:0.2f}_{rows}`.
        reduction: reduction ratio of the attention blocks; None takes
            each kind's default: 32 for CA (the paper), 24 for SE and CBAM
            (the ratio that gives the paper's 3.89M parameters for
            MobileNetV2 + SE and + CBAM).
        attention: the attention blocks, at CA's places: `"ca"` or `True`
            (coordinate attention), `"se"` (squeeze-and-excitation),
            `"cbam"`, `False` or `None` (plain MobileNeXt with the same padding
            and layer names), or a callable `f(channels) -> layer`. Blocks
            are named `block_{i}_{kind}`; a callable's layers keep their
            own names.
        namespace: the library the network is built with, a
            `blocks.Namespace`; None: Keras 3. The tfmot recipe builds the
            same network in tf_keras with its own (`weights=None`).

    Returns:
        A `keras.Model` (a model of `namespace`).

    Reference:
    - [Coordinate Attention for Efficient Mobile Network Design](
        https://arxiv.org/abs/2103.02907) (CVPR 2021)
    - [Rethinking Bottleneck Structure for Efficient Mobile Network Design](
        https://arxiv.org/abs/2007.02269) (ECCV 2020)
    """
    kind = arguments.validate_arguments(
        weights, include_top, classes, alpha, pooling, attention,
        published=False,
    )
    ns = blocks.namespace_or_default(namespace, weights, input_tensor)
    img_input, rows, _ = arguments.application_input(
        input_shape, input_tensor, include_top, weights, ns.layers.Input
    )
    x = blocks.conv_bn(
        ns, img_input, blocks.make_divisible(32 * alpha, 8), 3, 2, "Conv1",
        "bn_Conv1", "Conv1_relu",
    )
    block_id = 0
    for reduction_t, c, repeats, first_stride in STAGES:
        if c == 1280 and alpha <= 1.0:
            filters = 1280
        else:
            filters = blocks.make_divisible(c * alpha, 8)
        for i in range(repeats):
            x = _sandglass_block(
                ns, x, filters, first_stride if i == 0 else 1, reduction_t,
                repeats == 1, block_id, kind, reduction,
            )
            block_id += 1
    if name is None:
        name = f"mobilenext_ca_{alpha:0.2f}_{rows}"
    model = blocks.finish_model(
        ns, img_input, input_tensor, x, name, include_top=include_top,
        pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, weights=weights,
        dropout=0.2,
    )
    if weights is not None:
        load_weights(model, weights, family="mobilenext_ca")
    return model

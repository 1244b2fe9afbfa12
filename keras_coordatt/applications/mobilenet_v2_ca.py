"""MobileNetV2 with coordinate attention (the network of `mbv2_ca.pth`)."""

from keras_coordatt.applications import arguments
from keras_coordatt.applications import blocks
from keras_coordatt.applications.imagenet import decode_predictions  # noqa: F401
from keras_coordatt.applications.imagenet import preprocess_input  # noqa: F401
from keras_coordatt.weights import load_weights

# (expansion t, channels c, repeats n, first stride s), as in the paper.
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
PUBLISHED_ALPHAS = (1.0,)


def _inverted_res_block(ns, x, expansion, filters, stride, block_id,
                        attention, reduction):
    in_channels = blocks.channels(ns, x)
    inputs = x
    if expansion == 1:
        prefix = "expanded_conv_"
    else:
        prefix = f"block_{block_id}_"
        x = blocks.conv_bn(
            ns, x, int(round(in_channels * expansion)), 1, 1,
            f"{prefix}expand", f"{prefix}expand_BN", f"{prefix}expand_relu",
        )
    x = blocks.conv_bn(
        ns, x, None, 3, stride, f"{prefix}depthwise",
        f"{prefix}depthwise_BN", f"{prefix}depthwise_relu", depthwise=True,
    )
    if expansion != 1:
        x = blocks.attention_block(ns, x, attention, reduction, prefix)
    x = blocks.conv_bn(
        ns, x, filters, 1, 1, f"{prefix}project", f"{prefix}project_BN"
    )
    if stride == 1 and in_channels == filters:
        x = ns.layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def MobileNetV2CA(
    input_shape=None,
    alpha=1.0,
    include_top=True,
    weights="imagenet",
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
    """Instantiates MobileNetV2 with coordinate attention.

    The network of the coordinate attention paper: MobileNetV2 whose inverted
    residual blocks with expansion > 1 apply `CoordinateAttention` between
    the depthwise convolution and the projection. Layout, padding (symmetric,
    as in PyTorch) and BatchNorm settings (epsilon 1e-5) follow the authors'
    release, so their ImageNet checkpoint loads with identical outputs.

    The arguments, checks and conventions are those of
    `keras.applications.MobileNetV2`. Inputs are RGB images preprocessed with
    `keras_coordatt.applications.mobilenet_v2_ca.preprocess_input` (torch
    mode: [0, 1], ImageNet mean and standard deviation).

    Args:
        input_shape: optional shape tuple, `(224, 224, 3)` by default with
            `include_top`; at least 32x32. H and W may be `None` without the
            top.
        alpha: width multiplier; channel counts become
            `make_divisible(c * alpha, 8)`. Published weights: 1.0 only.
        include_top: whether to include the 1280-channel head's classifier
            (global average pooling, dropout 0.1, dense layer).
        weights: `None` (random initialization), `"imagenet"` (the authors'
            checkpoint, 74.3 % top-1) or the path to a weights file
            (`.weights.h5`, `.keras`, or a `torch.save` checkpoint of the
            authors' layout, recognised by its content whatever its suffix).
        input_tensor: optional Keras tensor to use as the image input.
        pooling: `None`, `"avg"` or `"max"`: pooling of the last feature map
            when `include_top` is False.
        classes: number of classes, with `include_top` and no `weights` only.
        classifier_activation: activation of the top layer (`None` for
            logits); only `None` or `"softmax"` with pretrained weights.
        name: model name; defaults to `mobilenetv2_ca_{alpha:0.2f}_{rows}`.
        reduction: reduction ratio of the attention blocks; None takes
            each kind's default: 32 for CA (the paper), 24 for SE and CBAM
            (the ratio that gives the paper's 3.89M parameters for
            MobileNetV2 + SE and + CBAM).
        attention: the attention blocks, at CA's places: `"ca"` or `True`
            (coordinate attention), `"se"` (squeeze-and-excitation),
            `"cbam"`, `False` or `None` (plain MobileNetV2 with the same padding
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
    - [MobileNetV2: Inverted Residuals and Linear Bottlenecks](
        https://arxiv.org/abs/1801.04381) (CVPR 2018)
    """
    kind = arguments.validate_arguments(
        weights, include_top, classes, alpha, pooling, attention
    )
    ns = blocks.namespace_or_default(namespace, weights, input_tensor)
    img_input, rows, cols = arguments.application_input(
        input_shape, input_tensor, include_top, weights, ns.layers.Input
    )
    if weights == "imagenet":
        if alpha not in PUBLISHED_ALPHAS:
            raise ValueError(
                "If imagenet weights are being loaded, alpha must be `1.0` "
                "(the only width the authors published); "
                f"Received: alpha={alpha}"
            )
        if reduction not in (None, 32) or kind != "ca":
            raise ValueError(
                "The imagenet weights need `reduction=32` and "
                f"`attention='ca'` (or True). Received: reduction={reduction}, "
                f"attention={attention!r}"
            )
        arguments.warn_if_unusual_size(rows, cols)

    x = blocks.conv_bn(
        ns, img_input, blocks.make_divisible(32 * alpha, 8), 3, 2, "Conv1",
        "bn_Conv1", "Conv1_relu",
    )
    block_id = 0
    for expansion, c, repeats, first_stride in STAGES:
        filters = blocks.make_divisible(c * alpha, 8)
        for i in range(repeats):
            x = _inverted_res_block(
                ns, x, expansion, filters, first_stride if i == 0 else 1,
                block_id, kind, reduction,
            )
            block_id += 1
    last_filters = blocks.make_divisible(1280 * alpha, 8) if alpha > 1.0 \
        else 1280
    x = blocks.conv_bn(
        ns, x, last_filters, 1, 1, "Conv_1", "Conv_1_bn", "out_relu"
    )
    if name is None:
        name = f"mobilenetv2_ca_{alpha:0.2f}_{rows}"
    model = blocks.finish_model(
        ns, img_input, input_tensor, x, name, include_top=include_top,
        pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, weights=weights,
        dropout=0.1,
    )
    if weights is not None:
        load_weights(model, weights, family="mobilenetv2_ca")
    return model

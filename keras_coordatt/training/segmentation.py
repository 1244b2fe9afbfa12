"""Semantic segmentation in `train()`: keras-hub's DeepLabV3 on our networks.

With `TrainConfig.task="segmentation"`, `train()` runs its usual steps
(strategy, precision, backups, phases, evaluation, saved model) with three
things of this module and the pipelines of `data.segmentation`:

- the model (`build_segmenter`): a keras-hub `DeepLabV3ImageSegmenter` on a
  `DeepLabV3Backbone` whose image encoder is our keras-hub backbone of the
  config's model (`keras_coordatt.hub.hub_classes(model).backbone`, same
  `alpha`, `reduction`, `attention`), or the encoder in the config's
  `.keras` file (`models.load_encoder`): ASPP (`aspp_dilation_rates`) on P5
  (stride 32), upsampled 8x and joined with a 48-channel projection of P2
  (stride 4), a 256-filter head upsampled 4x to the input size, and a 1x1
  convolution giving per-pixel logits (the segmenter's `activation=None`);
- the loss (`segmentation_loss`): sparse categorical cross-entropy from
  those logits;
- the metrics (`segmentation_metrics`): `mean_iou` (Keras' `MeanIoU` over
  all classes, the background included, taking the argmax of the logits)
  and `pixel_accuracy`; the best checkpoint is the epoch of the highest
  `val_mean_iou` (`MONITOR`).

keras-hub (the `hub` extra) is imported when a segmenter is built.
"""

import keras

from keras_coordatt.applications.arguments import validate_attention
from keras_coordatt.applications.registry import get_application
from keras_coordatt.applications.registry import get_application_spec
from keras_coordatt.training.models import is_model_file
from keras_coordatt.training.models import keras_family
from keras_coordatt.training.models import load_encoder
from keras_coordatt.utils.extras import require

MONITOR = "val_mean_iou"
# DeepLabV3+ on strides 32 and 4 (keras-hub's arguments, as its presets).
DEEPLAB = dict(
    spatial_pyramid_pooling_key="P5", upsampling_size=8,
    low_level_feature_key="P2", projection_filters=48,
)
# The pyramid levels the head reads (the task's `encoder_levels`).
LEVELS = (DEEPLAB["low_level_feature_key"],
          DEEPLAB["spatial_pyramid_pooling_key"])
# DeepLab's ASPP rates and the stride-32 map side they are meant for (a
# 1024-pixel input); `aspp_dilation_rates` scales them to the actual map.
ASPP_RATES = (6, 12, 18)
ASPP_REFERENCE_SIDE = 32


def aspp_dilation_rates(image_size):
    """The ASPP rates for a stride-32 map of `image_size // 32` pixels.

    `ASPP_RATES` scaled by `side / ASPP_REFERENCE_SIDE`, rounded, at least
    1, without repeats: (6, 12, 18) at 1024 pixels, (3, 6, 9) at 512, (1,)
    at 64. A rate beyond the map only reads its zero padding, and
    TensorFlow's CPU kernels for such atrous convolutions are slow (a 2x2
    map at rates 6, 12, 18 made a training step 20x slower, measured).
    """
    side = image_size // 32
    rates = (max(1, round(rate * side / ASPP_REFERENCE_SIDE))
             for rate in ASPP_RATES)
    return sorted(set(rates))


def hub_backbone_class(name, levels=()):
    """The keras-hub backbone class of registered application `name`.

    Args:
        name: a registered application (`applications.registry`).
        levels: the `pyramid_outputs` keys the caller's head reads.

    Raises:
        ValueError: `name` is not registered (the message lists the
            accepted names), or its spec lacks one of `levels`.
    """
    spec = get_application_spec(name)
    missing = [key for key in levels if key not in spec.pyramid_levels]
    if missing:
        raise ValueError(
            f"The model {name!r} has no pyramid level {', '.join(missing)} "
            f"(it has {', '.join(spec.pyramid_levels)}). Received: "
            f"model={name!r}")
    from keras_coordatt.hub import hub_classes

    return hub_classes(name).backbone


def hub_encoder(name, *, image_size, alpha=1.0, weights=None,
                reduction=None, attention=True, levels=()):
    """The keras-hub backbone of `name` (any input size), with `weights`
    (`None`, `"imagenet"` or a file of the network without its top) loaded
    through the application's own checks at `image_size`; the encoder of
    the dense tasks' heads, which read its pyramid `levels`."""
    kind = validate_attention(attention)
    encoder = hub_backbone_class(name, levels)(
        alpha=alpha, reduction=reduction, attention=kind)
    if weights is not None:
        pretrained = get_application(name)(
            input_shape=(image_size, image_size, 3), alpha=alpha,
            include_top=False, weights=weights, reduction=reduction,
            attention=kind,
        )
        encoder.set_weights(pretrained.get_weights())
    return encoder


def dense_encoder(name, task, levels, *, image_size, alpha=1.0,
                  weights=None, reduction=None, attention=True):
    """The image encoder of a dense task's head: the one in the `.keras`
    file `name` (`models.load_encoder`), a `"keras:NAME"` network with its
    pyramid by strides (`keras_encoder`), else the keras-hub backbone of
    the registered application `name` (`hub_encoder`)."""
    if is_model_file(name):
        return load_encoder(name, levels, task=task, image_size=image_size,
                            weights=weights)
    family = keras_family(name)
    if family is not None:
        return keras_encoder(family, levels, image_size=image_size,
                             alpha=alpha, weights=weights,
                             reduction=reduction, attention=attention)
    return hub_encoder(name, image_size=image_size, alpha=alpha,
                       weights=weights, reduction=reduction,
                       attention=attention, levels=levels)


def keras_encoder(family, levels, *, image_size, alpha=None, weights=None,
                  reduction=None, attention=True):
    """The keras.applications network of `family` without its top, with
    attention inserted where the family says (`build_keras_application`),
    as a keras-hub `Backbone` whose pyramid is its last map at each stride
    (`InsertedBackbone.from_strides`)."""
    from keras_coordatt.applications.keras_families import (
        build_keras_application)
    from keras_coordatt.hub.inserted import InsertedBackbone

    extra = {} if reduction is None else {"reduction": reduction}
    network = build_keras_application(
        family.name, attention=attention or None,
        input_shape=(image_size, image_size, 3), weights=weights,
        alpha=alpha if family.alpha else None, include_top=False, **extra)
    encoder = InsertedBackbone.from_strides(network)
    missing = [key for key in levels if key not in encoder.pyramid_outputs]
    if missing:
        raise ValueError(
            f"keras:{family.name} at {image_size}x{image_size} has no "
            f"pyramid level {', '.join(missing)} (it has "
            f"{', '.join(sorted(encoder.pyramid_outputs))}). Received: "
            f"image_size={image_size}")
    return encoder


def build_segmenter(name, num_classes, *, image_size=64, alpha=1.0,
                    weights=None, reduction=None, attention=True,
                    transfer=False):
    """A DeepLabV3 segmenter on the keras-hub backbone of `name`.

    Call it inside the strategy's scope, after setting the dtype policy
    (the segmenter's layers take it).

    Args:
        name: a registered application (`applications.registry`), or a
            `.keras` file of an encoder with `pyramid_outputs` P2 and P5
            (a keras-hub `Backbone`; the architecture arguments and
            `weights` do not apply to it).
        num_classes: classes of the per-pixel logits (the background
            included).
        image_size: square input side, a multiple of 32.
        alpha, reduction, attention: the application's arguments.
        weights: `None`, `"imagenet"` or a weights file of the network
            without its top (`include_top=False`), loaded into the encoder
            with the application's own checks.
        transfer: return the encoder as the backbone to freeze in a
            `frozen_epochs` phase.

    Returns:
        `(segmenter, backbone)`: the keras-hub `DeepLabV3ImageSegmenter`,
        and with `transfer` its image encoder (else None).

    Raises:
        ValueError: an unknown model or attention, or weights that do not
            fit (the application's errors).
    """
    keras_hub = require("keras_hub", "hub", "Segmentation")
    encoder = dense_encoder(name, "segmentation", LEVELS,
                            image_size=image_size, alpha=alpha,
                            weights=weights, reduction=reduction,
                            attention=attention)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, image_shape=(image_size, image_size, 3),
        dilation_rates=aspp_dilation_rates(image_size), **DEEPLAB)
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=backbone, num_classes=num_classes,
        name=f"deeplabv3_{encoder.name}")
    return segmenter, encoder if transfer else None


def segmentation_loss(reduction="sum_over_batch_size"):
    """Sparse categorical cross-entropy of the per-pixel logits (computed
    in float32 under a mixed policy: Keras losses cast their inputs)."""
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=reduction)


def segmentation_metrics(num_classes):
    """`mean_iou` (argmax of the logits against the mask, every class) and
    `pixel_accuracy`."""
    return [
        keras.metrics.MeanIoU(num_classes, sparse_y_pred=False,
                              name="mean_iou"),
        keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy"),
    ]

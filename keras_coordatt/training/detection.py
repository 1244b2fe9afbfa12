"""Object detection in `train()`: keras-hub's RetinaNet on our networks.

With `TrainConfig.task="detection"`, `train()` runs its usual steps
(strategy, precision, backups, phases, evaluation, saved model) with the
pieces of this module and the pipelines of `data.detection`:

- the model (`build_detector`): a keras-hub `RetinaNetObjectDetector` on a
  `RetinaNetBackbone` whose image encoder is our keras-hub backbone of the
  config's model (`keras_coordatt.hub.hub_classes(model).backbone`, same
  `alpha`, `reduction`, `attention`), or the encoder in the config's
  `.keras` file (`models.load_encoder`): a 256-channel feature pyramid on
  P3..P5 (strides 8 to 32), nine anchors per position (3 scales x 3 aspect
  ratios, `anchor_size` times the stride), the class and box heads shared
  by the levels (4 convolutions with group normalisation each), and non-max
  suppression at prediction (`boxes`, `labels`, `confidence`,
  `num_detections`, boxes `yxyx` in pixels);
- the losses: keras-hub's own (`ObjectDetector.compile` defaults): sigmoid
  focal loss on the class logits and Huber loss on the box deltas, both
  summed and divided by the number of anchors matched to an object
  (`RetinaNetObjectDetector.compute_loss`), as in the RetinaNet paper;
- the metric: COCO's mean average precision, `map` (AP averaged over the
  IoU thresholds 0.50:0.05:0.95 and over the classes) and `map_50` (at IoU
  0.5), computed by pycocotools' `COCOeval` (`mean_average_precision`),
  once per epoch on the validation data (`MeanAveragePrecision`) and at the
  end of training (`evaluate`); the best checkpoint is the epoch of the
  highest `val_map` (`MONITOR`).

Why these: keras-hub maintains RetinaNet (anchors, target assignment, box
coding, focal loss, NMS) and takes any backbone with `pyramid_outputs`;
pycocotools is the reference implementation of the COCO metric that
detection results are reported in (keras-hub has no detection metric).

The heads normalise their activations (keras-hub's
`use_prediction_head_norm`: group normalisation, as in torchvision's
RetinaNet v2 and FCOS). Without it, trained from scratch on digits-det with
AdamW at 2e-3, the class head fell back to the prior everywhere (the class
loss flat at its starting 0.452 for 6 epochs, mAP 0); with it the class
loss fell to 0.18 in 96 steps. The best checkpoint follows the validation
mAP rather than the loss: the focal loss sums over thousands of easy
background anchors and says little about the ranking of the few confident
boxes that AP scores (and the checkpoint callbacks keep the highest value
of their metric).

keras-hub and pycocotools (the `hub` extra) are imported when a detector is
built or evaluated.
"""

import contextlib
import io
import math

import keras
import numpy as np

from keras_coordatt.training.models import model_slug
from keras_coordatt.training.segmentation import dense_encoder
from keras_coordatt.utils.extras import require

MONITOR = "val_map"
# The pyramid levels of the heads: P3..P5, strides 8, 16, 32 (the
# backbones' deepest level is P5; RetinaNet's P6, P7 would be 1-pixel maps
# at the small sizes this package trains at).
MIN_LEVEL, MAX_LEVEL = 3, 5
# The pyramid levels the heads read (the task's `encoder_levels`).
LEVELS = tuple(f"P{k}" for k in range(MIN_LEVEL, MAX_LEVEL + 1))
# keras-hub's anchors: 3 scales per octave, 3 aspect ratios.
ANCHOR_SCALES = 3
ANCHOR_ASPECT_RATIOS = (0.5, 1.0, 2.0)
# The focal-loss prior (RetinaNet paper, section 4.1): every anchor starts
# at this class probability.
PRIOR_PROBABILITY = 0.01
# Prediction: Detectron's RetinaNet inference (scores above 0.05, NMS at
# IoU 0.5) and COCO's 100 detections per image.
NMS = dict(confidence_threshold=0.05, iou_threshold=0.5, max_detections=100)


def build_detector(name, num_classes, *, image_size=64, alpha=1.0,
                   weights=None, reduction=None, attention=True,
                   transfer=False, anchor_size=4.0):
    """A RetinaNet detector on the keras-hub backbone of `name`.

    Call it inside the strategy's scope, after setting the dtype policy
    (the detector's layers take it).

    Args:
        name: a registered application (`applications.registry`), or a
            `.keras` file of an encoder with `pyramid_outputs` P3 to P5
            (a keras-hub `Backbone`; the architecture arguments and
            `weights` do not apply to it).
        num_classes: object classes (no background class: the focal loss
            is one sigmoid per class).
        image_size: square input side, a multiple of 32 (the pyramid adds
            every level to the upsampled coarser one).
        alpha, reduction, attention: the application's arguments.
        weights: `None`, `"imagenet"` or a weights file of the network
            without its top (`include_top=False`), loaded into the encoder
            with the application's own checks.
        transfer: return the encoder as the backbone to freeze in a
            `frozen_epochs` phase.
        anchor_size: side of the square anchors as a multiple of their
            level's stride (4, keras-hub's and the paper's, makes 32-pixel
            anchors on P3; smaller objects need a smaller value).

    Returns:
        `(detector, backbone)`: the keras-hub `RetinaNetObjectDetector`
        (boxes `yxyx` in pixels), and with `transfer` its image encoder
        (else None).

    Raises:
        ValueError: bad `num_classes`, `image_size` or `anchor_size`, an
            unknown model or attention, or weights that do not fit.
        ImportError: keras-hub or pycocotools is missing.
    """
    _check_detector_arguments(num_classes, image_size, anchor_size)
    keras_hub = _import_extras()
    encoder = dense_encoder(name, "detection", LEVELS,
                            image_size=image_size, alpha=alpha,
                            weights=weights, reduction=reduction,
                            attention=attention)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=MIN_LEVEL, max_level=MAX_LEVEL,
        use_p5=False, image_shape=(image_size, image_size, 3))
    anchors = keras_hub.layers.AnchorGenerator(
        "yxyx", min_level=MIN_LEVEL, max_level=MAX_LEVEL,
        num_scales=ANCHOR_SCALES, aspect_ratios=list(ANCHOR_ASPECT_RATIOS),
        anchor_size=float(anchor_size))
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes,
        bounding_box_format="yxyx", anchor_generator=anchors,
        use_prediction_head_norm=True,
        classification_head_prior_probability=PRIOR_PROBABILITY,
        prediction_decoder=keras_hub.layers.NonMaxSuppression(
            bounding_box_format="yxyx", from_logits=True, **NMS),
        name=f"retinanet_{model_slug(name)}",
    )
    _initialise_heads(detector)
    return detector, encoder if transfer else None


def _import_extras():
    """keras-hub, after checking that pycocotools is there too (else a run
    would fail at the end of its first epoch)."""
    require("pycocotools", "hub", "Detection (COCO mAP)")
    return require("keras_hub", "hub", "Detection")


def _initialise_heads(detector):
    """The RetinaNet paper's initialisation of the two heads (section 4.1):
    kernels drawn from N(0, 0.01), the class logits' bias set so that
    every anchor starts at class probability `PRIOR_PROBABILITY`, the box
    deltas' bias at 0.

    keras-hub 0.32 puts the prior on the box deltas' bias instead (its box
    head has `use_prior_probability=True`) and draws the kernels from
    N(0, 0.05): from scratch, every anchor then starts at class
    probability 0.5 and every box 4.6 log-units off, and the first steps'
    loss is in the hundreds. The prior keeps the thousands of background
    anchors from swamping the focal loss at the start.
    """
    prior = -math.log((1.0 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
    kernels = keras.initializers.RandomNormal(stddev=0.01)
    for head in (detector.classification_head, detector.box_head):
        for layer in head.conv_layers + [head.prediction_layer]:
            layer.kernel.assign(kernels(layer.kernel.shape, "float32"))
        bias = head.prediction_layer.bias
        value = prior if head is detector.classification_head else 0.0
        bias.assign(np.full(bias.shape, value, "float32"))


def _check_detector_arguments(num_classes, image_size, anchor_size):
    checks = (
        ("num_classes", num_classes, _is_int(num_classes) and num_classes >= 1,
         "an integer >= 1"),
        ("image_size", image_size,
         _is_int(image_size) and image_size >= 32 and image_size % 32 == 0,
         "a multiple of 32 (the feature pyramid adds every level to the "
         "2x upsampled coarser one)"),
        ("anchor_size", anchor_size,
         isinstance(anchor_size, (int, float)) and not isinstance(
             anchor_size, bool) and anchor_size > 0, "a number > 0"),
    )
    for name, value, ok, accepted in checks:
        if not ok:
            raise ValueError(
                f"`{name}` must be {accepted}. Received: {name}={value!r}")


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(
        value, bool)


# ---------------------------------------------------------------------------
# COCO mAP (pycocotools).


def mean_average_precision(true_boxes, true_labels, boxes, labels, scores):
    """COCO box mAP of detections, computed by pycocotools' `COCOeval`.

    Every argument holds one row per image, padded: ground-truth and
    detection rows whose label is negative are padding (keras-hub's
    predictions mark the slots past `num_detections` with -1). Boxes are
    `(y_min, x_min, y_max, x_max)` in pixels, the detector's format; this
    function only converts them to COCO's json dicts (`[x, y, width,
    height]`, 1-based ids) and runs the COCO evaluation on them, at most
    100 detections per image. A class without ground truth is left out of
    the mean (COCO's rule); a class with ground truth and no detection
    counts as AP 0.

    Args:
        true_boxes: `(N, M, 4)` ground-truth boxes.
        true_labels: `(N, M)` their classes (`-1` padding).
        boxes: `(N, K, 4)` detected boxes.
        labels: `(N, K)` their classes (`-1` padding).
        scores: `(N, K)` their confidences.

    Returns:
        `{"map": AP@[.50:.95], "map_50": AP@.50}`, floats in [0, 1].

    Raises:
        ValueError: arrays of the wrong shapes, or no ground-truth box.
    """
    true_boxes, true_labels, boxes, labels, scores = _check_detections(
        true_boxes, true_labels, boxes, labels, scores)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": n + 1} for n in range(len(true_boxes))]
    classes = np.union1d(true_labels[true_labels >= 0],
                         labels[labels >= 0]).astype(int)
    categories = [{"id": int(c) + 1} for c in classes]
    truth = _annotations(true_boxes, true_labels)
    found = _annotations(boxes, labels, scores)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints.
        evaluation = COCOeval(_coco(COCO, images, categories, truth),
                              _coco(COCO, images, categories, found), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"map": float(evaluation.stats[0]),
            "map_50": float(evaluation.stats[1])}


def _coco(coco_class, images, categories, annotations):
    coco = coco_class()
    coco.dataset = {"images": images, "categories": categories,
                    "annotations": annotations}
    coco.createIndex()
    return coco


def _annotations(boxes, labels, scores=None):
    """COCO annotation dicts of the non-padding rows (ids from 1: COCOeval
    takes a matched id of 0 for no match)."""
    rows = []
    for n, row in zip(*np.nonzero(labels >= 0)):
        y0, x0, y1, x1 = (float(v) for v in boxes[n, row])
        width, height = x1 - x0, y1 - y0
        rows.append({
            "id": len(rows) + 1, "image_id": int(n) + 1,
            "category_id": int(labels[n, row]) + 1,
            "bbox": [x0, y0, width, height], "area": width * height,
            "iscrowd": 0,
        })
        if scores is not None:
            rows[-1]["score"] = float(scores[n, row])
    return rows


def _check_detections(true_boxes, true_labels, boxes, labels, scores):
    """The arguments of `mean_average_precision` as arrays, checked."""
    true_labels, labels = np.asarray(true_labels), np.asarray(labels)
    for name, array, rows in (("true_labels", true_labels, "M"),
                              ("labels", labels, "K")):
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                f"`{name}` must be an integer array of shape (N, {rows}). "
                f"Received: {name} of shape {array.shape}, dtype "
                f"{array.dtype}"
            )
    images, rows = true_labels.shape
    others = {
        "true_boxes": (true_boxes, (images, rows, 4)),
        "boxes": (boxes, (images, labels.shape[1], 4)),
        "scores": (scores, (images, labels.shape[1])),
    }
    arrays = {}
    for name, (value, shape) in others.items():
        arrays[name] = np.asarray(value, "float64")
        if arrays[name].shape != shape:
            raise ValueError(
                f"`{name}` must have shape {shape}, one row per row of the "
                f"labels of the same {images} images. Received: {name} of "
                f"shape {arrays[name].shape} (true_labels {true_labels.shape}"
                f", labels {labels.shape})"
            )
    if not (true_labels >= 0).any():
        raise ValueError(
            "The mAP needs at least one ground-truth box (every row of "
            "`true_labels` is padding). Received: true_labels of shape "
            f"{true_labels.shape} without a label >= 0"
        )
    return (arrays["true_boxes"], true_labels, arrays["boxes"], labels,
            arrays["scores"])


def evaluate(model, dataset):
    """The COCO mAP (`mean_average_precision`) of a detector on a dataset.

    Args:
        model: a `RetinaNetObjectDetector` (its `predict` gives the
            non-max-suppressed detections).
        dataset: batches `(images, {"boxes", "labels"})` or, padded,
            `(images, targets, weights)`, as `data.detection.eval_dataset`
            makes them; examples of weight 0 are left out.

    Returns:
        `{"map": ..., "map_50": ...}`.
    """
    columns = {name: [] for name in ("true_boxes", "true_labels", "boxes",
                                     "labels", "scores")}
    size = None
    for images, targets, *weights in dataset:
        images = keras.ops.convert_to_numpy(images)
        size = size or len(images)
        found = _predict(model, images, size)
        keep = np.ones(len(images), bool) if not weights else (
            keras.ops.convert_to_numpy(weights[0]) > 0)
        values = (targets["boxes"], targets["labels"], found["boxes"],
                  found["labels"], found["confidence"])
        for column, value in zip(columns.values(), values):
            column.append(keras.ops.convert_to_numpy(value)[:len(keep)][keep])
    return mean_average_precision(
        **{name: np.concatenate(column) for name, column in columns.items()})


def _predict(model, images, size):
    """`model.predict` on `images` padded to `size` images.

    keras-hub 0.32's non-max suppression needs a static batch size: a
    prediction function traced again for another batch (a last, smaller
    one) is traced for any batch, and fails. One size for every call keeps
    the first trace. (Not `predict_on_batch` either: keras-hub's RetinaNet
    cannot decode the `(images,)` tuple it passes.)
    """
    missing = size - len(images)
    if missing > 0:
        images = np.concatenate(
            [images, np.zeros((missing,) + images.shape[1:], images.dtype)])
    return model.predict(images, batch_size=size, verbose=0)


class MeanAveragePrecision(keras.callbacks.Callback):
    """Adds `val_map` and `val_map_50` (`evaluate` on `dataset`) to the logs
    of every epoch.

    Place it before the callbacks that read them (the best checkpoint, the
    CSV log): Keras hands every callback the same logs dict, in order.

    Args:
        dataset: validation batches (see `evaluate`).
    """

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            metrics = evaluate(self.model, self.dataset)
            logs.update({f"val_{k}": v for k, v in metrics.items()})

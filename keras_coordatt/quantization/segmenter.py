"""Int8 TFLite for the DeepLabV3 segmenter: per-pixel scores of a `.tflite`.

The segmenter of `keras_coordatt.training.segmentation.build_segmenter`
converts with `convert_ptq` as it is: besides the backbone's ops, DeepLab's
decoder only adds RESIZE_BILINEAR and CONCATENATION, both with int8 TFLite
kernels, so `check_int8` passes with float I/O or int8 I/O. It does not go
through QAT: `quantize_model` rebuilds a flat graph of the layers it knows,
and the segmenter nests keras-hub's `DeepLabV3Backbone` (its ASPP layer,
bilinear `UpSampling2D`), which it rejects by name.

This module scores the converted model on `(images, masks)` with the same
definitions as `training.segmentation.segmentation_metrics`, so the int8
numbers compare directly with the Keras model's `mean_iou` and
`pixel_accuracy`.
"""

import numpy as np

from keras_coordatt.quantization.evaluate import predict_tflite


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(
            num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(
            "`num_classes` must be an integer >= 2 (the background "
            f"included). Received: num_classes={num_classes!r}"
        )


def segmentation_scores(masks, predictions, num_classes):
    """Mean IoU and pixel accuracy of predicted class maps.

    The mean IoU is Keras' `MeanIoU` over all `num_classes` classes (the
    background included): the IoU of each class that occurs in the masks or
    the predictions, averaged; a class absent from both is left out.

    Args:
        masks: true class ids, `(N, H, W)` (or `(N, H, W, 1)`) integers.
        predictions: predicted class ids of the same pixels.
        num_classes: int >= 2, the classes of the segmenter.

    Returns:
        A dict: `mean_iou` and `pixel_accuracy` (floats in [0, 1]),
        `iou` (float array `(num_classes,)`, NaN for absent classes).

    Raises:
        ValueError: `num_classes` is not an integer >= 2, the two maps
            differ in size, or an id is outside `[0, num_classes)`.
    """
    _check_num_classes(num_classes)
    masks = np.asarray(masks).reshape(-1).astype("int64")
    predictions = np.asarray(predictions).reshape(-1).astype("int64")
    if masks.shape != predictions.shape:
        raise ValueError(
            "`masks` and `predictions` must hold the same pixels. Received: "
            f"{masks.size} and {predictions.size} pixels"
        )
    for name, ids in (("masks", masks), ("predictions", predictions)):
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            raise ValueError(
                f"`{name}` must hold class ids in [0, {num_classes}). "
                f"Received: ids from {ids.min()} to {ids.max()}, "
                f"num_classes={num_classes}"
            )
    confusion = np.bincount(masks * num_classes + predictions,
                            minlength=num_classes ** 2).reshape(
        num_classes, num_classes)
    hits = np.diag(confusion).astype("float64")
    union = confusion.sum(0) + confusion.sum(1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, hits / union, np.nan)
    return {
        "mean_iou": float(np.nanmean(iou)) if (union > 0).any() else 0.0,
        "pixel_accuracy": float(hits.sum() / max(masks.size, 1)),
        "iou": iou,
    }


def evaluate_segmenter_tflite(model, data, num_classes, batch_size=32,
                              num_threads=None):
    """Mean IoU and pixel accuracy of a `.tflite` segmenter on masks.

    Runs the model with `predict_tflite` (int8 inputs quantized, int8 logits
    dequantized) and takes each pixel's argmax.

    Args:
        model: TFLite flatbuffer bytes or a `.tflite` path, its output the
            per-pixel logits `(1, H, W, num_classes)`.
        data: `(images, masks)` arrays, or an iterable / `tf.data.Dataset`
            of `(images, masks)` batches (e.g. `data.segmentation.
            eval_dataset`), images preprocessed as the Keras model expects.
        num_classes: int >= 2, the classes of the logits.
        batch_size: interpreter batch for array inputs.
        num_threads: interpreter threads.

    Returns:
        `segmentation_scores`' dict plus `predictions` (int array
        `(N, H, W)` of class ids) and `num_samples`.

    Raises:
        ValueError: `data` without masks, logits whose last axis is not
            `num_classes`, or `segmentation_scores`' errors.
    """
    _check_num_classes(num_classes)
    outputs, masks = predict_tflite(model, data, batch_size, num_threads)
    if masks is None:
        raise ValueError(
            "`data` must hold masks: (images, masks) arrays or batches. "
            "Received: images only"
        )
    if outputs.ndim != 4 or outputs.shape[-1] != num_classes:
        raise ValueError(
            "The model must output per-pixel logits (N, H, W, num_classes). "
            f"Received: outputs of shape {outputs.shape}, "
            f"num_classes={num_classes}"
        )
    predictions = outputs.argmax(-1)
    scores = segmentation_scores(masks, predictions, num_classes)
    scores["predictions"] = predictions
    scores["num_samples"] = int(len(predictions))
    return scores

"""The DeepLabV3 segmenter as an int8 TFLite model: post-training int8 by
`convert_ptq` (every op int8), the int8 model's per-pixel classes against
the float model's, and the per-pixel scores of
`quantization.segmenter`."""

import keras
import numpy as np
import pytest

from keras_coordatt import quantization as q
from keras_coordatt.quantization.segmenter import evaluate_segmenter_tflite
from keras_coordatt.quantization.segmenter import segmentation_scores

# The classifier tests' check of an all-int8 report.
from test_quantization import _assert_all_int8

needs_tf = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                              reason="TFLite conversion needs TensorFlow")

NUM_CLASSES = 11  # digits-seg: the background and ten digits.
# The ops of the int8 segmenter: the backbone's (as the classifier's, without
# its head) and DeepLab's resizes (ASPP's image pooling, the 8x and 4x
# upsamplings) and concatenations (ASPP's branches, decoder's skip).
SEGMENTER_OPS = {
    "QUANTIZE", "PAD", "CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "ADD", "MUL",
    "LOGISTIC", "RESIZE_BILINEAR", "CONCATENATION", "DEQUANTIZE",
}


def test_segmentation_scores_match_keras_mean_iou():
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 5, (3, 8, 8))
    predictions = np.where(rng.random((3, 8, 8)) < 0.6, masks,
                           rng.integers(0, 4, (3, 8, 8)))
    metric = keras.metrics.MeanIoU(NUM_CLASSES)  # classes 5..10 absent
    metric.update_state(masks.reshape(-1), predictions.reshape(-1))
    scores = segmentation_scores(masks, predictions, NUM_CLASSES)
    assert scores["mean_iou"] == pytest.approx(float(metric.result()),
                                               abs=1e-6)
    assert scores["pixel_accuracy"] == pytest.approx(
        np.mean(masks == predictions))
    assert np.isnan(scores["iou"][5:]).all()
    with pytest.raises(ValueError, match=r"num_classes.*Received: "
                                         r"num_classes=1"):
        segmentation_scores(masks, predictions, 1)
    with pytest.raises(ValueError, match=r"`masks`.*\[0, 4\).*ids from 0 "
                                         r"to 4"):
        segmentation_scores(masks, predictions, 4)
    with pytest.raises(ValueError, match="192 and 64 pixels"):
        segmentation_scores(masks, predictions[0], NUM_CLASSES)


@needs_tf
def test_segmenter_ptq_is_all_int8_and_agrees_with_float():
    pytest.importorskip("keras_hub")
    pytest.importorskip("ai_edge_litert")
    from keras_coordatt.applications import preprocess_input
    from keras_coordatt.datasets import digits_scenes
    from keras_coordatt.training.batchnorm import recalibrate_batchnorm
    from keras_coordatt.training.segmentation import build_segmenter
    from keras_coordatt.training.segmentation import segmentation_loss

    keras.utils.set_random_seed(0)
    segmenter, _ = build_segmenter("mobilenetv2_ca", NUM_CLASSES,
                                   image_size=64, alpha=0.35)
    train = digits_scenes(128, 64)
    val = digits_scenes(32, 64, split="validation")
    x = np.asarray(preprocess_input(train["images"].astype("float32")))
    x_val = np.asarray(preprocess_input(val["images"].astype("float32")))
    # Trained for 16 steps first: an untrained segmenter's int8 logits are
    # off its float ones by their own standard deviation, whatever the
    # conversion (measured: argmax agreement 0.29 where chance is 0.18,
    # with or without attention); after these 16 steps the error is 0.30
    # of it. Eager: tracing this graph's training step takes longer than
    # the 16 steps (about 80 s on 2 CPU cores).
    segmenter.compile(keras.optimizers.Adam(3e-3), segmentation_loss(),
                      metrics=[], run_eagerly=True)
    segmenter.fit(x, train["masks"].astype("int32"), batch_size=8, epochs=1,
                  verbose=0)
    batches = [(x[i:i + 32],) for i in range(0, len(x), 32)]
    recalibrate_batchnorm(segmenter, batches, len(batches))

    blob = q.convert_ptq(segmenter, x, num_samples=32)
    report = q.check_int8(blob)
    _assert_all_int8(report, int8_io=False)
    ops = report["op_counts"]
    assert set(ops) == SEGMENTER_OPS, ops
    assert ops["RESIZE_BILINEAR"] == 3 and ops["CONCATENATION"] == 2, ops

    float_classes = segmenter.predict(x_val, verbose=0).argmax(-1)
    result = evaluate_segmenter_tflite(blob, (x_val, val["masks"]),
                                       NUM_CLASSES)
    assert result["predictions"].shape == (32, 64, 64)
    agree = result["predictions"] == float_classes
    digits = float_classes != 0
    # The float model already marks digits, else agreeing on background
    # would be all there is to measure (measured: 3.3 % of the pixels).
    assert digits.mean() > 0.01
    # Measured: 0.978 of all pixels and 0.55 of those the float model
    # gives a digit (an int8 model that lost the digits would agree on
    # 0.967 and 0); the same with int8 I/O.
    assert agree.mean() >= 0.96
    assert agree[digits].mean() >= 0.4
    float_scores = segmentation_scores(val["masks"], float_classes,
                                       NUM_CLASSES)
    # Measured: pixel accuracy 0.8897 (float 0.8890), mean IoU 0.096
    # (float 0.091).
    assert abs(result["pixel_accuracy"]
               - float_scores["pixel_accuracy"]) <= 0.01
    assert result["mean_iou"] >= float_scores["mean_iou"] - 0.02

    with pytest.raises(ValueError, match="must hold masks"):
        evaluate_segmenter_tflite(blob, x_val[:1], NUM_CLASSES)
    with pytest.raises(ValueError, match=r"\(1, 64, 64, 11\), "
                                         r"num_classes=10"):
        evaluate_segmenter_tflite(blob, (x_val[:1], val["masks"][:1]), 10)

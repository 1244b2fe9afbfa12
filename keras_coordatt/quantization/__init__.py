"""Quantization: a native Keras 3 QAT recipe and int8 TFLite conversion.

- `quantize_model(model)` returns the float model's quantization-aware twin
  (BatchNorm folded, per-channel int8 weights, int8 activations with
  moving-average ranges), trainable with `model.fit` on TensorFlow and JAX
  and saved as `.keras`;
- `convert_float`, `convert_ptq` (post-training int8, the baseline) and
  `convert_qat` write `.tflite` models; the int8 ones are checked by
  `check_int8` (no float compute op, no Flex op);
- `evaluate_tflite` measures a `.tflite` classifier with the LiteRT
  interpreter, `evaluate_segmenter_tflite` a segmenter (per-pixel mean IoU
  and accuracy, `segmentation_scores`; segmenters convert with
  `convert_ptq`);
- `tfmot_quantize` runs the tfmot recipe (the baseline for tf_keras users:
  the same network built in tf_keras by the same constructor, tfmot QAT,
  full-int8 TFLite) in a subprocess, from the constructor call
  (`application_arguments`) and the weights `export_for_tf_keras` writes;
  it needs the `tfmot` extra, and this process never imports tfmot or
  tf_keras (see `tfmot_bridge` and `tfmot_recipe`).

Nothing here imports TensorFlow at import time; the converters import it
when called (they need the TensorFlow backend).
"""

from keras_coordatt.litert import check_int8
from keras_coordatt.litert import inspect as inspect_tflite
from keras_coordatt.litert import predict as predict_tflite
from keras_coordatt.quantization.convert import convert_float
from keras_coordatt.quantization.convert import convert_ptq
from keras_coordatt.quantization.convert import convert_qat
from keras_coordatt.quantization.evaluate import evaluate_tflite
from keras_coordatt.quantization.layers import ActivationQuantizer
from keras_coordatt.quantization.layers import QuantConv2D
from keras_coordatt.quantization.layers import QuantCBAM
from keras_coordatt.quantization.layers import QuantCoordinateAttention
from keras_coordatt.quantization.layers import QuantSqueezeExcitation
from keras_coordatt.quantization.layers import QuantDense
from keras_coordatt.quantization.qat import supported_layers
from keras_coordatt.quantization.qat import calibrate
from keras_coordatt.quantization.qat import quantize_model
from keras_coordatt.quantization.segmenter import evaluate_segmenter_tflite
from keras_coordatt.quantization.segmenter import segmentation_scores
from keras_coordatt.quantization.tfmot_bridge import application_arguments
from keras_coordatt.quantization.tfmot_bridge import export_for_tf_keras
from keras_coordatt.quantization.tfmot_bridge import tf_keras_float_outputs
from keras_coordatt.quantization.tfmot_bridge import tfmot_available
from keras_coordatt.quantization.tfmot_bridge import tfmot_quantize

__all__ = [
    "ActivationQuantizer",
    "QuantConv2D",
    "QuantCBAM",
    "QuantCoordinateAttention",
    "QuantSqueezeExcitation",
    "QuantDense",
    "supported_layers",
    "application_arguments",
    "calibrate",
    "check_int8",
    "convert_float",
    "convert_ptq",
    "convert_qat",
    "evaluate_segmenter_tflite",
    "evaluate_tflite",
    "export_for_tf_keras",
    "inspect_tflite",
    "predict_tflite",
    "quantize_model",
    "segmentation_scores",
    "tf_keras_float_outputs",
    "tfmot_available",
    "tfmot_quantize",
]

"""keras_coordatt.litert (one LiteRT module) and keras_coordatt.counting
(MACs from the LiteRT graph, no per-layer table)."""

import keras
import numpy as np
import pytest

from keras_coordatt import MobileNetV2CA
from keras_coordatt import counting
from keras_coordatt import litert
from keras_coordatt import quantization as q
from keras_coordatt.export import formats

# benchmarks/macs.py's per-layer table (deleted), at alpha 1.0, 224x224, on
# MobileNetV2CA(weights=None, attention=...): total, attention MACs,
# attention element-wise operations. MobileNetV2 part 300,774,272 (the
# paper's 300.8M), CA convolutions 5,892,096 (5.9M): 306.7M in all.
TABLE_224 = {
    False: (300_774_272, 0, 0),
    "se": (301_152_128, 377_856, 3_800_832),
    "cbam": (302_528_800, 1_754_528, 11_402_496),
    "ca": (306_666_368, 5_892_096, 7_601_664),
}
BACKBONE_224 = {"Conv2D": 278_777_856, "DepthwiseConv2D": 20_716_416,
                "Dense": 1_280_000}
CLASSES = {"se": "SqueezeExcitation", "cbam": "CBAM",
           "ca": "CoordinateAttention"}


@pytest.mark.slow
@pytest.mark.parametrize("attention", list(TABLE_224))
def test_count_equals_the_old_table_at_224(attention):
    counted = counting.count_macs(
        MobileNetV2CA(weights=None, attention=attention))
    total, macs, elementwise = TABLE_224[attention]
    assert counted["total"] == total
    assert counted["attention"] == macs
    assert counted["attention_elementwise"] == elementwise
    assert counted["attention_layers"] == (16 if attention else 0)
    by_type = dict(BACKBONE_224)
    if attention:
        by_type[CLASSES[attention]] = macs
    assert counted["by_type"] == by_type
    if attention == "ca":
        assert round(counted["total"] / 1e6, 1) == 306.7
        assert round(counted["attention"] / 1e6, 1) == 5.9


def test_count_equals_the_old_table_small():
    counted = counting.count_macs(MobileNetV2CA(
        weights=None, alpha=0.35, input_shape=(64, 64, 3)))
    assert counted["by_type"] == {
        "Conv2D": 4_033_024, "DepthwiseConv2D": 702_144,
        "CoordinateAttention": 338_688, "Dense": 1_280_000}
    assert counted["total"] == 6_353_856
    assert counted["attention"] == 338_688
    assert counted["attention_elementwise"] == 246_528
    assert counted["attention_layers"] == 16


class ToyGate(keras.layers.Layer):
    """x * conv1x1(x): a custom attention-like block, registered nowhere."""

    def build(self, input_shape):
        self.conv = keras.layers.Conv2D(input_shape[-1], 1, name="proj")
        self.conv.build(input_shape)

    def call(self, x):
        return x * self.conv(x)


def test_an_unregistered_custom_layer_is_counted_without_a_table():
    inputs = keras.Input((8, 6, 16))
    x = ToyGate(name="toy")(inputs)
    x = keras.layers.Conv2D(24, 3, strides=2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    counted = counting.count_macs(keras.Model(inputs, outputs))
    toy = 8 * 6 * 16 * 16  # the 1x1 convolution
    conv = 4 * 3 * 24 * 3 * 3 * 16
    dense = 24 * 10  # the model's output op keeps its layer's name
    assert counted["by_type"] == {"ToyGate": toy, "Conv2D": conv,
                                  "Dense": dense}
    assert counted["total"] == toy + conv + dense
    assert counted["attention"] == toy
    assert counted["attention_layers"] == 1
    assert counted["attention_elementwise"] == 8 * 6 * 16  # the product
    assert ("toy", "ToyGate", toy) in counted["layers"]


def test_count_at_another_input_size_and_bad_shapes():
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    model = keras.Model(inputs, outputs)
    counted = counting.count_macs(model, input_shape=(10, 12, 3))
    assert counted["total"] == 10 * 12 * 8 * 3 * 3 * 3
    with pytest.raises(ValueError, match=r"Received: input_shape=\(None"):
        counting.count_macs(model)
    with pytest.raises(ValueError, match="Received: input_shape=\\(0, 4"):
        counting.count_macs(model, input_shape=(0, 4, 3))


def test_count_params_trainable_and_not():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    outputs = keras.layers.BatchNormalization()(x)
    params = counting.count_params(keras.Model(inputs, outputs))
    assert params == {"total": 3 * 3 * 3 * 8 + 4 * 8,
                      "trainable": 3 * 3 * 3 * 8 + 2 * 8,
                      "non_trainable": 2 * 8}


def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _images(n=6):
    return np.random.default_rng(1).normal(size=(n, 8, 8, 3)).astype(
        "float32")


def _raw_interpreter_outputs(blob, images):
    """The old path: ai-edge-litert's Interpreter, image by image, int8
    inputs quantized and outputs dequantized by hand."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=blob)
    runner.allocate_tensors()
    inp = runner.get_input_details()[0]
    out = runner.get_output_details()[0]
    results = []
    for image in images:
        x = image[None]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(
                np.int8)
        runner.set_tensor(inp["index"], x)
        runner.invoke()
        y = runner.get_tensor(out["index"]).astype("float32")
        if out["dtype"] == np.int8:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        results.append(y)
    return np.concatenate(results)


def test_predict_equals_the_interpreter_and_keras(tmp_path):
    model, images = _tiny_model(), _images()
    blob = q.convert_float(model)
    expected = _raw_interpreter_outputs(blob, images)
    outputs, labels = litert.predict(blob, images, batch_size=4)
    assert labels is None
    np.testing.assert_array_equal(outputs, expected)
    np.testing.assert_allclose(outputs, model.predict(images, verbose=0),
                               atol=1e-5)
    path = tmp_path / "model.tflite"
    path.write_bytes(blob)
    # The public names are the one module's.
    assert q.predict_tflite is litert.predict
    assert q.check_int8 is litert.check_int8
    np.testing.assert_array_equal(formats.predict_litert(path, images),
                                  expected)
    labels = np.arange(6)
    _, got = q.predict_tflite(str(path), (images, labels), batch_size=4)
    np.testing.assert_array_equal(got, labels)


def test_predict_int8_io_dequantizes_like_the_interpreter():
    model, images = _tiny_model(), _images()
    blob = q.convert_ptq(model, _images(16), num_samples=16, int8_io=True)
    outputs, _ = litert.predict(blob, images)
    np.testing.assert_array_equal(outputs,
                                  _raw_interpreter_outputs(blob, images))
    np.testing.assert_allclose(outputs, model.predict(images, verbose=0),
                               atol=0.05)


def test_ops_of_a_tiny_int8_model():
    blob = q.convert_ptq(_tiny_model(), _images(16), num_samples=16)
    assert litert.op_names(blob) == ["CONV_2D", "DEQUANTIZE",
                                     "FULLY_CONNECTED", "MEAN", "QUANTIZE",
                                     "SOFTMAX"]
    listed = [(op["op_name"],
               [(np.dtype(t["dtype"]).name, tuple(t["shape"]))
                for t in op["inputs"]],
               [(np.dtype(t["dtype"]).name, tuple(t["shape"]))
                for t in op["outputs"]])
              for op in litert.ops(blob)]
    assert [name for name, _, _ in listed] == [
        "QUANTIZE", "CONV_2D", "MEAN", "FULLY_CONNECTED", "SOFTMAX",
        "DEQUANTIZE"]
    assert listed[0][1:] == ([("float32", (1, 8, 8, 3))],
                             [("int8", (1, 8, 8, 3))])
    assert listed[1][1] == [("int8", (1, 8, 8, 3)), ("int8", (4, 3, 3, 3)),
                            ("int32", (4,))]
    assert listed[1][2] == [("int8", (1, 8, 8, 4))]
    assert listed[-1][2] == [("float32", (1, 5))]
    report = litert.check_int8(blob)
    assert report["op_counts"]["CONV_2D"] == 1
    assert report["input_types"] == ["float32"]
    assert litert.output_step(blob) == pytest.approx(1 / 256)
    # The float model is not int8: the check names its ops.
    with pytest.raises(ValueError, match="CONV_2D"):
        litert.check_int8(q.convert_float(_tiny_model()))


def test_interpreter_rejects_other_inputs():
    with pytest.raises(ValueError, match="Received: model of type int"):
        litert.interpreter(123)
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        litert.predict(b"", _images(), batch_size=0)


_JAX_SCRIPT = """
import json, keras
from keras_coordatt import CoordinateAttention
from keras_coordatt.counting import count_each
inputs = keras.Input((8, 6, 16))
x = keras.layers.Conv2D(32, 3, strides=2, padding="same")(inputs)
outputs = CoordinateAttention(reduction=4)(x)
counts = count_each({"a": keras.Model(inputs, outputs)})
print(json.dumps([keras.backend.backend(), counts["a"]["by_type"],
                  counts["a"]["attention_elementwise"]]))
"""


@pytest.mark.slow
def test_count_on_jax_runs_in_a_tensorflow_subprocess():
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", _JAX_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    backend, by_type, elementwise = json.loads(
        proc.stdout.strip().splitlines()[-1])
    assert backend == "jax"
    assert by_type == {"Conv2D": 4 * 3 * 3 * 3 * 16 * 32,
                       "CoordinateAttention": 2 * (4 + 3) * 32 * 8}
    assert elementwise == 4 * 4 * 3 * 32

"""Tests of the tfmot recipe: tf_keras rebuild, tfmot QAT, int8 TFLite.

Importing TensorFlow Model Optimization sets TF_USE_LEGACY_KERAS=1 for the
whole process, which would turn `tf.keras` into tf_keras for every other
test here. So this file never imports tfmot or tf_keras: whether the
`tfmot` extra is installed is checked in a subprocess, and the recipe runs
in its own subprocess (`keras_coordatt.quantization.tfmot_quantize`).

The tests that need the extra are skipped, with the reason, only where
tfmot or tf_keras cannot be imported; CI installs the extra.
"""

import functools
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_coordatt import CoordinateAttention
from keras_coordatt import MobileNetV2CA
from keras_coordatt import MobileNeXtCA
from keras_coordatt import quantization as q
from keras_coordatt.applications import blocks
from keras_coordatt.quantization import tfmot_bridge as bridge
from keras_coordatt.quantization.data import load_digits
from keras_coordatt.quantization.data import shift_augment
from keras_coordatt.training.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HINT = 'pip install "keras-coordatt[tfmot]"'


@functools.lru_cache(maxsize=None)
def _extra_status():
    """`(importable, reason)` for tfmot + tf_keras, checked in a subprocess.
    """
    code = ("import tensorflow_model_optimization as tfmot, tf_keras; "
            "print(tfmot.__version__, tf_keras.__version__)")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        result = subprocess.run([sys.executable, "-c", code], env=env,
                                capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False, "importing tfmot timed out"
    if result.returncode == 0:
        return True, result.stdout.strip()
    lines = result.stderr.strip().splitlines()
    return False, lines[-1] if lines else f"exit {result.returncode}"


@pytest.fixture(scope="module")
def tfmot_extra():
    importable, reason = _extra_status()
    if not importable:
        pytest.skip(f"the tfmot extra is not importable ({reason}); "
                    f"install it with `{HINT}`")
    return reason


def _randomize_bn(model, seed=0):
    """Random BatchNorm statistics, so that the transfer is really tested."""
    rng = np.random.default_rng(seed)
    layers = list(model.layers)
    layers += [layer.bn for layer in model.layers
               if isinstance(layer, CoordinateAttention)]
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.2, n).astype("float32"))
            layer.moving_variance.assign(
                rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, n).astype("float32"))


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).normal(
        0, 1, (n, size, size, 3)).astype("float32")


# ------------------------------------------- no extra needed: the hand-off


def test_handoff_holds_the_constructor_call_and_the_weights(tmp_path):
    model = MobileNetV2CA((32, 32, 3), alpha=0.35, weights=None, classes=10)
    name, arguments = q.export_for_tf_keras(model, str(tmp_path))
    expected = {"input_shape": [32, 32, 3], "name": model.name,
                "include_top": True, "classes": 10,
                "classifier_activation": "softmax", "attention": "ca",
                "reduction": 32, "alpha": 0.35}
    assert (name, arguments) == ("mobilenetv2_ca", expected)
    with open(tmp_path / bridge.APPLICATION_FILE, encoding="utf-8") as f:
        assert json.load(f) == {"application": name, "arguments": expected}
    with np.load(tmp_path / bridge.WEIGHTS_FILE, allow_pickle=False) as data:
        weights = {key: data[key] for key in data.files}
    layer = model.get_layer("block_1_ca")
    # A sublayer `s` of layer `l` travels as `l_s`, its tf_keras name.
    np.testing.assert_array_equal(
        weights["block_1_ca_conv_h/kernel"],
        keras.ops.convert_to_numpy(layer.conv_h.kernel))
    np.testing.assert_array_equal(
        weights["block_1_ca_bn/moving_variance"],
        keras.ops.convert_to_numpy(layer.bn.moving_variance))
    np.testing.assert_array_equal(
        weights["block_1_depthwise/kernel"], keras.ops.convert_to_numpy(
            model.get_layer("block_1_depthwise").kernel))
    # Every weight of the model is in the file, once.
    assert len(weights) == len(model.weights)
    assert sum(w.size for w in weights.values()) == model.count_params()
    # A `.keras` file of the model gives the same call.
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert q.application_arguments(loaded) == (name, expected)


@pytest.mark.parametrize("family, kwargs", [
    ("mobilenext_ca", dict(input_shape=(48, 40, 3), alpha=0.75,
                           include_top=False, pooling="max", reduction=16)),
    ("mobilenetv2_ca", dict(input_shape=(32, 32, 3), alpha=0.5, classes=7,
                            classifier_activation=None, attention=False)),
])
def test_application_arguments_find_the_constructor_call(family, kwargs):
    cls = MobileNeXtCA if family == "mobilenext_ca" else MobileNetV2CA
    model = cls(weights=None, name="mine", **kwargs)
    name, arguments = q.application_arguments(model)
    assert name == family
    rebuilt = cls(weights=None, **{**arguments, "input_shape": tuple(
        arguments["input_shape"])})
    assert rebuilt.name == "mine"
    assert arguments["alpha"] == kwargs["alpha"]
    assert [layer.get_config() for layer in rebuilt.layers] == \
        [layer.get_config() for layer in model.layers]


def test_unsupported_models_are_refused_before_any_subprocess():
    inp = keras.Input((8, 8, 3))
    out = keras.layers.LayerNormalization(name="ln")(inp)
    with pytest.raises(ValueError, match="none of them builds"):
        q.application_arguments(keras.Model(inp, out))
    se = MobileNetV2CA((32, 32, 3), alpha=0.35, weights=None, classes=10,
                       attention="se")
    with pytest.raises(ValueError, match="attention 'se'; accepted: 'ca'"):
        q.application_arguments(se)
    transfer, _ = build_model("mobilenetv2_ca", 5, image_size=32, alpha=0.35,
                              transfer=True)
    with pytest.raises(ValueError, match="nested model"):
        q.application_arguments(transfer)
    # One layer more than the constructor builds: refused, named.
    model = MobileNetV2CA((32, 32, 3), alpha=0.35, weights=None, classes=10,
                          classifier_activation=None)
    scaled = keras.layers.Rescaling(2.0, name="scale")(model.output)
    with pytest.raises(ValueError, match=r"mobilenetv2_ca\(alpha=0.35\): "
                       r"\d+ layers where it builds \d+"):
        q.application_arguments(keras.Model(model.input, scaled))
    # A layer configured otherwise than the constructor does: named.
    ids = iter(range(1, 17))
    relu = MobileNetV2CA((32, 32, 3), alpha=0.35, weights=None, classes=10,
                         attention=lambda channels: CoordinateAttention(
                             activation="relu", name=f"block_{next(ids)}_ca"))
    with pytest.raises(ValueError, match=r"mobilenetv2_ca\(alpha=0.35\): "
                       r"layer 'block_1_ca' differs in activation"):
        q.application_arguments(relu)
    # Arguments are checked before the model and any subprocess.
    with pytest.raises(ValueError, match="epochs"):
        q.tfmot_quantize(model, (_images(2), np.zeros(2)), epochs=-1)
    with pytest.raises(ValueError, match="representative_samples"):
        q.tfmot_quantize(model, (_images(2), np.zeros(2)),
                         representative_samples=0)
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        q.tfmot_quantize(model, (_images(2), np.zeros(3)))


def test_other_namespaces_take_no_weights_nor_input_tensors():
    other = blocks.Namespace(keras.layers, keras.Model, {},
                             lambda: "channels_last")
    with pytest.raises(ValueError, match="Received: weights='imagenet'"):
        MobileNetV2CA(namespace=other)
    with pytest.raises(ValueError, match=r"`namespace` must be a .*"
                       r"Namespace or None. Received: namespace='tf_keras'"):
        MobileNeXtCA(weights=None, namespace="tf_keras")
    # A kind the namespace has no layer for is named.
    with pytest.raises(ValueError, match="no 'ca' attention layer"):
        MobileNetV2CA((32, 32, 3), weights=None, namespace=other)


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setattr(bridge, "_EXTRA_MODULES",
                        ("tensorflow_model_optimization",
                         "kca_no_such_module"))
    assert not bridge.tfmot_available()
    model = MobileNetV2CA((32, 32, 3), alpha=0.35, weights=None, classes=10)
    with pytest.raises(ImportError, match=r"kca_no_such_module.*"
                       r"pip install \"keras-coordatt\[tfmot\]\""):
        q.tfmot_quantize(model, (_images(2), np.zeros(2, "int32")))
    with pytest.raises(ImportError, match=r"keras-coordatt\[tfmot\]"):
        q.tf_keras_float_outputs(model, _images(2))


def test_worker_without_tfmot_exits_with_the_install_command(tmp_path):
    # A tfmot that fails to import, first on the path.
    fake = tmp_path / "fake" / "tensorflow_model_optimization"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ImportError('simulated: no tfmot here')\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(fake.parent), ROOT]))
    result = subprocess.run(
        [sys.executable, "-m", "keras_coordatt.quantization.tfmot_recipe",
         "--model", str(tmp_path), "--data", str(tmp_path / "x.npz")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert HINT in result.stderr


def test_import_never_loads_tf_keras_nor_changes_the_environment(tmp_path):
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import keras_coordatt, keras_coordatt.quantization\n"
        "from keras_coordatt.quantization import tfmot_bridge\n"
        "from keras_coordatt import MobileNetV2CA\n"
        "m = MobileNetV2CA((32, 32, 3), alpha=0.35, weights=None, "
        "classes=10)\n"
        "keras_coordatt.quantization.export_for_tf_keras(m, sys.argv[1])\n"
        "assert keras_coordatt.quantization.tfmot_available() in "
        "(True, False)\n"
        "assert dict(os.environ) == before, 'environment changed'\n"
        "for name in ('tf_keras', 'tensorflow_model_optimization', "
        "'keras_coordatt.quantization.tfmot_recipe'):\n"
        "    assert name not in sys.modules, name\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_USE_LEGACY_KERAS", None)
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                            env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# ----------------------------------------------- with the tfmot extra


@pytest.mark.parametrize("family", ["mobilenetv2_ca", "mobilenext_ca"])
def test_tf_keras_rebuild_matches_keras3_in_float(family, tfmot_extra):
    cls = MobileNetV2CA if family == "mobilenetv2_ca" else MobileNeXtCA
    model = cls((32, 32, 3), alpha=0.35, weights=None, classes=10,
                classifier_activation=None)
    _randomize_bn(model)
    x = _images(8)
    rebuilt = q.tf_keras_float_outputs(model, x, timeout=600)
    reference = np.asarray(model.predict(x, verbose=0))
    assert rebuilt.shape == reference.shape
    # Logits of random weights: a spread of several units.
    assert np.ptp(reference) > 0.1
    # Measured 0.9 to 1.8e-7: the same float32 kernels in the same order.
    np.testing.assert_allclose(rebuilt, reference, atol=1e-6, rtol=0)


def _run_worker_on(folder):
    np.savez(folder / "data.npz", parity_x=_images(1))
    return subprocess.run(
        [sys.executable, "-m", "keras_coordatt.quantization.tfmot_recipe",
         "--model", str(folder), "--data", str(folder / "data.npz"),
         "--float-only"],
        env=bridge._worker_env(), cwd=ROOT, capture_output=True, text=True,
        timeout=600,
    )


def test_tf_keras_side_refuses_files_that_do_not_fit(tmp_path, tfmot_extra):
    model = MobileNetV2CA((32, 32, 3), alpha=0.35, weights=None, classes=10)
    q.export_for_tf_keras(model, str(tmp_path))
    path = tmp_path / bridge.WEIGHTS_FILE
    with np.load(path, allow_pickle=False) as data:
        weights = {key: data[key] for key in data.files}
    del weights["block_2_ca_conv_w/bias"]
    key = "block_3_project/kernel"
    shape = weights[key].shape
    weights[key] = weights[key][..., :-1]
    weights["not_a_layer/kernel"] = np.zeros(3, "float32")
    np.savez(path, **weights)
    result = _run_worker_on(tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    # Every mismatch, in one error.
    assert "(3 problems)" in result.stderr, result.stderr[-2000:]
    for problem in ("no array for block_2_ca_conv_w/bias",
                    "no weight for not_a_layer/kernel",
                    f"{key} has shape {shape[:-1] + (shape[-1] - 1,)}, the "
                    f"tf_keras weight {shape}"):
        assert problem in result.stderr, (problem, result.stderr[-2000:])
    # The constructor call is data: a weights path is not an argument.
    with open(tmp_path / bridge.APPLICATION_FILE, encoding="utf-8") as f:
        spec = json.load(f)
    spec["arguments"]["weights"] = "imagenet"
    with open(tmp_path / bridge.APPLICATION_FILE, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    result = _run_worker_on(tmp_path)
    assert result.returncode == 1
    assert "unknown constructor arguments. Received: ['weights']" in \
        result.stderr, result.stderr[-2000:]
    # A few bytes may not ask for a network of tens of GB.
    del spec["arguments"]["weights"]
    spec["arguments"]["alpha"] = 300
    with open(tmp_path / bridge.APPLICATION_FILE, "w", encoding="utf-8") as f:
        json.dump(spec, f)
    result = _run_worker_on(tmp_path)
    assert result.returncode == 1
    assert "alpha=300; accepted: up to 4.0" in result.stderr, \
        result.stderr[-2000:]


@pytest.fixture(scope="module")
def digits_tfmot(tfmot_extra, tmp_path_factory, digits_demo):
    """The README's float model (MobileNetV2CA, alpha 0.35, 32x32, trained
    by the digits demo), then the tfmot recipe on it with the QAT settings
    of test_quantization's native run: one epoch of the shifted copies,
    Adam 1e-4, batch 32."""
    model, _ = digits_demo
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits(32)
    x_aug, y_aug = shift_augment(x_train, y_train, copies=2, max_shift=4)
    float_accuracy = float(np.mean(
        model.predict(x_test, verbose=0).argmax(-1) == y_test))
    out = tmp_path_factory.mktemp("tfmot")
    report = q.tfmot_quantize(
        model, (x_aug, y_aug), (x_test, y_test), epochs=1, batch_size=32,
        learning_rate=1e-4, output=str(out / "tfmot_int8.tflite"),
        timeout=1800,
    )
    table = {k: report[k] for k in (
        "float_accuracy", "qat_keras_accuracy", "int8_accuracy",
        "agreement", "tflite_size_bytes", "float_parity_max_abs_diff",
        "num_test", "timings")}
    table["keras3_float_accuracy"] = float_accuracy
    table["float_bytes"] = 4 * model.count_params()
    print("\nTFMOT DIGITS TABLE " + json.dumps(table))
    return {"model": model, "report": report, "table": table,
            "path": str(out / "tfmot_int8.tflite"), "test": (x_test, y_test)}


@pytest.mark.slow
def test_tfmot_qat_digits_int8_accuracy(digits_tfmot):
    table = digits_tfmot["table"]
    n = table["num_test"]
    x_test, y_test = digits_tfmot["test"]
    assert n == len(y_test)
    assert table["keras3_float_accuracy"] >= 0.9, table
    # The tf_keras rebuild is the Keras 3 network (softmax outputs).
    assert table["float_parity_max_abs_diff"] <= 1e-5, table
    assert abs(table["float_accuracy"]
               - table["keras3_float_accuracy"]) <= 1 / n + 1e-9
    # tfmot's int8 model: within 2 points of float, and agreeing with its
    # own Keras QAT model on >= 96 % of top-1. Less than the native
    # recipe's 98 %: tfmot's default scheme fake-quantizes depthwise
    # kernels per tensor (its quantizer takes the depth multiplier axis,
    # of size 1, as the channel axis) with BatchNorm kept apart, and the
    # converter folds BatchNorm in after training and re-quantizes those
    # kernels per channel, so TFLite does not run the weights QAT trained.
    assert table["int8_accuracy"] >= table["float_accuracy"] - 0.02, table
    assert table["agreement"] >= 0.96, table
    assert table["tflite_size_bytes"] < 0.5 * table["float_bytes"]
    # The written file is the model evaluated.
    again = q.evaluate_tflite(digits_tfmot["path"], (x_test, y_test))
    assert again["accuracy"] == table["int8_accuracy"]


@pytest.mark.slow
def test_tfmot_int8_model_is_all_int8(digits_tfmot):
    report = q.check_int8(digits_tfmot["report"]["tflite"])
    assert set(report["input_types"]) == {"float32"}
    assert set(report["output_types"]) == {"float32"}
    for name, ins, outs in report["ops"]:
        assert not name.startswith("Flex"), name
        if name in ("QUANTIZE", "DEQUANTIZE"):
            assert set(ins + outs) <= {"float32", "int8"}, (name, ins, outs)
        else:
            assert set(ins + outs) <= {"int8", "int32"}, (name, ins, outs)
    # Float only at the model's input and output.
    assert report["tensor_types"].get("float32", 0) == 2
    ops = report["op_counts"]
    # The 16 coordinate attention blocks of MobileNetV2CA, all int8.
    assert ops["CONCATENATION"] == 16
    assert ops["HARD_SWISH"] == 16
    assert ops["LOGISTIC"] == 32
    assert ops["MUL"] == 32
    assert ops.get("MEAN", 0) >= 17
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED",
               "SOFTMAX"):
        assert ops.get(op, 0) >= 1, (op, ops)

"""keras.applications networks by name (`applications.keras_families`),
and `keras-coordatt train --model keras:NAME | FILE.keras`."""

import json
import os
import re

import keras
import numpy as np
import pytest

from keras_coordatt.applications.keras_families import (
    build_keras_application, get_keras_family, keras_family_names)
from keras_coordatt.insertion import IdentityInitAttention
from keras_coordatt.training import cli as train_cli
from keras_coordatt.training.fit import TrainingError
from keras_coordatt.training.fit import default_output_dir
from keras_coordatt.training.fit import train
from keras_coordatt.training.models import build_model
from keras_coordatt.training.models import preprocess_for
from keras_coordatt.training.recipes import get_config

SIZE = 64
# Blocks at 64x64 (counted once, by hand from the networks' summaries):
# one per inverted residual's depthwise activation (MobileNetV2 17,
# MobileNetV3Small 11, MobileNetV3Large 15, EfficientNetB0 16), one per
# residual block's output (ResNet50 3 + 4 + 6 + 3).
BLOCKS = {"MobileNetV2": 17, "MobileNetV3Small": 11, "MobileNetV3Large": 15,
          "EfficientNetB0": 16, "ResNet50": 16}
# The small settings of a quick run (test_training.py's).
QUICK = ["--set", "tensorboard=false", "--set", "bn_recalibration_steps=0",
         "--set", "warmup_epochs=0", "--batch-size", "16", "--verbose", "0"]


def _blocks(model):
    return [l for l in model.layers if isinstance(l, IdentityInitAttention)]


def _images(n, size=SIZE):
    return np.random.default_rng(0).uniform(
        0, 255, (n, size, size, 3)).astype("float32")


@pytest.mark.parametrize("name", [
    "MobileNetV3Small",
    *[pytest.param(n, marks=pytest.mark.slow)
      for n in sorted(BLOCKS) if n != "MobileNetV3Small"]])
def test_family_with_ca_starts_as_the_plain_network(name):
    keras.utils.set_random_seed(0)
    model = build_keras_application(name, input_shape=(SIZE, SIZE, 3),
                                    classes=10, reduction=8)
    keras.utils.set_random_seed(0)
    plain = build_keras_application(name, attention="none",
                                    input_shape=(SIZE, SIZE, 3), classes=10)
    assert len(_blocks(model)) == BLOCKS[name]
    assert {b.layer.reduction for b in _blocks(model)} == {8}
    assert not _blocks(plain)
    x = get_keras_family(name).preprocess(_images(2))
    np.testing.assert_allclose(model(x, training=False),
                               plain(x, training=False), atol=1e-6)


def test_registry_names_preprocessing_and_errors():
    assert set(BLOCKS) <= set(keras_family_names())
    x = _images(2, 4)
    kept = x.copy()
    np.testing.assert_allclose(
        get_keras_family("mobilenetv2").preprocess(x), x / 127.5 - 1,
        atol=1e-6)
    # ResNet50: caffe mode, BGR minus the ImageNet mean.
    np.testing.assert_allclose(
        get_keras_family("ResNet50").preprocess(x),
        x[..., ::-1] - np.array([103.939, 116.779, 123.68]), atol=1e-4)
    assert get_keras_family("EfficientNetB0").preprocess(x) is x
    np.testing.assert_array_equal(x, kept)  # inputs never modified
    assert preprocess_for("keras:MobileNetV3Small")(x) is x
    with pytest.raises(ValueError, match=(
            r"Unknown keras.applications network. Received: name='VGG16'; "
            r"accepted: MobileNetV2, MobileNetV3Small, MobileNetV3Large, "
            r"EfficientNetB0, ResNet50")):
        build_keras_application("VGG16", input_shape=(32, 32, 3), classes=2)
    with pytest.raises(ValueError, match=(
            r"ResNet50 has no width multiplier. Received: alpha=0.5")):
        build_keras_application("ResNet50", input_shape=(32, 32, 3),
                                classes=2, alpha=0.5)
    with pytest.raises(ValueError, match=(
            r"Received: model='keras:VGG16'; accepted: mobilenetv2_ca, "
            r"mobilenext_ca, keras:MobileNetV2, .* or a .keras file")):
        get_config("digits", {"model": "keras:VGG16"})
    with pytest.raises(ValueError, match=(
            r"task 'segmentation'. Received: model='keras:VGG16'; "
            r"accepted: mobilenetv2_ca, mobilenext_ca, keras:MobileNetV2, "
            r".*\(pyramid by strides\) or a \.keras file of an encoder with "
            r"pyramid_outputs P2/P5 \(a keras-hub Backbone\)$")):
        get_config("digits_seg", {"model": "keras:VGG16"})
    # keras.applications networks are dense encoders too (pyramid by
    # strides, tests/test_hub_encoders.py).
    assert get_config("digits_seg", {"model": "keras:MobileNetV2"}).model \
        == "keras:MobileNetV2"
    config = get_config("digits", {"model": "keras:MobileNetV3Small"})
    assert default_output_dir(config) == os.path.join(
        "runs", "keras-MobileNetV3Small-digits")


def test_mixed_precision_and_transfer_builds():
    model, backbone = build_model("keras:MobileNetV3Small", 3, image_size=32,
                                  alpha=0.35, attention="se", transfer=True)
    assert backbone is not None and model.output.shape == (None, 3)
    assert {b.layer.__class__.__name__ for b in _blocks(backbone)} == {
        "SqueezeExcitation"}
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model, _ = build_model("keras:EfficientNetB0", 3, image_size=32,
                               attention=False, policy="mixed_float16")
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.layers[-1].name == "softmax_float32"
    assert model.output.dtype == "float32" and not _blocks(model)


def _classifier_file(path, size=32, classes=10):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax",
                                 name="head")(x)
    keras.Model(inputs, outputs).save(path)
    return str(path)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """64 training and 32 validation digits (32x32 RGB, [0, 255])."""
    from keras_coordatt.quantization.data import load_digits

    (x, y), (xt, yt) = load_digits(32, preprocess=False)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=x[:64], y_train=y[:64], x_val=xt[:32],
             y_val=yt[:32])
    return f"npz:{path}"


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "0.5"], r"--alpha does not apply to a .keras file.*"
                         r"Received: alpha=0.5 with model="),
    (["--attention", "se"], r"--attention does not apply.*attention='se'"),
    (["--attention", "none"], r"--attention does not apply.*attention=False"),
    (["--weights", "imagenet"], r"--weights does not apply"),
    (["--set", "reduction=4"], r"--set reduction does not apply"),
    (["--image-size", "64"], r"--image-size disagrees with the model file "
                             r".*f.keras, which takes 32x32 images. "
                             r"Received: image_size=64; pass 32"),
])
def test_cli_refuses_architecture_flags_with_a_file(tmp_path, capsys, flags,
                                                    message):
    path = _classifier_file(tmp_path / "f.keras")
    assert train_cli.main(["--model", path, "--print-config",
                           *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_cli_alpha_only_for_families_with_one(capsys):
    assert train_cli.main(["--model", "keras:ResNet50", "--alpha", "0.5",
                           "--print-config"]) == 2
    assert ("ResNet50 has no width multiplier: leave out --alpha. Received: "
            "alpha=0.5") in capsys.readouterr().err
    assert train_cli.main(["--model", "keras:MobileNetV3Small", "--alpha",
                           "0.75", "--attention", "ca", "--weights",
                           "imagenet", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["model"], printed["alpha"], printed["attention"],
            printed["weights"]) == ("keras:MobileNetV3Small", 0.75, "ca",
                                    "imagenet")
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--model", "keras:VGG16"])
    assert info.value.code == 2
    assert "keras:MobileNetV3Small" in capsys.readouterr().err


def test_train_fine_tunes_a_file_and_resumes(tmp_path, npz, capsys):
    """`--model FILE.keras`: its image size, its weights as the start; a
    class-count mismatch is named; an interrupted run resumes from the
    file and its backup."""
    path = _classifier_file(tmp_path / "f.keras")
    out = str(tmp_path / "run")
    common = ["--model", path, "--dataset", npz, "--output-dir", out,
              *QUICK]
    assert train_cli.main(common + ["--epochs", "1"]) == 0
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert (config["model"], config["image_size"]) == (path, 32)
    trained = keras.saving.load_model(os.path.join(out, "model.keras"))
    start = keras.saving.load_model(path)
    assert not np.allclose(trained.get_layer("head").get_weights()[0],
                           start.get_layer("head").get_weights()[0])
    # Its preprocessing is that of the run that wrote it (the default
    # application's, this file being from outside a run).
    x = _images(1, 4)
    np.testing.assert_allclose(
        preprocess_for(os.path.join(out, "model.keras"))(x),
        preprocess_for("mobilenetv2_ca")(x))

    three = _classifier_file(tmp_path / "three.keras", classes=3)
    assert train_cli.main(["--model", three, "--dataset", npz,
                           "--output-dir", str(tmp_path / "r3"),
                           *QUICK]) == 2
    assert ("three.keras classifies 3 classes, the dataset has 10"
            in capsys.readouterr().err)

    # Interrupted after its first of two epochs, then resumed.
    config = train_cli.resolve_config(train_cli.build_parser().parse_args(
        common + ["--epochs", "2", "--output-dir", str(tmp_path / "r2")]))

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("stopped")

    with pytest.raises(TrainingError):
        train(config, callbacks=[Stop()], verbose=0)
    result = train(config, resume=True, verbose=0)
    assert result.resumed_from["epoch"] == 1
    assert result.optimizer_iterations == 2 * 4  # 64 images / 16


@pytest.mark.slow
def test_cli_trains_a_keras_application_then_quantizes_it(tmp_path, npz,
                                                           capsys):
    from keras_coordatt import quantization as q
    from keras_coordatt.cli import main

    out = str(tmp_path / "run")
    assert main(["train", "--model", "keras:MobileNetV3Small",
                 "--attention", "ca", "--dataset", npz, "--epochs", "1",
                 "--image-size", "32", "--output-dir", out, *QUICK]) == 0
    model = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert len(_blocks(model)) == BLOCKS["MobileNetV3Small"]
    # --resume reads the run's "keras:" spelling back (architecture check).
    capsys.readouterr()
    assert main(["train", "--model", "keras:MobileNetV3Small",
                 "--attention", "ca", "--dataset", npz, "--epochs", "1",
                 "--image-size", "32", "--output-dir", out, *QUICK,
                 "--resume"]) == 0
    assert "Nothing to resume" in capsys.readouterr().out
    assert main(["train", "--model", "keras:MobileNetV2", "--dataset", npz,
                 "--output-dir", out, *QUICK, "--resume"]) == 2
    assert ("`model` was 'keras:MobileNetV3Small' there"
            in capsys.readouterr().err)
    output = str(tmp_path / "int8.tflite")
    assert main(["quantize", "--model", os.path.join(out, "model.keras"),
                 "--dataset", npz, "--qat-epochs", "0", "--ptq-samples",
                 "16", "--output", output, "--output-dir",
                 str(tmp_path / "q"), "--verbose", "0"]) == 0
    assert "int8 op check: passed" in capsys.readouterr().out
    with open(output, "rb") as f:
        report = q.check_int8(f.read())
    assert report["tensor_types"].get("float32", 0) == 2  # the float I/O
    assert set(report["tensor_types"]) <= {"float32", "int8", "int32"}
    # The blocks' ops, all int8: CA's pooling, gates and blend.
    assert {"MEAN", "LOGISTIC", "SUB"} <= set(report["op_counts"])


def test_train_refuses_alpha_for_families_without_one(tmp_path):
    """The Python API as the command line: an asked-for alpha that the
    network cannot take is refused before the run folder exists (the
    recipe's own alpha, for MobileNetV2CA, is left aside)."""
    from keras_coordatt.training import train

    with pytest.raises(ValueError, match=(
            r"ResNet50 has no width multiplier: leave out `alpha`\. "
            r"Received: alpha=0\.5 with model='keras:ResNet50'")):
        train("digits", overrides={"model": "keras:ResNet50", "alpha": 0.5,
                                   "output_dir": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()

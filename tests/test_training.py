"""Tests of keras_coordatt.training (issue 4).

Fast, in-process tests first (configs, schedule, weight decay, pipelines,
backups); a transfer run's two phases in one history; then the slow ones,
each in real subprocesses: MirroredStrategy over two logical CPUs, the
digits command line to >= 0.90 validation accuracy, and a SIGKILLed run
resumed to the same optimizer step count.
"""

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_coordatt import CoordinateAttention
from keras_coordatt import MobileNetV2CA
from keras_coordatt.applications import mobilenet_v2_ca
from keras_coordatt.training import RECIPES
from keras_coordatt.training import TrainConfig
from keras_coordatt.training import TrainingBackup
from keras_coordatt.training import build_model
from keras_coordatt.training import build_optimizer
from keras_coordatt.training import eval_dataset
from keras_coordatt.training import from_arrays
from keras_coordatt.training import get_config
from keras_coordatt.training import get_strategy
from keras_coordatt.training import load_digits
from keras_coordatt.training import load_source
from keras_coordatt.training import no_decay_variables
from keras_coordatt.training import parse_overrides
from keras_coordatt.training import plan_phases
from keras_coordatt.training import resolve_jit_compile
from keras_coordatt.training import resolve_precision
from keras_coordatt.training import scaled_learning_rate
from keras_coordatt.training import train
from keras_coordatt.training import train_dataset
from keras_coordatt.training import warmup_cosine
from keras_coordatt.training import callbacks as callbacks_lib
from keras_coordatt.training.batchnorm import recalibrate_batchnorm
from keras_coordatt.training import cli as train_cli
from keras_coordatt.training import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["KERAS_BACKEND"] = "tensorflow"
    return env


# ---------------------------------------------------------------------------
# Configs and the command line.


def test_recipes_are_plain_data_that_round_trip():
    for name in ("paper_imagenet", "transfer", "digits", "digits_seg",
                 "digits_det", "mnist_seg", "mnist_det"):
        config = get_config(name)
        data = json.loads(json.dumps(config.to_dict()))
        assert TrainConfig.from_dict(data) == config
    paper = get_config("paper_imagenet")
    assert (paper.epochs, paper.optimizer, paper.momentum) == (200, "sgd", 0.9)
    assert (paper.base_learning_rate, paper.base_batch_size) == (0.05, 256)
    # 4 replicas x 64 = the paper's batch of 256.
    assert paper.per_replica_batch_size == 64
    assert paper.label_smoothing == 0.0
    assert paper.random_crop_scale == (0.08, 1.0) and paper.horizontal_flip
    assert paper.weight_decay == pytest.approx(4e-5 / (1 - 0.9))
    transfer = get_config("transfer")
    assert transfer.transfer and transfer.frozen_epochs == 3
    assert transfer.finetune_learning_rate_factor == 0.1
    assert set(RECIPES) == {"paper_imagenet", "transfer", "digits",
                            "digits_seg", "digits_det", "mnist_seg",
                            "mnist_det"}


def test_overrides_from_pairs_and_json_files(tmp_path):
    overrides = parse_overrides([
        "epochs=3", "random_crop_scale=[0.5, 1]", "weights=null",
        "jit_compile=false", "model=mobilenext_ca", "alpha=0.5",
        "output-dir=/tmp/x",
    ])
    config = get_config("digits", overrides)
    assert config.epochs == 3 and config.random_crop_scale == (0.5, 1.0)
    assert config.weights is None and config.jit_compile is False
    assert config.model == "mobilenext_ca" and config.alpha == 0.5
    assert config.output_dir == "/tmp/x"
    assert config.image_size == 32  # The rest is the digits recipe.
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"recipe": "paper_imagenet", "epochs": 90,
                                "base_learning_rate": 0.1}))
    config = get_config(str(path), {"alpha": 0.75})
    assert (config.epochs, config.base_learning_rate, config.alpha) == (
        90, 0.1, 0.75)
    assert config.dataset == "tfds:imagenet2012"


@pytest.mark.parametrize(
    "call, fragments",
    [
        (lambda: get_config("digits", {"epoch": 3}),
         ["epoch", "Accepted keys", "epochs"]),
        (lambda: parse_overrides(["nope=1"]), ["nope", "Accepted keys"]),
        (lambda: parse_overrides(["epochs"]), ["key=value", "'epochs'"]),
        (lambda: get_config("digits", {"model": "resnet50"}),
         ["model='resnet50'", "mobilenetv2_ca", "mobilenext_ca"]),
        (lambda: get_config("digits", {"epochs": "ten"}),
         ["epochs", "'ten'", "integer"]),
        (lambda: get_config("digits", {"strategy": "gpus"}),
         ["strategy='gpus'", "multi_worker"]),
        (lambda: get_config("digits", {"random_crop_scale": [0.5, 2]}),
         ["random_crop_scale", "(0.5, 2.0)"]),
        (lambda: get_config("digits", {"frozen_epochs": 2}),
         ["frozen_epochs", "transfer"]),
        (lambda: get_config("imagenet"), ["config='imagenet'", "digits"]),
        (lambda: get_config("digits", {"image_size": 16}),
         ["image_size=16", "32"]),
    ],
)
def test_bad_config_values_name_the_argument(call, fragments):
    with pytest.raises(ValueError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value)


def test_cli_prints_resolved_config_and_rejects_bad_input(capsys):
    assert train_cli.main(["--print-config", "--epochs", "3", "--alpha",
                           "0.5", "--set", "seed=7", "--batch-size", "32",
                           "--lr", "0.1", "--jit-compile", "true",
                           "--strategy", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["epochs"], printed["alpha"], printed["seed"]) == (
        3, 0.5, 7)
    assert (printed["per_replica_batch_size"], printed["base_learning_rate"],
            printed["jit_compile"], printed["strategy"]) == (32, 0.1, True,
                                                             "cpu")
    assert printed["image_size"] == 32  # digits recipe by default
    assert train_cli.main(["--print-config", "--dataset",
                           "tfds:imagenet2012"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 200
    assert train_cli.main(["--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        train_cli.main(["--model", "resnet50"])
    assert info.value.code == 2
    capsys.readouterr()


def test_cli_unknown_dataset_exits_2_with_the_accepted_forms(
        tmp_path, capsys):
    status = train_cli.main(["--dataset", "imagenet",
                             "--output-dir", str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert "dataset='imagenet'" in err and "tfds:NAME" in err


def test_cli_exits_1_when_the_run_fails_and_2_on_bad_input(
        monkeypatch, tmp_path, capsys):
    from keras_coordatt.training import fit as fit_lib

    def failing(*args, **kwargs):
        raise fit_lib.TrainingError("Training (phase full) failed: boom")

    monkeypatch.setattr(train_cli, "train", failing)
    assert train_cli.main(["--output-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        "keras-coordatt train: Training (phase full) failed: boom")
    assert train_cli.main(["--epochs", "0", "--output-dir",
                           str(tmp_path)]) == 2


def test_importing_the_package_leaves_the_optional_extras_alone():
    # tensorflow-datasets loads only when a tfds:/folder: dataset is read.
    # (scikit-learn cannot be checked this way: keras itself imports it.)
    code = ("import sys, keras_coordatt, keras_coordatt.training, "
            "keras_coordatt.training.cli; "
            "print(sorted(m for m in sys.modules "
            "if m.startswith('tensorflow_datasets')))")
    completed = subprocess.run([sys.executable, "-c", code], env=_env(),
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# Strategy and precision.


def test_strategy_names():
    strategy = get_strategy("cpu")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    auto = get_strategy("auto")  # No TPU, no GPU here.
    assert auto.num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="strategy='mirrored'.*multi_worker"):
        get_strategy("mirrored")
    with pytest.raises(ValueError, match="strategy='gpu'"):
        get_strategy("gpu")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        get_strategy("multi_worker")


def test_precision_and_xla_defaults_per_device():
    assert [resolve_precision("auto", k) for k in ("tpu", "gpu", "cpu")] == [
        "mixed_bfloat16", "mixed_float16", "float32"]
    assert resolve_precision("mixed_float16", "cpu") == "mixed_float16"
    assert [resolve_jit_compile("auto", k) for k in ("tpu", "gpu", "cpu")] \
        == [False, True, False]
    assert resolve_jit_compile(True, "cpu") is True
    with pytest.raises(ValueError, match="mixed_precision='float16'"):
        resolve_precision("float16", "gpu")
    with pytest.raises(ValueError, match="jit_compile='yes'"):
        resolve_jit_compile("yes", "gpu")


def test_what_a_tpu_run_changes_without_a_tpu(monkeypatch, tmp_path):
    # No TPU here: the run's set-up is taken through `_open_run` and
    # `_load_inputs` as `device_kind` says "tpu", and checked against what a
    # TPU needs: bfloat16 (no loss scaling), no extra XLA flag (the TPU
    # compiles every step), and static shapes: every training and
    # evaluation batch full (a last partial batch would recompile the step).
    from keras_coordatt.training import fit as fit_lib

    for variable in ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_IP_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ValueError, match="strategy='tpu' found no TPU"):
        get_strategy("tpu")
    monkeypatch.setattr(fit_lib, "device_kind", lambda strategy: "tpu")
    config = get_config("digits", {"output_dir": str(tmp_path),
                                   "per_replica_batch_size": 32})
    with contextlib.ExitStack() as lock:
        run = fit_lib._open_run(config, get_strategy("cpu"), False,
                                time.time(), lock, False)
    assert (run.kind, run.policy, run.jit_compile) == (
        "tpu", "mixed_bfloat16", False)
    x = np.random.default_rng(0).uniform(0, 255, (100, 32, 32, 3))
    fit_lib._load_inputs(run, from_arrays(x[:70], np.arange(70) % 10,
                                          x[70:], np.arange(30) % 10))
    for dataset in (run.train_data, run.val_data):
        assert [tuple(spec.shape) for spec in dataset.element_spec] == [
            (32, 32, 32, 3), (32,)]
    assert sum(1 for _ in run.val_data) == 30 // 32  # The remainder dropped.


# ---------------------------------------------------------------------------
# The recipe as numbers: schedule, batch scaling, weight decay.


def _cosine(step, peak, total, warmup, final):
    """The closed form the schedule must follow."""
    if step < warmup:
        return peak * step / warmup
    t = min(step, total) - warmup
    return peak * (final + (1 - final) * 0.5 * (
        1 + math.cos(math.pi * t / (total - warmup))))


@pytest.mark.parametrize("final", [0.0, 0.1])
def test_warmup_cosine_schedule_values(final):
    peak, total, warmup = 0.4, 1000, 50
    schedule = warmup_cosine(peak, total, warmup, final)
    lr = lambda s: float(schedule(s))  # noqa: E731
    assert lr(0) == 0.0  # Warm-up starts at 0 ...
    assert lr(25) == pytest.approx(0.2, rel=1e-6)  # ... rises linearly ...
    assert lr(warmup) == pytest.approx(peak, rel=1e-6)  # ... to the peak.
    middle = warmup + (total - warmup) // 2  # Half-way down the cosine.
    assert lr(middle) == pytest.approx(peak * (final + (1 - final) / 2),
                                       rel=1e-5)
    assert lr(total) == pytest.approx(final * peak, abs=1e-7)  # End.
    assert lr(total + 500) == pytest.approx(final * peak, abs=1e-7)
    for step in (1, 49, 51, 300, 700, 999):
        assert lr(step) == pytest.approx(
            _cosine(step, peak, total, warmup, final), rel=1e-5, abs=1e-8)


def test_schedule_without_warmup_starts_at_the_peak():
    schedule = warmup_cosine(0.1, 100)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(50)) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="warmup_steps=100"):
        warmup_cosine(0.1, 100, warmup_steps=100)


def test_learning_rate_scales_linearly_with_the_global_batch():
    assert scaled_learning_rate(0.05, 256) == pytest.approx(0.05)
    assert scaled_learning_rate(0.05, 64) == pytest.approx(0.0125)
    assert scaled_learning_rate(0.05, 1024) == pytest.approx(0.2)
    assert scaled_learning_rate(0.1, 96, base_batch_size=32) == \
        pytest.approx(0.3)
    with pytest.raises(ValueError, match="global_batch_size=0"):
        scaled_learning_rate(0.05, 0)
    paper = get_config("paper_imagenet")
    # 4 GPUs x 64 (the paper), 1 GPU x 64, a TPU v3-8 x 64.
    for replicas, expected in ((4, 0.05), (1, 0.0125), (8, 0.1)):
        batch = paper.per_replica_batch_size * replicas
        steps = 1_281_167 // batch
        (phase,) = plan_phases(paper, steps, batch)
        assert phase.learning_rate == pytest.approx(expected)
        assert phase.total_steps == 200 * steps
        assert phase.warmup_steps == 5 * steps


def test_transfer_recipe_phases():
    config = get_config("transfer")
    frozen, full = plan_phases(config, steps_per_epoch=100,
                               global_batch_size=32)
    assert (frozen.name, frozen.frozen, frozen.epochs) == ("frozen", True, 3)
    assert frozen.learning_rate == pytest.approx(0.1 * 32 / 256)
    assert frozen.warmup_steps == 0 and frozen.total_steps == 300
    assert (full.name, full.frozen, full.epochs) == ("full", False, 10)
    assert full.learning_rate == pytest.approx(0.1 * 32 / 256 * 0.1)
    assert full.warmup_steps == 100 and full.total_steps == 1000


def test_warmup_is_a_fraction_of_the_run_capped_in_epochs():
    digits = get_config("digits")
    for epochs, warmup in ((12, 44), (3, 11), (1, 4)):
        (phase,) = plan_phases(digits.replace(epochs=epochs), 22, 64)
        assert phase.warmup_steps == warmup, epochs
    (phase,) = plan_phases(get_config("paper_imagenet"), 100, 256)
    assert phase.warmup_steps == 500  # 0.025 * 200 epochs = the cap, 5
    long = get_config("paper_imagenet", {"epochs": 400})
    assert plan_phases(long, 100, 256)[0].warmup_steps == 500
    with pytest.raises(ValueError, match="Received: warmup_fraction=1.5"):
        digits.replace(warmup_fraction=1.5)


def test_precise_batchnorm_is_the_mean_of_batch_statistics():
    rng = np.random.default_rng(0)
    batches = [rng.normal(2.0, 3.0, (8, 4, 4, 3)).astype("float32")
               for _ in range(3)]
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(inputs)
    frozen = keras.layers.BatchNormalization(name="frozen")
    frozen.trainable = False
    model = keras.Model(inputs, frozen(x))
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.stack(batches), np.zeros((3, 8)))).repeat()
    assert recalibrate_batchnorm(model, dataset, 3) == 3
    bn = model.get_layer("bn")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean),
        np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0),
        rtol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_variance),
        np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0),
        rtol=1e-4)
    assert bn.momentum == 0.9
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(frozen.moving_mean), np.zeros(3))


def _all_layers(model):
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, CoordinateAttention):
            layers += [layer.conv, layer.bn, layer.conv_h, layer.conv_w]
        if isinstance(layer, keras.Model):
            layers += _all_layers(layer)
    return layers


def test_weight_decay_skips_batchnorm_and_biases_numerically():
    model = MobileNetV2CA(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                          classes=10)
    layers = _all_layers(model)
    expected = {id(w) for layer in layers
                if isinstance(layer, keras.layers.BatchNormalization)
                for w in (layer.gamma, layer.beta)}
    expected |= {id(layer.bias) for layer in layers
                 if getattr(layer, "bias", None) is not None}
    excluded = no_decay_variables(model)
    assert {id(v) for v in excluded} == expected
    # 68 BatchNorms (52 in the backbone, 16 inside the attention blocks);
    # biases in the 16 x 3 attention convs and the classifier.
    assert len(excluded) == 2 * 68 + 16 * 3 + 1

    lr, wd = 0.1, 0.01
    optimizer = build_optimizer(
        model, optimizer="sgd", learning_rate=lr, total_steps=100,
        warmup_steps=0, momentum=0.9, weight_decay=wd,
    )
    variables = model.trainable_variables
    before = [v.numpy().copy() for v in variables]
    # Zero gradients: anything that moves moves by weight decay alone.
    optimizer.apply_gradients(
        [(tf.zeros_like(v.value), v) for v in variables]
    )
    kernels = 0
    for variable, old in zip(variables, before):
        new = variable.numpy()
        if id(variable) in expected:
            np.testing.assert_array_equal(new, old, err_msg=variable.path)
        else:
            np.testing.assert_allclose(new, old * (1 - lr * wd), rtol=1e-6,
                                       atol=0, err_msg=variable.path)
            assert np.abs(new - old).max() > 0
            kernels += 1
    assert kernels == len(variables) - len(expected)


# ---------------------------------------------------------------------------
# Models.


def test_transfer_model_freezes_the_backbone_and_mixed_softmax_is_float32():
    model, backbone = build_model(
        "mobilenetv2_ca", 3, image_size=32, alpha=0.35, transfer=True,
        head_dropout=0.3,
    )
    assert model.get_layer("predictions").units == 3
    assert model.get_layer("head_dropout").rate == 0.3
    backbone.trainable = False
    head = model.get_layer("predictions")
    assert {id(v) for v in model.trainable_variables} == {
        id(head.kernel), id(head.bias)}
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed, _ = build_model("mobilenetv2_ca", 10, image_size=32,
                               alpha=0.35, policy="mixed_bfloat16")
    finally:
        keras.config.set_dtype_policy(previous)
    assert mixed.get_layer("Conv1").compute_dtype == "bfloat16"
    assert mixed.layers[-1].name == "softmax_float32"
    assert mixed.outputs[0].dtype == "float32"
    with pytest.raises(ValueError, match="model='vgg'"):
        build_model("vgg", 10)


# ---------------------------------------------------------------------------
# Input pipelines.


def test_digits_source_split_and_preprocessing():
    source = load_digits(image_size=32, validation_fraction=0.2, seed=0)
    assert (source.train_examples, source.val_examples) == (1438, 359)
    assert source.num_classes == 10
    labels = np.concatenate([y.numpy() for _, y in source.make_val().batch(
        512)])
    counts = np.bincount(labels, minlength=10)
    # Stratified: every class gives round(20 %) of its ~180 images.
    assert counts.min() >= 35 and counts.max() <= 37
    images, labels = next(iter(eval_dataset(
        source, image_size=32, global_batch_size=50,
        preprocess=mobilenet_v2_ca.preprocess_input, crop_fraction=1.0,
    )))
    assert images.shape == (50, 32, 32, 3) and images.dtype == tf.float32
    assert labels.dtype == tf.int32
    # Grey digits on a black background: channel c of a black pixel is
    # (0 - mean_c) / std_c, the smallest value of each channel.
    expected_min = (0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(
        images.numpy().min(axis=(0, 1, 2)), expected_min, rtol=1e-5)
    # Grey -> RGB: the channels agree before normalisation.
    raw = images.numpy() * IMAGENET_STD + IMAGENET_MEAN
    np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-5)


def test_center_crop_and_random_resized_crop():
    image = tf.reshape(tf.range(4 * 6 * 3, dtype=tf.float32), (4, 6, 3))
    # Central half of the shorter side (4): rows 1-2, columns 2-3.
    crop = data_lib.center_crop(image, size=2, crop_fraction=0.5)
    np.testing.assert_array_equal(crop.numpy(), image.numpy()[1:3, 2:4])
    big = tf.random.stateless_uniform((40, 60, 3), (1, 2), maxval=255)
    one = data_lib.random_resized_crop(big, tf.constant([3, 4]), 16,
                                       (0.25, 1.0))
    again = data_lib.random_resized_crop(big, tf.constant([3, 4]), 16,
                                         (0.25, 1.0))
    other = data_lib.random_resized_crop(big, tf.constant([3, 5]), 16,
                                         (0.25, 1.0))
    assert one.shape == (16, 16, 3)
    np.testing.assert_array_equal(one.numpy(), again.numpy())
    assert np.abs(one.numpy() - other.numpy()).max() > 1.0
    # Scale (1, 1) and ratio (1.5, 1.5) on a 40x60 image: the whole image.
    whole = data_lib.random_resized_crop(big, tf.constant([3, 4]), 40,
                                         (1.0, 1.0), (1.5, 1.5))
    np.testing.assert_allclose(
        whole.numpy(), tf.image.resize(big, (40, 40)).numpy(), rtol=1e-6)


def _arrays(n=40, size=36, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % classes
    return x, y


def test_train_pipeline_batches_labels_and_determinism():
    x, y = _arrays()
    source = from_arrays(x, y, validation_fraction=0.3, seed=1)
    assert (source.train_examples, source.val_examples) == (28, 12)

    def batches(seed, num_classes=None):
        ds = train_dataset(
            source, image_size=32, global_batch_size=8,
            preprocess=mobilenet_v2_ca.preprocess_input, scale=(0.5, 1.0),
            seed=seed, deterministic=True, num_classes=num_classes,
        )
        return [(a.numpy(), b.numpy()) for a, b in ds.take(5)]

    first, again, other = batches(3), batches(3), batches(4)
    assert first[0][0].shape == (8, 32, 32, 3)
    assert first[0][1].dtype == np.int32
    for (a, b), (c, d) in zip(first, again):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    assert any(np.abs(a - c).max() > 0 for (a, _), (c, _) in zip(first,
                                                                  other))
    # The stream repeats past the 28 training examples (5 x 8 = 40).
    assert len(first) == 5
    one_hot = batches(3, num_classes=4)[0][1]
    assert one_hot.shape == (8, 4)
    np.testing.assert_array_equal(one_hot.argmax(-1), first[0][1])


def test_array_and_dataset_name_errors(tmp_path):
    x, y = _arrays()
    with pytest.raises(ValueError,
                       match=r"x_train.shape=\(40, 36, 36, 3, 1\)"):
        from_arrays(x[..., None], y)
    with pytest.raises(ValueError, match="y_train"):
        from_arrays(x, y[:-1])
    with pytest.raises(ValueError, match="x_val"):
        from_arrays(x, y, x_val=x)
    with pytest.raises(ValueError, match="dataset='cifar'.*mnist.*tfds:NAME"):
        load_source("cifar")
    with pytest.raises(ValueError, match="tfds:no_such_dataset"):
        load_source("tfds:no_such_dataset")
    with pytest.raises(ValueError, match="Not an image-classification"):
        load_source("tfds:imdb_reviews")
    with pytest.raises(ValueError, match="No such folder"):
        load_source(f"folder:{tmp_path / 'missing'}")
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x, y_train=y)
    source = load_source(f"npz:{path}", validation_fraction=0.3)
    assert (source.train_examples, source.val_examples, source.num_classes) \
        == (28, 12, 4)


def _write_images(folder, classes, per_class, size=(20, 28)):
    for c, name in enumerate(classes):
        os.makedirs(folder / name, exist_ok=True)
        for i in range(per_class):
            pixels = np.full(size + (3,), 40 * c + i, np.uint8)
            png = tf.io.encode_png(pixels).numpy()
            (folder / name / f"{i}.png").write_bytes(png)


def test_image_folder_layouts(tmp_path):
    flat = tmp_path / "flat"
    _write_images(flat, ["cat", "dog", "eel"], 4)
    source = load_source(f"folder:{flat}", image_size=32,
                         validation_fraction=0.25, eval_crop_fraction=1.0)
    assert source.num_classes == 3
    assert source.class_names == ["cat", "dog", "eel"]
    assert source.train_examples + source.val_examples == 12
    assert source.val_examples == 3
    split = tmp_path / "split"
    _write_images(split / "train", ["a", "b"], 3)
    _write_images(split / "val", ["a", "b"], 2)
    source = load_source(f"folder:{split}", image_size=32)
    assert (source.train_examples, source.val_examples) == (6, 4)
    assert source.num_classes == 2
    images, labels = next(iter(train_dataset(
        source, image_size=32, global_batch_size=4,
        preprocess=mobilenet_v2_ca.preprocess_input,
    )))
    assert images.shape == (4, 32, 32, 3)
    assert set(labels.numpy()) <= {0, 1}


def test_tfds_source_on_mock_jpeg_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        source = load_source("tfds:imagenet2012")
        assert source.num_classes == 1000
        assert source.train_examples == 12
        raw = next(iter(source.make_train(None, 0)))[0]
        assert raw.dtype == tf.string  # JPEG bytes, decoded while cropping.
        images, labels = next(iter(train_dataset(
            source, image_size=32, global_batch_size=6,
            preprocess=mobilenet_v2_ca.preprocess_input,
        )))
        val_images, _ = next(iter(eval_dataset(
            source, image_size=32, global_batch_size=6,
            preprocess=mobilenet_v2_ca.preprocess_input,
        )))
    assert images.shape == val_images.shape == (6, 32, 32, 3)
    assert labels.dtype == tf.int32


# ---------------------------------------------------------------------------
# Backups.


def _tiny_model():
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    return model


def test_backup_round_trip(tmp_path):
    x = np.arange(12, dtype="float32").reshape(4, 3)
    y = np.ones((4, 2), "float32")
    model = _tiny_model()
    model.fit(x, y, batch_size=2, epochs=2, verbose=0)  # 4 steps
    backup = TrainingBackup(tmp_path / "backup")
    assert backup.read_state() is None
    state = backup.save(model, phase=0, epoch=1, step=2, best=0.5,
                        steps_per_epoch=7)
    weights_file = os.path.join(backup.directory, state["weights"])
    with open(weights_file, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    assert state == {"phase": 0, "epoch": 1, "step": 2, "iterations": 4,
                     "best": 0.5, "weights": "ckpt-000000004.weights.h5",
                     "steps_per_epoch": 7, "sha256": sha256}
    assert backup.read_state() == state
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)  # 6 steps
    backup.save(model, phase=0, epoch=2, step=0)
    # The previous backup stays until the next one is written.
    assert sorted(os.listdir(backup.directory)) == [
        "ckpt-000000004.weights.h5", "ckpt-000000006.weights.h5",
        "state.json"]
    fresh = _tiny_model()
    backup.restore(fresh)
    assert int(fresh.optimizer.iterations.numpy()) == 6
    for a, b in zip(fresh.weights + fresh.optimizer.variables,
                    model.weights + model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    backup.clear()
    assert not os.path.exists(backup.directory)


class _RecordingBackup(TrainingBackup):
    def __init__(self, directory):
        super().__init__(directory)
        self.saved = []

    def save(self, model, *, phase, epoch, step, best=None, **extra):
        self.saved.append((epoch, step))
        return super().save(model, phase=phase, epoch=epoch, step=step,
                            best=best, **extra)


def test_backup_callback_records_epoch_and_step(tmp_path):
    x = np.zeros((10, 3), "float32")
    y = np.zeros((10, 2), "float32")
    model = _tiny_model()
    backup = _RecordingBackup(tmp_path / "b")
    callback = callbacks_lib.BackupAndRestore(backup, save_every=2)
    model.fit(x, y, batch_size=2, epochs=2, verbose=0, callbacks=[callback])
    assert backup.saved == [(0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]
    assert backup.read_state()["iterations"] == 10
    # Finishing an epoch interrupted after 3 of its 5 steps: 2 steps, and
    # the positions count from 3.
    backup.saved.clear()
    callback.step_offset = 3
    model.fit(x[:4], y[:4], batch_size=2, initial_epoch=1, epochs=2,
              verbose=0, callbacks=[callback])
    assert backup.saved == [(1, 5), (2, 0)]


def test_truncate_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n0,2.0\n1,1.5\n2,1.2\n")
    callbacks_lib.truncate_csv(str(path), 2)
    assert path.read_text() == "epoch,loss\n0,2.0\n1,1.5\n"


def test_unfinished_run_needs_resume(tmp_path):
    backup = TrainingBackup(tmp_path / "backup")
    os.makedirs(backup.directory)
    with open(backup.state_path, "w") as f:
        json.dump({"phase": 0, "epoch": 3, "step": 5, "iterations": 71,
                   "best": None, "weights": "x.weights.h5"}, f)
    with pytest.raises(ValueError, match="resume=False.*epoch 3, step 5|"
                       "epoch 3, step 5.*resume=False"):
        train("digits", overrides={"output_dir": str(tmp_path)})


def test_resuming_a_completed_run_does_not_train_again(tmp_path, capsys):
    results = {"completed": True, "metrics": {"accuracy": 0.95},
               "model_path": str(tmp_path / "model.keras"),
               "optimizer_iterations": 264, "steps_per_epoch": 22,
               "global_batch_size": 64, "learning_rate": 0.0125,
               "resumed_from": None, "wall_time": 60.0}
    (tmp_path / "results.json").write_text(json.dumps(results))
    # The model the results name (a missing one is an error: see
    # test_file_safety.py).
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(
        tmp_path / "model.keras")
    result = train("digits", overrides={"output_dir": str(tmp_path)},
                   resume=True)
    assert "Nothing to resume" in capsys.readouterr().out
    assert result.metrics == {"accuracy": 0.95}
    assert result.optimizer_iterations == 264
    assert result.model.count_params() == 8


@pytest.mark.slow
def test_transfer_history_holds_both_phases_as_logged(tmp_path):
    # Random weights (no download); 2 frozen-backbone epochs, then 1 of
    # fine-tuning: `history` holds all 3, equal to the two CSV logs.
    result = train("digits", overrides={
        "output_dir": str(tmp_path), "transfer": True, "frozen_epochs": 2,
        "epochs": 1, "tensorboard": False}, verbose=0)
    logged = (_csv_rows(tmp_path / "training_log_frozen.csv")
              + _csv_rows(tmp_path / "training_log.csv"))
    assert [int(row["epoch"]) for row in logged] == [0, 1, 0]
    assert set(result.history) == set(logged[0]) - {"epoch"}
    for key, values in result.history.items():
        np.testing.assert_allclose(
            values, [float(row[key]) for row in logged], rtol=1e-6,
            err_msg=key)
    # The frozen phase: 0.05 * 64 / 256 with no warm-up, cosine over 44
    # steps; at its first epoch end (step 22) half the peak.
    assert result.history["learning_rate"][0] == pytest.approx(0.00625,
                                                               rel=1e-5)
    assert result.optimizer_iterations == STEPS_PER_EPOCH  # the last phase


# ---------------------------------------------------------------------------
# Slow: real training in subprocesses.
#
# Tracing a train step of these ~150-layer networks is single-threaded Python
# (20-40 s a run, per replica), so the heavy runs start together, as soon as
# the module's first test runs, and overlap on the two cores:
#   mirrored-<model>  MirroredStrategy over two logical CPUs (one per model)
#   digits            the README command, uninterrupted
#   killed -> resumed the same command with mid-epoch backups, SIGKILLed in
#                     its second epoch, then re-run with --resume
# Each test then waits for the runs it checks.

MODELS = ("mobilenetv2_ca", "mobilenext_ca")
STEPS_PER_EPOCH = 22  # 1,438 digits / 64
EPOCHS = 12


def _cli_command(*args):
    return [sys.executable, "-m", "keras_coordatt.cli", "train", *args]


def _digits_args(output_dir, *extra):
    # The README's command (`keras-coordatt train --dataset digits`), with a
    # private output folder and one line per epoch.
    return ["--dataset", "digits", "--output-dir", str(output_dir),
            "--verbose", "2", *extra]


class _Run:
    """A subprocess whose output goes to a file."""

    def __init__(self, name, command, folder):
        self.name = name
        self.log_path = folder / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.started = time.time()
        self.process = subprocess.Popen(
            command, cwd=REPO, env=_env(), stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wall = None

    def wait(self, timeout=900):
        returncode = self.process.wait(timeout=timeout)
        if self.wall is None:
            self.wall = time.time() - self.started
        self._log.close()
        return returncode, self.log_path.read_text()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


class _SlowRuns:
    def __init__(self, folder):
        self.folder = folder
        self.runs = {}
        self.kill_error = None
        self.killed_state = None
        self._killer = None

    def start(self, tests):
        """Starts the runs that `tests` (test names) need, once each."""
        for model in MODELS:
            if not any("mirrored" in t and model in t for t in tests):
                continue
            self._start(f"mirrored-{model}", [
                sys.executable,
                os.path.join(FIXTURES, "mirrored_training.py"),
                str(self.folder / "mirrored"), model,
            ])
        if any("digits" in t or "sigkill" in t for t in tests):
            self._start("digits", _cli_command(
                *_digits_args(self.folder / "digits")))
        if any("sigkill" in t for t in tests) and "killed" not in self.runs:
            self._start("killed", _cli_command(*self.kill_args()))
            self._killer = threading.Thread(target=self._kill_then_resume,
                                            daemon=True)
            self._killer.start()

    def kill_dir(self):
        return self.folder / "killed"

    def kill_args(self):
        return _digits_args(self.kill_dir(), "--backup-every", "5")

    def _start(self, name, command):
        if name not in self.runs:
            self.runs[name] = _Run(name, command, self.folder)

    def _kill_then_resume(self):
        """SIGKILL the run once it backed up mid-way through epoch 2, then
        resume it (the backup interval need not be repeated)."""
        try:
            run = self.runs["killed"]
            state_path = self.kill_dir() / "backup" / "state.json"
            deadline = time.time() + 900
            while time.time() < deadline and run.process.poll() is None:
                if state_path.exists():
                    state = json.loads(state_path.read_text())
                    if state["epoch"] >= 1 and state["step"] > 0:
                        run.process.send_signal(signal.SIGKILL)
                        break
                time.sleep(0.02)
            run.wait()
            if state_path.exists():
                self.killed_state = json.loads(state_path.read_text())
            self._start("resumed", _cli_command(
                *_digits_args(self.kill_dir()), "--resume"))
        except Exception as e:  # Reported by the test.
            self.kill_error = e

    def wait(self, name, timeout=900):
        if name in ("killed", "resumed"):
            # The killer thread reads the state the kill left and starts the
            # resumed run after the killed process exits: wait for it, not
            # only for the process, or `killed_state` may still be unset.
            self._killer.join(timeout)
            assert not self._killer.is_alive(), "the kill/resume thread hung"
            assert self.kill_error is None, self.kill_error
        return self.runs[name].wait(timeout)

    def stop(self):
        for run in self.runs.values():
            run.stop()


def _selected_slow_tests(request):
    return [item.name for item in request.session.items
            if getattr(item, "module", None) is request.module
            and item.get_closest_marker("slow")]


@pytest.fixture(scope="module")
def _slow_runs(tmp_path_factory):
    runs = _SlowRuns(tmp_path_factory.mktemp("slow_runs"))
    yield runs
    runs.stop()


@pytest.fixture(scope="module", autouse=True)
def _start_slow_runs_first(request):
    """In a plain pytest run, starts the heavy runs of all the selected slow
    tests of this module before the fast tests, so that they all overlap.
    Under pytest-xdist, which spreads tests over workers, each slow test
    starts what it needs in its own worker instead."""
    selected = _selected_slow_tests(request)
    if selected and not os.environ.get("PYTEST_XDIST_WORKER"):
        request.getfixturevalue("_slow_runs").start(selected)


@pytest.fixture
def slow_runs(request, _slow_runs):
    _slow_runs.start([request.node.name])
    return _slow_runs


def _metric(output, name):
    line = next(l for l in output.splitlines()
                if l.startswith("Validation metrics:"))
    fields = dict(part.strip().split(" ") for part in
                  line[len("Validation metrics:"):].split("|"))
    return float(fields[name])


def _optimizer_steps(output):
    line = next(l for l in output.splitlines()
                if l.startswith("Optimizer steps:"))
    return int(line.split()[2])


def _csv_rows(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
        return [dict(zip(header, line.strip().split(","))) for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("model, classes", [("mobilenetv2_ca", 5),
                                            ("mobilenext_ca", 10)])
def test_mirrored_strategy_on_two_logical_cpus_trains(slow_runs, model,
                                                      classes):
    returncode, output = slow_runs.wait(f"mirrored-{model}")
    lines = [l for l in output.splitlines() if l.startswith("RESULTS ")]
    assert returncode == 0 and lines, output[-3000:]
    results = json.loads(lines[-1][len("RESULTS "):])
    assert results["strategy"] == "MirroredStrategy"
    assert results["replicas"] == 2
    assert [d.rsplit(":", 2)[-2:] for d in results["devices"]] == [
        ["CPU", "0"], ["CPU", "1"]]
    run = results[model]
    assert run["num_classes"] == classes
    # Per-replica batches of 16 -> global batch 32; 320 images.
    assert run["global_batch_size"] == 32
    assert run["steps_per_epoch"] == 10
    assert run["iterations"] == 4 * 10
    losses = run["loss"]
    assert len(losses) == 4
    # The training loss goes down, clearly below its first epoch.
    assert losses[-1] < 0.85 * losses[0], losses
    assert all(math.isfinite(v) for v in run["val_loss"])


@pytest.mark.slow
def test_cli_trains_digits_to_90_percent(slow_runs):
    returncode, output = slow_runs.wait("digits")
    assert returncode == 0, output[-3000:]
    output_dir = slow_runs.folder / "digits"
    accuracy = _metric(output, "accuracy")
    print(f"digits: val accuracy {accuracy:.4f}, CLI wall time "
          f"{slow_runs.runs['digits'].wall:.0f} s (sharing the CPU)")
    assert accuracy >= 0.90
    model_path = os.path.join(output_dir, "model.keras")
    assert f"Model saved to {model_path}" in output
    assert os.path.isfile(model_path)
    results = json.load(open(os.path.join(output_dir, "results.json")))
    assert results["metrics"]["accuracy"] == pytest.approx(accuracy,
                                                           abs=5e-5)
    # 1,438 training images / 64 = 22 steps per epoch, 12 epochs.
    assert _optimizer_steps(output) == results["optimizer_iterations"] \
        == EPOCHS * STEPS_PER_EPOCH
    for name in ("best.keras", "last.keras"):
        assert os.path.isfile(os.path.join(output_dir, "checkpoints", name))
    assert not os.path.exists(os.path.join(output_dir, "backup"))
    rows = _csv_rows(os.path.join(output_dir, "training_log.csv"))
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    # The logged LR is the schedule's at each epoch end: peak 0.05 * 64 /
    # 256 after a 2-epoch (44-step) warm-up, cosine to 0 at step 264.
    for row in rows:
        step = (int(row["epoch"]) + 1) * STEPS_PER_EPOCH
        assert float(row["learning_rate"]) == pytest.approx(
            _cosine(step, 0.0125, 264, 44, 0.0), rel=1e-4, abs=1e-7)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_steps(
        slow_runs):
    returncode, killed_output = slow_runs.wait("killed")
    assert returncode == -signal.SIGKILL, killed_output[-3000:]
    state = slow_runs.killed_state  # What the kill left on disk.
    assert state is not None, "no backup state.json after the kill"
    epoch, step = state["epoch"], state["step"]
    assert epoch >= 1 and 0 < step < STEPS_PER_EPOCH and step % 5 == 0
    assert state["iterations"] == epoch * STEPS_PER_EPOCH + step

    returncode, output = slow_runs.wait("resumed")
    assert returncode == 0, output[-3000:]
    # It continued from the backed-up epoch and step, not from 0 ...
    assert (f"Resumed from the backup: phase full, epoch {epoch + 1}/"
            f"{EPOCHS}, step {step}/{STEPS_PER_EPOCH}, optimizer step "
            f"{state['iterations']}.") in output
    rest = STEPS_PER_EPOCH - step
    assert f"\n{rest}/{rest} - " in output  # the epoch's missing steps only
    assert f"Epoch 1/{EPOCHS}" not in output
    # ... and ends with as many optimizer steps as the uninterrupted run.
    _, uninterrupted = slow_runs.wait("digits")
    assert _optimizer_steps(output) == _optimizer_steps(uninterrupted) \
        == EPOCHS * STEPS_PER_EPOCH
    output_dir = slow_runs.kill_dir()
    results = json.load(open(output_dir / "results.json"))
    assert results["optimizer_iterations"] == EPOCHS * STEPS_PER_EPOCH
    assert results["resumed_from"]["iterations"] == state["iterations"]
    # One CSV row per epoch: those before the kill, then the resumed ones.
    rows = _csv_rows(output_dir / "training_log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))
    assert not (output_dir / "backup").exists()
    print(f"killed at epoch {epoch + 1} step {step}; resumed run val "
          f"accuracy {_metric(output, 'accuracy'):.4f}")


def test_train_a_given_model(tmp_path):
    """`train(model=...)` fits that model (a builder called in the scope)
    with the run's data, schedule and outputs; bad values are refused."""
    x, y = _arrays(n=48, size=32)
    source = from_arrays(x, y, validation_fraction=0.25, seed=0)
    built = []

    def small():
        inputs = keras.Input((32, 32, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        model = keras.Model(inputs, keras.layers.Dense(
            4, activation="softmax", name="given_head")(pooled))
        built.append(model)
        return model

    config = get_config("digits", dict(
        output_dir=str(tmp_path / "run"), epochs=2, tensorboard=False,
        per_replica_batch_size=12, bn_recalibration_steps=0))
    result = train(config, source=source, model=small, verbose=0)
    assert result.model is built[0] and len(built) == 1
    assert result.optimizer_iterations == 2 * 3  # 36 images / 12
    assert set(result.metrics) == {"loss", "accuracy"}
    reloaded = keras.saving.load_model(result.model_path)
    np.testing.assert_array_equal(
        reloaded.get_layer("given_head").get_weights()[0],
        built[0].get_layer("given_head").get_weights()[0])
    with pytest.raises(ValueError, match=r"Received: model=str"):
        train(config, source=source, model="mobilenetv2_ca")
    with pytest.raises(ValueError, match="transfer=True"):
        train(config.replace(transfer=True, output_dir=str(tmp_path / "t")),
              source=source, model=small)

"""Hub exports: every format reproduces the Keras model, .keras files
round-trip, a .keras file exports with its own architecture, the
feature-vector SavedModel fine-tunes, bad arguments write nothing.

One model: the README's main-job network (MobileNetV2CA, alpha 0.35, 32x32,
10 classes) trained on the offline digits (`digits_demo`, trained once per
session), saved as a `.weights.h5` and exported through the public API and
the CLI. Outputs are compared on random images and on held-out digits.
Measured differences are printed (run with `-s` to see them).
"""

import json
import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras_coordatt.export import FLOAT_TOLERANCE  # noqa: E402
from keras_coordatt.export import build_model  # noqa: E402
from keras_coordatt.export import cli  # noqa: E402
from keras_coordatt.export import export_model  # noqa: E402
from keras_coordatt.export import formats  # noqa: E402
from keras_coordatt.export import random_images  # noqa: E402
from keras_coordatt.export import verify_artifact  # noqa: E402
from keras_coordatt.export.exporter import compare  # noqa: E402
from keras_coordatt.export.exporter import ROUNDING_FACTOR  # noqa: E402
from keras_coordatt.export.exporter import float64_outputs  # noqa: E402
from keras_coordatt.export.exporter import float_tolerance  # noqa: E402

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="SavedModel, LiteRT and ONNX export need the TensorFlow backend",
)

ALPHA = 0.35
SIZE = 32
CLASSES = 10
SHAPE = (SIZE, SIZE, 3)
COMMON = dict(model_name="mobilenetv2_ca", alpha=ALPHA, input_size=SIZE,
              classes=CLASSES)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, digits_demo):
    model, _ = digits_demo
    path = str(tmp_path_factory.mktemp("weights") / "digits.weights.h5")
    model.save_weights(path)
    return path


@pytest.fixture(scope="module")
def classifier(weights_file):
    return build_model(weights=weights_file, variant="classification",
                       **COMMON)


@pytest.fixture(scope="module")
def digits():
    """Held-out digits (never trained on), preprocessed."""
    from keras_coordatt.quantization.data import load_digits

    return load_digits(image_size=SIZE)[1]


@pytest.fixture(scope="module")
def images(digits):
    """8 random images and 16 held-out digits."""
    return np.concatenate([random_images(SHAPE, 8, seed=1), digits[0][:16]])


@pytest.fixture(scope="module")
def reference(classifier, images):
    model, _ = classifier
    out = np.asarray(model.predict(images, verbose=0))
    # The outputs depend on the image (the test would be weak otherwise).
    assert out.std(axis=0).max() > 0.05
    return out


@pytest.fixture(scope="module")
def exact(classifier, images, reference):
    """The float64 evaluation of the same network: float32 runtimes are
    compared with it as well as with the Keras model."""
    model, _ = classifier
    out = float64_outputs(model, images)
    assert out is not None
    rounding = np.abs(reference - out).max()
    _report("keras float32 vs float64", {"max_abs_diff": rounding})
    assert rounding <= FLOAT_TOLERANCE
    return out


def _check_float(name, outputs, reference, exact):
    """Within 1e-5 of the Keras model, as close to float64 as Keras, same
    top-1."""
    result = compare(reference, outputs, classification=True)
    result["max_abs_diff_vs_float64"] = float(np.abs(outputs - exact).max())
    _report(name, result)
    assert result["max_abs_diff"] <= FLOAT_TOLERANCE
    assert result["max_abs_diff_vs_float64"] <= FLOAT_TOLERANCE
    assert result["top1_agreement"] == 1.0


def _export(tmp_path, fmt, classifier, variant="classification", **kwargs):
    model, model_kwargs = classifier
    out = tmp_path / f"{fmt}_{variant}"
    metadata = export_model(out, fmt, weights=kwargs.pop("weights", None),
                            variant=variant, model=model,
                            model_kwargs=model_kwargs, verify=False,
                            **COMMON, **kwargs)
    return str(out), metadata


def _report(name, result):
    print(f"\n[export] {name}: " + ", ".join(
        f"{k}={v:.3g}" for k, v in result.items()))


@pytest.mark.slow
def test_saved_model_and_tfsm_layer_match_keras(tmp_path, classifier,
                                                weights_file, images,
                                                reference, exact):
    import tensorflow as tf

    out, metadata = _export(tmp_path, "saved_model", classifier,
                            weights=weights_file)
    loaded = tf.saved_model.load(out)
    signature = loaded.signatures["serving_default"]
    _, inputs = signature.structured_input_signature
    assert list(inputs) == ["image"]
    assert inputs["image"].dtype == tf.float32
    assert inputs["image"].shape.as_list() == [None, *SHAPE]
    assert list(signature.structured_outputs) == ["predictions"]
    results = {
        "serve": loaded.serve(tf.constant(images)).numpy(),
        "serving_default": signature(image=tf.constant(images))[
            "predictions"].numpy(),
        "TFSMLayer": formats.predict_tfsm_layer(out, images),
    }
    for runtime, outputs in results.items():
        _check_float(f"saved_model/{runtime}", outputs, reference, exact)
    assert metadata["saved_model"]["signatures"]["serving_default"][
        "inputs"]["image"]["shape"] == [None, *SHAPE]
    with open(os.path.join(out, "metadata.json")) as f:
        assert json.load(f)["format"] == "saved_model"


def test_litert_float_cli_matches_keras(tmp_path, weights_file, images,
                                        reference, exact):
    out = tmp_path / "litert"
    rc = cli.main([
        "--model", "mobilenetv2_ca", "--alpha", str(ALPHA),
        "--weights", weights_file, "--format", "litert",
        "--variant", "classification", "--input-size", str(SIZE),
        "--classes", str(CLASSES), "--output", str(out),
    ])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["metadata.json", "model.tflite"]
    with open(out / "metadata.json") as f:
        metadata = json.load(f)
    ops = formats.tflite_op_names(str(out / "model.tflite"))
    assert not set(ops) & {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"}
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    assert metadata["litert"]["signatures"] == {
        "serving_default": {"inputs": ["image"], "outputs": ["output_0"]}}
    assert metadata["litert"]["input"]["shape"] == [1, *SHAPE]
    # The export verified itself (4 random images) ...
    verification = metadata["verification"]
    assert verification["tolerance"] == max(
        FLOAT_TOLERANCE, ROUNDING_FACTOR * verification["float32_rounding"])
    assert verification["litert"]["max_abs_diff"] <= FLOAT_TOLERANCE
    # ... and agrees here on others, BatchNorm folded into the kernels.
    _check_float("litert float",
                 formats.predict_litert(out / "model.tflite", images),
                 reference, exact)


def test_untrained_network_tolerance_follows_its_float32_rounding(tmp_path):
    """An untrained deep network amplifies float32 rounding layer after
    layer; the exporter's bound follows the Keras model's own error."""

    keras.utils.set_random_seed(0)
    shape = (64, 64, 3)
    model, _ = build_model(weights=None, variant="classification",
                           **dict(COMMON, input_size=64))
    rng = np.random.default_rng(0)
    for v in model.weights:  # random BatchNorm affine parameters
        if v.path.endswith(("gamma", "beta")):
            low, high = (0.8, 1.2) if v.path.endswith("gamma") else (-.2, .2)
            v.assign(rng.uniform(low, high, tuple(v.shape)).astype("float32"))
    bns = [layer for layer in model._flatten_layers()
           if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:  # statistics of random images: unit-scale activations
        layer.momentum = 0.0
    model(random_images(shape, 16, seed=100), training=True)
    kernel = model.get_layer("predictions").kernel
    kernel.assign(kernel * 3.0)

    path = tmp_path / "litert"
    path.mkdir()
    formats.export_litert(model, path / "model.tflite")
    report = verify_artifact(model, "litert", str(path), "classification",
                             images=random_images(shape, 8, seed=1))
    keras_error = report["float32_rounding"]
    litert = report["litert"]
    _report("untrained litert", {"keras_vs_float64": keras_error,
                                 "litert_vs_float64":
                                     litert["max_abs_diff_vs_float64"],
                                 "litert_vs_keras": litert["max_abs_diff"],
                                 "tolerance": report["tolerance"]})
    # Keras itself is 1.45e-5 from float64 here: the rounding bound holds.
    assert keras_error > FLOAT_TOLERANCE / ROUNDING_FACTOR
    assert report["tolerance"] == ROUNDING_FACTOR * keras_error
    # LiteRT is about as accurate as Keras itself.
    assert litert["max_abs_diff_vs_float64"] <= 2 * keras_error
    assert report["litert"]["top1_agreement"] == 1.0


@pytest.mark.slow
@pytest.mark.skipif(not formats.int8_available(),
                    reason="int8 needs keras_coordatt.quantization")
def test_litert_int8(tmp_path, classifier, weights_file, digits):
    from keras_coordatt.quantization.data import load_digits

    (calibration, _), _ = load_digits(image_size=SIZE, preprocess=False)
    npy = tmp_path / "representative.npy"
    np.save(npy, calibration[:200])  # training digits, RGB in [0, 255]
    out, metadata = _export(tmp_path, "litert", classifier,
                            weights=weights_file, int8=True,
                            representative=str(npy), num_samples=200)
    ops = metadata["litert"]["ops"]
    assert "QUANTIZE" in ops and "Flex" not in " ".join(ops)
    path = os.path.join(out, "model.tflite")
    assert formats.litert_output_step(path) == 1 / 256  # int8 softmax
    # On the 359 held-out digits, in steps of the int8 output.
    report = verify_artifact(classifier[0], "litert", out, "classification",
                             images=digits[0])
    result = report["litert"]
    _report("litert int8 (held-out digits)", result)
    assert report["tolerance"] is None
    assert result["output_step"] == 1 / 256
    # Most outputs within one step (measured 0.96), the mean within one
    # (0.37); uncertain images differ by more (max 32 steps, p99 8.5).
    assert result["mean_abs_diff_steps"] <= 1.0
    assert result["within_one_step"] >= 0.9
    assert result["top1_agreement"] >= 0.98  # measured 358 / 359


def test_onnx_matches_keras(tmp_path, classifier, weights_file, images,
                            reference, exact):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    out, metadata = _export(tmp_path, "onnx", classifier,
                            weights=weights_file)
    session = onnxruntime.InferenceSession(
        os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    (outp,) = session.get_outputs()
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert inp.shape == ["batch", *SHAPE]
    assert outp.name == "predictions"
    # tf2onnx folds BatchNorm into the kernels.
    _check_float("onnx", session.run(None, {"image": images})[0], reference,
                 exact)


def test_keras_file_round_trips_to_an_identical_model(tmp_path, classifier,
                                                      weights_file, images,
                                                      reference):
    model, _ = classifier
    out, _ = _export(tmp_path, "keras", classifier, weights=weights_file)
    assert sorted(os.listdir(out)) == ["metadata.json", "model.keras"]
    path = os.path.join(out, "model.keras")
    rebuilt = keras.saving.load_model(path, safe_mode=True)
    assert [layer.name for layer in rebuilt.layers] == [
        layer.name for layer in model.layers]
    assert [layer.get_config() for layer in rebuilt.layers] == [
        layer.get_config() for layer in model.layers]
    assert len(rebuilt.weights) == len(model.weights)
    for a, b in zip(model.weights, rebuilt.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    diff = np.abs(np.asarray(rebuilt.predict(images, verbose=0)) -
                  reference).max()
    _report("keras file round trip", {"max_abs_diff": float(diff)})
    assert diff == 0.0

    with open(os.path.join(out, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["parameter_count"] == {
        "total": model.count_params(),
        "trainable": int(sum(np.prod(w.shape)
                             for w in model.trainable_weights)),
        "non_trainable": int(sum(np.prod(w.shape)
                                 for w in model.non_trainable_weights)),
    }
    assert metadata["input"]["shape"] == [None, *SHAPE]
    assert metadata["input"]["dtype"] == "float32"
    assert metadata["input"]["data_format"] == "channels_last"
    assert metadata["input"]["value_range"] == pytest.approx(
        [-2.117904, 2.64], abs=1e-4)
    assert metadata["preprocessing"]["mode"] == "torch"
    assert metadata["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert metadata["preprocessing"]["std"] == [0.229, 0.224, 0.225]
    assert metadata["weights"]["source"] == "file"
    assert len(metadata["weights"]["sha256"]) == 64
    # The hash of the file as written: a changed copy is not this export.
    assert metadata["files"] == {"model.keras": {
        "sha256": formats.sha256(path), "bytes": os.path.getsize(path)}}
    assert metadata["versions"]["keras"] == keras.__version__


def test_imagenet_metadata_names_the_source_checkpoint(classifier):
    from keras_coordatt.export import make_metadata
    from keras_coordatt.weights import imagenet

    model, kwargs = classifier
    metadata = make_metadata(model, kwargs, "mobilenetv2_ca", "imagenet",
                             "classification", "keras")
    assert metadata["weights"]["checkpoint_url"] == imagenet.IMAGENET_URL
    assert metadata["weights"]["checkpoint_git_blob_id"] == \
        imagenet.IMAGENET_BLOB_ID
    assert metadata["license"] == (
        "MIT, weights by the authors of Coordinate Attention")


@pytest.mark.slow
def test_feature_vector_saved_model_fine_tunes_with_tfsm_layer(
        tmp_path, classifier, weights_file, images):
    full, _ = classifier
    features = build_model(weights=weights_file, variant="feature_vector",
                           **COMMON)
    fv_model, _ = features
    # Same weights, classifier dropped: the pooled features of the full one.
    pooled = keras.Model(full.input, full.get_layer("avg_pool").output)
    expected = np.asarray(pooled.predict(images, verbose=0))
    np.testing.assert_array_equal(
        np.asarray(fv_model.predict(images, verbose=0)), expected)

    out, metadata = _export(tmp_path, "saved_model", features,
                            variant="feature_vector", weights=weights_file)
    assert metadata["output"]["name"] == "feature_vector"
    assert metadata["output"]["shape"] == [None, 1280]

    hub = keras.layers.TFSMLayer(out, call_endpoint="serve", trainable=False)
    inputs = keras.Input(SHAPE, name="image")
    logits = keras.layers.Dense(3, name="head")(hub(inputs))
    model = keras.Model(inputs, logits)
    assert len(model.trainable_weights) == 2  # the head only
    diff = np.abs(keras.ops.convert_to_numpy(hub(images)) - expected).max()
    _report("feature_vector TFSMLayer", {"max_abs_diff": float(diff)})
    assert diff <= FLOAT_TOLERANCE

    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    labels = np.arange(len(images)) % 3
    frozen_before = [np.asarray(w) for w in hub.non_trainable_weights]
    head_before = np.asarray(model.get_layer("head").kernel)
    history = model.fit(images, labels, epochs=15, batch_size=8, verbose=0)
    losses = history.history["loss"]
    _report("feature_vector fine-tune", {"loss_first": losses[0],
                                         "loss_last": losses[-1]})
    assert losses[-1] < losses[0]
    assert not np.allclose(np.asarray(model.get_layer("head").kernel),
                           head_before)
    for before, w in zip(frozen_before, hub.non_trainable_weights):
        np.testing.assert_array_equal(before, np.asarray(w))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "tfjs"], "Unknown format 'tfjs'"),
        (["--format", "onnx", "--variant", "segmentation"],
         "Unknown variant 'segmentation'"),
        (["--format", "keras", "--weights", "missing.weights.h5"],
         "Weights file not found"),
        (["--format", "onnx", "--int8"], "int8 applies to the litert"),
        (["--format", "keras", "--model", "resnet50"], "Unknown model"),
    ],
)
def test_bad_arguments_fail_clearly_and_write_nothing(tmp_path, capsys, args,
                                                      message):
    out = tmp_path / "new" / "artifact"
    argv = ["--weights", "none", "--output", str(out)] + args
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "keras-coordatt export: error:" in err
    assert not (tmp_path / "new").exists()


def test_existing_output_is_refused(tmp_path, capsys):
    out = tmp_path / "artifact"
    out.mkdir()
    assert cli.main(["--weights", "none", "--format", "keras",
                     "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert os.listdir(out) == []


def test_failure_during_export_leaves_no_directory(tmp_path, classifier,
                                                   monkeypatch):
    def broken(model, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(formats, "export_onnx", broken)
    parent = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError, match="converter crashed"):
        _export(parent, "onnx", classifier)
    assert not (tmp_path / "a").exists()
    assert os.listdir(tmp_path) == []


def test_failed_verification_leaves_no_directory(tmp_path, classifier,
                                                 monkeypatch):
    model, kwargs = classifier
    real = formats.predict_keras
    monkeypatch.setattr(formats, "predict_keras",
                        lambda path, x: real(path, x) + 1e-3)
    with pytest.raises(AssertionError, match="differs from the Keras model"):
        export_model(tmp_path / "keras", "keras", weights=None, model=model,
                     model_kwargs=kwargs, **COMMON)
    assert os.listdir(tmp_path) == []


def test_manifest_entries_are_valid_export_commands():
    from keras_coordatt.export import FORMATS
    from keras_coordatt.export import VARIANTS
    from keras_coordatt.export.cli import _parser

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "saved_models", "manifest.json")) as f:
        manifest = json.load(f)
    names = set()
    for entry in manifest["artifacts"]:
        args = _parser().parse_args(entry["args"])
        assert args.export_format == entry["format"] in FORMATS
        assert args.variant == entry["variant"] in VARIANTS
        assert args.weights == "imagenet"
        assert args.int8 == bool(entry.get("int8"))
        assert args.output == f"saved_models/{entry['name']}"
        names.add(entry["name"])
    assert len(names) == len(manifest["artifacts"]) == 9


def test_int8_without_quantization_module_is_a_clear_error(
        tmp_path, capsys, monkeypatch):
    def missing():
        raise RuntimeError(
            "int8 LiteRT export requires keras_coordatt.quantization")

    monkeypatch.setattr(formats, "_quantization_module", missing)
    npy = tmp_path / "rep.npy"
    np.save(npy, np.zeros((2, SIZE, SIZE, 3), "float32"))
    out = tmp_path / "int8"
    assert cli.main(["--weights", "none", "--format", "litert", "--int8",
                     "--representative", str(npy), "--output",
                     str(out)]) == 2
    assert "requires keras_coordatt.quantization" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("variant", ["classification", "feature_vector"])
def test_keras_hub_preset_loads_in_keras_hub(tmp_path, capsys, variant):
    """`export --format keras-hub`: a real keras-hub preset (classifier
    with its preprocessor, or backbone), verified by the exporter itself and
    loaded here through keras-hub's own `from_preset`."""
    keras_hub = pytest.importorskip("keras_hub")
    import keras_coordatt as kc

    model = kc.MobileNetV2CA(input_shape=(64, 64, 3), alpha=0.35,
                             weights=None, classes=7)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.1, w.shape).astype("float32") + (
        1.0 if "variance" in w.path else 0.0) for w in model.weights])
    weights = str(tmp_path / "seven.weights.h5")
    model.save_weights(weights)
    out = str(tmp_path / "preset")
    status = cli.main(["--model", "mobilenetv2_ca", "--alpha", "0.35",
                       "--weights", weights, "--format", "keras-hub",
                       "--variant", variant, "--input-size", "64",
                       "--classes", "7", "--output", out])
    assert status == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["verification"]["keras_hub"]["max_abs_diff"] <= \
        summary["verification"]["tolerance"]
    with open(os.path.join(out, "metadata.json")) as f:
        metadata = json.load(f)
    # keras-hub's own card fields stay; ours sit under one key.
    assert metadata["keras_hub_version"] == keras_hub.__version__
    assert metadata["keras_coordatt"]["variant"] == variant
    raw = rng.uniform(0, 255, (3, 80, 80, 3)).astype("float32")
    resized = np.asarray(keras.ops.image.resize(raw, (64, 64)))
    if variant == "classification":
        expected = model.predict(kc.preprocess_input(resized), verbose=0)
        task = keras_hub.models.ImageClassifier.from_preset(out)
        assert type(task).__name__ == "MobileNetV2CAImageClassifier"
        # predict() resizes the raw 80x80 images to 64x64 and normalises
        # them as preprocess_input does: the application's outputs.
        np.testing.assert_allclose(task.predict(raw, verbose=0), expected,
                                   atol=1e-5)
    else:
        backbone = keras_hub.models.Backbone.from_preset(out)
        assert type(backbone).__name__ == "MobileNetV2CABackbone"
        assert sorted(backbone.pyramid_outputs) == ["P1", "P2", "P3", "P4",
                                                    "P5"]
        trunk = keras.Model(model.inputs, model.get_layer("avg_pool").input)
        np.testing.assert_allclose(
            backbone.predict(kc.preprocess_input(resized), verbose=0),
            trunk.predict(kc.preprocess_input(resized), verbose=0),
            atol=1e-5)


def test_copy_weights_by_name_reports_every_mismatch():
    from keras_coordatt.utils.layer_weights import copy_weights_by_name

    def net(units, names):
        inputs = keras.Input((4,))
        x = inputs
        for name in names:
            x = keras.layers.Dense(units, name=name)(x)
        return keras.Model(inputs, x)

    source = net(3, ["a", "b"])
    same = net(3, ["a", "b"])
    copy_weights_by_name(source, [(l, l.name) for l in same.layers])
    for a, b in zip(source.weights, same.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = net(5, ["a", "c"])
    before = [np.asarray(w) for w in other.weights]
    with pytest.raises(ValueError) as error:
        copy_weights_by_name(source, [(l, l.name) for l in other.layers])
    assert "a: [(4, 3), (3,)] vs [(4, 5), (5,)]" in str(error.value)
    assert "c: missing" in str(error.value)
    # Nothing was set: the first layer's shapes differ, so all stay.
    for a, b in zip(before, other.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


# `export --model PATH.keras`: the architecture comes from the file.


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, images):
    """An untrained MobileNetV2CA saved as a run saves it: `model.keras`
    with the run's `config.json` beside it; its float64 outputs."""
    import keras_coordatt as kc
    from keras_coordatt.training.recipes import TrainConfig

    keras.utils.set_random_seed(0)
    model = kc.MobileNetV2CA(alpha=ALPHA, input_shape=SHAPE,
                             classes=CLASSES, weights=None)
    # Not trained, but not at its initialisation either (where every image
    # gets the same output): BatchNorm calibrated on random images, as in
    # test_untrained_network_tolerance_follows_its_float32_rounding.
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(random_images(SHAPE, 16, seed=100), training=True)
    kernel = model.get_layer("predictions").kernel
    kernel.assign(kernel * 3.0)
    run = tmp_path_factory.mktemp("run")
    model.save(run / "model.keras")
    config = TrainConfig(model="mobilenetv2_ca", alpha=ALPHA,
                         image_size=SIZE).to_dict()
    (run / "config.json").write_text(json.dumps(config))
    return model, str(run / "model.keras"), float64_outputs(model, images)


def _export_file(tmp_path, capsys, path, fmt, *flags):
    out = tmp_path / fmt
    status = cli.main(["--model", path, "--format", fmt, "--output",
                       str(out), *flags])
    assert status == 0, capsys.readouterr().err
    with open(out / "metadata.json") as f:
        metadata = json.load(f)
    return str(out), metadata.get("keras_coordatt", metadata)


@pytest.mark.parametrize("fmt", ["keras"] + [
    pytest.param(fmt, marks=pytest.mark.slow)  # 40 s to 2 min each
    for fmt in ("keras-hub", "litert", "onnx", "saved_model")])
def test_model_file_exports_with_its_own_architecture(tmp_path, capsys,
                                                      saved_run, images, fmt):
    from keras_coordatt.export.exporter import run_artifact

    if fmt == "keras-hub":
        pytest.importorskip("keras_hub")
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("tf2onnx")
    model, path, exact = saved_run
    # No --alpha, --input-size or --classes: all read from the file.
    out, metadata = _export_file(tmp_path, capsys, path, fmt)
    assert metadata["model"] == "mobilenetv2_ca"
    assert metadata["architecture"] == {
        "constructor": "keras_coordatt.MobileNetV2CA",
        "kwargs": {"input_shape": [SIZE, SIZE, 3], "alpha": ALPHA,
                   "reduction": None, "attention": True, "classes": CLASSES,
                   "classifier_activation": "softmax"}}
    assert metadata["weights"]["file"] == "model.keras"
    assert metadata["weights"]["sha256"] == formats.sha256(path)
    assert metadata["input"]["shape"] == [None, *SHAPE]
    runtimes = [k for k in metadata["verification"]
                if isinstance(metadata["verification"][k], dict)]
    assert runtimes  # the exporter verified the artifact itself
    reference = np.asarray(model.predict(images, verbose=0))
    assert reference.std(axis=0).max() > 0.05  # depends on the image
    # An untrained network amplifies float32 rounding: the exporter's
    # bound (1e-5, or 3x the Keras model's own distance from float64).
    tolerance = float_tolerance(reference, exact)
    for runtime, outputs in run_artifact(fmt, out, images).items():
        result = compare(reference, outputs, classification=True)
        result["max_abs_diff_vs_float64"] = float(np.abs(outputs -
                                                         exact).max())
        _report(f"{fmt} from .keras ({runtime})", result)
        assert result["max_abs_diff"] <= tolerance
        assert result["max_abs_diff_vs_float64"] <= tolerance
        assert result["top1_agreement"] == 1.0


@pytest.mark.slow
def test_model_file_feature_vector_and_agreeing_flags(tmp_path, capsys,
                                                      saved_run, images):
    model, path, _ = saved_run
    out, metadata = _export_file(
        tmp_path, capsys, path, "keras", "--variant", "feature_vector",
        "--alpha", str(ALPHA), "--input-size", str(SIZE), "--classes",
        str(CLASSES))
    assert metadata["output"]["shape"] == [None, 1280]
    exported = keras.saving.load_model(os.path.join(out, "model.keras"))
    # The pooled features: the classifier and its dropout dropped.
    assert [layer.name for layer in exported.layers[-2:]] == [
        "out_relu", "avg_pool"]
    pooled = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    np.testing.assert_array_equal(exported.predict(images, verbose=0),
                                  pooled.predict(images, verbose=0))


@pytest.mark.slow
def test_model_file_without_run_config(tmp_path, capsys, saved_run):
    """The model's own name, no constructor; keras-hub still finds the
    application from the model's name and checks it layer by layer."""
    pytest.importorskip("keras_hub")
    model, path, _ = saved_run
    alone = tmp_path / "alone" / "model.keras"
    alone.parent.mkdir()
    alone.write_bytes(open(path, "rb").read())
    _, metadata = _export_file(tmp_path, capsys, str(alone), "keras")
    assert metadata["model"] == "mobilenetv2_ca_0.35_32" == model.name
    assert metadata["architecture"]["constructor"] is None
    assert metadata["preprocessing"] is None  # not known without the run
    _, metadata = _export_file(tmp_path, capsys, str(alone), "keras-hub")
    assert metadata["verification"]["keras_hub"]["max_abs_diff"] <= \
        metadata["verification"]["tolerance"]
    assert cli.main(["--model", str(alone), "--format", "onnx", "--alpha",
                     "0.35", "--output", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == (
        "keras-coordatt export: error: --alpha cannot be checked against "
        f"the model file {alone}: no config.json of its training run beside "
        "it names one; leave --alpha out. Received: --alpha=0.35")


@pytest.mark.parametrize("flags, holds, given", [
    (["--classes", "7"], "10 classes", "--classes=7"),
    (["--input-size", "64"], "32x32 images", "--input-size=64"),
    (["--alpha", "1.0"], "alpha=0.35 (its config.json)", "--alpha=1.0"),
    (["--logits"], "a softmax output (not logits)", "--logits=True"),
])
def test_model_file_flag_mismatch_is_named(tmp_path, capsys, saved_run,
                                           flags, holds, given):
    _, path, _ = saved_run
    out = tmp_path / "out"
    assert cli.main(["--model", path, "--format", "litert", "--output",
                     str(out), *flags]) == 2
    flag = flags[0]
    assert capsys.readouterr().err.strip() == (
        f"keras-coordatt export: error: {flag} disagrees with the model "
        f"file {path}, which holds {holds}; leave {flag} out (the file "
        f"defines the architecture) or pass its value. Received: {given}")
    assert os.listdir(tmp_path) == []


def test_model_file_weights_and_unregistered_keras_hub(tmp_path, capsys,
                                                       saved_run):
    _, path, _ = saved_run
    out = str(tmp_path / "out")
    assert cli.main(["--model", path, "--format", "onnx", "--weights",
                     "none", "--output", out]) == 2
    assert f"--weights does not apply to a model file: {path} holds its " \
        "weights. Received: --weights=none" in capsys.readouterr().err
    pytest.importorskip("keras_hub")
    inputs = keras.Input(SHAPE)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    tiny = tmp_path / "tiny.keras"
    keras.Model(inputs, outputs, name="tiny").save(tiny)
    assert cli.main(["--model", str(tiny), "--format", "keras-hub",
                     "--output", out]) == 2
    assert capsys.readouterr().err.strip() == (
        "keras-coordatt export: error: keras-hub presets need a registered "
        "application (mobilenetv2_ca, mobilenext_ca): the model 'tiny' of "
        f"{tiny} is not one (it is none of them). Export it as keras, "
        "saved_model, litert or onnx. Received: format='keras-hub'")
    assert sorted(os.listdir(tmp_path)) == ["tiny.keras"]

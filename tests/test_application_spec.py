"""One `register_application` call: a toy backbone defined here, with no
package file edited, goes through the package like the built-in networks:
by name, `add_attention`, training, int8 LiteRT, export, keras-hub, and a
DeepLabV3 segmenter."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_coordatt
from keras_coordatt.applications import arguments
from keras_coordatt.applications import blocks
from keras_coordatt.applications import registry
from keras_coordatt.weights import load_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_BACKEND = keras.backend.backend() == "tensorflow"
SIZE = 32
# (filters, stride): five stride-2 stages give the pyramid P1..P5.
TOY_STAGES = ((8, 2), (8, 2), (16, 2), (16, 2), (16, 2))


def ToyCA(input_shape=None, alpha=1.0, include_top=True, weights=None,
          input_tensor=None, pooling=None, classes=10,
          classifier_activation="softmax", name=None, reduction=None,
          attention=True):
    """A toy network: five conv + BN + ReLU6 stages, one attention block
    and a residual depthwise block on the last."""
    kind = arguments.validate_arguments(
        weights, include_top, classes, alpha, pooling, attention,
        published=False)
    ns = blocks.KERAS
    img_input, rows, _ = arguments.application_input(
        input_shape, input_tensor, include_top, weights, ns.layers.Input)
    x = img_input
    for i, (filters, stride) in enumerate(TOY_STAGES):
        x = blocks.conv_bn(ns, x, blocks.make_divisible(filters * alpha), 3,
                           stride, f"stage{i}", f"stage{i}_bn",
                           f"stage{i}_relu")
    y = blocks.conv_bn(ns, x, None, 3, 1, "last_dw", "last_dw_bn",
                       "last_dw_relu", depthwise=True)
    y = blocks.attention_block(ns, y, kind, reduction or 4, "last_")
    y = blocks.conv_bn(ns, y, blocks.channels(ns, x), 1, 1, "last_project",
                       "last_project_bn")
    x = ns.layers.Add(name="last_add")([x, y])
    model = blocks.finish_model(
        ns, img_input, input_tensor, x, name or f"toy_ca_{rows}",
        include_top=include_top, pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, weights=weights,
        dropout=0.1)
    if weights is not None:
        load_weights(model, weights, family="toy_ca")
    return model


@pytest.fixture(scope="module")
def toy():
    """The toy, registered with one call (and removed afterwards)."""
    spec = registry.register_application(
        name="toy_ca", constructor=ToyCA, default_input_size=SIZE)
    yield spec
    registry.unregister_application("toy_ca")


def _images(n, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(
        0, 255, (n, size, size, 3)).astype("float32")


def test_registered_by_name_with_the_default_spec(toy):
    assert registry.get_application("toy_ca") is ToyCA
    assert registry.get_application_spec("toy_ca") is toy
    assert registry.application_names()[-1] == "toy_ca"
    assert toy.weights == {} and toy.torch_loader is None
    assert toy.prefix == "ToyCA"
    assert registry.preprocess_for("toy_ca") is keras_coordatt.preprocess_input
    from keras_coordatt.training.models import build_model

    model, _ = build_model("toy_ca", 7, image_size=SIZE)
    assert model.output.shape == (None, 7)
    assert model.get_layer("last_ca").__class__.__name__ == \
        "CoordinateAttention"
    assert sorted(model.pyramid_outputs) == list(toy.pyramid_levels)


def test_register_errors_name_what_was_received(toy):
    with pytest.raises(ValueError, match="'toy_ca' is already registered"):
        registry.register_application(name="toy_ca", constructor=ToyCA)
    with pytest.raises(ValueError, match="not both"):
        registry.register_application(toy, name="toy_2")
    with pytest.raises(ValueError, match="Received: constructor=3"):
        registry.register_application(name="toy_2", constructor=3)
    assert "toy_2" not in registry.application_names()


def test_imagenet_is_refused_where_none_was_published(toy):
    from keras_coordatt.export.exporter import check_arguments

    with pytest.raises(ValueError, match=(
            r"ImageNet weights were published for mobilenetv2_ca only. "
            r"Received: model='toy_ca'")):
        check_arguments("toy_ca", "imagenet", "keras", "classification")
    model = ToyCA(input_shape=(SIZE, SIZE, 3), weights=None)
    with pytest.raises(ValueError, match=(
            "No ImageNet weights were published for toy_ca; they were for "
            "mobilenetv2_ca")):
        load_weights(model, "imagenet", family="toy_ca")


def _half_weights(model):
    model.set_weights([np.full(w.shape, 0.5, "float32")
                       for w in model.weights])
    return model


def test_published_weights_of_a_spec_load_and_describe_themselves(toy):
    from keras_coordatt.export.exporter import check_arguments
    from keras_coordatt.export.exporter import make_metadata

    registry.register_application(
        name="toy_digits", constructor=ToyCA, weights={
            "digits": registry.PublishedWeights(
                loader=_half_weights, description="Toy digits weights.",
                license="CC0", source={"url": "file:///toy"})})
    try:
        check_arguments("toy_digits", "digits", "keras", "classification")
        model = ToyCA(input_shape=(SIZE, SIZE, 3), classes=3)
        assert load_weights(model, "digits", family="toy_digits") is model
        assert all(np.all(np.asarray(w) == 0.5) for w in model.weights)
        metadata = make_metadata(model, {"input_shape": (SIZE, SIZE, 3)},
                                 "toy_digits", "digits", "classification",
                                 "keras")
        assert metadata["weights"] == {
            "source": "digits", "url": "file:///toy",
            "description": "Toy digits weights."}
        assert metadata["license"] == "CC0"
    finally:
        registry.unregister_application("toy_digits")


def test_conv_bn_takes_the_activation():
    inputs = keras.Input((8, 8, 3))
    default = blocks.conv_bn(blocks.KERAS, inputs, 4, 1, 1, "a", "a_bn",
                             "a_relu")
    named = blocks.conv_bn(blocks.KERAS, inputs, 4, 1, 1, "b", "b_bn",
                           "b_act", activation="hard_sigmoid")
    made = blocks.conv_bn(
        blocks.KERAS, inputs, 4, 1, 1, "c", "c_bn", "c_act",
        activation=lambda name: keras.layers.LeakyReLU(0.25, name=name))
    model = keras.Model(inputs, [default, named, made])
    relu = model.get_layer("a_relu")
    assert isinstance(relu, keras.layers.ReLU) and relu.max_value == 6.0
    assert model.get_layer("b_act").get_config()["activation"] == \
        "hard_sigmoid"
    assert model.get_layer("c_act").get_config()["negative_slope"] == 0.25
    with pytest.raises(ValueError, match="Received: activation=3"):
        blocks.conv_bn(blocks.KERAS, inputs, 4, 1, 1, "d", "d_bn", "d_act",
                       activation=3)


def test_add_attention_then_one_training_step(toy):
    keras.utils.set_random_seed(0)
    plain = registry.get_application("toy_ca")(
        input_shape=(SIZE, SIZE, 3), attention=None, classes=4)
    model = keras_coordatt.add_attention(
        plain, after=["stage2_relu", "stage3_relu"])
    added = [layer.name for layer in model.layers
             if "CoordinateAttention" in type(layer).__name__
             or "IdentityInit" in type(layer).__name__]
    assert len(added) == 2, added
    x = keras_coordatt.preprocess_input(_images(8))
    # Identity-initialised blocks: the outputs start as the plain model's.
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               plain.predict(x, verbose=0), atol=1e-6)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss="sparse_categorical_crossentropy")
    kernels = ["stage0", "stage4", "last_project", "predictions"]
    before = [np.array(model.get_layer(n).kernel) for n in kernels]
    history = model.fit(x, np.arange(8) % 4, batch_size=8, epochs=1,
                        verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for name, kernel in zip(kernels, before):
        assert not np.array_equal(kernel, model.get_layer(name).kernel), name


@pytest.mark.skipif(not TF_BACKEND, reason="LiteRT conversion needs TF")
def test_qat_twin_converts_to_all_int8_litert(toy, tmp_path):
    from keras_coordatt import quantization as q

    keras.utils.set_random_seed(0)
    model = registry.get_application("toy_ca")(
        input_shape=(SIZE, SIZE, 3), classes=4)
    x = keras_coordatt.preprocess_input(_images(8))
    twin = q.quantize_model(model, calibration_data=x, calibration_steps=1)
    twin.compile(optimizer=keras.optimizers.SGD(1e-3),
                 loss="sparse_categorical_crossentropy")
    twin.fit(x, np.arange(8) % 4, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "toy.tflite")
    q.convert_qat(twin, int8_io=True, path=path)
    report = q.inspect_tflite(path)
    assert report["input_types"] == ["int8"]
    assert report["output_types"] == ["int8"]
    for name, ins, outs in report["ops"]:
        assert set(ins + outs) <= {"int8", "int32"}, (name, ins, outs)
    assert report["op_counts"]["CONV_2D"] >= 5
    assert report["op_counts"]["DEPTHWISE_CONV_2D"] >= 1
    assert report["op_counts"]["FULLY_CONNECTED"] >= 1
    assert "tensor_types" in report and "float32" not in report[
        "tensor_types"]


def test_export_keras_reads_the_spec(toy, tmp_path):
    from keras_coordatt.export import export_model

    out = tmp_path / "toy_keras"
    metadata = export_model(str(out), "keras", model_name="toy_ca",
                            weights=None, classes=5, num_verify_images=2)
    assert metadata["model"] == "toy_ca"
    assert metadata["input"]["shape"] == [None, SIZE, SIZE, 3]  # its size
    assert metadata["architecture"]["constructor"] == \
        f"{__name__}.ToyCA"
    assert metadata["preprocessing"]["function"] == \
        "keras_coordatt.preprocess_input"
    assert metadata["preprocessing"]["mean"] == list(toy.mean)
    assert metadata["weights"]["source"] == "random"
    assert metadata["verification"]["keras"]["max_abs_diff"] <= \
        metadata["verification"]["tolerance"]
    with open(out / "metadata.json") as f:
        assert json.load(f)["model"] == "toy_ca"
    loaded = keras.saving.load_model(str(out / "model.keras"))
    assert loaded.output.shape == (None, 5)


def test_keras_hub_classes_made_from_the_spec(toy, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    from keras_coordatt.hub import hub_classes

    classes = hub_classes("toy_ca")
    assert hub_classes("toy_ca") is classes  # made once
    assert [cls.__name__ for cls in classes] == [
        "ToyCABackbone", "ToyCAImageClassifier",
        "ToyCAImageClassifierPreprocessor", "ToyCAImageConverter"]
    backbone = classes.backbone(alpha=1.0, attention="se")
    reference = ToyCA(input_shape=(None, None, 3), include_top=False,
                      attention="se")
    assert backbone.count_params() == reference.count_params()
    assert sorted(backbone.pyramid_outputs) == list(toy.pyramid_levels)
    backbone.save_to_preset(str(tmp_path))
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert type(loaded) is classes.backbone and loaded.attention == "se"
    x = keras_coordatt.preprocess_input(_images(2))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                  backbone.predict(x, verbose=0))
    converted = np.asarray(classes.converter()(_images(2)))
    np.testing.assert_allclose(converted, x, atol=2e-6)


@pytest.mark.slow  # 36 s on 2 shared CPU cores, mostly tracing DeepLab
def test_deeplabv3_step_on_the_toy(toy):
    pytest.importorskip("keras_hub")
    from keras_coordatt.training import segmentation

    keras.utils.set_random_seed(0)
    segmenter, encoder = segmentation.build_segmenter(
        "toy_ca", 3, image_size=SIZE, transfer=True)
    assert type(encoder).__name__ == "ToyCABackbone"
    segmenter.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=segmentation.segmentation_loss())
    x = keras_coordatt.preprocess_input(_images(2))
    y = np.random.default_rng(1).integers(0, 3, (2, SIZE, SIZE, 1))
    history = segmenter.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert segmenter.predict(x, verbose=0).shape == (2, SIZE, SIZE, 3)


def test_segmentation_names_an_unknown_model_and_the_accepted(toy):
    from keras_coordatt.training import segmentation

    with pytest.raises(ValueError, match=(
            r"Unknown model. Received: model='resnet50'; accepted: "
            r"mobilenetv2_ca, mobilenext_ca, toy_ca")):
        segmentation.build_segmenter("resnet50", 3)
    with pytest.raises(ValueError, match=(
            r"The model 'toy_ca' has no pyramid level P6")):
        segmentation.hub_backbone_class("toy_ca", levels=("P5", "P6"))


def test_importing_the_package_does_not_import_keras_hub():
    code = ("import sys, keras_coordatt; "
            "from keras_coordatt.applications import registry; "
            "registry.get_application_spec('mobilenetv2_ca'); "
            "print('keras_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"

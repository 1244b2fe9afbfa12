"""keras-hub classes: backbones, presets, converter, a DeepLabV3 on top."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402

import keras_coordatt as kc  # noqa: E402
from keras_coordatt.datasets import digits_scenes  # noqa: E402
from keras_coordatt.hub import MobileNetV2CABackbone  # noqa: E402
from keras_coordatt.hub import MobileNetV2CAImageClassifier  # noqa: E402
from keras_coordatt.hub import MobileNeXtCABackbone  # noqa: E402
from keras_coordatt.hub import MobileNeXtCAImageClassifier  # noqa: E402
from keras_coordatt.hub import (  # noqa: E402
    MobileNetV2CAImageClassifierPreprocessor,
)
from keras_coordatt.hub import (  # noqa: E402
    MobileNeXtCAImageClassifierPreprocessor,
)
from keras_coordatt.hub import MobileNetV2CAImageConverter  # noqa: E402
from keras_coordatt.hub import MobileNeXtCAImageConverter  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB = {
    "v2": (MobileNetV2CABackbone, MobileNetV2CAImageClassifier,
           MobileNetV2CAImageClassifierPreprocessor,
           MobileNetV2CAImageConverter, kc.MobileNetV2CA),
    "next": (MobileNeXtCABackbone, MobileNeXtCAImageClassifier,
             MobileNeXtCAImageClassifierPreprocessor,
             MobileNeXtCAImageConverter, kc.MobileNeXtCA),
}


def _images(n=2, size=64, seed=0):
    return np.random.default_rng(seed).uniform(
        0, 255, (n, size, size, 3)).astype("float32")


def test_importing_the_package_does_not_import_keras_hub():
    code = ("import sys, keras_coordatt; "
            "print('keras_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("net", ["v2", "next"])
def test_backbone_is_the_application_without_top(net, tmp_path):
    backbone_cls, _, _, _, application = HUB[net]
    backbone = backbone_cls(alpha=0.35, attention="ca")
    reference = application(input_shape=(None, None, 3), alpha=0.35,
                            weights=None, include_top=False)
    assert backbone.count_params() == reference.count_params()
    assert sorted(backbone.pyramid_outputs) == ["P1", "P2", "P3", "P4", "P5"]
    # Same layer names: the application's weights file loads by name.
    path = str(tmp_path / "notop.weights.h5")
    reference.save_weights(path)
    backbone.load_weights(path)
    x = np.asarray(kc.preprocess_input(_images()))
    np.testing.assert_array_equal(backbone.predict(x, verbose=0),
                                  reference.predict(x, verbose=0))
    config = backbone.get_config()
    assert {k: config[k] for k in ("alpha", "reduction", "attention",
                                   "image_shape")} == {
        "alpha": 0.35, "reduction": None, "attention": "ca",
        "image_shape": (None, None, 3)}


@pytest.mark.parametrize("net", ["v2", "next"])
def test_backbone_preset_round_trip(net, tmp_path):
    backbone = HUB[net][0](alpha=0.35, attention="se")
    backbone.save_to_preset(str(tmp_path))
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert type(loaded) is HUB[net][0]
    assert loaded.attention == "se"
    x = np.asarray(kc.preprocess_input(_images()))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                  backbone.predict(x, verbose=0))


@pytest.mark.parametrize("net", ["v2", "next"])
def test_classifier_preset_round_trip(net, tmp_path):
    backbone_cls, classifier_cls, preprocessor_cls, converter_cls, _ = HUB[net]
    classifier = classifier_cls(
        backbone=backbone_cls(alpha=0.35), num_classes=7,
        preprocessor=preprocessor_cls(converter_cls(image_size=(64, 64))))
    classifier.save_to_preset(str(tmp_path))
    loaded = keras_hub.models.ImageClassifier.from_preset(str(tmp_path))
    assert type(loaded) is classifier_cls
    images = _images(3, size=80)  # resized to 64x64 by the converter
    out = loaded.predict(images, verbose=0)
    assert out.shape == (3, 7)
    np.testing.assert_array_equal(out, classifier.predict(images, verbose=0))


def test_converter_is_preprocess_input():
    images = _images(4)
    converted = np.asarray(MobileNetV2CAImageConverter()(images))
    expected = np.asarray(kc.preprocess_input(images))
    np.testing.assert_allclose(converted, expected, atol=2e-6)


def test_deeplabv3_on_the_backbone_learns_digit_scenes(net="v2"):
    # Rate 1: P5 is 2x2 at 64x64, and larger rates only read padding
    # (`training.segmentation.aspp_dilation_rates`), slowly on CPU.
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=HUB[net][0](alpha=0.35),
        spatial_pyramid_pooling_key="P5", upsampling_size=8,
        dilation_rates=[1], low_level_feature_key="P2",
        image_shape=(64, 64, 3))
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=backbone, num_classes=11)
    segmenter.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    scenes = digits_scenes(16, image_size=64)
    x = np.asarray(kc.preprocess_input(scenes["images"].astype("float32")))
    y = scenes["masks"][..., None]
    history = segmenter.fit(x, y, epochs=4, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert segmenter.predict(x[:2], verbose=0).shape == (2, 64, 64, 11)


# `export --format keras-hub` on torch, in a subprocess: the application,
# its keras-hub preset (verified by the exporter) and the preset loaded
# back through keras-hub; prints the exporter's summary and the largest
# difference to the application.
_TORCH_EXPORT = """
import json, sys
import numpy as np, keras, keras_hub
import keras_coordatt as kc
from keras_coordatt.export import cli
folder = sys.argv[1]
model = kc.MobileNetV2CA(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                         classes=5)
model.save_weights(folder + "/five.weights.h5")
status = cli.main(["--model", "mobilenetv2_ca", "--alpha", "0.35",
                   "--weights", folder + "/five.weights.h5",
                   "--format", "keras-hub", "--input-size", "32",
                   "--classes", "5", "--output", folder + "/preset"])
task = keras_hub.models.ImageClassifier.from_preset(folder + "/preset")
x = np.random.default_rng(0).uniform(-2, 2, (2, 32, 32, 3)).astype("float32")
diff = np.abs(keras.ops.convert_to_numpy(task(x, training=False))
              - model.predict(x, verbose=0)).max()
print("RESULT " + json.dumps({"backend": keras.backend.backend(),
                              "status": status, "diff": float(diff)}))
"""


def test_keras_hub_export_on_torch(tmp_path):
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", _TORCH_EXPORT, str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout[:out.stdout.rindex("RESULT")])
    result = json.loads(out.stdout.splitlines()[-1][len("RESULT "):])
    assert result["backend"] == "torch"
    assert result["status"] == 0
    check = summary["verification"]
    assert check["keras_hub"]["max_abs_diff"] <= check["tolerance"]
    assert check["keras_hub"]["top1_agreement"] == 1.0
    assert result["diff"] <= 1e-5
    assert os.path.isfile(tmp_path / "preset" / "task.json")


# Loading what the package saved, in a fresh process that imports
# `keras_coordatt` only (keras-hub comes in through `from_preset`'s own
# module or Keras' deserializer): the classes must be registered by then.
_LOAD_FRESH = """
import sys
import numpy as np
{imports}
folder, kind = sys.argv[1], sys.argv[2]
if kind == "preset":
    import keras_hub
    model = keras_hub.models.ImageClassifier.from_preset(folder)
else:
    import keras
    model = keras.saving.load_model(folder + "/segmenter.keras")
x = np.load(folder + "/x.npy")
np.save(folder + "/out.npy", np.asarray(model.predict(x, verbose=0)))
encoder = getattr(model.backbone, "image_encoder", model.backbone)
print(type(model).__name__, type(encoder).__name__)
"""


def _segmenter_file(folder):
    from keras_coordatt.training.segmentation import build_segmenter
    segmenter, _ = build_segmenter("mobilenetv2_ca", 3, image_size=64,
                                alpha=0.35)
    segmenter.save(str(folder / "segmenter.keras"))
    return segmenter


@pytest.mark.parametrize("kind,imports", [
    ("preset", "import keras_coordatt"),
    ("preset", "import keras_hub, keras_coordatt"),
    ("segmenter", "import keras_coordatt"),
])
def test_saved_models_load_after_importing_the_package_only(
        kind, imports, tmp_path):
    if kind == "preset":
        model = MobileNetV2CAImageClassifier(
            backbone=MobileNetV2CABackbone(alpha=0.35), num_classes=4,
            preprocessor=MobileNetV2CAImageClassifierPreprocessor(
                MobileNetV2CAImageConverter(image_size=(64, 64))))
        model.save_to_preset(str(tmp_path))
        x = _images(2, size=64)
    else:
        model = _segmenter_file(tmp_path)
        x = np.asarray(kc.preprocess_input(_images(2, size=64)))
    np.save(tmp_path / "x.npy", x)
    code = _LOAD_FRESH.format(imports=imports)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), kind],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MobileNetV2CABackbone" in out.stdout.splitlines()[-1]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("key,value,match", [
    ("alpha", 300, r"alpha=300; accepted: up to 4\.0 \(keras_coordatt"),
    ("image_shape", [100000, 100000, 3], r"sides of 1\.\.4096 pixels"),
])
def test_preset_architecture_is_bounded_before_building(
        key, value, match, tmp_path):
    MobileNetV2CABackbone(alpha=0.35).save_to_preset(str(tmp_path))
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["config"][key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        keras_hub.models.Backbone.from_preset(str(tmp_path))

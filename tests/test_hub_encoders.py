"""keras-hub backbones with coordinate attention inserted by
`add_attention`, as the image encoders of keras-hub's dense heads: the
pyramid keeps its keys and strides, and DeepLabV3 and RetinaNet train on
them (finite, falling loss). The encoder is a keras-hub `Backbone`
(`InsertedBackbone`) that saves and loads with its pyramid."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_coordatt as kc
from keras_coordatt.datasets import digits_scenes
from keras_coordatt.insertion import IdentityInitAttention

keras_hub = pytest.importorskip("keras_hub")
SIZE = 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _resnet():
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 64, 64, 64],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block",
        image_shape=(SIZE, SIZE, 3))


def _cspnet():
    return keras_hub.models.CSPNetBackbone(
        stem_filters=16, stem_kernel_size=3, stem_strides=2,
        stackwise_depth=[1, 1, 1, 1], stackwise_strides=2,
        stackwise_num_filters=[16, 32, 64, 128], block_type="dark_block",
        stage_type="csp", expand_ratio=[2.0], bottle_ratio=[0.5],
        image_shape=(SIZE, SIZE, 3))


# name -> (backbone, the layers CA goes after)
ENCODERS = {
    "resnet": (_resnet, r"stack\d_block\d_out"),
    "cspnet": (_cspnet, None),  # after each pyramid level's layer
}


def _with_attention(name):
    keras.utils.set_random_seed(0)
    make, pattern = ENCODERS[name]
    backbone = make()
    if pattern is None:
        levels = {id(t) for t in backbone.pyramid_outputs.values()}
        after = [layer.name for layer in backbone.layers
                 if id(layer.output) in levels]
    else:
        after = [layer.name for layer in backbone.layers
                 if re.fullmatch(pattern, layer.name)]
    encoder = kc.add_attention(backbone, after=after)
    blocks = [layer for layer in encoder.layers
              if isinstance(layer, IdentityInitAttention)]
    assert len(blocks) == len(after) >= 4
    return backbone, encoder


def _strides(pyramid):
    return {key: SIZE // tensor.shape[1] for key, tensor in pyramid.items()}


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_pyramid_keys_and_strides_unchanged(name):
    backbone, encoder = _with_attention(name)
    assert sorted(encoder.pyramid_outputs) == sorted(backbone.pyramid_outputs)
    assert _strides(encoder.pyramid_outputs) == _strides(
        backbone.pyramid_outputs)
    # Identity start: the pyramid computes what the backbone's does.
    x = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3))
    levels = sorted(backbone.pyramid_outputs)
    ours = keras.Model(encoder.inputs,
                       [encoder.pyramid_outputs[k] for k in levels])
    theirs = keras.Model(backbone.inputs,
                         [backbone.pyramid_outputs[k] for k in levels])
    for a, b in zip(ours.predict(x, verbose=0), theirs.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _falling(losses):
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_deeplabv3_trains_on_the_encoder(name):
    _, encoder = _with_attention(name)
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=keras_hub.models.DeepLabV3Backbone(
            image_encoder=encoder, spatial_pyramid_pooling_key="P5",
            upsampling_size=8, dilation_rates=[1],
            low_level_feature_key="P2", image_shape=(SIZE, SIZE, 3)),
        num_classes=11)
    segmenter.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    scenes = digits_scenes(16, image_size=SIZE)
    x = scenes["images"].astype("float32") / 127.5 - 1
    history = segmenter.fit(x, scenes["masks"][..., None], epochs=4,
                            batch_size=16, verbose=0)
    _falling(history.history["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_retinanet_trains_on_the_encoder(name):
    _, encoder = _with_attention(name)
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=5,
        use_p5=False, image_shape=(SIZE, SIZE, 3))
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=10,
        anchor_generator=keras_hub.layers.AnchorGenerator(
            "yxyx", min_level=3, max_level=5, num_scales=1,
            aspect_ratios=[1.0], anchor_size=4.0),
        bounding_box_format="yxyx")
    detector.compile(optimizer=keras.optimizers.Adam(1e-3))
    scenes = digits_scenes(16, image_size=SIZE)
    x = scenes["images"].astype("float32") / 127.5 - 1
    # (x_min, y_min, x_max, y_max) -> yxyx; the -1 padding stays -1.
    y = {"boxes": scenes["boxes"][..., [1, 0, 3, 2]].astype("float32"),
         "labels": scenes["classes"].astype("int32")}
    history = detector.fit(x, y, epochs=4, batch_size=16, verbose=0)
    _falling(history.history["loss"])


# ------------------------------------------------ saving the inserted encoder


def _blended(encoder, scale=0.5):
    """`encoder` with every block's scale at `scale`, so that the blocks'
    weights reach the outputs (at 0 a lost block would go unseen)."""
    for layer in encoder.layers:
        if isinstance(layer, IdentityInitAttention):
            layer.scale.assign(scale)
    return encoder


def _pyramid_model(encoder):
    levels = sorted(encoder.pyramid_outputs)
    return keras.Model(encoder.inputs,
                       [encoder.pyramid_outputs[k] for k in levels])


def _images(n=2):
    return np.random.default_rng(1).uniform(
        -1, 1, (n, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoder_is_a_hub_backbone_whose_config_names_the_pyramid(name):
    from keras_coordatt.hub import InsertedBackbone

    backbone, encoder = _with_attention(name)
    assert isinstance(encoder, InsertedBackbone)
    assert isinstance(encoder, keras_hub.models.Backbone)
    config = encoder.get_config()
    layers = config["pyramid_layers"]
    assert sorted(layers) == sorted(backbone.pyramid_outputs)
    # Every level is read after its block (identity start: same values).
    assert all(encoder.get_layer(v).__class__ is IdentityInitAttention
               for v in layers.values()), layers
    json.dumps(config)  # all of it JSON (a preset's config.json)
    again = InsertedBackbone.from_config(config)
    again.set_weights(_blended(encoder).get_weights())
    assert _strides(again.pyramid_outputs) == _strides(
        backbone.pyramid_outputs)
    x = _images()
    for a, b in zip(_pyramid_model(again).predict(x, verbose=0),
                    _pyramid_model(encoder).predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def resnet_config():
    return _with_attention("resnet")[1].get_config()


@pytest.mark.parametrize("layers, match", [
    ({"P2": "stack0_block0_out_ca", "P3": "nope", "P4": "gone"},
     r"names layers that are not in the graph of 'res_net_backbone\w*': "
     r"\['gone', 'nope'\]"),
    ({"P2": 3}, r"`pyramid_layers` must be a non-empty dict .* Received: "
                r"pyramid_layers=\{'P2': 3\}"),
    ({}, r"non-empty dict"),
    ({"P2": "pool1_pool"}, None),  # exists: accepted
])
def test_untrusted_pyramid_layers_are_checked(resnet_config, layers, match):
    from keras_coordatt.hub import InsertedBackbone

    config = dict(resnet_config)
    config["pyramid_layers"] = layers
    if match is None:
        loaded = InsertedBackbone.from_config(config)
        assert loaded.pyramid_layers == layers
    else:
        with pytest.raises(ValueError, match=match):
            InsertedBackbone.from_config(config)


def test_preset_round_trip(tmp_path):
    _, encoder = _with_attention("cspnet")
    _blended(encoder).save_to_preset(str(tmp_path))
    loaded = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert type(loaded).__name__ == "InsertedBackbone"
    assert loaded.pyramid_layers == encoder.pyramid_layers
    x = _images()
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               encoder.predict(x, verbose=0), atol=1e-5)


# A fresh process that imports `keras_coordatt` only: `load_model` meets
# `keras_coordatt>InsertedBackbone` before anything imports keras-hub.
_LOAD_FRESH = """
import json, sys
import numpy as np
import keras_coordatt
import keras
folder = sys.argv[1]
assert "keras_hub" not in sys.modules
model = keras.saving.load_model(folder + "/encoder.keras")
np.save(folder + "/out.npy", model.predict(np.load(folder + "/x.npy"),
                                           verbose=0))
print(json.dumps([type(model).__name__, {
    k: list(v.shape[1:3]) for k, v in model.pyramid_outputs.items()}]))
"""


# One backbone in the fast tests: each fresh process imports TensorFlow.
@pytest.mark.parametrize("name", [
    "resnet", pytest.param("cspnet", marks=pytest.mark.slow)])
def test_saved_encoder_loads_in_a_fresh_process(name, tmp_path):
    _, encoder = _with_attention(name)
    _blended(encoder).save(str(tmp_path / "encoder.keras"))
    x = _images()
    np.save(tmp_path / "x.npy", x)
    out = subprocess.run([sys.executable, "-c", _LOAD_FRESH, str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    kind, shapes = json.loads(out.stdout.strip().splitlines()[-1])
    assert kind == "InsertedBackbone"
    assert shapes == {k: list(v.shape[1:3])
                      for k, v in encoder.pyramid_outputs.items()}
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               encoder.predict(x, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_dense_heads_train_on_the_loaded_encoder(tmp_path):
    _, encoder = _with_attention("resnet")
    _blended(encoder).save(str(tmp_path / "encoder.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "encoder.keras"))
    scenes = digits_scenes(4, image_size=SIZE)
    x = scenes["images"].astype("float32") / 127.5 - 1
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=keras_hub.models.DeepLabV3Backbone(
            image_encoder=loaded, spatial_pyramid_pooling_key="P5",
            upsampling_size=8, dilation_rates=[1],
            low_level_feature_key="P2", image_shape=(SIZE, SIZE, 3)),
        num_classes=11)
    segmenter.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    scales = [layer.scale for layer in loaded.layers
              if isinstance(layer, IdentityInitAttention)]
    assert len(scales) == 4
    np.testing.assert_allclose([float(s) for s in scales], 0.5)
    loss = segmenter.train_on_batch(x, scenes["masks"][..., None])
    assert np.all(np.isfinite(loss)), loss
    # One Adam step moves every block's scale (by about the rate).
    moved = np.abs([float(s) - 0.5 for s in scales])
    assert np.all((moved > 1e-4) & (moved < 1e-2)), moved
    # The segmenter with the loaded encoder saves and loads again.
    segmenter.save(str(tmp_path / "segmenter.keras"))
    again = keras.saving.load_model(str(tmp_path / "segmenter.keras"))
    np.testing.assert_allclose(again.predict(x, verbose=0),
                               segmenter.predict(x, verbose=0), atol=1e-5)


# ---------------------------------- `train --model FILE.keras`, dense heads


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory):
    """`{kind: path}`: the tiny ResNet as saved by keras-hub (`plain`), with
    CA inserted (`ca`), and a classifier without a pyramid (`classifier`)."""
    folder = tmp_path_factory.mktemp("encoders")
    backbone, encoder = _with_attention("resnet")
    paths = {kind: str(folder / f"{kind}.keras")
             for kind in ("plain", "ca", "classifier")}
    backbone.save(paths["plain"])
    _blended(encoder).save(paths["ca"])
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(11)(x)).save(paths["classifier"])
    return paths


def test_dense_tasks_name_the_levels_they_read():
    from keras_coordatt.training import detection
    from keras_coordatt.training import segmentation
    from keras_coordatt.training.models import check_model
    from keras_coordatt.training.tasks import get_task

    assert get_task("segmentation").encoder_levels == segmentation.LEVELS \
        == ("P2", "P5")
    assert get_task("detection").encoder_levels == detection.LEVELS == (
        "P3", "P4", "P5")
    for task in ("classification", "segmentation", "detection"):
        check_model("any/encoder.keras", task)
        check_model("keras:MobileNetV2", task)  # a pyramid by strides
    with pytest.raises(ValueError, match=r"task 'segmentation'.*"
                       r"model='keras:VGG16'"):
        check_model("keras:VGG16", "segmentation")


@pytest.mark.parametrize("kind", ["plain", "ca"])
def test_cli_takes_an_encoder_file_for_dense_tasks(encoder_files, kind,
                                                   capsys):
    from keras_coordatt.training import cli as train_cli

    path = encoder_files[kind]
    assert train_cli.main(["--task", "segmentation", "--model", path,
                           "--print-config"]) == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    # The file's input size becomes the run's.
    assert (printed["task"], printed["model"], printed["image_size"]) == (
        "segmentation", path, SIZE)
    assert train_cli.main(["--task", "detection", "--model", path,
                           "--alpha", "0.5", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--alpha does not apply to a .keras file: the "
                        f"file fixes its network and weights. Received: "
                        f"alpha=0.5 with model={path!r}"), err


@pytest.mark.parametrize("task, levels", [
    ("segmentation", "P2, P5"), ("detection", "P3, P4, P5")])
def test_a_file_without_the_pyramid_is_named(encoder_files, task, levels):
    from keras_coordatt.training import detection
    from keras_coordatt.training import segmentation

    build = {"segmentation": segmentation.build_segmenter,
             "detection": detection.build_detector}[task]
    path = encoder_files["classifier"]
    with pytest.raises(ValueError) as info:
        build(path, 11, image_size=SIZE)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"The model file {path} is no encoder for {task}: its head needs "
        f"pyramid_outputs {levels}, the file's model ")
    assert message.endswith(f"has none (save a keras-hub Backbone, with or "
                            f"without add_attention, as .keras). Received: "
                            f"model={path!r}")
    with pytest.raises(ValueError, match=r"takes 64x64 images\. Received: "
                       r"image_size=96; pass image_size=64"):
        build(encoder_files["ca"], 11, image_size=96)
    with pytest.raises(ValueError, match=r"holds its weights; `weights` "
                       r"does not apply to it\. Received: "
                       r"weights='imagenet'"):
        build(encoder_files["ca"], 11, image_size=SIZE, weights="imagenet")


def _cli_segmenter_blocks(tmp_path, capsys, model_flags):
    """`train --task segmentation` with `model_flags` for one epoch on tfds'
    mock oxford_iiit_pet; checks the run's metrics and returns the number
    of attention blocks in the saved segmenter's InsertedBackbone."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from keras_coordatt.training import cli as train_cli

    out = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=8):
        code = train_cli.main([
            "--task", "segmentation", "--dataset", "tfds:oxford_iiit_pet",
            *model_flags, "--epochs", "1", "--batch-size", "4",
            "--output-dir", str(out),
            "--set", "bn_recalibration_steps=1", "--set", "tensorboard=false",
        ])
    assert code == 0, capsys.readouterr().err[-2000:]
    with open(out / "results.json") as f:
        metrics = json.load(f)["metrics"]
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["mean_iou"] <= 1
    model = keras.saving.load_model(str(out / "model.keras"))
    encoder = model.backbone.image_encoder
    assert type(encoder).__name__ == "InsertedBackbone"
    return sum(isinstance(layer, IdentityInitAttention)
               for layer in encoder.layers)


@pytest.mark.slow
def test_cli_trains_a_segmenter_on_an_encoder_file(encoder_files, tmp_path,
                                                   capsys):
    # The trained segmenter's encoder is the file's, blocks included.
    assert _cli_segmenter_blocks(
        tmp_path, capsys, ["--model", encoder_files["ca"]]) == 4


@pytest.mark.slow
def test_train_detects_on_an_encoder_file(encoder_files, tmp_path):
    pytest.importorskip("pycocotools")
    from keras_coordatt.training.data import detection as dd
    from keras_coordatt.training.fit import train

    source = dd.load_digits_scenes(SIZE, examples={"train": 16,
                                                   "validation": 8})
    result = train("digits_det", source=source, verbose=0, overrides={
        "model": encoder_files["ca"], "output_dir": str(tmp_path),
        "tensorboard": False, "epochs": 1, "per_replica_batch_size": 8,
        "bn_recalibration_steps": 1})
    assert np.isfinite(result.metrics["loss"])
    assert 0.0 <= result.metrics["map"] <= 1.0
    assert result.optimizer_iterations == 2
    assert result.model.name == "retinanet_ca"


def test_keras_applications_encoders_have_a_pyramid_by_strides():
    """A keras.applications network has no pyramid: as a dense encoder it
    gets its last map at each stride (keras-hub's P_k at stride 2**k),
    read after the inserted blocks."""
    from keras_coordatt.training.models import keras_family
    from keras_coordatt.training.segmentation import keras_encoder

    family = keras_family("keras:MobileNetV2")
    encoder = keras_encoder(family, ("P2", "P5"), image_size=64,
                            alpha=0.35)
    assert type(encoder).__name__ == "InsertedBackbone"
    assert {key: tuple(out.shape[1:3]) for key, out in
            encoder.pyramid_outputs.items()} == {
        "P1": (32, 32), "P2": (16, 16), "P3": (8, 8), "P4": (4, 4),
        "P5": (2, 2)}
    assert encoder.pyramid_layers["P2"] == "block_3_expand_relu"
    assert encoder.pyramid_layers["P5"] == "out_relu"
    assert sum(isinstance(layer, IdentityInitAttention)
               for layer in encoder.layers) == 17
    plain = keras_encoder(family, ("P2", "P5"), image_size=64, alpha=0.35,
                          attention=False)
    assert plain.pyramid_layers == encoder.pyramid_layers
    assert not any(isinstance(layer, IdentityInitAttention)
                   for layer in plain.layers)
    with pytest.raises(ValueError, match=(
            r"keras:MobileNetV2 at 64x64 has no pyramid level P6 \(it has "
            r"P1, P2, P3, P4, P5\)\. Received: image_size=64")):
        keras_encoder(family, ("P6",), image_size=64, alpha=0.35)


@pytest.mark.slow
def test_cli_trains_a_segmenter_on_a_keras_application(tmp_path, capsys):
    assert _cli_segmenter_blocks(tmp_path, capsys, [
        "--model", "keras:MobileNetV2", "--alpha", "0.35", "--attention",
        "ca", "--image-size", "64"]) == 17

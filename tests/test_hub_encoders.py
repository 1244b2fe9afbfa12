"""keras-hub backbones with coordinate attention inserted by
`add_attention`, as the image encoders of keras-hub's dense heads: the
pyramid keeps its keys and strides, and DeepLabV3 and RetinaNet train on
them (finite, falling loss)."""

import re

import keras
import numpy as np
import pytest

import keras_coordatt as kc
from keras_coordatt.datasets import digits_scenes
from keras_coordatt.insertion import IdentityInitAttention

keras_hub = pytest.importorskip("keras_hub")
SIZE = 64


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

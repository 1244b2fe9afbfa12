"""Feature pyramids of the application networks (`pyramid_outputs`)."""

import math

import keras
import numpy as np
import pytest

from keras_coordatt import MobileNetV2CA
from keras_coordatt import MobileNeXtCA
from keras_coordatt.applications import pyramid_outputs
from keras_coordatt.applications.pyramid import pyramid_layer_names

V2_LEVELS = {"P1": "block_1_expand_relu", "P2": "block_3_expand_relu",
             "P3": "block_6_expand_relu", "P4": "block_13_expand_relu",
             "P5": "out_relu"}
NEXT_LEVELS = {"P1": "block_0_expand_relu", "P2": "block_2_expand_relu",
               "P3": "block_5_expand_relu", "P4": "block_12_expand_relu",
               "P5": "block_19_dw2_BN"}
# Channels at alpha 0.35 (the expanded widths at P1-P4, the last map at P5).
CHANNELS = {"v2": (48, 48, 96, 192, 1280), "next": (32, 64, 104, 200, 1280)}
NETWORKS = {"v2": (MobileNetV2CA, V2_LEVELS),
            "next": (MobileNeXtCA, NEXT_LEVELS)}


@pytest.mark.parametrize("net", ["v2", "next"])
@pytest.mark.parametrize("size, include_top", [
    ((64, 64), False), ((96, 96), True), ((100, 80), False),
    ((225, 193), True)])
def test_levels_are_the_last_layer_of_each_stride(net, size, include_top):
    constructor, levels = NETWORKS[net]
    model = constructor(input_shape=size + (3,), alpha=0.35, weights=None,
                        include_top=include_top, classes=10)
    assert pyramid_layer_names(model) == levels
    for k, key in enumerate(sorted(model.pyramid_outputs), start=1):
        shape = tuple(model.pyramid_outputs[key].shape)
        stride = 2 ** k
        assert shape == (None, math.ceil(size[0] / stride),
                         math.ceil(size[1] / stride), CHANNELS[net][k - 1])


@pytest.mark.parametrize("attention", [None, "se", "cbam"])
def test_levels_do_not_depend_on_the_attention_kind(attention):
    model = MobileNetV2CA(input_shape=(64, 64, 3), alpha=0.35, weights=None,
                          include_top=False, attention=attention)
    assert pyramid_layer_names(model) == V2_LEVELS


@pytest.mark.parametrize("net", ["v2", "next"])
def test_any_input_size(net):
    constructor, levels = NETWORKS[net]
    model = constructor(input_shape=(None, None, 3), alpha=0.35,
                        weights=None, include_top=False)
    assert pyramid_layer_names(model) == levels
    features = keras.Model(model.inputs, model.pyramid_outputs)
    out = features.predict(np.zeros((1, 70, 90, 3), "float32"), verbose=0)
    for k in range(1, 6):
        assert out[f"P{k}"].shape[1:3] == (math.ceil(70 / 2 ** k),
                                          math.ceil(90 / 2 ** k))


def test_channels_first_levels():
    keras.config.set_image_data_format("channels_first")
    try:
        model = MobileNetV2CA(input_shape=(3, 64, 96), alpha=0.35,
                              weights=None, include_top=False)
        assert pyramid_layer_names(model) == V2_LEVELS
        p3 = model.pyramid_outputs["P3"]
        assert tuple(p3.shape) == (None, 96, 8, 12)
    finally:
        keras.config.set_image_data_format("channels_last")


def test_pyramid_after_keras_save_and_load(tmp_path):
    model = MobileNeXtCA(input_shape=(64, 64, 3), alpha=0.35, weights=None,
                         include_top=False)
    path = tmp_path / "backbone.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    pyramid = pyramid_outputs(loaded)
    assert pyramid_layer_names(loaded) == NEXT_LEVELS
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    ref = keras.Model(model.inputs, model.pyramid_outputs).predict(x, verbose=0)
    out = keras.Model(loaded.inputs, pyramid).predict(x, verbose=0)
    for key in ref:
        np.testing.assert_array_equal(out[key], ref[key])


def test_a_model_without_the_strides_is_a_clear_error():
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    with pytest.raises(ValueError, match="no feature map at the strides of "
                                         "P2, P3, P4, P5"):
        pyramid_outputs(keras.Model(inputs, outputs))

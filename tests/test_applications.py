import os
import re
import warnings

import keras
import numpy as np
import pytest

from keras_coordatt import CoordinateAttention
from keras_coordatt import MobileNetV2CA
from keras_coordatt import MobileNeXtCA
from keras_coordatt import decode_predictions
from keras_coordatt import SqueezeExcitation
from keras_coordatt import preprocess_input
from keras_coordatt.applications import arguments as utils
from keras_coordatt.applications import mobilenet_v2_ca
from keras_coordatt.layers.registry import attention_names


def trainable_params(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


# Measured on the authors' own definitions (../shared/reference).
@pytest.mark.parametrize(
    "alpha, expected",
    [(1.4, 6_958_700), (1.0, 3_950_648), (0.75, 2_891_631),
     (0.5, 2_095_568), (0.35, 1_750_970)],
)
def test_mobilenetv2_ca_parameter_counts(alpha, expected):
    model = MobileNetV2CA(alpha=alpha, weights=None)
    assert trainable_params(model) == expected


def test_attention_adds_the_documented_parameters():
    with_ca = trainable_params(MobileNetV2CA(weights=None))
    without = trainable_params(MobileNetV2CA(weights=None, attention=False))
    assert with_ca - without == 445_776


def test_mobilenext_ca_parameter_counts():
    assert trainable_params(MobileNeXtCA()) == 3_971_626
    assert trainable_params(MobileNeXtCA(attention=False)) == 3_535_416


# The paper's table: MobileNetV2 3.5M, + SE 3.89M, + CBAM 3.89M, + CA 3.95M;
# SE and CBAM at CA's places with their default reduction 24.
@pytest.mark.parametrize("attention,v2,mobilenext", [
    ("ca", 3_950_648, 3_971_626), ("se", 3_890_136, 3_914_784),
    ("cbam", 3_891_736, 3_916_284), (None, 3_504_872, 3_535_416)])
def test_attention_kinds_parameter_counts(attention, v2, mobilenext):
    model = MobileNetV2CA(weights=None, attention=attention)
    assert trainable_params(model) == v2
    assert trainable_params(MobileNeXtCA(attention=attention)) == mobilenext
    blocks = [l.name for l in model.layers
              if l.name.endswith(f"_{attention}") and l.name.startswith(
                  "block_")]
    assert blocks == ([f"block_{i}_{attention}" for i in range(1, 17)]
                      if attention else [])


def test_attention_callable_gets_the_channel_count():
    seen = []

    def block(channels):
        seen.append(channels)
        return SqueezeExcitation(reduction=16, name=f"mine_{len(seen)}")

    model = MobileNetV2CA(weights=None, attention=block, alpha=0.35,
                          include_top=False, input_shape=(32, 32, 3))
    assert seen[:3] == [48, 48, 48] and len(seen) == 16
    assert model.get_layer("mine_16").channels == seen[-1]
    with pytest.raises(ValueError, match="attention='se'"):
        MobileNetV2CA(attention="se")


def _ca_layers(model):
    return [l for l in model.layers if isinstance(l, CoordinateAttention)]


def test_attention_placement_and_names():
    v2 = MobileNetV2CA(weights=None)
    names = [l.name for l in v2.layers]
    assert len(names) == len(set(names))
    # Every block with expansion > 1 (blocks 1..16), none in block 0.
    assert [l.name for l in _ca_layers(v2)] == [
        f"block_{i}_ca" for i in range(1, 17)
    ]
    assert v2.get_layer("block_16_ca").hidden_channels == 30  # 960 // 32
    for name in ("Conv1", "bn_Conv1", "expanded_conv_depthwise",
                 "block_1_expand", "block_1_depthwise_pad", "block_2_add",
                 "block_16_project_BN", "Conv_1", "out_relu", "dropout",
                 "predictions"):
        v2.get_layer(name)
    assert v2.get_layer("dropout").rate == 0.1
    assert v2.get_layer("bn_Conv1").epsilon == 1e-5
    assert v2.get_layer("bn_Conv1").momentum == 0.9
    assert names == [l.name for l in MobileNetV2CA(weights=None).layers]

    nx = MobileNeXtCA()
    # After the first depthwise conv of the 15 blocks that start with one.
    assert [l.name for l in _ca_layers(nx)] == [
        f"block_{i}_ca" for i in (0, 1, 3, 4, 6, 7, 9, 10, 11, 13, 14, 15,
                                  17, 18, 19)
    ]
    assert nx.get_layer("dropout").rate == 0.2
    with pytest.raises(ValueError):
        nx.get_layer("block_8_dw1")  # 288 -> 384, stride 1: no depthwise


def test_stride_two_convolutions_pad_symmetrically():
    model = MobileNetV2CA(weights=None, include_top=False,
                          input_shape=(224, 224, 3))
    pads = [l for l in model.layers
            if isinstance(l, keras.layers.ZeroPadding2D)]
    assert len(pads) == 5  # stem + 4 stride-2 depthwise convs
    assert all(l.padding == ((1, 1), (1, 1)) for l in pads)
    # Odd sizes shrink like PyTorch: floor((n + 2 - 3) / 2) + 1.
    model = MobileNetV2CA(weights=None, include_top=False,
                          input_shape=(225, 193, 3))
    assert model.output.shape == (None, 8, 7, 1280)


@pytest.mark.parametrize("builder, channels", [(MobileNetV2CA, 1280),
                                               (MobileNeXtCA, 1280)])
def test_pooling_options(builder, channels):
    base = {"weights": None, "include_top": False}
    assert builder(**base).output.shape == (None, None, None, channels)
    assert builder(input_shape=(160, 128, 3), **base).output.shape == (
        None, 5, 4, channels)
    assert builder(pooling="avg", **base).output.shape == (None, channels)
    assert builder(pooling="max", **base).output.shape == (None, channels)
    assert builder(weights=None, classes=7).output.shape == (None, 7)
    assert builder(alpha=1.4, pooling="avg", **base).output.shape[-1] == (
        1792 if builder is MobileNetV2CA else 1792)


def test_keras_round_trip_and_weights_file(tmp_path):
    x = np.random.default_rng(0).uniform(-2, 2, (2, 96, 96, 3)).astype(
        "float32")
    for builder in (MobileNetV2CA, MobileNeXtCA):
        model = builder(alpha=0.35, weights=None, input_shape=(96, 96, 3),
                        classes=10)
        expected = keras.ops.convert_to_numpy(model(x))
        path = str(tmp_path / f"{model.name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(loaded(x)), expected)
        weights_path = str(tmp_path / f"{model.name}.weights.h5")
        model.save_weights(weights_path)
        for source in (weights_path, path):
            again = builder(alpha=0.35, weights=source,
                            input_shape=(96, 96, 3), classes=10)
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(again(x)), expected)


def test_backbone_in_functional_and_subclassed_models():
    backbone = MobileNetV2CA(alpha=0.35, weights=None, include_top=False,
                             input_shape=(64, 64, 3), pooling="avg")
    inp = keras.Input((64, 64, 3))
    head = keras.layers.Dense(5)(backbone(inp))
    functional = keras.Model(inp, head)

    class Classifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.backbone = MobileNeXtCA(alpha=0.35, include_top=False,
                                         pooling="avg")
            self.head = keras.layers.Dense(3)

        def call(self, x, training=False):
            return self.head(self.backbone(x, training=training))

    x = np.zeros((2, 64, 64, 3), "float32")
    assert functional.predict(x, verbose=0).shape == (2, 5)
    assert Classifier()(x).shape == (2, 3)
    # input_tensor: the model follows the tensor's own inputs.
    inp = keras.Input((64, 64, 3))
    scaled = keras.layers.Rescaling(1 / 255.0)(inp)
    model = MobileNeXtCA(alpha=0.35, include_top=False, input_tensor=scaled)
    assert model.inputs[0] is inp
    assert model.output.shape == (None, 2, 2, 1280)


def test_channels_first_builds_the_same_network():
    keras.config.set_image_data_format("channels_first")
    try:
        model = MobileNetV2CA(weights=None)
        assert model.input.shape == (None, 3, 224, 224)
        assert trainable_params(model) == 3_950_648
        assert _ca_layers(model)[0].data_format == "channels_first"
        assert trainable_params(MobileNeXtCA()) == 3_971_626
    finally:
        keras.config.set_image_data_format("channels_last")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": "imagenet", "classes": 10},
         r"classes=10\. For other classes.*--config transfer"),
        ({"weights": "imagenet", "alpha": 0.5}, "alpha=0.5"),
        ({"weights": "imagenet", "reduction": 16}, "reduction=16"),
        ({"weights": None, "input_shape": (31, 64, 3), "include_top": False},
         "at least 32x32"),
        ({"weights": None, "input_shape": (None, None, 3)},
         "static `input_shape`"),
        ({"weights": None, "input_shape": (64, 64)},
         "three positive integers"),
        ({"weights": "imagenet", "input_shape": (200, 200, 3)},
         r"should be \(224, 224, 3\)"),
        ({"weights": None, "include_top": False, "pooling": "sum"},
         "pooling='sum'"),
        ({"weights": None, "alpha": 0}, "alpha=0"),
        ({"weights": None, "reduction": 0}, "reduction=0"),
    ],
)
def test_keras_style_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MobileNetV2CA(**kwargs)


BUILDERS = [MobileNetV2CA, MobileNeXtCA]


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize(
    "argument, value, received",
    [
        ("alpha", float("nan"), "alpha=nan"),
        ("alpha", float("inf"), "alpha=inf"),
        ("alpha", "1.0", "alpha='1.0'"),
        ("alpha", True, "alpha=True"),
        ("alpha", None, "alpha=None"),
        ("input_shape", (32, 32, 0), r"input_shape=\(32, 32, 0\)"),
        ("input_shape", (32, 32.5, 3), r"input_shape=\(32, 32.5, 3\)"),
        ("input_shape", ("32", 32, 3), r"input_shape=\('32', 32, 3\)"),
        ("input_shape", (32, 32, None), r"input_shape=\(32, 32, None\)"),
        ("input_shape", (True, 64, 3), r"input_shape=\(True, 64, 3\)"),
        ("input_shape", 64, "input_shape=64"),
        ("input_shape", "64x64", "input_shape='64x64'"),
        ("classes", 0, "classes=0"),
        ("classes", -1, "classes=-1"),
        ("classes", "10", "classes='10'"),
        ("classes", True, "classes=True"),
        ("classes", 10.0, "classes=10.0"),
        ("attention", "no", "attention='no'"),
        ("attention", "CA", "attention='CA'"),
        ("attention", 1, "attention=1"),
        ("attention", 0.0, "attention=0.0"),
        ("attention", CoordinateAttention, "attention=<class"),
        ("weights", 3, "weights=3"),
    ],
)
def test_bad_arguments_are_named(builder, argument, value, received):
    """Each error names the argument, the value received and what is fine."""
    accepted = {"alpha": "positive, finite number",
                "input_shape": "three positive integers",
                "classes": "positive integer",
                # Every registered kind, in registration order.
                "attention": r"one of \(True, False, None, " + re.escape(
                    ", ".join(repr(n) for n in attention_names()))
                + r"\) or a callable",
                "weights": "either `None`"}[argument]
    kwargs = {"weights": None, argument: value}
    with pytest.raises(ValueError, match=accepted) as info:
        builder(**kwargs)
    assert f"`{argument}`" in str(info.value)
    assert re.search(f"Received: .*{received}", str(info.value))


@pytest.mark.parametrize("builder", BUILDERS)
def test_accepted_attention_values(builder):
    assert utils.validate_attention(True) == utils.validate_attention("ca")
    assert utils.validate_attention(False) is utils.validate_attention(None)
    for value in ("ca", None):  # True and False: the tests above
        model = builder(alpha=0.35, weights=None, include_top=False,
                        input_shape=(32, 32, 3), attention=value)
        assert bool(_ca_layers(model)) == (value in (True, "ca"))


@pytest.mark.parametrize("builder", BUILDERS)
def test_missing_weights_file_is_named(builder, tmp_path):
    path = str(tmp_path / "no" / "such" / "file.h5")
    with pytest.raises(FileNotFoundError, match=re.escape(repr(path))):
        builder(weights=path)
    with pytest.raises(FileNotFoundError, match="imagnet"):  # a typo
        builder(weights="imagnet")
    with pytest.raises(ValueError, match="is not a file"):
        builder(weights=str(tmp_path))


def test_keras_file_of_another_model_is_one_error(tmp_path):
    other = MobileNeXtCA(alpha=0.35, input_shape=(32, 32, 3), classes=10)
    path = str(tmp_path / "other.keras")
    other.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError) as info:
            MobileNetV2CA(alpha=0.35, weights=path, input_shape=(32, 32, 3),
                          classes=10)
    message = str(info.value)
    for text in (f"weights={path!r}", repr(other.name),
                 "'mobilenetv2_ca_0.35_32'", f"({len(other.layers)} layers)"):
        assert text in message, (text, message)
    assert [str(w.message) for w in caught] == []


def test_input_tensor_must_match_input_shape():
    with pytest.raises(ValueError, match="must match the shape"):
        MobileNetV2CA(weights=None, input_tensor=keras.Input((96, 96, 3)),
                      input_shape=(128, 128, 3))


def test_mobilenext_has_no_published_weights():
    with pytest.raises(ValueError, match="No ImageNet weights were published"):
        MobileNeXtCA(weights="imagenet")


def test_activation_with_pretrained_weights(tmp_path):
    model = MobileNetV2CA(alpha=0.35, weights=None, input_shape=(64, 64, 3))
    path = str(tmp_path / "w.weights.h5")
    model.save_weights(path)
    with pytest.raises(ValueError, match="classifier_activation"):
        MobileNetV2CA(alpha=0.35, weights=path, input_shape=(64, 64, 3),
                      classifier_activation="relu")


def test_unusual_channel_count_warns():
    with pytest.warns(UserWarning, match="1 or 3 input channels"):
        MobileNeXtCA(alpha=0.35, input_shape=(64, 64, 5), include_top=False)


def test_preprocess_input_is_torch_mode():
    x = np.array([[[[0, 127.5, 255]]]], dtype="float32")
    original = x.copy()
    out = preprocess_input(x)
    expected = (x / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(x, original)  # the input is left alone
    # uint8 input is accepted, and channels_first normalises axis 1.
    out = preprocess_input(np.full((1, 3, 2, 2), 255, "uint8"),
                           data_format="channels_first")
    np.testing.assert_allclose(
        out[0, :, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) /
        np.array([0.229, 0.224, 0.225]), rtol=1e-6)
    assert mobilenet_v2_ca.preprocess_input is not None


def test_decode_predictions_offline():
    preds = np.zeros((2, 1000), "float32")
    preds[0, 281], preds[0, 1] = 0.7, 0.2
    preds[1, 999] = 0.9
    top = decode_predictions(preds, top=2)
    assert top[0] == [("n02123045", "tabby", pytest.approx(0.7)),
                      ("n01443537", "goldfish", pytest.approx(0.2))]
    assert top[1][0][:2] == ("n15075141", "toilet_tissue")
    with pytest.raises(ValueError, match=r"preds.shape=\(2, 10\)"):
        decode_predictions(np.zeros((2, 10)))
    assert os.path.isfile(os.path.join(
        os.path.dirname(mobilenet_v2_ca.__file__), "imagenet_class_index.json"))

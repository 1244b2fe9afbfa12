"""The coordinate-attention family (timm's layers/coord_attn.py):
SimpleCoordAttention, EfficientLocalAttention, StripAttention against numpy
references (tests/numpy_reference.py), their registration, the networks they
build and their int8 QAT twins.

Run as a script (`test_coord_family.py CASE.npz OUT.npz`), this file
computes the three layers on the backend named by KERAS_BACKEND for
`test_backends_agree_with_numpy`.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import numpy_reference as ref
import keras_coordatt
from keras_coordatt import EfficientLocalAttention
from keras_coordatt import SimpleCoordAttention
from keras_coordatt import StripAttention

HERE = os.path.dirname(os.path.abspath(__file__))
FORMATS = ["channels_last", "channels_first"]
KINDS = {"simple_ca": SimpleCoordAttention, "ela": EfficientLocalAttention,
         "strip": StripAttention}
_ACTS = {"silu": ref.silu, "relu": ref.relu}
_GATES = {"sigmoid": ref.sigmoid, "hard_sigmoid": ref.hard_sigmoid}


def _make(kind, channels, data_format="channels_last", seed=0,
          weights=None, **kwargs):
    """A built layer with random weights and its numpy reference
    `f(x) -> (output, *gates)`."""
    layer = KINDS[kind](data_format=data_format, **kwargs)
    layer.build((None, channels, None, None) if data_format ==
                "channels_first" else (None, None, None, channels))
    rng = np.random.default_rng(seed)
    gate = _GATES[layer.gate_activation]
    residual = layer.residual
    if kind == "simple_ca":
        if weights is None:
            weights = ref.random_simple_ca_weights(
                channels, layer.hidden_channels, rng)
        ref.set_simple_ca_weights(layer, weights)
        act = _ACTS[keras.activations.serialize(layer.activation)]
        return layer, lambda x: ref.simple_coord_attention(
            x, weights, act, gate, residual)
    if kind == "strip" and not layer.use_conv:
        return layer, lambda x: ref.strip_attention(x, None, gate, residual)
    if weights is None:
        weights = ref.random_strip_conv_weights(
            channels, layer.kernel_size, rng, bias=layer.use_bias,
            norm=kind == "ela" and layer.use_norm)
    ref.set_strip_conv_weights(layer, weights)
    if kind == "strip":
        return layer, lambda x: ref.strip_attention(x, weights, gate,
                                                    residual)
    act = _ACTS[keras.activations.serialize(layer.activation)]
    return layer, lambda x: ref.efficient_local_attention(
        x, weights, act, gate, layer.norm_groups, residual)


def _to_first(x):
    return np.transpose(x, (0, 3, 1, 2))


def _to_last(x):
    return np.transpose(x, (0, 2, 3, 1))


def _run(layer, x):
    """The layer on channels_last numpy `x`, returned channels_last."""
    first = layer.data_format == "channels_first"
    out = keras.ops.convert_to_numpy(layer(_to_first(x) if first else x))
    return _to_last(out) if first else out


def _x(shape=(2, 7, 10, 16), seed=3):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# Numerics against numpy ---------------------------------------------------

VARIANTS = [
    ("simple_ca", {}),
    ("simple_ca", {"activation": "relu", "gate_activation": "hard_sigmoid",
                   "residual": True, "hidden_channels": 6}),
    ("ela", {}),
    ("ela", {"kernel_size": 5, "norm_groups": 4, "residual": True}),
    ("ela", {"use_norm": False, "use_bias": True, "activation": "relu",
             "gate_activation": "hard_sigmoid"}),
    ("strip", {}),
    ("strip", {"kernel_size": 5, "use_bias": True, "residual": True}),
    ("strip", {"use_conv": False, "gate_activation": "hard_sigmoid"}),
]


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("kind, kwargs", VARIANTS)
def test_layers_match_numpy(kind, kwargs, data_format):
    x = _x()
    layer, formula = _make(kind, 16, data_format, **kwargs)
    expected = formula(x)[0]
    np.testing.assert_allclose(_run(layer, x), expected, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_attention_maps_are_the_gates(kind, data_format):
    x = _x((2, 5, 9, 16))
    layer, formula = _make(kind, 16, data_format)
    maps = layer.attention_maps(x if data_format == "channels_last"
                                else _to_first(x))
    maps = [keras.ops.convert_to_numpy(m) for m in maps]
    if data_format == "channels_first":
        maps = [_to_last(m) for m in maps]
    shapes = {"ela": [(2, 5, 1, 16), (2, 1, 9, 16)],
              "simple_ca": [(2, 5, 9, 16)], "strip": [(2, 5, 9, 16)]}
    assert [m.shape for m in maps] == shapes[kind]
    for got, want in zip(maps, formula(x)[1:]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_unknown_spatial_dims(kind):
    layer, formula = _make(kind, 16)
    inp = keras.Input((None, None, 16))
    model = keras.Model(inp, layer(inp))
    for shape in ((1, 5, 11, 16), (2, 8, 3, 16)):
        x = _x(shape)
        np.testing.assert_allclose(model.predict(x, verbose=0),
                                   formula(x)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mixed_precision(kind):
    x = _x()
    layer, formula = _make(kind, 16, dtype="mixed_float16")
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32"
               for w in layer.weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out)
                               .astype("float32"), formula(x)[0],
                               rtol=2e-2, atol=2e-2)


_CONFIG_KEYS = {
    "simple_ca": {"reduction_ratio", "hidden_channels", "divisor",
                  "se_factor", "use_bias", "activation", "gate_activation",
                  "residual", "data_format"},
    "ela": {"kernel_size", "use_bias", "activation", "gate_activation",
            "use_norm", "norm_groups", "residual", "data_format"},
    "strip": {"use_conv", "kernel_size", "use_bias", "gate_activation",
              "residual", "data_format"},
}


@pytest.mark.parametrize("kind, kwargs", VARIANTS)
def test_serialization_round_trip(kind, kwargs, tmp_path):
    layer, _ = _make(kind, 16, name="attention", **kwargs)
    config = layer.get_config()
    base = set(keras.layers.Layer(name="x").get_config())
    assert set(config) - base == _CONFIG_KEYS[kind]
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    inp = keras.Input((None, None, 16))
    model = keras.Model(inp, layer(inp))
    path = str(tmp_path / f"{kind}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("attention")) is type(layer)
    x = _x()
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)


def test_simple_ca_hidden_width_is_timms():
    widths = {c: SimpleCoordAttention()
              for c in (16, 32, 96, 144, 576, 960)}
    for c, layer in widths.items():
        layer.build((None, None, None, c))
    # make_divisible(C * 0.25 * 2/3, 8), at least 8.
    assert {c: layer.hidden_channels for c, layer in widths.items()} == {
        16: 8, 32: 8, 96: 16, 144: 24, 576: 96, 960: 160}
    layer = SimpleCoordAttention(reduction_ratio=0.5, se_factor=1.0,
                                 divisor=4)
    layer.build((None, None, None, 20))
    assert layer.hidden_channels == ref.timm_make_divisible(10, 4) == 12


# Errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (SimpleCoordAttention, {"reduction_ratio": 0},
         "Received: reduction_ratio=0"),
        (SimpleCoordAttention, {"reduction_ratio": True},
         "Received: reduction_ratio=True"),
        (SimpleCoordAttention, {"hidden_channels": 0},
         "Received: hidden_channels=0"),
        (SimpleCoordAttention, {"divisor": 2.0}, "Received: divisor=2.0"),
        (SimpleCoordAttention, {"se_factor": -1.0},
         "Received: se_factor=-1.0"),
        (SimpleCoordAttention, {"use_bias": 1}, "Received: use_bias=1"),
        (SimpleCoordAttention, {"gate_activation": "relu"},
         r"'sigmoid', 'hard_sigmoid'.*Received: gate_activation='relu'"),
        (SimpleCoordAttention, {"activation": "no_such_activation"},
         "no_such_activation"),
        (EfficientLocalAttention, {"kernel_size": 4},
         "odd integer.*Received: kernel_size=4"),
        (EfficientLocalAttention, {"kernel_size": 0},
         "Received: kernel_size=0"),
        (EfficientLocalAttention, {"use_norm": "yes"},
         "Received: use_norm='yes'"),
        (EfficientLocalAttention, {"norm_groups": 0},
         "Received: norm_groups=0"),
        (EfficientLocalAttention, {"data_format": "NHWC"},
         "Received: data_format='NHWC'"),
        (StripAttention, {"use_conv": None}, "Received: use_conv=None"),
        (StripAttention, {"kernel_size": 3.0}, "Received: kernel_size=3.0"),
        (StripAttention, {"residual": "no"}, "Received: residual='no'"),
    ],
)
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_inputs(kind):
    cls = KINDS[kind]
    name = cls.__name__
    with pytest.raises(ValueError,
                       match=rf"{name} expects a 4D input.*\(None, 8, 16\)"):
        cls().build((None, 8, 16))
    with pytest.raises(ValueError, match="channel dimension"):
        cls().build((None, 8, 8, None))
    layer, _ = _make(kind, 16)
    with pytest.raises(ValueError):
        layer(np.zeros((1, 4, 4, 8), "float32"))
    with pytest.raises(ValueError,
                       match=r"divide the input channels \(16\).*"
                             r"Received: norm_groups=3"):
        EfficientLocalAttention(norm_groups=3).build((None, 8, 8, 16))


# Registry, networks, insertion ---------------------------------------------


def test_registered_and_exported():
    from keras_coordatt.layers import registry

    assert registry.attention_names()[-3:] == ("simple_ca", "ela", "strip")
    for name, cls in KINDS.items():
        spec = registry.get_attention_spec(name)
        assert spec.layer is cls and spec.paper
        assert getattr(keras_coordatt, cls.__name__) is cls
        assert getattr(keras_coordatt.layers, cls.__name__) is cls
        assert callable(spec.quantize_builder())
    assert "2403.01123" in registry.get_attention_spec("ela").paper


def _mobilenet_v2_hidden_channels():
    from keras_coordatt.applications.mobilenet_v2_ca import STAGES

    hidden, in_channels = [], 32
    for expansion, channels, repeats, _ in STAGES:
        for _ in range(repeats):
            if expansion != 1:
                hidden.append(in_channels * expansion)
            in_channels = channels
    return hidden


MOBILENET_V2 = 3_504_872  # MobileNetV2CA(attention=False, weights=None)


def _family_params(kind, c):
    if kind == "simple_ca":
        rd = ref.timm_make_divisible(c * 0.25 * 2 / 3)
        return c * rd + rd + 2 * (rd * c + c)
    if kind == "ela":
        return 2 * 7 * c + 2 * 2 * c  # strip kernels, two GroupNorms
    return 2 * 3 * c  # strip kernels


@pytest.mark.slow
def test_mobilenet_v2_parameter_counts():
    """MobileNetV2CA(attention=kind) at alpha 1.0, 1000 classes: 16 blocks
    at CA's places, counts from the per-block formula."""
    hidden = _mobilenet_v2_hidden_channels()
    expected = {"simple_ca": 5_775_880, "ela": 3_632_744,
                "strip": 3_547_496}
    for kind, count in expected.items():
        assert MOBILENET_V2 + sum(_family_params(kind, c)
                                  for c in hidden) == count
        model = keras_coordatt.MobileNetV2CA(weights=None, attention=kind)
        blocks = [layer for layer in model.layers
                  if isinstance(layer, KINDS[kind])]
        assert len(blocks) == 16 and blocks[0].name == f"block_1_{kind}"
        assert sum(int(np.prod(w.shape))
                   for w in model.trainable_weights) == count


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_add_attention(kind):
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(inp)
    x = keras.layers.ReLU(name="r1")(x)
    out = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, out)
    x = _x((2, 12, 12, 3))
    for identity_init in (True, False):
        new = keras_coordatt.add_attention(
            model, after=["r1"], attention=kind,
            identity_init=identity_init)
        block = new.get_layer(f"r1_{kind}")
        inner = block.layer if identity_init else block
        assert isinstance(inner, KINDS[kind])
        sub = keras.Model(new.input, new.get_layer("r1").output)
        features = sub.predict(x, verbose=0)
        expected = keras.ops.convert_to_numpy(inner(features))
        if identity_init:  # starts as the identity
            expected = features
        got = keras.Model(new.input, block.output).predict(x, verbose=0)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# QAT twins and int8 conversion ----------------------------------------------

TF_BACKEND = keras.backend.backend() == "tensorflow"
needs_tf = pytest.mark.skipif(not TF_BACKEND,
                              reason="TFLite conversion needs TensorFlow")
QAT_VARIANTS = {
    "simple_ca": ("simple_ca", {}),
    "simple_ca_relu_residual": ("simple_ca", {"activation": "relu",
                                              "residual": True}),
    "ela": ("ela", {}),
    "ela_no_norm": ("ela", {"use_norm": False, "use_bias": True,
                            "activation": "relu6"}),
    "strip": ("strip", {"residual": True}),
    "strip_no_conv": ("strip", {"use_conv": False}),
}
_TWINS = {"simple_ca": "QuantSimpleCoordAttention",
          "ela": "QuantEfficientLocalAttention",
          "strip": "QuantStripAttention"}


def _qat_images(n=32, seed=0):
    return np.random.default_rng(seed).normal(
        0, 1, (n, 32, 32, 3)).astype("float32")


def _family_model(variant):
    """conv -> BN -> ReLU6 -> attention -> conv -> global pool -> dense at
    32x32x3 (`variant=None`: without attention), random BN statistics and
    attention weights (biases and GroupNorm offsets start at zero)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same",
                            use_bias=False, name="c1")(inp)
    bn = keras.layers.BatchNormalization(epsilon=1e-5, name="c1_bn")
    x = keras.layers.ReLU(6.0, name="c1_relu")(bn(x))
    if variant is not None:
        kind, kwargs = QAT_VARIANTS[variant]
        x = KINDS[kind](name="attention", **kwargs)(x)
    x = keras.layers.Conv2D(16, 1, name="proj")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="predictions")(x))
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 1.5, 16), rng.normal(0, 0.2, 16),
                    rng.normal(0, 0.2, 16), rng.uniform(0.5, 1.5, 16)])
    if variant is not None:
        for variable in model.get_layer("attention").trainable_weights:
            variable.assign(variable + rng.normal(0, 0.3, variable.shape)
                            .astype("float32"))
    return model


def _family_twin(variant, x):
    from keras_coordatt import quantization as q

    model = _family_model(variant)
    # One calibration batch: the ranges cover `x`, so what the tests
    # measure on `x` is rounding, not clipping.
    return model, q.quantize_model(model, calibration_data=x,
                                   calibration_steps=1)


def _delegate_report(blob):
    """benchmarks/measure_litert.py's `delegate_report`: XNNPACK partitions
    and the ops left to the builtin kernels."""
    import importlib

    benchmarks = os.path.join(os.path.dirname(HERE), "benchmarks")
    if benchmarks not in sys.path:  # its sibling modules, by name
        sys.path.insert(0, benchmarks)
    return importlib.import_module("measure_litert").delegate_report(blob)


def _step(quantizer):
    low = float(keras.ops.convert_to_numpy(quantizer.range_min))
    high = float(keras.ops.convert_to_numpy(quantizer.range_max))
    return (high - low) / 255.0


@pytest.mark.parametrize("variant", sorted(QAT_VARIANTS))
def test_quantize_model_family_matches_float(variant):
    x = _qat_images()
    model, twin = _family_twin(variant, x)
    layer = twin.get_layer("attention")
    assert type(layer).__name__ == _TWINS[QAT_VARIANTS[variant][0]]
    names = [type(t).__name__ for t in twin.layers]
    assert "BatchNormalization" not in names and "ReLU" not in names
    # The attention output, in int8 steps of the twin's last quantizer,
    # within the bounds of the CA/SE/CBAM twins' tests.
    last = layer.residual_quantizer or layer.output_quantizer
    sub = lambda m: keras.Model(m.input, m.get_layer("attention").output)
    ref_out = sub(model).predict(x, verbose=0)
    out = sub(twin).predict(x, verbose=0)
    error = np.abs(out - ref_out) / _step(last)
    assert error.max() < 8.0 and error.mean() < 0.5, (error.max(),
                                                      error.mean())
    ref_logits = model.predict(x, verbose=0)
    logits = twin.predict(x, verbose=0)
    assert np.abs(logits - ref_logits).max() < 0.04 * np.ptp(ref_logits)
    assert np.mean(logits.argmax(1) == ref_logits.argmax(1)) >= 0.75


@pytest.mark.slow  # about 20 s each
@pytest.mark.parametrize("variant", ["simple_ca", "ela", "strip"])
def test_family_twins_fit_and_save_load(variant, tmp_path):
    x = _qat_images()
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    _, twin = _family_twin(variant, x)
    twin.compile(keras.optimizers.Adam(1e-3),
                 keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = twin.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    path = str(tmp_path / f"{variant}.keras")
    twin.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("attention")).__name__ == _TWINS[variant]
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               twin.predict(x, verbose=0), atol=1e-6)


@pytest.fixture(scope="module")
def base_op_counts():
    """The int8 op counts of the network without attention."""
    if not TF_BACKEND:
        pytest.skip("needs TensorFlow for conversion")
    from keras_coordatt import quantization as q

    _, twin = _family_twin(None, _qat_images())
    return q.check_int8(q.convert_qat(twin))["op_counts"]


# The int8 ops each variant adds to the network without attention.
_EXTRA_INT8_OPS = {
    # Two strip MEANs; the shared CONV_2D on each strip, fc_h and fc_w;
    # SiLU as LOGISTIC + MUL per strip; the ADD of the strips, the gate's
    # LOGISTIC and x * gate.
    "simple_ca": {"MEAN": 2, "CONV_2D": 4, "LOGISTIC": 3, "MUL": 3,
                  "ADD": 1},
    # ReLU fused into the CONV_2D; the residual ADD.
    "simple_ca_relu_residual": {"MEAN": 2, "CONV_2D": 4, "LOGISTIC": 1,
                                "MUL": 1, "ADD": 2},
    # Per strip: MEAN, the strip DEPTHWISE_CONV_2D, the GroupNorm (MEAN,
    # SUB, MUL, MEAN, ADD epsilon, RSQRT, MUL, its scale and offset as a
    # 1x1 DEPTHWISE_CONV_2D), SiLU (LOGISTIC, MUL), the gate's LOGISTIC
    # and the product by the gate.
    "ela": {"MEAN": 6, "DEPTHWISE_CONV_2D": 4, "SUB": 2, "MUL": 8,
            "ADD": 2, "RSQRT": 2, "LOGISTIC": 4},
    # ReLU6 fused into the strip convolutions.
    "ela_no_norm": {"MEAN": 2, "DEPTHWISE_CONV_2D": 2, "LOGISTIC": 2,
                    "MUL": 2},
    "strip": {"MEAN": 2, "DEPTHWISE_CONV_2D": 2, "ADD": 2, "LOGISTIC": 1,
              "MUL": 1},
    "strip_no_conv": {"MEAN": 2, "ADD": 1, "LOGISTIC": 1, "MUL": 1},
}


@needs_tf
@pytest.mark.parametrize("variant", sorted(QAT_VARIANTS))
def test_convert_family_all_int8(variant, base_op_counts):
    from keras_coordatt import quantization as q

    x = _qat_images()
    _, twin = _family_twin(variant, x)
    blob = q.convert_qat(twin)
    report = q.check_int8(blob)
    # Float only at the model's input and output (QUANTIZE, DEQUANTIZE).
    assert report["tensor_types"].get("float32", 0) == 2
    ops = report["op_counts"]
    extra = {name: ops[name] - base_op_counts.get(name, 0) for name in ops
             if ops[name] != base_op_counts.get(name, 0)}
    assert extra == _EXTRA_INT8_OPS[variant], (extra, ops)
    assert ops["QUANTIZE"] == 1  # no requantizing QUANTIZE inside
    # XNNPACK runs every int8 op the attention adds but ELA's RSQRTs, which
    # stay on the builtin int8 kernels (one extra partition).
    delegate = _delegate_report(blob)
    partitions, outside = (2, {"RSQRT": 2}) if variant == "ela" else (1, {})
    assert delegate["partitions"] == partitions
    assert delegate["outside_delegate"] == outside
    keras_out = twin.predict(x, verbose=0)
    tfl_out, _ = q.predict_tflite(blob, x)
    # The bounds of the CA/SE/CBAM twins' test.
    assert np.abs(tfl_out - keras_out).max() < 0.03 * np.ptp(keras_out)
    assert np.mean(tfl_out.argmax(1) == keras_out.argmax(1)) >= 0.75


@needs_tf
@pytest.mark.parametrize("kind", ["simple_ca", "ela", "strip"])
def test_float_family_post_training_int8(kind):
    """The float layers themselves convert all-int8 with post-training
    quantization (the attention comparison's path): ELA's one-group norm
    is written in ops with int8 kernels, not Keras' GroupNormalization
    (whose NEG and SQUARE stay float)."""
    from keras_coordatt import quantization as q

    model = _family_model(kind)
    x = _qat_images()
    blob = q.convert_ptq(model, x, num_samples=32)
    report = q.check_int8(blob)
    assert report["tensor_types"].get("float32", 0) == 2
    assert not {"NEG", "SQUARE"} & set(report["op_counts"])
    tfl_out, _ = q.predict_tflite(blob, x)
    keras_out = model.predict(x, verbose=0)
    assert np.abs(tfl_out - keras_out).max() < 0.05 * np.ptp(keras_out)


def test_quantize_model_rejects_unsupported_family_settings():
    from keras_coordatt import quantization as q

    inp = keras.Input((8, 8, 16))
    cases = [
        (SimpleCoordAttention(gate_activation="hard_sigmoid", name="sca"),
         "'sca'.*sigmoid gate only.*Received: gate_activation="
         "'hard_sigmoid'"),
        (SimpleCoordAttention(activation="gelu", name="sca_gelu"),
         "'sca_gelu'.*silu, relu, relu6.*Received: activation='gelu'"),
        (EfficientLocalAttention(norm_groups=4, name="ela4"),
         "'ela4'.*norm_groups=1.*use_norm=False.*Received: norm_groups=4"),
        (StripAttention(gate_activation="hard_sigmoid", name="strip"),
         "'strip'.*sigmoid gate only"),
    ]
    for layer, message in cases:
        with pytest.raises(ValueError, match=message):
            q.quantize_model(keras.Model(inp, layer(inp)))
    first = keras.Input((16, 8, 8))
    layer = EfficientLocalAttention(data_format="channels_first",
                                    name="ela_first")
    with pytest.raises(ValueError, match="channels_last.*ela_first"):
        q.quantize_model(keras.Model(first, layer(first)))


# Backends -----------------------------------------------------------------

_BACKEND_CASES = {"simple_ca": {}, "ela": {}, "strip": {"residual": True}}


def _backend_main(case_path, out_path):
    """The three layers on KERAS_BACKEND, both formats, and in a model with
    unknown H and W under the backend's compiled predict."""
    case = dict(np.load(case_path))
    x = case["x"]
    outputs = {"backend": keras.backend.backend()}
    for kind, kwargs in _BACKEND_CASES.items():
        weights = {k[len(kind) + 1:]: v for k, v in case.items()
                   if k.startswith(kind + ":")}
        for fmt in FORMATS:
            layer, _ = _make(kind, x.shape[-1], fmt, weights=weights,
                             **kwargs)
            outputs[f"{kind}_{fmt}"] = _run(layer, x)
        layer, _ = _make(kind, x.shape[-1], weights=weights, **kwargs)
        inp = keras.Input((None, None, x.shape[-1]))
        outputs[f"{kind}_model"] = keras.Model(inp, layer(inp)).predict(
            x, verbose=0)
    np.savez(out_path, **outputs)


@pytest.mark.parametrize("backend", [
    "tensorflow",
    pytest.param("jax", marks=pytest.mark.slow),  # 30 to 40 s each
    pytest.param("torch", marks=pytest.mark.slow),
])
def test_backends_agree_with_numpy(backend, tmp_path):
    """Each backend in its own process, on the same weights and inputs."""
    x = _x((2, 7, 10, 32), seed=11)
    rng = np.random.default_rng(11)
    weights = {
        "simple_ca": ref.random_simple_ca_weights(32, 8, rng),
        "ela": ref.random_strip_conv_weights(32, 7, rng, norm=True),
        "strip": ref.random_strip_conv_weights(32, 3, rng),
    }
    np.savez(tmp_path / "case.npz", x=x, **{
        f"{kind}:{k}": v for kind, w in weights.items()
        for k, v in w.items()})
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]))
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__),
         str(tmp_path / "case.npz"), str(tmp_path / "out.npz")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert str(out["backend"]) == backend
    expected = {
        "simple_ca": ref.simple_coord_attention(x, weights["simple_ca"])[0],
        "ela": ref.efficient_local_attention(x, weights["ela"])[0],
        "strip": ref.strip_attention(x, weights["strip"],
                                     residual=True)[0],
    }
    for kind in KINDS:
        for suffix in FORMATS + ["model"]:
            np.testing.assert_allclose(
                out[f"{kind}_{suffix}"], expected[kind], rtol=1e-4,
                atol=1e-5, err_msg=f"{kind} {backend} {suffix}")


if __name__ == "__main__":
    _backend_main(sys.argv[1], sys.argv[2])


def test_constructor_names_a_reduction_the_kind_does_not_take():
    import keras_coordatt

    with pytest.raises(ValueError, match=(
            r"The attention kind 'ela' \(EfficientLocalAttention\) takes no "
            r"`reduction`; pass reduction=None\. Received: reduction=8, "
            r"attention='ela'")):
        keras_coordatt.MobileNetV2CA(weights=None, attention="ela",
                                     reduction=8, input_shape=(32, 32, 3),
                                     classes=3)

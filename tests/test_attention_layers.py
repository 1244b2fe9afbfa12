"""SqueezeExcitation and CBAM against the numpy formulas of their papers.

Run as a script (`test_attention_layers.py CASE.npz OUT.npz`), this file
computes both layers on the backend named by KERAS_BACKEND for
`test_backends_agree_with_numpy`.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import numpy_reference as ref
from keras_coordatt.layers import CBAM
from keras_coordatt.layers import SqueezeExcitation

HERE = os.path.dirname(os.path.abspath(__file__))
FORMATS = ["channels_last", "channels_first"]


def _build(layer, channels):
    if layer.data_format == "channels_first":
        layer.build((None, channels, None, None))
    else:
        layer.build((None, None, None, channels))
    return layer


def _se(channels, data_format="channels_last", seed=0, weights=None,
        **kwargs):
    layer = _build(SqueezeExcitation(data_format=data_format, **kwargs),
                   channels)
    if weights is None:
        weights = ref.random_se_weights(channels, layer.hidden_channels,
                                        np.random.default_rng(seed))
    ref.set_se_weights(layer, weights)
    return layer, weights


def _cbam(channels, data_format="channels_last", seed=0, weights=None,
          **kwargs):
    layer = _build(CBAM(data_format=data_format, **kwargs), channels)
    if weights is None:
        weights = ref.random_cbam_weights(
            channels, layer.hidden_channels, np.random.default_rng(seed),
            kernel_size=layer.kernel_size,
            batchnorm=layer.spatial_batchnorm,
        )
    ref.set_cbam_weights(layer, weights)
    return layer, weights


def _to_first(x):
    return np.transpose(x, (0, 3, 1, 2))


def _to_last(x):
    return np.transpose(x, (0, 2, 3, 1))


def _run(layer, x, **kwargs):
    """The layer on channels_last numpy `x`, returned channels_last."""
    first = layer.data_format == "channels_first"
    out = keras.ops.convert_to_numpy(layer(_to_first(x) if first else x,
                                           **kwargs))
    return _to_last(out) if first else out


def _count(weights):
    return sum(int(np.prod(v.shape)) for v in weights)


# Numerics against numpy ---------------------------------------------------


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("shape",
                         [(2, 7, 5, 48), (1, 9, 9, 300), (3, 1, 12, 16)])
def test_se_matches_numpy(data_format, shape):
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    layer, w = _se(shape[-1], data_format)
    expected = ref.squeeze_excitation(x, w)[0]
    # No BatchNorm: training and inference compute the same.
    for training in (False, True):
        np.testing.assert_allclose(_run(layer, x, training=training),
                                   expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((2, 7, 5, 48), {}),
        ((1, 9, 9, 300), {"kernel_size": 3, "reduction": 16}),
        ((3, 1, 12, 16), {"spatial_batchnorm": False}),
        ((2, 4, 6, 24), {"kernel_size": 1}),
    ],
)
def test_cbam_inference_matches_numpy(data_format, shape, kwargs):
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    layer, w = _cbam(shape[-1], data_format, **kwargs)
    expected = ref.cbam(x, w)[0]
    np.testing.assert_allclose(_run(layer, x, training=False), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data_format", FORMATS)
def test_cbam_training_uses_batch_statistics(data_format):
    x = np.random.default_rng(3).normal(size=(4, 6, 11, 64)).astype("float32")
    layer, w = _cbam(64, data_format)
    expected, _, _, mean, var = ref.cbam(x, w, training=True)
    np.testing.assert_allclose(_run(layer, x, training=True), expected,
                               rtol=1e-4, atol=1e-5)
    # Moving statistics with Keras momentum 0.99 (the authors' PyTorch 0.01).
    moving_mean, moving_var = (
        keras.ops.convert_to_numpy(v) for v in
        (layer.spatial_bn.moving_mean, layer.spatial_bn.moving_variance)
    )
    np.testing.assert_allclose(moving_mean, 0.99 * w["mean"] + 0.01 * mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moving_var, 0.99 * w["var"] + 0.01 * var,
                               rtol=1e-5, atol=1e-6)
    # Without the BatchNorm, training changes nothing.
    plain, w = _cbam(64, data_format, spatial_batchnorm=False)
    np.testing.assert_allclose(_run(plain, x, training=True),
                               ref.cbam(x, w)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [_se, _cbam], ids=["se", "cbam"])
def test_data_formats_agree(make):
    x = np.random.default_rng(4).normal(size=(2, 8, 13, 40)).astype("float32")
    last, _ = make(40, "channels_last", seed=7)
    first, _ = make(40, "channels_first", seed=7)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(_to_first(x))),
        _to_first(keras.ops.convert_to_numpy(last(x))),
        rtol=1e-5, atol=1e-6,
    )


@pytest.mark.parametrize("data_format", FORMATS)
def test_attention_maps_reproduce_the_output(data_format):
    x = np.random.default_rng(5).normal(size=(2, 6, 9, 24)).astype("float32")
    inputs = x if data_format == "channels_last" else _to_first(x)
    move = _to_first if data_format == "channels_first" else (lambda a: a)

    se, w = _se(24, data_format)
    (gate,) = (keras.ops.convert_to_numpy(a) for a in
               se.attention_maps(inputs))
    assert gate.shape == move(np.zeros((2, 1, 1, 24))).shape
    np.testing.assert_allclose(gate, move(ref.squeeze_excitation(x, w)[1]),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(se(inputs)),
                               inputs * gate, rtol=1e-6, atol=1e-6)

    cbam, w = _cbam(24, data_format)
    channel, spatial = (keras.ops.convert_to_numpy(a) for a in
                        cbam.attention_maps(inputs))
    _, ref_channel, ref_spatial, _, _ = ref.cbam(x, w)
    assert channel.shape == move(np.zeros((2, 1, 1, 24))).shape
    assert spatial.shape == move(np.zeros((2, 6, 9, 1))).shape
    np.testing.assert_allclose(channel, move(ref_channel), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(spatial, move(ref_spatial), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(cbam(inputs)),
                               inputs * channel * spatial, rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("make, formula", [
    (_se, lambda x, w: ref.squeeze_excitation(x, w)[0]),
    (_cbam, lambda x, w: ref.cbam(x, w)[0]),
], ids=["se", "cbam"])
def test_unknown_spatial_dims_and_odd_sizes(make, formula):
    layer, w = make(32)
    inp = keras.Input((None, None, 32))
    model = keras.Model(inp, layer(inp))
    for size in [(1, 5, 3), (2, 17, 29), (1, 1, 1)]:
        x = np.random.default_rng(6).normal(size=size + (32,))
        x = x.astype("float32")
        np.testing.assert_allclose(model.predict(x, verbose=0), formula(x, w),
                                   rtol=1e-5, atol=1e-5)
    assert layer.compute_output_shape((None, None, None, 32)) == (
        None, None, None, 32
    )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("make, cls", [(_se, SqueezeExcitation),
                                       (_cbam, CBAM)], ids=["se", "cbam"])
def test_mixed_precision(make, cls, policy):
    x = np.random.default_rng(7).uniform(0, 6, (2, 28, 28, 96))
    x = x.astype("float32")
    layer32, w = make(96)
    layer, _ = make(96, weights=w, dtype=policy)
    assert layer.compute_dtype == policy[6:]
    assert all(v.dtype == "float32" for v in layer.weights)
    expected = keras.ops.convert_to_numpy(layer32(x))
    out = keras.ops.convert_to_numpy(
        keras.ops.cast(layer(x, training=False), "float32")
    )
    # Training mode last: it moves the BatchNorm statistics.
    for training in (False, True):
        result = layer(x, training=training)
        assert keras.backend.standardize_dtype(result.dtype) == policy[6:]
        for gate in layer.attention_maps(x):
            assert keras.backend.standardize_dtype(gate.dtype) == policy[6:]
        assert np.isfinite(keras.ops.convert_to_numpy(
            keras.ops.cast(result, "float32"))).all()
    tol = 2e-2 if policy == "mixed_float16" else 8e-2
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("cls", [SqueezeExcitation, CBAM])
def test_one_step_updates_every_weight(cls):
    """Gradients reach every trainable weight (one SGD step, no training)."""
    inp = keras.Input((6, 6, 16))
    layer = cls(name="attention")
    out = keras.layers.GlobalAveragePooling2D()(layer(inp))
    model = keras.Model(inp, keras.layers.Dense(1)(out))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    before = [keras.ops.convert_to_numpy(v) for v in layer.trainable_weights]
    rng = np.random.default_rng(12)
    model.train_on_batch(rng.normal(size=(8, 6, 6, 16)).astype("float32"),
                         rng.normal(size=(8, 1)).astype("float32"))
    after = [keras.ops.convert_to_numpy(v) for v in layer.trainable_weights]
    assert len(before) == (4 if cls is SqueezeExcitation else 7)
    for old, new in zip(before, after):
        assert not np.allclose(old, new)


# Configuration and saving -------------------------------------------------


def test_serialization_round_trip(tmp_path):
    se = SqueezeExcitation(reduction=16, min_channels=4, activation="relu6",
                           gate_activation="hard_sigmoid",
                           data_format="channels_first", name="se")
    config = se.get_config()
    assert {k: config[k] for k in ("reduction", "min_channels", "activation",
                                   "gate_activation", "data_format")} == {
        "reduction": 16, "min_channels": 4, "activation": "relu6",
        "gate_activation": "hard_sigmoid", "data_format": "channels_first"}
    assert SqueezeExcitation.from_config(config).get_config() == config

    cbam = CBAM(reduction=8, kernel_size=5, min_channels=2,
                spatial_batchnorm=False, activation="relu6", name="cbam")
    config = cbam.get_config()
    assert {k: config[k] for k in (
        "reduction", "kernel_size", "min_channels", "spatial_batchnorm",
        "activation", "data_format")} == {
        "reduction": 8, "kernel_size": 5, "min_channels": 2,
        "spatial_batchnorm": False, "activation": "relu6",
        "data_format": "channels_last"}
    assert CBAM.from_config(config).get_config() == config

    # One key per constructor argument (and the base layer's).
    base = set(keras.layers.Layer(name="x").get_config())
    assert set(SqueezeExcitation().get_config()) - base == {
        "reduction", "min_channels", "activation", "gate_activation",
        "data_format"}
    assert set(CBAM().get_config()) - base == {
        "reduction", "kernel_size", "min_channels", "spatial_batchnorm",
        "activation", "data_format"}

    inp = keras.Input((10, 12, 64))
    out = CBAM(name="cbam")(SqueezeExcitation(name="se")(inp))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(8)
    ref.set_se_weights(model.get_layer("se"),
                       ref.random_se_weights(64, 8, rng))
    ref.set_cbam_weights(model.get_layer("cbam"),
                         ref.random_cbam_weights(64, 8, rng))
    path = str(tmp_path / "attention.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = rng.normal(size=(2, 10, 12, 64)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0),
                                  model.predict(x, verbose=0))
    assert isinstance(loaded.get_layer("se"), SqueezeExcitation)
    assert isinstance(loaded.get_layer("cbam"), CBAM)
    assert keras.saving.get_registered_name(CBAM) == "keras_coordatt>CBAM"


# Parameter counts ---------------------------------------------------------


def test_hidden_width_and_parameter_count():
    se = _se(960)[0]
    assert se.hidden_channels == 40  # 960 // 24
    assert _count(se.trainable_weights) == 2 * 960 * 40 + 40 + 960 == 77800
    assert not se.non_trainable_weights
    assert _se(96)[0].hidden_channels == 8  # max(8, 96 // 24)
    assert _se(96, reduction=4)[0].hidden_channels == 24
    assert _se(64, min_channels=16)[0].hidden_channels == 16

    cbam = _cbam(960)[0]
    assert cbam.hidden_channels == 40
    # The MLP as SE's, the 7x7x2 spatial kernel, the BN's gamma and beta.
    assert _count(cbam.trainable_weights) == 77800 + 98 + 2 == 77900
    assert _count(cbam.non_trainable_weights) == 2
    plain = _cbam(960, spatial_batchnorm=False)[0]
    assert _count(plain.trainable_weights) == 77800 + 98 + 1
    assert not plain.non_trainable_weights
    small = _cbam(64, reduction=16, kernel_size=3)[0]
    assert small.hidden_channels == 8
    assert _count(small.trainable_weights) == 2 * 64 * 8 + 8 + 64 + 18 + 2


def _mobilenet_v2_hidden_channels():
    """The widths at CA's places in MobileNetV2 at alpha 1.0: the expanded
    channels of every inverted residual block with expansion > 1."""
    from keras_coordatt.applications.mobilenet_v2_ca import STAGES

    hidden, in_channels = [], 32  # the stem's width
    for expansion, channels, repeats, _ in STAGES:
        for _ in range(repeats):
            if expansion != 1:
                hidden.append(in_channels * expansion)
            in_channels = channels
    return hidden


def _mid(channels, reduction, min_channels=8):
    return max(min_channels, channels // reduction)


def _se_params(channels, reduction):
    mid = _mid(channels, reduction)
    return channels * mid + mid + mid * channels + channels


def _cbam_params(channels, reduction, kernel_size=7, batchnorm=True):
    spatial = kernel_size * kernel_size * 2 + (2 if batchnorm else 1)
    return _se_params(channels, reduction) + spatial


def _ca_params(channels, reduction=32):
    mid = _mid(channels, reduction)
    return channels * mid + mid + 2 * mid + 2 * (mid * channels + channels)


MOBILENET_V2 = 3_504_872  # MobileNetV2CA(attention=False, weights=None)


def test_mobilenet_v2_parameter_counts():
    """The paper's table: 3.89M for MobileNetV2 + SE and + CBAM, 3.95M for
    + CA (reduction 32), the blocks at CA's places."""
    hidden = _mobilenet_v2_hidden_channels()
    assert hidden == [96, 144, 144, 192, 192, 192, 384, 384, 384, 384,
                      576, 576, 576, 960, 960, 960]
    assert all(c % 24 == 0 for c in hidden)
    # The channel list reproduces MobileNetV2CA()'s count.
    assert MOBILENET_V2 + sum(_ca_params(c) for c in hidden) == 3_950_648

    def se(r):
        return MOBILENET_V2 + sum(_se_params(c, r) for c in hidden)

    def cbam(r, **kwargs):
        return MOBILENET_V2 + sum(_cbam_params(c, r, **kwargs)
                                  for c in hidden)

    assert {r: se(r) for r in (4, 8, 16, 24, 32)} == {
        4: 5_769_368, 8: 4_640_672, 16: 4_076_710, 24: 3_890_136,
        32: 3_799_448}
    assert {r: cbam(r) for r in (4, 8, 16, 24, 32)} == {
        4: 5_770_968, 8: 4_642_272, 16: 4_078_310, 24: 3_891_736,
        32: 3_801_048}
    assert cbam(24, batchnorm=False) == 3_891_720
    # 24 is the only ratio that gives the paper's 3.89M, for both.
    assert [r for r in range(1, 129) if round(se(r) / 1e6, 2) == 3.89] == [24]
    assert [r for r in range(1, 129)
            if round(cbam(r) / 1e6, 2) == 3.89] == [24]
    # The defaults are that ratio, and the layers agree with the formula.
    assert SqueezeExcitation().reduction == CBAM().reduction == 24
    for c in sorted(set(hidden)):
        assert _count(_build(SqueezeExcitation(), c).trainable_weights) == \
            _se_params(c, 24)
        assert _count(_build(CBAM(), c).trainable_weights) == \
            _cbam_params(c, 24)


# Errors -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SqueezeExcitation, CBAM])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reduction": 0}, "Received: reduction=0"),
        ({"reduction": -4}, "Received: reduction=-4"),
        ({"reduction": 2.5}, "Received: reduction=2.5"),
        ({"reduction": "16"}, "Received: reduction='16'"),
        ({"reduction": True}, "Received: reduction=True"),
        ({"min_channels": 0}, "Received: min_channels=0"),
        ({"data_format": "NHWC"}, "Received: data_format='NHWC'"),
        ({"activation": "no_such_activation"}, "no_such_activation"),
    ],
)
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kernel_size": 4}, "Received: kernel_size=4"),
        ({"kernel_size": 0}, "Received: kernel_size=0"),
        ({"kernel_size": -3}, "Received: kernel_size=-3"),
        ({"kernel_size": 7.0}, "Received: kernel_size=7.0"),
        ({"spatial_batchnorm": "yes"}, "Received: spatial_batchnorm='yes'"),
    ],
)
def test_bad_cbam_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CBAM(**kwargs)


def test_bad_se_gate_activation():
    with pytest.raises(ValueError, match="no_such_gate"):
        SqueezeExcitation(gate_activation="no_such_gate")


@pytest.mark.parametrize("cls", [SqueezeExcitation, CBAM])
def test_bad_inputs(cls):
    name = cls.__name__
    with pytest.raises(ValueError,
                       match=rf"{name} expects a 4D input.*\(None, 8, 16\)"):
        cls().build((None, 8, 16))
    with pytest.raises(ValueError, match="channel dimension"):
        cls().build((None, 8, 8, None))
    layer = _build(cls(), 16)
    with pytest.raises(ValueError):
        layer(np.zeros((1, 4, 4, 8), "float32"))


# Backends -----------------------------------------------------------------


def _backend_main(case_path, out_path):
    """Both layers on KERAS_BACKEND, both formats, training and inference."""
    case = dict(np.load(case_path))
    x = case["x"]
    se_w = {k[3:]: v for k, v in case.items() if k.startswith("se_")}
    cbam_w = {k[5:]: v for k, v in case.items() if k.startswith("cbam_")}
    channels = x.shape[-1]
    outputs = {"backend": keras.backend.backend()}
    for fmt in ("last", "first"):
        for training in (False, True):
            se, _ = _se(channels, f"channels_{fmt}", weights=se_w)
            cbam, _ = _cbam(channels, f"channels_{fmt}", weights=cbam_w)
            outputs[f"se_{fmt}_{int(training)}"] = _run(se, x,
                                                        training=training)
            outputs[f"cbam_{fmt}_{int(training)}"] = _run(cbam, x,
                                                          training=training)
    # Unknown H and W under the backend's compiled predict.
    for name, make, w in (("se", _se, se_w), ("cbam", _cbam, cbam_w)):
        layer, _ = make(channels, weights=w)
        inp = keras.Input((None, None, channels))
        model = keras.Model(inp, layer(inp))
        outputs[f"{name}_model"] = model.predict(x, verbose=0)
    np.savez(out_path, **outputs)


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_backends_agree_with_numpy(backend, tmp_path):
    """Each backend in its own process, on the same weights and inputs."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 7, 10, 64)).astype("float32")
    se_w = ref.random_se_weights(64, 8, rng)
    cbam_w = ref.random_cbam_weights(64, 8, rng)
    np.savez(tmp_path / "case.npz", x=x,
             **{f"se_{k}": v for k, v in se_w.items()},
             **{f"cbam_{k}": v for k, v in cbam_w.items()})
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
    for training in (False, True):
        expected = {"se": ref.squeeze_excitation(x, se_w)[0],
                    "cbam": ref.cbam(x, cbam_w, training=training)[0]}
        for name in ("se", "cbam"):
            for fmt in ("last", "first"):
                np.testing.assert_allclose(
                    out[f"{name}_{fmt}_{int(training)}"], expected[name],
                    rtol=1e-4, atol=1e-5,
                    err_msg=f"{name} {backend} channels_{fmt} "
                            f"training={training}",
                )
    np.testing.assert_allclose(out["se_model"],
                               ref.squeeze_excitation(x, se_w)[0],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["cbam_model"], ref.cbam(x, cbam_w)[0],
                               rtol=1e-4, atol=1e-5)


if __name__ == "__main__":
    _backend_main(sys.argv[1], sys.argv[2])

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import numpy_reference as ref
from keras_coordatt import CoordinateAttention

HERE = os.path.dirname(__file__)


def _layer(channels, data_format="channels_last", seed=0, **kwargs):
    layer = CoordinateAttention(data_format=data_format, **kwargs)
    shape = (None, None, None, channels)
    if data_format == "channels_first":
        shape = (None, channels, None, None)
    layer.build(shape)
    w = ref.random_ca_weights(channels, layer.hidden_channels,
                              np.random.default_rng(seed))
    ref.set_layer_weights(layer, w)
    return layer, w


def _to_first(x):
    return np.transpose(x, (0, 3, 1, 2))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("shape", [(2, 7, 5, 48), (1, 9, 9, 300), (3, 1, 12, 16)])
def test_inference_matches_numpy(data_format, shape):
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    layer, w = _layer(shape[-1], data_format)
    expected = ref.coordinate_attention(x, w)[0]
    inputs = x if data_format == "channels_last" else _to_first(x)
    out = keras.ops.convert_to_numpy(layer(inputs, training=False))
    if data_format == "channels_first":
        out = np.transpose(out, (0, 2, 3, 1))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_training_uses_joint_batch_statistics(data_format):
    shape = (4, 6, 11, 64)
    x = np.random.default_rng(2).normal(size=shape).astype("float32")
    layer, w = _layer(shape[-1], data_format)
    expected, _, _, mean, var = ref.coordinate_attention(x, w, training=True)
    inputs = x if data_format == "channels_last" else _to_first(x)
    out = keras.ops.convert_to_numpy(layer(inputs, training=True))
    if data_format == "channels_first":
        out = np.transpose(out, (0, 2, 3, 1))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # Moving statistics follow Keras momentum 0.9 (PyTorch momentum 0.1).
    moving_mean, moving_var = (
        keras.ops.convert_to_numpy(v) for v in
        (layer.bn.moving_mean, layer.bn.moving_variance)
    )
    np.testing.assert_allclose(
        moving_mean, 0.9 * w["mean"] + 0.1 * mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        moving_var, 0.9 * w["var"] + 0.1 * var, rtol=1e-5, atol=1e-6
    )


def test_hidden_width_and_parameter_count():
    assert _layer(960)[0].hidden_channels == 30
    assert _layer(96)[0].hidden_channels == 8  # max(8, 96 // 32)
    assert _layer(96, reduction=4)[0].hidden_channels == 24
    assert _layer(64, min_channels=16)[0].hidden_channels == 16
    layer = _layer(960)[0]
    trainable = sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
    # conv 960*30+30, bn 2*30, two gates 2*(30*960+960)
    assert trainable == 960 * 30 + 30 + 60 + 2 * (30 * 960 + 960)
    assert len(layer.non_trainable_weights) == 2


def test_unknown_spatial_dims_and_odd_sizes():
    layer, w = _layer(32)
    inp = keras.Input((None, None, 32))
    model = keras.Model(inp, layer(inp))
    for size in [(1, 5, 3), (2, 17, 29), (1, 1, 1)]:
        x = np.random.default_rng(3).normal(size=size + (32,)).astype("float32")
        np.testing.assert_allclose(
            model.predict(x, verbose=0), ref.coordinate_attention(x, w)[0],
            rtol=1e-5, atol=1e-5,
        )
    assert layer.compute_output_shape((None, None, None, 32)) == (
        None, None, None, 32
    )


def test_data_formats_agree():
    x = np.random.default_rng(4).normal(size=(2, 8, 13, 40)).astype("float32")
    last, _ = _layer(40, "channels_last", seed=7)
    first, _ = _layer(40, "channels_first", seed=7)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(_to_first(x))),
        _to_first(keras.ops.convert_to_numpy(last(x))),
        rtol=1e-5, atol=1e-6,
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_attention_maps_reproduce_the_output(data_format):
    x = np.random.default_rng(5).normal(size=(2, 6, 9, 24)).astype("float32")
    layer, w = _layer(24, data_format)
    inputs = x if data_format == "channels_last" else _to_first(x)
    a_h, a_w = (keras.ops.convert_to_numpy(a) for a in
                layer.attention_maps(inputs))
    _, ref_h, ref_w, _, _ = ref.coordinate_attention(x, w)
    if data_format == "channels_first":
        ref_h, ref_w = _to_first(ref_h), _to_first(ref_w)
    np.testing.assert_allclose(a_h, ref_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a_w, ref_w, rtol=1e-5, atol=1e-6)
    out = keras.ops.convert_to_numpy(layer(inputs))
    np.testing.assert_allclose(out, inputs * a_h * a_w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    x = np.random.default_rng(6).uniform(0, 6, (2, 56, 56, 96)).astype("float32")
    layer32, w = _layer(96)
    layer = CoordinateAttention(dtype=policy)
    layer.build((None, None, None, 96))
    ref.set_layer_weights(layer, w)
    assert all(v.dtype == "float32" for v in layer.weights)
    expected = keras.ops.convert_to_numpy(layer32(x))
    out = keras.ops.convert_to_numpy(
        keras.ops.cast(layer(x, training=False), "float32")
    )
    # Training mode last: it moves the BatchNorm statistics.
    for training in (False, True):
        result = layer(x, training=training)
        assert keras.backend.standardize_dtype(result.dtype) == policy[6:]
        result = keras.ops.cast(result, "float32")
        assert np.isfinite(keras.ops.convert_to_numpy(result)).all()
    tol = 2e-2 if policy == "mixed_float16" else 8e-2
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_serialization_round_trip(tmp_path):
    layer = CoordinateAttention(reduction=16, min_channels=4,
                                activation="relu6", name="ca")
    config = layer.get_config()
    assert {k: config[k] for k in
            ("reduction", "min_channels", "activation", "data_format")} == {
        "reduction": 16, "min_channels": 4, "activation": "relu6",
        "data_format": "channels_last"}
    clone = CoordinateAttention.from_config(config)
    assert clone.get_config() == config

    inp = keras.Input((10, 12, 64))
    model = keras.Model(inp, CoordinateAttention(name="ca")(inp))
    ref.set_layer_weights(
        model.get_layer("ca"),
        ref.random_ca_weights(64, 8, np.random.default_rng(8)),
    )
    path = str(tmp_path / "ca.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(9).normal(size=(2, 10, 12, 64)).astype("float32")
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    assert isinstance(loaded.get_layer("ca"), CoordinateAttention)


def test_trains_with_fit():
    inp = keras.Input((8, 8, 16))
    x = CoordinateAttention()(inp)
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.05), "mse")
    rng = np.random.default_rng(10)
    x = rng.normal(size=(64, 8, 8, 16)).astype("float32")
    y = x[..., :1].mean(axis=(1, 2)) * 10
    hist = model.fit(x, y, epochs=15, batch_size=8, verbose=0).history["loss"]
    assert hist[-1] < 0.5 * hist[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"reduction": 0}, "reduction=0"),
        ({"reduction": 2.5}, "reduction=2.5"),
        ({"min_channels": -1}, "min_channels=-1"),
        ({"data_format": "NHWC"}, "data_format='NHWC'"),
        ({"activation": "no_such_activation"}, "no_such_activation"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CoordinateAttention(**kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"4D input.*input_shape=\(None, 8, 16\)"):
        CoordinateAttention().build((None, 8, 16))
    with pytest.raises(ValueError, match="channel dimension"):
        CoordinateAttention().build((None, 8, 8, None))
    layer = _layer(16)[0]
    with pytest.raises(ValueError):
        layer(np.zeros((1, 4, 4, 8), "float32"))


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_backends_agree_with_numpy(backend, tmp_path):
    """Each backend in its own process, on the same weights and inputs."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 7, 10, 64)).astype("float32")
    w = ref.random_ca_weights(64, 8, rng)
    np.savez(tmp_path / "case.npz", x=x, **w)
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE)]))
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "backend_script.py"),
         str(tmp_path / "case.npz"), str(tmp_path / "out.npz")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert str(out["backend"]) == backend
    for training in (False, True):
        expected = ref.coordinate_attention(x, w, training=training)[0]
        for fmt in ("last", "first"):
            np.testing.assert_allclose(
                out[f"{fmt}_{int(training)}"], expected, rtol=1e-4, atol=1e-5,
                err_msg=f"{backend} channels_{fmt} training={training}",
            )
    # Unknown H and W under the backend's compiled predict.
    np.testing.assert_allclose(
        out["model"], ref.coordinate_attention(x, w)[0], rtol=1e-4, atol=1e-5
    )

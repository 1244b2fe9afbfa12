"""A toy attention kind, defined and registered here with one call and no
edit of any package file, through every path of the package: the
constructors, `add_attention`, a training step, `quantize_model` to an
all-int8 LiteRT file, the MAC count, export, the keras-hub backbone and a
DeepLabV3 step.

The toy is a channel gate `x * sigmoid(W2 relu(W1 mean_HW(x)))` (SE's
math with its own layer class and names), so its quantization-aware twin
is built from the package's `QuantSqueezeExcitation` by a builder written
here: what a plug-in author writes.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_coordatt
from keras_coordatt.layers.registry import register_attention
from keras_coordatt.layers.registry import unregister_attention
from keras_coordatt.quantization.layers import QuantSqueezeExcitation

SIZE = 32


@keras.saving.register_keras_serializable(package="plugin_test")
class ToyGate(keras.layers.Layer):
    """A channel gate (channels_last only)."""

    def __init__(self, reduction=4, **kwargs):
        super().__init__(**kwargs)
        self.reduction = reduction

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.hidden = max(2, channels // self.reduction)
        self.squeeze = keras.layers.Conv2D(self.hidden, 1, name="squeeze",
                                           dtype=self.dtype_policy)
        self.excite = keras.layers.Conv2D(channels, 1, name="excite",
                                          dtype=self.dtype_policy)
        self.squeeze.build((None, 1, 1, channels))
        self.excite.build((None, 1, 1, self.hidden))

    def call(self, inputs):
        pooled = ops.mean(inputs, axis=(1, 2), keepdims=True)
        gate = ops.sigmoid(self.excite(ops.relu(self.squeeze(pooled))))
        return inputs * gate

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction}


def twin_toy_gate(layer, momentum):
    """The plug-in's twin builder: `(twin, weights)`."""
    twin = QuantSqueezeExcitation(
        layer.excite.filters, layer.hidden, activation="relu",
        momentum=momentum, name=layer.name)
    weights = [keras.ops.convert_to_numpy(w) for w in (
        layer.squeeze.kernel, layer.squeeze.bias, layer.excite.kernel,
        layer.excite.bias)]
    return twin, weights


@pytest.fixture
def toy_kind():
    spec = register_attention("toy", ToyGate, quantize=twin_toy_gate,
                              paper="a test")
    yield spec
    unregister_attention("toy")


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


def test_constructor_training_step_int8_and_macs(toy_kind, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras_coordatt.MobileNetV2CA(
        weights=None, alpha=0.35, input_shape=(SIZE, SIZE, 3), classes=5,
        attention="toy")
    gates = [l for l in model.layers if isinstance(l, ToyGate)]
    assert len(gates) == 16 and gates[0].name.endswith("_toy")
    x = keras_coordatt.preprocess_input(_images(16))
    y = np.arange(16) % 5
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss="sparse_categorical_crossentropy")
    before = keras.ops.convert_to_numpy(gates[0].squeeze.kernel).copy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(before, gates[0].squeeze.kernel.numpy())

    path = tmp_path / "toy.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)

    if keras.backend.backend() != "tensorflow":
        pytest.skip("conversion to LiteRT and the MAC count need TF")
    from keras_coordatt import counting
    from keras_coordatt import quantization as q

    twin = q.quantize_model(model, calibration_data=x, calibration_steps=2)
    assert sum(isinstance(l, QuantSqueezeExcitation)
               for l in twin.layers) == 16
    blob = q.convert_qat(twin)
    report = q.check_int8(blob)  # raises unless every inner op is int8
    assert report["op_counts"]["LOGISTIC"] >= 16
    keras_out = twin.predict(x, verbose=0)
    tfl_out, _ = q.predict_tflite(blob, x)
    assert np.abs(tfl_out - keras_out).max() < 0.03 * np.ptp(keras_out) \
        + 0.01

    # MACs without a table: the gates' two 1x1 convolutions on the pooled
    # vector, C * hidden * 2 for each of the 16 blocks.
    counted = counting.count_macs(model)
    expected = sum(2 * g.excite.filters * g.hidden for g in gates)
    assert counted["attention"] == expected
    assert counted["attention_layers"] == 16


def test_add_attention_and_export(toy_kind, tmp_path):
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(
        weights=None, alpha=0.35, input_shape=(SIZE, SIZE, 3), classes=5)
    model = keras_coordatt.add_attention(
        base, after=lambda l: l.name.endswith("depthwise_relu"),
        attention="toy")
    x = keras.applications.mobilenet_v2.preprocess_input(_images(4))
    np.testing.assert_allclose(model.predict(x, verbose=0),
                               base.predict(x, verbose=0), atol=1e-6)
    assert sum(isinstance(getattr(l, "layer", None), ToyGate)
               for l in model.layers) == 17

    from keras_coordatt.export import build_model
    from keras_coordatt.export import export_model

    _, kwargs = build_model(alpha=0.35, weights=None, input_size=SIZE,
                            classes=5)
    kwargs = {**kwargs, "attention": "toy"}
    network = keras_coordatt.MobileNetV2CA(weights=None, **kwargs)
    out = tmp_path / "keras"
    metadata = export_model(str(out), "keras", alpha=0.35, weights=None,
                            classes=5, input_size=SIZE, model=network,
                            model_kwargs=kwargs, num_verify_images=2)
    assert metadata["verification"]["keras"]["max_abs_diff"] <= \
        metadata["verification"]["tolerance"]
    # The user's attention class loads back in safe mode (registered).
    loaded = keras.saving.load_model(str(out / "model.keras"), safe_mode=True)
    assert sum(isinstance(l, ToyGate) for l in loaded.layers) == 16


@pytest.mark.slow
def test_keras_hub_backbone_and_deeplabv3_step(toy_kind):
    pytest.importorskip("keras_hub")
    from keras_coordatt.hub import hub_classes
    from keras_coordatt.training import segmentation

    backbone = hub_classes("mobilenetv2_ca").backbone(alpha=0.35,
                                                      attention="toy")
    assert sum(isinstance(l, ToyGate) for l in backbone.layers) == 16
    keras.utils.set_random_seed(0)
    segmenter, _ = segmentation.build_segmenter(
        "mobilenetv2_ca", 3, image_size=SIZE, alpha=0.35, attention="toy",
        transfer=False)
    segmenter.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss=segmentation.segmentation_loss())
    x = keras_coordatt.preprocess_input(_images(4))
    y = np.random.default_rng(1).integers(0, 3, (4, SIZE, SIZE, 1))
    history = segmenter.fit(x, y, batch_size=2, epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[1] < losses[0]

import keras
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from keras_coordatt import MobileNetV2CA  # noqa: E402
from keras_coordatt import visualize  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return MobileNetV2CA(alpha=0.35, weights=None, include_top=False,
                         input_shape=(64, 96, 3))


def test_attention_maps_are_what_the_layers_apply(model):
    x = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype("float32")
    maps = visualize.attention_maps(model, x)
    assert list(maps) == [f"block_{i}_ca" for i in range(1, 17)]
    a_h, a_w = maps["block_1_ca"]
    assert a_h.shape == (2, 16, 1, 48) and a_w.shape == (2, 1, 24, 48)
    assert ((a_h > 0) & (a_h < 1)).all()
    # The product of the gates times the layer input is the layer output.
    layer = model.get_layer("block_3_ca")
    probe = keras.Model(model.input, [layer.input, layer.output])
    inp, out = (keras.ops.convert_to_numpy(t) for t in probe(x))
    a_h, a_w = maps["block_3_ca"]
    np.testing.assert_allclose(inp * a_h * a_w, out, rtol=1e-5, atol=1e-6)
    only = visualize.attention_maps(model, x, ["block_16_ca"])
    np.testing.assert_array_equal(only["block_16_ca"][0],
                                  maps["block_16_ca"][0])
    with pytest.raises(ValueError, match="block_99_ca"):
        visualize.attention_maps(model, x, ["block_99_ca"])


def test_heatmap_is_the_channel_mean_of_the_outer_product():
    rng = np.random.default_rng(1)
    a_h = rng.uniform(size=(2, 5, 1, 7))
    a_w = rng.uniform(size=(2, 1, 4, 7))
    expected = (a_h * a_w).mean(axis=-1)
    np.testing.assert_allclose(visualize.attention_heatmap(a_h, a_w), expected)
    first = visualize.attention_heatmap(
        np.transpose(a_h, (0, 3, 1, 2)), np.transpose(a_w, (0, 3, 1, 2)),
        data_format="channels_first")
    np.testing.assert_allclose(first, expected)


def test_confusion_matrix_counts():
    m = visualize.confusion_matrix([0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 0], 3)
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 1], [1, 0, 2]])


def test_plots_have_the_expected_panels(model):
    x = np.random.default_rng(2).uniform(size=(3, 64, 96, 3)).astype("float32")
    maps = visualize.attention_maps(model, x, ["block_2_ca", "block_9_ca"])
    fig = visualize.plot_attention(x, maps, titles=["a", "b", "c"])
    assert len(fig.axes) == 3 * 3
    assert fig.axes[0].get_title() == "a"
    fig = visualize.plot_history({"loss": [3, 2, 1], "val_loss": [3, 2.5, 2],
                                  "accuracy": [0.1, 0.5, 0.9]})
    assert len(fig.axes) == 2
    assert len(fig.axes[0].lines) == 2
    fig = visualize.plot_confusion_matrix([0, 1, 1], [0, 1, 0], ["x", "y"])
    assert fig.axes[0].images[0].get_array().sum() == 3

"""add_attention: attention blocks inserted into existing models."""

import inspect

import numpy as np
import pytest

import keras
from keras import layers

from keras_coordatt.applications import MobileNetV2CA
from keras_coordatt.applications import preprocess_input
from keras_coordatt.datasets import digits_images
from keras_coordatt.insertion import IdentityInitAttention
from keras_coordatt.insertion import add_attention
from keras_coordatt.layers.registry import ATTENTIONS
from keras_coordatt.layers.registry import get_attention

SIZE = 64  # Small inputs keep the keras.applications models fast on CPU.


@pytest.fixture(scope="module")
def digits():
    """Eight real images (the offline digits), uint8 RGB, 64x64 and 16x16,
    with their labels."""
    images, labels = digits_images(SIZE)
    small, _ = digits_images(16)
    return images[:8], small[:8], labels[:8]


def _inbound(model):
    """Maps each layer name to the names of the layers feeding each of its
    calls inside `model` (the graph's connections)."""
    inbound = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.is_input:
                continue
            names = [t._keras_history.operation.name
                     for t in node.input_tensors]
            inbound.setdefault(node.operation.name, []).append(names)
    return {name: sorted(calls) for name, calls in inbound.items()}


def _run(model, x):
    """Inference without tracing a predict function (faster here)."""
    return keras.tree.map_structure(
        keras.ops.convert_to_numpy, model(x, training=False))


def _relative(a, b):
    a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
    return np.max(np.abs(a - b)) / np.max(np.abs(a))


def _randomize_batchnorm(model, seed=0):
    """Non-trivial moving statistics, so that identity checks see BN."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                rng.normal(0, 0.1, beta.shape).astype("float32"),
                rng.normal(0, 0.1, mean.shape).astype("float32"),
                rng.uniform(0.5, 1.5, var.shape).astype("float32"),
            ])


def _branchy(outputs=("logits", "aux")):
    """A user graph with branches, a three-way residual add, a
    concatenation of two depths and (by default) two outputs."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3), name="image")
    scaled = layers.Rescaling(1 / 255.0, name="scale")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="stem")(scaled)
    x = layers.ReLU(name="stem_relu")(x)
    a = layers.Conv2D(8, 3, padding="same", name="branch_a")(x)
    a = layers.ReLU(name="branch_a_relu")(a)
    b = layers.DepthwiseConv2D(3, padding="same", name="branch_b")(x)
    y = layers.Add(name="add")([x, a, b])
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.ReLU(name="add_relu")(y)
    z = layers.Concatenate(name="concat")([y, x])
    pooled = layers.GlobalAveragePooling2D(name="pool")(z)
    heads = {"logits": layers.Dense(10, name="logits")(pooled),
             "aux": layers.Conv2D(4, 1, name="aux")(y)}
    model = keras.Model(
        inputs, {k: heads[k] for k in outputs}, name="branchy")
    _randomize_batchnorm(model)
    return model


SELECTED = ["stem_relu", "branch_a_relu", "add_relu"]


# MobileNetV2CA rebuilt from the plain network.

def test_mobilenet_v2_ca_rebuilt_from_plain_network(digits):
    images = digits[0]
    kwargs = dict(weights=None, input_shape=(SIZE, SIZE, 3),
                  classifier_activation=None)
    keras.utils.set_random_seed(0)
    reference = MobileNetV2CA(**kwargs)
    plain = MobileNetV2CA(attention=False, **kwargs)
    # The blocks with expansion > 1 are 1..16 (block 0 is expanded_conv).
    after = [f"block_{i}_depthwise_relu" for i in range(1, 17)]
    model = add_attention(
        plain, after=after, identity_init=False,
        name_fn=lambda layer: layer.name.replace("_depthwise_relu", "_ca"),
    )

    def kinds(m):
        return {(layer.name, type(layer).__name__) for layer in m.layers}

    assert kinds(model) == kinds(reference)
    assert len(model.layers) == len(reference.layers) == 16 + len(plain.layers)
    assert _inbound(model) == _inbound(reference)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 3_950_648
    for layer in reference.layers:
        model.get_layer(layer.name).set_weights(layer.get_weights())
    x = preprocess_input(images)
    expected = _run(reference, x)
    np.testing.assert_allclose(
        _run(model, x), expected, rtol=1e-5, atol=1e-5)


# keras.applications models, identity initialisation.

def _mobilenet_v3_small():
    return keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), weights=None, include_top=False)


APPLICATIONS = {
    # name: (constructor, preprocess, after, expected number of blocks)
    "MobileNetV2": (
        lambda: keras.applications.MobileNetV2(
            input_shape=(SIZE, SIZE, 3), weights=None, include_top=False),
        keras.applications.mobilenet_v2.preprocess_input,
        lambda layer: layer.name.endswith("depthwise_relu"), 17),
    "MobileNetV3Small": (  # after the squeeze-excite products: by class
        _mobilenet_v3_small,
        keras.applications.mobilenet_v3.preprocess_input,
        layers.Multiply, 9),
    "ResNet50": (  # after every residual block's output: by names
        lambda: keras.applications.ResNet50(
            input_shape=(SIZE, SIZE, 3), weights=None, include_top=False),
        keras.applications.resnet50.preprocess_input,
        [f"conv{s}_block{b}_out" for s, n in ((2, 3), (3, 4), (4, 6), (5, 3))
         for b in range(1, n + 1)], 16),
    "EfficientNetB0": (  # after the depthwise activations
        lambda: keras.applications.EfficientNetB0(
            input_shape=(SIZE, SIZE, 3), weights=None, include_top=False),
        keras.applications.efficientnet.preprocess_input,
        lambda layer: layer.name.startswith("block")
        and layer.name.endswith("_activation")
        and "expand" not in layer.name, 16),
}


@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_keras_applications_keep_their_outputs(name, digits):
    build, preprocess, after, count = APPLICATIONS[name]
    keras.utils.set_random_seed(0)
    original = build()
    _randomize_batchnorm(original)
    x = preprocess(digits[0].astype("float32"))
    before = _run(original, x)
    model = add_attention(original, after=after)

    blocks = [l for l in model.layers if isinstance(l, IdentityInitAttention)]
    assert len(blocks) == count
    assert len(model.layers) == len(original.layers) + count
    assert all(b.name.endswith("_ca") and type(b.layer).__name__ ==
               "CoordinateAttention" for b in blocks)
    # The original layers' weights, in new (copied) layers.
    for layer in original.layers:
        copy = model.get_layer(layer.name)
        assert copy is not layer
        for w, v in zip(layer.get_weights(), copy.get_weights()):
            np.testing.assert_array_equal(w, v)
    after_insert = _run(model, x)
    assert _relative(before, after_insert) <= 1e-3
    np.testing.assert_array_equal(after_insert, before)  # s = 0: exact
    # The blocks are on the path: with s = 1 (plain CA) the output moves.
    for block in blocks:
        block.scale.assign(1.0)
    assert _relative(before, _run(model, x)) > 1e-2
    # The original is unchanged and still works.
    np.testing.assert_array_equal(_run(original, x), before)


# User graphs: topology, nesting, sharing.

def test_branching_graph_keeps_its_topology(digits):
    original = _branchy()
    original.get_layer("stem").trainable = False  # A frozen layer stays so.
    model = add_attention(original, after=SELECTED)
    assert not model.get_layer("stem").trainable
    assert all(model.get_layer(f"{n}_ca").trainable for n in SELECTED)
    renamed = {n: f"{n}_ca" for n in SELECTED}
    expected = {
        name: [[renamed.get(p, p) for p in call] for call in calls]
        for name, calls in _inbound(original).items()
    }
    expected.update({f"{n}_ca": [[n]] for n in SELECTED})
    assert _inbound(model) == expected
    assert set(model.output) == {"logits", "aux"}
    x = digits[1]
    before = _run(original, x)
    after = _run(model, x)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_nested_and_sequential_models_are_rewritten(digits):
    keras.utils.set_random_seed(2)
    encoder_in = keras.Input((16, 16, 3), name="encoder_in")
    h = layers.Conv2D(8, 3, padding="same", name="inner_conv")(encoder_in)
    h = layers.ReLU(name="inner_relu")(h)
    encoder = keras.Model(encoder_in, h, name="encoder")
    head = keras.Sequential([
        keras.Input((16, 16, 8)),
        layers.Conv2D(8, 1, name="seq_conv"),
        layers.ReLU(name="seq_relu"),
        layers.GlobalAveragePooling2D(name="seq_pool"),
    ], name="head")
    inputs = keras.Input((16, 16, 3), name="image")
    flipped = layers.Lambda(lambda t: keras.ops.flip(t, 2), name="flip")(
        inputs)
    # The encoder is shared: called twice, it must stay shared.
    merged = layers.Add(name="merge")([encoder(inputs), encoder(flipped)])
    original = keras.Model(inputs, head(merged), name="outer")

    model = add_attention(original, after=["inner_relu", "seq_relu"],
                          attention="ca")
    new_encoder = model.get_layer("encoder")
    assert new_encoder is not encoder
    assert isinstance(new_encoder.get_layer("inner_relu_ca"),
                      IdentityInitAttention)
    assert isinstance(model.get_layer("head").get_layer("seq_relu_ca"),
                      IdentityInitAttention)
    assert _inbound(model)["encoder"] == [["flip"], ["image"]]
    assert len(encoder.layers) == 3  # The original nested model untouched.
    x = digits[1].astype("float32") / 255.0
    np.testing.assert_array_equal(
        _run(model, x), _run(original, x))
    # A built Sequential at the top level works too.
    top = add_attention(head, after=layers.ReLU)
    assert [l.name for l in top.layers][-3:] == [
        "seq_relu", "seq_relu_ca", "seq_pool"]


def test_mixed_precision_blocks_follow_their_layer(digits):
    keras.config.set_dtype_policy("mixed_float16")
    try:
        original = _branchy(outputs=("logits",))
    finally:
        keras.config.set_dtype_policy("float32")
    model = add_attention(original, after=SELECTED)
    block = model.get_layer("stem_relu_ca")
    assert block.dtype_policy.name == block.layer.dtype_policy.name == \
        "mixed_float16"
    assert block.scale.dtype == "float32"
    x = digits[1]
    np.testing.assert_array_equal(
        _run(model, x)["logits"], _run(original, x)["logits"])


def test_unselected_shared_layer_stays_shared(digits):
    inputs = keras.Input((16, 16, 3), name="image")
    shared = layers.Conv2D(3, 3, padding="same", name="shared")
    x = layers.ReLU(name="relu")(shared(shared(inputs)))
    original = keras.Model(inputs, x)
    model = add_attention(original, after=["relu"])
    assert _inbound(model)["shared"] == [["image"], ["shared"]]  # sorted
    with pytest.raises(ValueError, match=r"shared.*\['shared'\]"):
        add_attention(original, after=["shared"])


# Attention kinds and arguments.

@pytest.mark.parametrize("kind", list(ATTENTIONS))
def test_each_registered_kind(kind, digits):
    original = _branchy(outputs=("logits",))
    x = digits[1]
    before = _run(original, x)["logits"]
    # `reduction` for the kinds that have one (ELA, strip attention and
    # simple CA have none).
    takes_reduction = "reduction" in inspect.signature(
        get_attention(kind)).parameters
    options = {"reduction": 4} if takes_reduction else {}
    model = add_attention(original, after=SELECTED, attention=kind.upper(),
                          **options)
    blocks = [model.get_layer(f"{n}_{kind}") for n in SELECTED]
    assert all(type(b.layer) is get_attention(kind) for b in blocks)
    assert all(getattr(b.layer, "reduction", None) == options.get("reduction")
               for b in blocks)
    np.testing.assert_array_equal(
        _run(model, x)["logits"], before)
    plain = add_attention(original, after=SELECTED, attention=kind,
                          identity_init=False)
    assert all(type(plain.get_layer(f"{n}_{kind}")) is get_attention(kind)
               for n in SELECTED)
    assert _relative(before, _run(plain, x)["logits"]) > 1e-3


def test_callable_attention():
    original = _branchy()
    model = add_attention(original, after=["stem_relu"], identity_init=False,
                          attention=lambda c: layers.Conv2D(c, 1))
    block = model.get_layer("stem_relu_attention")
    assert isinstance(block, layers.Conv2D) and block.filters == 8
    reused = layers.Conv2D(8, 1)
    with pytest.raises(ValueError, match="new, unbuilt"):
        add_attention(original, after=["stem_relu", "branch_a_relu"],
                      attention=lambda c: reused)


# Errors.

class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = layers.Conv2D(4, 3)

    def call(self, x):
        return self.conv(x)


def test_errors():
    original = _branchy()
    with pytest.raises(ValueError, match="subclassed.*_Subclassed"):
        add_attention(_Subclassed(), after=layers.Conv2D)
    unbuilt = keras.Sequential([layers.Conv2D(4, 3), layers.ReLU(name="r")])
    with pytest.raises(ValueError, match="Sequential.*built"):
        add_attention(unbuilt, after=["r"])
    with pytest.raises(ValueError, match=r"\['missing', 'nope'\]"):
        add_attention(original, after=["stem_relu", "nope", "missing"])
    with pytest.raises(ValueError, match="'ca', 'se', 'cbam'.*'eca'"):
        add_attention(original, after=SELECTED, attention="eca")
    with pytest.raises(ValueError, match="'ca', 'se', 'cbam'"):
        add_attention(original, after=SELECTED, attention=3)
    with pytest.raises(ValueError, match="4D.*'pool'.*'logits'"):
        add_attention(original, after=["stem_relu", "pool", "logits"])
    with pytest.raises(ValueError, match="selects no layer"):
        add_attention(original, after=lambda layer: False)
    with pytest.raises(ValueError, match="Received: after=3"):
        add_attention(original, after=3)
    once = add_attention(original, after=["stem_relu"])
    with pytest.raises(ValueError, match=r"taken.*\['stem_relu_ca'\]"):
        add_attention(once, after=["stem_relu"])
    with pytest.raises(ValueError, match="reduction"):
        add_attention(original, after=SELECTED, reduction=0)


# Fine-tuning and saving.

def test_fine_tuning_moves_the_scale_then_the_block(digits, tmp_path):
    _, x, y = digits
    model = add_attention(_branchy(outputs=("logits",)), after=SELECTED)
    model = keras.Model(model.input, model.output["logits"])
    lr = 0.5
    model.compile(optimizer=keras.optimizers.SGD(lr), jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    blocks = [model.get_layer(f"{n}_ca") for n in SELECTED]

    def gradients():
        """Plain SGD: each variable moves by -lr * gradient."""
        before = [v.numpy() for v in model.trainable_variables]
        model.train_on_batch(x, y)
        return {v.path: (b - v.numpy()) / lr
                for v, b in zip(model.trainable_variables, before)}

    first = gradients()
    assert all(np.isfinite(g).all() for g in first.values())
    assert all(abs(b.scale.numpy()) > 1e-6 for b in blocks)
    # At s = 0 the attention weights get s * (...) = 0 ...
    inner = [v.path for b in blocks for v in b.layer.trainable_variables]
    assert all(np.all(first[p] == 0) for p in inner)
    # ... and a non-zero gradient once s has moved.
    second = gradients()
    assert all(np.isfinite(g).all() for g in second.values())
    assert all(np.abs(second[p]).max() > 0 for p in inner
               if p.endswith("kernel"))

    path = tmp_path / "inserted.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(
        _run(loaded, x), _run(model, x))
    assert [type(l).__name__ for l in loaded.layers] == [
        type(l).__name__ for l in model.layers]
    config = blocks[0].get_config()
    assert set(config) - set(keras.layers.Layer().get_config()) == {"layer"}

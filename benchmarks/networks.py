"""The networks the benchmarks compare, and their counted cost.

`MobileNetV2CA` against `keras.applications.MobileNetV2` (same alpha and
size, random weights, non-trivial BatchNorm statistics), the same network
without attention for LiteRT diagnostics, and the single-layer models
(coordinate attention, a squeeze-and-excitation block, one element-wise
pass) timed at the network's feature-map shapes. Multiply-adds and
parameters come from `keras_coordatt.counting`.
"""

import numpy as np

CA = "MobileNetV2CA"
BASE = "MobileNetV2"
NO_CA = "MobileNetV2CA(attention=False)"
SE_REDUCTION = 16

DESCRIPTIONS = {
    CA: "keras_coordatt.MobileNetV2CA(weights=None)",
    BASE: "keras.applications.MobileNetV2(weights=None)",
    NO_CA: "keras_coordatt.MobileNetV2CA(weights=None, "
           "attention=False) (LiteRT diagnostics only)",
}


def build_models(args, include_noca=False):
    import keras

    from keras_coordatt import MobileNetV2CA

    shape = (args.size, args.size, 3)
    models = {
        CA: MobileNetV2CA(input_shape=shape, alpha=args.alpha,
                          weights=None),
        BASE: keras.applications.MobileNetV2(input_shape=shape,
                                             alpha=args.alpha, weights=None),
    }
    if include_noca:
        models[NO_CA] = MobileNetV2CA(input_shape=shape, alpha=args.alpha,
                                      weights=None, attention=False)
    randomize_statistics(models)
    return models


def randomize_statistics(models, seed=0):
    """Non-trivial BatchNorm statistics (as trained weights have)."""
    import keras

    rng = np.random.default_rng(seed)
    for model in models.values():
        for layer in all_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                n = layer.moving_mean.shape[0]
                layer.moving_mean.assign(
                    (0.1 * rng.standard_normal(n)).astype("float32"))
                layer.moving_variance.assign(
                    (0.5 + rng.random(n)).astype("float32"))


def all_layers(model):
    """The layers of a model, nested models and sub-layers included."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)
        else:
            yield layer
            for sub in getattr(layer, "_layers", []) or []:
                yield sub


def model_counts(models):
    """name -> MACs and parameters, and the CA / base ratios."""
    from keras_coordatt.counting import count_each
    from keras_coordatt.counting import count_params

    counts = {}
    counted = count_each(models)
    for name, model in models.items():
        macs = counted[name]
        params = count_params(model)
        counts[name] = {
            "macs": macs["total"],
            "macs_by_type": macs["by_type"],
            "attention_macs": macs["attention"],
            "attention_layers": macs["attention_layers"],
            "attention_elementwise": macs["attention_elementwise"],
            "params": params["total"],
            "trainable_params": params["trainable"],
        }
    if CA in counts and BASE in counts:
        counts["mac_ratio"] = counts[CA]["macs"] / counts[BASE]["macs"]
        counts["param_ratio"] = counts[CA]["params"] / counts[BASE]["params"]
    return counts


def reference_counts():
    """MACs and parameters at alpha 1.0, 224x224 (the paper's setting)."""
    import keras

    from keras_coordatt import MobileNetV2CA

    models = {
        CA: MobileNetV2CA(weights=None),
        BASE: keras.applications.MobileNetV2(weights=None),
    }
    counts = model_counts(models)
    counts["note"] = ("alpha 1.0, 224x224, include_top; the paper: 300M "
                      "MAdds for MobileNetV2, 310M (306.7M) with CA")
    return counts


def attention_shapes(model):
    """[(H, W, C), count] of the CoordinateAttention layers of a model."""
    from keras_coordatt.layers import CoordinateAttention

    shapes = {}
    for layer in all_layers(model):
        if isinstance(layer, CoordinateAttention):
            for node in layer._inbound_nodes:
                shape = tuple(int(d) for d in node.input_tensors[0].shape[1:])
                shapes[shape] = shapes.get(shape, 0) + 1
    return sorted(shapes.items(), key=lambda kv: -kv[0][0] * kv[0][1])


def se_block(shape, reduction=SE_REDUCTION):
    """A plain squeeze-and-excitation block written with Keras layers."""
    import keras

    h, w, c = shape
    inputs = keras.Input(shape, batch_size=1)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs)
    s = keras.layers.Conv2D(max(8, c // reduction), 1,
                            activation="relu")(s)
    s = keras.layers.Conv2D(c, 1, activation="sigmoid")(s)
    outputs = keras.layers.Multiply()([inputs, s])
    return keras.Model(inputs, outputs, name="se_block")


def layer_models(shape):
    """The three single-layer models timed at one feature-map shape."""
    import keras

    from keras_coordatt import CoordinateAttention

    inputs = keras.Input(shape, batch_size=1)
    ca = keras.Model(inputs, CoordinateAttention()(inputs),
                     name="coordinate_attention")
    inputs = keras.Input(shape, batch_size=1)
    elementwise = keras.Model(
        inputs, keras.layers.Rescaling(0.5)(inputs), name="elementwise_pass"
    )
    models = {"coordinate_attention": ca, "se_block": se_block(shape),
              "elementwise_pass": elementwise}
    randomize_statistics(models, seed=1)
    return models

"""An independent numpy implementation of coordinate attention (the formula).

Written from the paper's equations, channels_last, to check the Keras layer.
"""

import numpy as np


def hard_swish(x):
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def random_ca_weights(channels, hidden, rng):
    """Weights in plain matrix form: w1 (C, mip), w_h / w_w (mip, C)."""
    return {
        "w1": rng.normal(0, 0.3, (channels, hidden)),
        "b1": rng.normal(0, 0.1, hidden),
        "gamma": rng.uniform(0.5, 1.5, hidden),
        "beta": rng.normal(0, 0.1, hidden),
        "mean": rng.normal(0, 0.2, hidden),
        "var": rng.uniform(0.5, 2.0, hidden),
        "w_h": rng.normal(0, 0.3, (hidden, channels)),
        "b_h": rng.normal(0, 0.1, channels),
        "w_w": rng.normal(0, 0.3, (hidden, channels)),
        "b_w": rng.normal(0, 0.1, channels),
    }


def set_layer_weights(layer, w):
    """Copies the matrix-form weights into a built CoordinateAttention."""
    layer.conv.set_weights([w["w1"][None, None], w["b1"]])
    layer.bn.set_weights([w["gamma"], w["beta"], w["mean"], w["var"]])
    layer.conv_h.set_weights([w["w_h"][None, None], w["b_h"]])
    layer.conv_w.set_weights([w["w_w"][None, None], w["b_w"]])


def coordinate_attention(x, w, training=False, eps=1e-5):
    """Returns (output, a_h, a_w, batch_mean, batch_var) for x (B, H, W, C)."""
    x = x.astype(np.float64)
    _, h, _, _ = x.shape
    z_h = x.mean(axis=2)  # (B, H, C): one value per row
    z_w = x.mean(axis=1)  # (B, W, C): one value per column
    strip = np.concatenate([z_h, z_w], axis=1)  # (B, H + W, C)
    y = strip @ w["w1"] + w["b1"]
    if training:
        mean = y.mean(axis=(0, 1))
        var = y.var(axis=(0, 1))
    else:
        mean, var = w["mean"], w["var"]
    y = (y - mean) / np.sqrt(var + eps) * w["gamma"] + w["beta"]
    y = hard_swish(y)
    y_h, y_w = y[:, :h], y[:, h:]
    a_h = sigmoid(y_h @ w["w_h"] + w["b_h"])[:, :, None, :]  # (B, H, 1, C)
    a_w = sigmoid(y_w @ w["w_w"] + w["b_w"])[:, None, :, :]  # (B, 1, W, C)
    return x * a_h * a_w, a_h, a_w, mean, var

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


# Squeeze-and-excitation (Hu et al. 2018) and CBAM (Woo et al. 2018), from
# the papers' equations, channels_last, float64.


def relu(x):
    return np.maximum(x, 0.0)


def random_se_weights(channels, hidden, rng):
    """SE weights in matrix form: w1 (C, hidden), w2 (hidden, C)."""
    return {
        "w1": rng.normal(0, 0.3, (channels, hidden)),
        "b1": rng.normal(0, 0.1, hidden),
        "w2": rng.normal(0, 0.3, (hidden, channels)),
        "b2": rng.normal(0, 0.1, channels),
    }


def set_se_weights(layer, w):
    """Copies the matrix-form weights into a built SqueezeExcitation."""
    layer.reduce.set_weights([w["w1"][None, None], w["b1"]])
    layer.expand.set_weights([w["w2"][None, None], w["b2"]])


def squeeze_excitation(x, w):
    """Returns (output, gate) for x (B, H, W, C); gate is (B, 1, 1, C)."""
    x = x.astype(np.float64)
    z = x.mean(axis=(1, 2))  # squeeze: (B, C)
    s = sigmoid(relu(z @ w["w1"] + w["b1"]) @ w["w2"] + w["b2"])  # excite
    gate = s[:, None, None, :]
    return x * gate, gate


def random_cbam_weights(channels, hidden, rng, kernel_size=7,
                        batchnorm=True):
    """CBAM weights: the shared MLP w0 (C, hidden), w1 (hidden, C); the
    spatial kernel ws (k, k, 2) over (mean, max) and its BN (or bias bs)."""
    w = {
        "w0": rng.normal(0, 0.3, (channels, hidden)),
        "b0": rng.normal(0, 0.1, hidden),
        "w1": rng.normal(0, 0.3, (hidden, channels)),
        "b1": rng.normal(0, 0.1, channels),
        "ws": rng.normal(0, 0.3, (kernel_size, kernel_size, 2)),
    }
    if batchnorm:
        w.update(
            gamma=rng.uniform(0.5, 1.5, 1), beta=rng.normal(0, 0.1, 1),
            mean=rng.normal(0, 0.2, 1), var=rng.uniform(0.5, 2.0, 1),
        )
    else:
        w["bs"] = rng.normal(0, 0.1, 1)
    return w


def set_cbam_weights(layer, w):
    """Copies the matrix-form weights into a built CBAM."""
    layer.mlp_reduce.set_weights([w["w0"][None, None], w["b0"]])
    layer.mlp_expand.set_weights([w["w1"][None, None], w["b1"]])
    kernel = w["ws"][..., None]  # (k, k, 2, 1)
    if "bs" in w:
        layer.spatial_conv.set_weights([kernel, w["bs"]])
    else:
        layer.spatial_conv.set_weights([kernel])
        layer.spatial_bn.set_weights(
            [w["gamma"], w["beta"], w["mean"], w["var"]]
        )


def conv2d_same(x, kernel):
    """Stride-1 'same' cross-correlation of x (B, H, W, Cin) with an odd
    kernel (k, k, Cin), one output channel: (B, H, W)."""
    k = kernel.shape[0]
    p = k // 2
    _, h, wd, _ = x.shape
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros(x.shape[:3])
    for i in range(k):
        for j in range(k):
            out += padded[:, i:i + h, j:j + wd, :] @ kernel[i, j]
    return out


def cbam(x, w, training=False, eps=1e-5):
    """Returns (output, channel_gate, spatial_gate, batch_mean, batch_var)
    for x (B, H, W, C): gates (B, 1, 1, C) and (B, H, W, 1); the batch
    moments are those of the spatial BatchNorm (None without one)."""
    x = x.astype(np.float64)

    def mlp(v):
        return relu(v @ w["w0"] + w["b0"]) @ w["w1"] + w["b1"]

    m_c = sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    channel_gate = m_c[:, None, None, :]
    f = x * channel_gate
    pooled = np.stack([f.mean(axis=-1), f.max(axis=-1)], axis=-1)
    y = conv2d_same(pooled, w["ws"])  # (B, H, W)
    mean = var = None
    if "bs" in w:
        y = y + w["bs"][0]
    else:
        if training:
            mean, var = y.mean(), y.var()
        else:
            mean, var = w["mean"][0], w["var"][0]
        y = (y - mean) / np.sqrt(var + eps) * w["gamma"][0] + w["beta"][0]
    spatial_gate = sigmoid(y)[..., None]
    return f * spatial_gate, channel_gate, spatial_gate, mean, var

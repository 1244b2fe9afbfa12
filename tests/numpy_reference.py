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


# The coordinate-attention family of timm's layers/coord_attn.py
# (SimpleCoordAttn, EfficientLocalAttn, StripAttn), from its description,
# channels_last, float64.


def silu(x):
    return x * sigmoid(x)


def hard_sigmoid(x):
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0


def timm_make_divisible(v, divisor=8):
    """timm's make_divisible with round_limit=0."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def random_simple_ca_weights(channels, hidden, rng):
    """fc1 (C, hidden), fc_h and fc_w (hidden, C) in matrix form."""
    return {
        "w1": rng.normal(0, 0.3, (channels, hidden)),
        "b1": rng.normal(0, 0.1, hidden),
        "w_h": rng.normal(0, 0.3, (hidden, channels)),
        "b_h": rng.normal(0, 0.1, channels),
        "w_w": rng.normal(0, 0.3, (hidden, channels)),
        "b_w": rng.normal(0, 0.1, channels),
    }


def set_simple_ca_weights(layer, w):
    layer.fc1.set_weights([w["w1"][None, None], w["b1"]])
    layer.fc_h.set_weights([w["w_h"][None, None], w["b_h"]])
    layer.fc_w.set_weights([w["w_w"][None, None], w["b_w"]])


def simple_coord_attention(x, w, act=silu, gate=sigmoid, residual=False):
    """Returns (output, gate) for x (B, H, W, C); gate (B, H, W, C)."""
    x = x.astype(np.float64)
    x_h = act(x.mean(axis=2) @ w["w1"] + w["b1"])  # (B, H, hidden)
    x_w = act(x.mean(axis=1) @ w["w1"] + w["b1"])  # (B, W, hidden)
    a_h = (x_h @ w["w_h"] + w["b_h"])[:, :, None, :]  # (B, H, 1, C)
    a_w = (x_w @ w["w_w"] + w["b_w"])[:, None, :, :]  # (B, 1, W, C)
    g = gate(a_h + a_w)  # one additive gate
    out = x * g
    return (out + x if residual else out), g


def random_strip_conv_weights(channels, kernel_size, rng, bias=False,
                              norm=False):
    """Depthwise strip kernels k_h, k_w (k, C) [+ biases] [+ norms]."""
    w = {"k_h": rng.normal(0, 0.3, (kernel_size, channels)),
         "k_w": rng.normal(0, 0.3, (kernel_size, channels))}
    if bias:
        w.update(b_h=rng.normal(0, 0.1, channels),
                 b_w=rng.normal(0, 0.1, channels))
    if norm:
        for s in ("h", "w"):
            w[f"gamma_{s}"] = rng.uniform(0.5, 1.5, channels)
            w[f"beta_{s}"] = rng.normal(0, 0.2, channels)
    return w


def set_strip_conv_weights(layer, w):
    """Copies strip kernels (and norms) into a built EfficientLocalAttention
    or StripAttention."""
    for s, shape in (("h", lambda k: k[:, None, :, None]),
                     ("w", lambda k: k[None, :, :, None])):
        values = [shape(w[f"k_{s}"])]
        if f"b_{s}" in w:
            values.append(w[f"b_{s}"])
        getattr(layer, f"conv_{s}").set_weights(values)
        if f"gamma_{s}" in w:
            getattr(layer, f"norm_{s}").set_weights(
                [w[f"gamma_{s}"], w[f"beta_{s}"]])


def depthwise_1d_same(strip, kernel, bias=None):
    """Cross-correlation of strip (B, L, C) with kernel (k, C), zero
    padding k // 2 on both sides (odd k): (B, L, C)."""
    k = kernel.shape[0]
    padded = np.pad(strip, ((0, 0), (k // 2, k // 2), (0, 0)))
    length = strip.shape[1]
    out = sum(padded[:, j:j + length] * kernel[j] for j in range(k))
    return out if bias is None else out + bias


def group_norm(y, gamma, beta, groups=1, eps=1e-5):
    """GroupNorm of y (B, L, C): statistics over (L, C / groups)."""
    b, length, c = y.shape
    g = y.reshape(b, length, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(b, length, c) * gamma + beta


def efficient_local_attention(x, w, act=silu, gate=sigmoid, groups=1,
                              residual=False):
    """Returns (output, a_h (B, H, 1, C), a_w (B, 1, W, C)); the norms are
    used when `w` holds gamma_h/beta_h."""
    x = x.astype(np.float64)
    gates = []
    for s, strip in (("h", x.mean(axis=2)), ("w", x.mean(axis=1))):
        y = depthwise_1d_same(strip, w[f"k_{s}"], w.get(f"b_{s}"))
        if f"gamma_{s}" in w:
            y = group_norm(y, w[f"gamma_{s}"], w[f"beta_{s}"], groups)
        gates.append(gate(act(y)))
    a_h, a_w = gates[0][:, :, None, :], gates[1][:, None, :, :]
    out = x * a_h * a_w
    return (out + x if residual else out), a_h, a_w


def strip_attention(x, w=None, gate=sigmoid, residual=False):
    """Returns (output, gate (B, H, W, C)); no convolutions when `w` is
    None."""
    x = x.astype(np.float64)
    x_h, x_w = x.mean(axis=2), x.mean(axis=1)
    if w is not None:
        x_h = depthwise_1d_same(x_h, w["k_h"], w.get("b_h"))
        x_w = depthwise_1d_same(x_w, w["k_w"], w.get("b_w"))
    g = gate(x_h[:, :, None, :] + x_w[:, None, :, :])
    out = x * g
    return (out + x if residual else out), g

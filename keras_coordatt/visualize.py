"""Seeing what the models do: attention maps, training curves, confusions.

The attention maps come from `CoordinateAttention.attention_maps`, the same
code path the layer uses in `call`, so what is plotted is what the network
applies. Plotting needs matplotlib (imported on first use).
"""

import keras
import numpy as np

from keras_coordatt.layers import CoordinateAttention


def attention_layers(model):
    """The `CoordinateAttention` layers of a functional model, in order."""
    return [
        layer for layer in model.layers if isinstance(layer, CoordinateAttention)
    ]


def attention_maps(model, images, layer_names=None):
    """Returns the gates of some or all attention blocks for `images`.

    Args:
        model: a functional model with `CoordinateAttention` layers (e.g. a
            `MobileNetV2CA`).
        images: a preprocessed batch the model accepts.
        layer_names: names of the attention layers to read; all by default.

    Returns:
        A dict `{layer name: (a_h, a_w)}` of numpy arrays in the layers' data
        format, e.g. `(B, H, 1, C)` and `(B, 1, W, C)` for channels_last.
    """
    layers = attention_layers(model)
    if layer_names is not None:
        known = {layer.name: layer for layer in layers}
        unknown = [name for name in layer_names if name not in known]
        if unknown:
            raise ValueError(
                f"Not attention layers of {model.name!r}: {unknown}. "
                f"Accepted: {sorted(known)}"
            )
        layers = [known[name] for name in layer_names]
    if not layers:
        raise ValueError(
            f"The model {model.name!r} has no CoordinateAttention layer."
        )
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [layer.input for layer in layers])
    features = probe(images, training=False)
    if len(layers) == 1:
        features = [features]
    return {
        layer.name: tuple(
            keras.ops.convert_to_numpy(a)
            for a in layer.attention_maps(feature, training=False)
        )
        for layer, feature in zip(layers, features)
    }


def attention_heatmap(a_h, a_w, data_format="channels_last"):
    """The per-position gate `a_h * a_w`, averaged over channels.

    Args:
        a_h, a_w: the gates of one layer, batched, as `attention_maps`
            returns them.
        data_format: the layout of the gates.

    Returns:
        A `(B, H, W)` numpy array in (0, 1).
    """
    a_h, a_w = np.asarray(a_h), np.asarray(a_w)
    if data_format == "channels_first":
        return np.einsum("bchx,bcxw->bhw", a_h, a_w) / a_h.shape[1]
    return np.einsum("bhxc,bxwc->bhw", a_h, a_w) / a_h.shape[-1]


def _pyplot():
    # Headless machines fall back to the Agg backend by themselves.
    import matplotlib.pyplot as plt

    return plt


def _upsample(heatmap, height, width):
    rows = np.minimum((np.arange(height) * heatmap.shape[0]) // height,
                      heatmap.shape[0] - 1)
    cols = np.minimum((np.arange(width) * heatmap.shape[1]) // width,
                      heatmap.shape[1] - 1)
    return heatmap[rows][:, cols]


def plot_attention(images, maps, titles=None, alpha=0.5):
    """Overlays attention heatmaps on images: one row per image.

    Args:
        images: `(B, H, W, 3)` RGB images for display (uint8 or floats in
            [0, 1]).
        maps: `{layer name: (a_h, a_w)}` as returned by `attention_maps`
            (channels_last).
        titles: optional list of B row titles (e.g. predicted labels).
        alpha: opacity of the heatmaps.

    Returns:
        The matplotlib `Figure`, with B rows and `1 + len(maps)` columns.
    """
    plt = _pyplot()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(images, 0.0, 1.0)
    names = list(maps)
    heatmaps = [attention_heatmap(*maps[name]) for name in names]
    rows, cols = len(images), 1 + len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows),
                             squeeze=False)
    for i, image in enumerate(images):
        axes[i, 0].imshow(image)
        axes[i, 0].set_title(titles[i] if titles else "input", fontsize=8)
        for j, (name, heatmap) in enumerate(zip(names, heatmaps), start=1):
            h = heatmap[i]
            h = (h - h.min()) / (np.ptp(h) + 1e-8)
            axes[i, j].imshow(image)
            axes[i, j].imshow(_upsample(h, *image.shape[:2]), cmap="jet",
                              alpha=alpha)
            axes[i, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_history(history, metrics=("loss", "accuracy")):
    """Training curves from a `keras.callbacks.History` (or its dict).

    Returns:
        The `Figure`, one panel per metric, train and `val_` curves.
    """
    plt = _pyplot()
    logs = getattr(history, "history", history)
    metrics = [m for m in metrics if m in logs]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        epochs = np.arange(1, len(logs[metric]) + 1)
        ax.plot(epochs, logs[metric], label="train")
        if f"val_{metric}" in logs:
            ax.plot(epochs, logs[f"val_{metric}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return fig


def confusion_matrix(y_true, y_pred, num_classes):
    """Counts `[true class, predicted class]` as a `(K, K)` int array."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def plot_confusion_matrix(y_true, y_pred, class_names):
    """A confusion-matrix heatmap with counts; returns the `Figure`."""
    plt = _pyplot()
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    size = max(3.0, 0.45 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, int(count), ha="center", va="center", fontsize=7)
    fig.tight_layout()
    return fig

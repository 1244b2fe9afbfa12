"""Converts the authors' PyTorch MobileNetV2 + CA weights to `MobileNetV2CA`.

The mapping is a small table from PyTorch module prefixes to Keras layer
names; the tensor layouts are converted by the kind of Keras layer:

| PyTorch                          | Keras                                 |
|----------------------------------|---------------------------------------|
| `features.0.0` / `features.0.1`  | `Conv1` / `bn_Conv1`                  |
| `features.1.conv.{0,1,3,4}`      | `expanded_conv_{depthwise,..._BN,      |
|                                  | project,project_BN}`                  |
| `features.{i+1}.conv.{0,1}`      | `block_{i}_expand`, `_expand_BN`      |
| `features.{i+1}.conv.{3,4}`      | `block_{i}_depthwise`, `_depthwise_BN`|
| `features.{i+1}.conv.6`          | `block_{i}_ca` (conv1, bn1, conv2 or  |
|                                  | conv_h, conv3 or conv_w)              |
| `features.{i+1}.conv.{7,8}`      | `block_{i}_project`, `_project_BN`    |
| `conv.0` / `conv.1`              | `Conv_1` / `Conv_1_bn`                |
| `classifier.1`                   | `predictions`                         |
"""

import keras
import numpy as np

from keras_coordatt.layers import CoordinateAttention
from keras_coordatt.weights.torch_checkpoint import load_torch_state_dict

_FIXED = {
    "features.0.0": "Conv1",
    "features.0.1": "bn_Conv1",
    "features.1.conv.0": "expanded_conv_depthwise",
    "features.1.conv.1": "expanded_conv_depthwise_BN",
    "features.1.conv.3": "expanded_conv_project",
    "features.1.conv.4": "expanded_conv_project_BN",
    "conv.0": "Conv_1",
    "conv.1": "Conv_1_bn",
    "classifier.1": "predictions",
}
_BLOCK = {
    "conv.0": "expand",
    "conv.1": "expand_BN",
    "conv.3": "depthwise",
    "conv.4": "depthwise_BN",
    "conv.6": "ca",
    "conv.7": "project",
    "conv.8": "project_BN",
}
# Sub-modules of a CA block: Keras sublayer -> accepted PyTorch names.
_CA_PARTS = {
    "conv": ("conv1",),
    "bn": ("bn1",),
    "conv_h": ("conv2", "conv_h"),
    "conv_w": ("conv3", "conv_w"),
}
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def mapping_table(num_blocks=16):
    """Returns {PyTorch module prefix: Keras layer name} for MobileNetV2 + CA."""
    table = dict(_FIXED)
    for block_id in range(1, num_blocks + 1):
        for torch_suffix, keras_suffix in _BLOCK.items():
            table[f"features.{block_id + 1}.{torch_suffix}"] = (
                f"block_{block_id}_{keras_suffix}"
            )
    return table


def _layer_tensors(layer, prefix):
    """Yields (keras variable index, state_dict key, layout) for one layer."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        yield 0, f"{prefix}.weight", "depthwise"
    elif isinstance(layer, keras.layers.Conv2D):
        yield 0, f"{prefix}.weight", "conv"
        if layer.use_bias:
            yield 1, f"{prefix}.bias", "vector"
    elif isinstance(layer, keras.layers.BatchNormalization):
        for index, key in enumerate(_BN_KEYS):
            yield index, f"{prefix}.{key}", "vector"
    elif isinstance(layer, keras.layers.Dense):
        yield 0, f"{prefix}.weight", "dense"
        yield 1, f"{prefix}.bias", "vector"
    else:
        raise TypeError(f"No conversion for layer {layer.name!r} ({layer}).")


def _to_keras(array, layout):
    if layout == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return np.transpose(array, (2, 3, 1, 0))
    if layout == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return np.transpose(array, (2, 3, 0, 1))
    if layout == "dense":  # (out, in) -> (in, out)
        return np.transpose(array)
    return array


def _ca_prefix(state_dict, prefix, part):
    names = _CA_PARTS[part]
    for name in names:
        if f"{prefix}.{name}.weight" in state_dict:
            return f"{prefix}.{name}"
    return f"{prefix}.{names[0]}"


def _targets(model, num_blocks):
    """Yields (keras layer, pytorch prefix, keras name) pairs to fill."""
    table = mapping_table(num_blocks)
    for prefix, name in table.items():
        try:
            layer = model.get_layer(name)
        except ValueError:
            continue  # e.g. `predictions` with include_top=False
        yield layer, prefix, name


def convert_state_dict(state_dict, model):
    """Converts an authors'-layout state_dict into weights for `model`.

    Args:
        state_dict: mapping of PyTorch keys to numpy arrays (as returned by
            `load_torch_state_dict`; `module.` prefixes already removed).
        model: a `MobileNetV2CA` of the checkpoint's width (`include_top`
            optional: without it the classifier entries are ignored).

    Returns:
        A dict `{keras layer name: [numpy arrays in layer.get_weights() order]}`.

    Raises:
        ValueError: listing every missing, unexpected and mis-shaped entry.
    """
    num_blocks = sum(
        1 for layer in model.layers if layer.name.endswith("_project")
    ) - 1
    missing, mismatched, used, converted = [], [], set(), {}
    has_top = True
    for layer, prefix, name in _targets(model, num_blocks):
        parts = [(layer, prefix, name, None)]
        if isinstance(layer, CoordinateAttention):
            parts = [
                (getattr(layer, part), _ca_prefix(state_dict, prefix, part),
                 name, part)
                for part in _CA_PARTS
            ]
        for sublayer, sub_prefix, _, part in parts:
            values = [np.asarray(v) for v in sublayer.get_weights()]
            for index, key, layout in _layer_tensors(sublayer, sub_prefix):
                if key not in state_dict:
                    missing.append(key)
                    continue
                used.add(key)
                value = _to_keras(np.asarray(state_dict[key]), layout)
                if value.shape != values[index].shape:
                    mismatched.append(
                        f"{key}: checkpoint {tuple(state_dict[key].shape)} -> "
                        f"{value.shape}, model layer {name!r}"
                        f"{'/' + part if part else ''} expects "
                        f"{values[index].shape}"
                    )
                    continue
                values[index] = value.astype(values[index].dtype)
            converted.setdefault(name, {})[part] = values
    try:
        model.get_layer("predictions")
    except ValueError:
        has_top = False
    unexpected = sorted(
        key for key in state_dict
        if key not in used
        and not key.endswith("num_batches_tracked")
        and not (not has_top and key.startswith("classifier."))
    )
    if missing or unexpected or mismatched:
        lines = ["The checkpoint does not fit the model "
                 f"{model.name!r}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", mismatched)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines += [f"    {item}" for item in items]
        lines.append("Check that `alpha`, `classes` and `reduction` match "
                     "the checkpoint.")
        raise ValueError("\n".join(lines))
    return converted


def load_torch_weights(model, source):
    """Loads the authors' PyTorch weights (a path or a state_dict) into model.

    Args:
        model: a `MobileNetV2CA` built with `weights=None`.
        source: path to a `.pth`/`.pt` file (read without PyTorch) or a
            mapping of keys to arrays.

    Returns:
        The model.
    """
    state_dict = source
    if not isinstance(source, dict):
        state_dict = load_torch_state_dict(source)
    for name, parts in convert_state_dict(state_dict, model).items():
        layer = model.get_layer(name)
        if None in parts:
            layer.set_weights(parts[None])
        else:
            for part, values in parts.items():
                getattr(layer, part).set_weights(values)
    return model

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

Every entry is checked before anything is loaded (key, type, float dtype,
rank and shape, finite values, non-negative running variances), and one
`ConversionError` lists every entry that fails, by key.
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
# Part of the ImageNet cache key: bump it whenever a change here may change
# the converted weights, so that caches written before the change are not
# reused (`keras_coordatt.weights.imagenet`).
CONVERTER_VERSION = 2


class ConversionError(ValueError):
    """A state dict that does not convert into the given model."""


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


# The rank each layout's PyTorch tensor must have, checked before transposing.
_RANKS = {"conv": 4, "depthwise": 4, "dense": 2, "vector": 1}
# Error categories, in the order the error lists them.
_PROBLEMS = ("missing", "unexpected", "mis-shaped", "not tensors",
             "non-float", "non-finite", "negative running variances")


def _to_keras(array, layout):
    if layout == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return np.transpose(array, (2, 3, 1, 0))
    if layout == "depthwise":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return np.transpose(array, (2, 3, 0, 1))
    if layout == "dense":  # (out, in) -> (in, out)
        return np.transpose(array)
    return array


def _is_tensor(value):
    # np.asarray would turn a str or a dict into a 0-d object/str array and
    # fail later with a message naming no key.
    return isinstance(value, (np.ndarray, np.generic)) or (
        hasattr(value, "__array__") and not isinstance(value, (str, bytes)))


def _convert_entry(key, value, layout, expected, where):
    """Returns `(keras array, None)` or `(None, (category, description))`."""
    if not _is_tensor(value):
        return None, ("not tensors", f"{key}: a {type(value).__name__}")
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        return None, ("non-float", f"{key}: dtype {array.dtype}")
    if array.ndim != _RANKS[layout] or _to_keras(
            array, layout).shape != expected:
        return None, ("mis-shaped", f"{key}: checkpoint {array.shape}, "
                      f"model layer {where} expects a rank-"
                      f"{_RANKS[layout]} tensor that becomes {expected}")
    if not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        return None, ("non-finite",
                      f"{key}: {bad} of {array.size} values NaN or inf")
    if key.endswith("running_var") and (array < 0).any():
        return None, ("negative running variances",
                      f"{key}: {int((array < 0).sum())} of {array.size} "
                      f"values below 0 (min {array.min()})")
    return _to_keras(array, layout), None


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


def _parts(layer, prefix, state_dict):
    """(sublayer, PyTorch prefix, part) triples: one, or a CA block's four."""
    if isinstance(layer, CoordinateAttention):
        return [(getattr(layer, part), _ca_prefix(state_dict, prefix, part),
                 part) for part in _CA_PARTS]
    return [(layer, prefix, None)]


def _has_top(model):
    try:
        model.get_layer("predictions")
    except ValueError:
        return False
    return True


def _raise_problems(problems, model):
    lines = [f"The checkpoint does not fit the model {model.name!r}:"]
    for title in _PROBLEMS:
        items = problems.get(title)
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {item}" for item in items]
    if set(problems) & {"missing", "unexpected", "mis-shaped"}:
        lines.append("Check that `alpha`, `classes` and `reduction` match "
                     "the checkpoint.")
    if set(problems) - {"missing", "unexpected", "mis-shaped"}:
        lines.append("Values that are not finite float tensors (or negative "
                     "variances) mean a damaged file or one that holds "
                     "something other than trained weights.")
    raise ConversionError("\n".join(lines))


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
        ConversionError: one error listing every missing, unexpected,
            mis-shaped (wrong rank included), non-tensor, non-float and
            non-finite entry, and every negative running variance.
    """
    num_blocks = sum(
        1 for layer in model.layers if layer.name.endswith("_project")
    ) - 1
    problems, used, converted = {}, set(), {}
    for layer, prefix, name in _targets(model, num_blocks):
        for sublayer, sub_prefix, part in _parts(layer, prefix, state_dict):
            values = [np.asarray(v) for v in sublayer.get_weights()]
            where = repr(name) + (f"/{part}" if part else "")
            for index, key, layout in _layer_tensors(sublayer, sub_prefix):
                if key not in state_dict:
                    problems.setdefault("missing", []).append(key)
                    continue
                used.add(key)
                value, problem = _convert_entry(
                    key, state_dict[key], layout, values[index].shape, where)
                if problem:
                    problems.setdefault(problem[0], []).append(problem[1])
                    continue
                values[index] = value.astype(values[index].dtype)
            converted.setdefault(name, {})[part] = values
    has_top = _has_top(model)
    unexpected = sorted(
        key for key in state_dict
        if key not in used
        and not key.endswith("num_batches_tracked")
        and not (not has_top and key.startswith("classifier."))
    )
    if unexpected:
        problems["unexpected"] = unexpected
    if problems:
        _raise_problems(problems, model)
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

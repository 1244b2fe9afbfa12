"""Multiply-add and parameter counts of Keras models, layer by layer.

Counted (one multiply-add = one MAC; biases, BatchNorm, activations, pools
and element-wise products are not MACs, they are reported apart as
element-wise operations where they touch a whole feature map):

- `Conv2D`: out_h * out_w * k_h * k_w * (in_channels / groups) * filters;
- `DepthwiseConv2D`: out_h * out_w * k_h * k_w * in_channels * multiplier;
- `Dense`: inputs * units per input row;
- `CoordinateAttention`: its own 1x1 convolutions, on the pooled strips:
  the shared encoding on H + W positions (C -> mip) and the two gates
  (mip -> C on H and on W positions), i.e. 2 (H + W) C mip; plus, as
  element-wise work, the two directional pools (2 H W C reads) and the two
  gate products (2 H W C multiplies);
- `SqueezeExcitation`: its two 1x1 convolutions on the pooled vector,
  C -> hidden -> C, i.e. 2 C hidden; element-wise, the pool (H W C reads)
  and the gate product (H W C multiplies);
- `CBAM`: the shared MLP (C -> hidden -> C) on its two descriptors (the
  average- and the max-pooled vector), 2 * 2 C hidden, plus the k x k
  spatial convolution from the 2 channel-wise maps (mean, max) to one,
  H W k^2 2; element-wise, the two pools (2 H W C), the channel-gate
  product (H W C), the channel-wise mean and max (2 H W C) and the
  spatial-gate product (H W C), 6 H W C;
- an attention layer inside a `keras.layers.Wrapper` (the identity-start
  blocks of `keras_coordatt.add_attention`): the wrapped layer, counted
  and named as above, plus the blend `x + s (A(x) - x)` as element-wise
  work (2 H W C);
- nested models and layers that hold sublayers (a Sequential inside a
  functional model) are counted through their own layers.

Only static shapes are counted: build the model with a fixed input size.
"""

import numpy as np


def _spatial(shape, data_format):
    """(H, W, C) of a 4D shape in the given data format."""
    if data_format == "channels_first":
        return shape[2], shape[3], shape[1]
    return shape[1], shape[2], shape[3]


def _conv_macs(layer, input_shape, output_shape):
    import keras

    fmt = getattr(layer, "data_format", "channels_last")
    _, _, cin = _spatial(input_shape, fmt)
    oh, ow, cout = _spatial(output_shape, fmt)
    kh, kw = layer.kernel_size
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return oh * ow * kh * kw * cout
    groups = getattr(layer, "groups", 1) or 1
    return oh * ow * kh * kw * (cin // groups) * cout


def _attention_macs(layer, input_shape):
    """`(MACs, element-wise operations)` of an attention layer, or None
    when `layer` is not one of the package's attention layers."""
    from keras_coordatt.layers import CBAM
    from keras_coordatt.layers import CoordinateAttention
    from keras_coordatt.layers import SqueezeExcitation

    if not isinstance(layer, (CoordinateAttention, SqueezeExcitation, CBAM)):
        return None
    h, w, c = _spatial(input_shape, layer.data_format)
    hidden = layer.hidden_channels
    if isinstance(layer, CoordinateAttention):
        macs = (h + w) * c * hidden + (h + w) * hidden * c
        elementwise = 4 * h * w * c  # two pools, two gate products
    elif isinstance(layer, SqueezeExcitation):
        macs = 2 * c * hidden  # reduce and expand on the pooled vector
        elementwise = 2 * h * w * c  # the pool, the gate product
    else:
        k = layer.kernel_size
        macs = 2 * (2 * c * hidden) + h * w * k * k * 2
        elementwise = 6 * h * w * c
    return macs, elementwise


def _shape(tensor_or_shape):
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(shape)


def _static(shape, layer):
    if any(d is None for d in shape[1:]):
        raise ValueError(
            f"Layer {layer.name!r} has a dynamic shape {shape}; build the "
            "model with a static input size to count multiply-adds."
        )
    return shape


def count_macs(model):
    """Counts multiply-adds of one image through a built Keras model.

    Args:
        model: a functional or sequential `keras.Model` with a static input
            size.

    Returns:
        A dict: `total` (MACs per image), `by_type` (layer class name ->
        MACs; a wrapped attention layer counts under its own class),
        `attention` (MACs inside the attention layers: `CoordinateAttention`,
        `SqueezeExcitation`, `CBAM`), `attention_layers` (number of them),
        `attention_elementwise` (element-wise operations of their pools,
        products and blends), `layers` (list of `(name, class name, MACs)`
        for layers with MACs).
    """
    import keras

    result = {
        "total": 0,
        "by_type": {},
        "attention": 0,
        "attention_layers": 0,
        "attention_elementwise": 0,
        "layers": [],
    }

    def add(layer, macs, kind=None):
        if not macs:
            return
        kind = kind or type(layer).__name__
        result["total"] += int(macs)
        result["by_type"][kind] = result["by_type"].get(kind, 0) + int(macs)
        result["layers"].append((layer.name, kind, int(macs)))

    def visit(model):
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                visit(layer)
                continue
            nodes = getattr(layer, "_inbound_nodes", [])
            for node in nodes:
                if not node.input_tensors or not node.output_tensors:
                    continue
                ins = _static(_shape(node.input_tensors[0]), layer)
                outs = _static(_shape(node.output_tensors[0]), layer)
                wrapped = isinstance(layer, keras.layers.Wrapper)
                inner = layer.layer if wrapped else layer
                counted = _attention_macs(inner, ins)
                if counted is not None:
                    macs, elementwise = counted
                    if wrapped:  # the blend x + s (A(x) - x)
                        h, w, c = _spatial(ins, inner.data_format)
                        elementwise += 2 * h * w * c
                    add(layer, macs, type(inner).__name__)
                    result["attention"] += macs
                    result["attention_layers"] += 1
                    result["attention_elementwise"] += elementwise
                elif isinstance(layer, (keras.layers.Conv2D,
                                        keras.layers.DepthwiseConv2D)):
                    add(layer, _conv_macs(layer, ins, outs))
                elif isinstance(layer, keras.layers.Dense):
                    rows = int(np.prod(ins[1:-1])) if len(ins) > 2 else 1
                    add(layer, rows * ins[-1] * layer.units)

    visit(model)
    return result


def count_params(model):
    """`{"total": model.count_params(), "trainable": ...}`.

    `trainable` is the sum over `trainable_weights`, what PyTorch's
    `parameters()` counts (Keras' total also holds the BatchNorm moving
    statistics).
    """
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return {"total": int(model.count_params()), "trainable": trainable}

"""Feature pyramids of the application networks, for dense-prediction heads.

keras-hub's heads (`DeepLabV3`, `RetinaNet`) read a backbone's
`pyramid_outputs`: a dict `"P1"`..`"P5"` of feature maps at strides 2..32.
Level `Pk` is the output of the last layer, in graph order, whose feature
map is `2**k` times smaller than the image: for MobileNetV2 + CA the
`block_{1,3,6,13}_expand_relu` activations and `out_relu`, the layers Keras
users already take from `keras.applications.MobileNetV2` for U-Nets and
DeepLab.
"""

import keras

LEVELS = 5


def _spatial_axes(data_format):
    return (2, 3) if data_format == "channels_first" else (1, 2)


def _probe_shapes(model, data_format):
    """Each 4-D layer output's `(H, W)`, from the model's static input size,
    or from a 224x224 probe when the model takes any size."""
    axes = _spatial_axes(data_format)
    shape = tuple(model.inputs[0].shape)
    size = tuple(shape[a] for a in axes)
    layers = [layer for layer in model.layers
              if len(getattr(layer.output, "shape", ())) == 4]
    if None not in size:
        return size, [(layer, tuple(layer.output.shape[a] for a in axes))
                      for layer in layers]
    size = (224, 224)
    probe_shape = list(shape)
    probe_shape[0] = 1
    for axis, value in zip(axes, size):
        probe_shape[axis] = value
    every = keras.Model(model.inputs, [layer.output for layer in layers])
    specs = every.compute_output_spec(
        keras.KerasTensor(tuple(probe_shape), dtype=model.inputs[0].dtype))
    return size, [(layer, tuple(spec.shape[a] for a in axes))
                  for layer, spec in zip(layers, specs)]


def pyramid_layer_names(model, data_format=None):
    """`{"P1": layer name, ..., "P5": layer name}` of a functional model."""
    data_format = data_format or keras.config.image_data_format()
    size, shapes = _probe_shapes(model, data_format)
    names = {}
    for layer, (h, w) in shapes:
        for level in range(1, LEVELS + 1):
            stride = 2 ** level
            if h == -(-size[0] // stride) and w == -(-size[1] // stride):
                names[f"P{level}"] = layer.name
    missing = [f"P{k}" for k in range(1, LEVELS + 1) if f"P{k}" not in names]
    if missing:
        raise ValueError(
            f"The model {model.name!r} has no feature map at the strides of "
            f"{', '.join(missing)}. Received: input size {size}"
        )
    return names


def pyramid_outputs(model, data_format=None):
    """The `pyramid_outputs` dict of a model built by `MobileNetV2CA` or
    `MobileNeXtCA` (any input size, either data format, with or without the
    top), or of a `.keras` file of one loaded again (attributes do not
    survive saving; this recomputes them from the layers).

    Args:
        model: a functional `keras.Model`.
        data_format: the model's data format; defaults to Keras'.

    Returns:
        A dict `"P1"`..`"P5"` -> the symbolic outputs at strides 2..32.
    """
    names = pyramid_layer_names(model, data_format)
    return {key: model.get_layer(name).output for key, name in names.items()}

"""A keras-hub `Backbone` with attention inserted by `add_attention`.

`add_attention(backbone, ...)` on a keras-hub `Backbone` returns an
`InsertedBackbone`: the rewritten graph as a `Backbone` whose
`pyramid_outputs` are the original's keys at the same strides, now read
after the inserted blocks, so keras-hub's dense heads take it as their
image encoder (`DeepLabV3Backbone(image_encoder=...)`,
`RetinaNetBackbone(image_encoder=...)`). Its config holds the graph
(`network`) and, for each pyramid key, the name of the layer producing that
level (`pyramid_layers`): a plain functional model's config keeps no
`pyramid_outputs`, so without this a saved encoder could not carry a dense
head again. It saves as `.keras` and as a keras-hub preset
(`save_to_preset` / `Backbone.from_preset`), and loads after `import
keras_coordatt` alone (`keras_coordatt.utils.lazy_classes`).
"""

import copy

import keras
from keras_hub.models import Backbone

from keras_coordatt.graph import functional

# The most characters of a config's values an error message repeats.
_SHOWN = 200


@keras.saving.register_keras_serializable(package="keras_coordatt")
class InsertedBackbone(Backbone):
    """A functional graph as a keras-hub `Backbone` with a pyramid.

    Args:
        network: a functional `keras.Model` (the backbone with its inserted
            blocks); its layers become this backbone's.
        pyramid_layers: `{level key: layer name}`, the layer of `network`
            whose (single, 4D) output is that pyramid level (`"P2"`, ...).
        dtype: the dtype policy of the backbone.
        **kwargs: `name`, `trainable`.

    Raises:
        ValueError: `network` has no functional graph, `pyramid_layers` is
            no `{str: str}` dict, or names layers that are not in it (all
            named) or whose output is not one 4D tensor.
    """

    def __init__(self, network, pyramid_layers, dtype=None, **kwargs):
        if functional(network) is not network:
            raise ValueError(
                "`network` must be a functional keras.Model. Received: "
                f"network of type {type(network).__name__}")
        pyramid = pyramid_tensors(network, pyramid_layers)
        kwargs.setdefault("name", network.name)
        super().__init__(inputs=network.input, outputs=network.output,
                         dtype=dtype, **kwargs)
        # Set after the functional init (keras-hub backbones do the same:
        # torch's attribute tracking starts there).
        self.pyramid_outputs = pyramid
        self.pyramid_layers = dict(pyramid_layers)

    @classmethod
    def from_strides(cls, network, **kwargs):
        """The backbone of `network`, a functional image network without a
        pyramid (a keras.applications network, `include_top=False`), with
        the pyramid `stride_pyramid_layers` computes."""
        return cls(network, stride_pyramid_layers(network), **kwargs)

    @classmethod
    def from_network(cls, network, **kwargs):
        """The backbone of `network`, a functional model with a
        `pyramid_outputs` dict of its layers' outputs (what
        `add_attention` makes of a keras-hub `Backbone`)."""
        return cls(network, pyramid_layer_names(network), **kwargs)

    def get_config(self):
        config = super().get_config()
        # The graph as a plain functional model over the same layers: its
        # config is the layers and their connections.
        graph = keras.Model(self.input, self.output, name=self.name)
        config.update({
            "network": keras.saving.serialize_keras_object(graph),
            "pyramid_layers": dict(self.pyramid_layers),
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = config.get("network")
        if not isinstance(network, dict):
            raise ValueError(
                "The config of an InsertedBackbone must hold its graph as a "
                "serialized functional model under `network`. Received: "
                f"network of type {type(network).__name__}")
        # A copy: Keras' deserializer empties the dicts it reads, and the
        # caller's config must stay usable (one config, several models).
        config["network"] = keras.saving.deserialize_keras_object(
            copy.deepcopy(network))
        return super().from_config(config)


def pyramid_tensors(network, pyramid_layers):
    """`{key: output of the named layer}` of `network`, checked: the
    config naming the layers may come from an untrusted file."""
    # Bounded: a file's config may hold anything.
    received = f"pyramid_layers={str(pyramid_layers)[:_SHOWN]}"
    if not isinstance(pyramid_layers, dict) or not pyramid_layers or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in pyramid_layers.items()):
        raise ValueError(
            "`pyramid_layers` must be a non-empty dict of pyramid keys to "
            f"layer names (strings). Received: {received}")
    operations = {op.name: op for op in network.operations}
    missing = sorted({name for name in pyramid_layers.values()
                      if name not in operations})
    if missing:
        raise ValueError(
            f"`pyramid_layers` names layers that are not in the graph of "
            f"{network.name!r}: {str(missing)[:_SHOWN]}. Received: "
            f"{received}")
    pyramid = {}
    for key, name in pyramid_layers.items():
        output = operations[name].output
        if not isinstance(output, keras.KerasTensor) or len(
                output.shape) != 4:
            raise ValueError(
                f"The pyramid level {key!r} must be the one 4D output of a "
                f"layer; {name!r} outputs {str(output)[:_SHOWN]}. "
                f"Received: {received}")
        pyramid[key] = output
    return pyramid


def stride_pyramid_layers(network):
    """`{"P{k}": layer name}` of a channels_last functional image network:
    for each k in 1..5, the last layer (in graph order) whose output has
    stride `2**k` in both sides (keras-hub's convention, P2 at stride 4).

    keras.applications networks carry no pyramid; the last map at each
    stride is the one with the most processing at that resolution (for
    MobileNetV2, P2 is `block_3_expand_relu`, the expansion before the
    stride-8 depthwise convolution).

    Raises:
        ValueError: the input's height or width is not fixed.
    """
    height, width = network.input.shape[1:3]
    if not height or not width:
        raise ValueError(
            "A pyramid by strides needs a fixed input size. Received: "
            f"network={network.name!r} with input shape "
            f"{tuple(network.input.shape)}")
    names = {}
    for op in network.operations:  # in graph order
        output = op.output
        if not isinstance(output, keras.KerasTensor) or len(
                output.shape) != 4 or not output.shape[1]:
            continue
        rows, cols = output.shape[1:3]
        stride = height // rows
        if (height % rows or width % cols or width // cols != stride
                or stride & (stride - 1)):
            continue
        level = stride.bit_length() - 1
        if 1 <= level <= 5:
            names[f"P{level}"] = op.name
    return names


def pyramid_layer_names(network):
    """`{key: name of the layer producing that level}` of a functional
    model's `pyramid_outputs`.

    Raises:
        ValueError: `network` has no `pyramid_outputs` dict, or a level is
            not the single output of one of its layers.
    """
    pyramid = getattr(network, "pyramid_outputs", None)
    if not isinstance(pyramid, dict) or not pyramid:
        raise ValueError(
            "The network needs a `pyramid_outputs` dict (level key -> "
            f"feature map). Received: network={network.name!r} with "
            f"pyramid_outputs={pyramid!r}")
    producers = {id(op.output): op.name for op in network.operations
                 if isinstance(op.output, keras.KerasTensor)}
    names = {key: producers.get(id(tensor)) for key, tensor in pyramid.items()}
    unnamed = sorted(key for key, name in names.items() if name is None)
    if unnamed:
        raise ValueError(
            "Each pyramid level must be the single output of one layer of "
            f"the network; these are not: {unnamed}. Received: "
            f"network={network.name!r}")
    return names

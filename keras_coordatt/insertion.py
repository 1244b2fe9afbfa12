"""Inserting attention blocks into a model that already exists.

`add_attention(model, after)` rebuilds a functional model's graph with an
attention block after each selected layer; `IdentityInitAttention` is the
wrapper that makes the inserted blocks start as the identity.
"""

import sys

import keras
from keras import tree

from keras_coordatt import graph as graph_lib
from keras_coordatt.layers.registry import ATTENTIONS
from keras_coordatt.layers.registry import get_attention
from keras_coordatt.utils.lazy_classes import register_lazy_class

# What `add_attention` returns for a keras-hub Backbone; registered now so
# that saved files of it load after `import keras_coordatt` alone, without
# importing keras-hub here.
register_lazy_class("keras_coordatt", "InsertedBackbone",
                    "keras_coordatt.hub.inserted:InsertedBackbone")


@keras.saving.register_keras_serializable(package="keras_coordatt")
class IdentityInitAttention(keras.layers.Wrapper):
    """Blends an attention layer in from the identity: `x + s * (A(x) - x)`.

    `s` is one trainable scalar, initialised to 0, so the wrapped block starts
    as the identity, exactly (`0 * (A(x) - x)` adds zeros), and a pretrained
    network the block is inserted into computes what it computed before. A
    gate `sigmoid(.)` cannot start at exactly 1, so initialising the
    attention layer's own weights could only approximate this.

    Gradients (ReZero-style): with `d = A(x) - x` and `g = dL/dy`,
    `dL/ds = sum(g * d)`, non-zero as soon as the gates differ from 1
    (at initialisation CA's gates are about 0.5, so `d` is about `-0.75 x`):
    `s` moves at the first step. The attention layer's weights get
    `s * J_A^T g`, zero while `s == 0` and growing with `s` after the first
    step; the input gets `(1 - s) * g + s * J_A^T g`, so the backbone's
    gradients are unchanged at the start. At `s == 1` the block computes
    the plain attention layer `A(x)`.

    Args:
        layer: the attention layer `A` (any layer whose output has the
            shape of its input, e.g. `CoordinateAttention`).
        **kwargs: base layer arguments (`name`, `dtype`, `trainable`, ...).

    Input shape: any; output shape: the input's.

    Reference:
    - [ReZero is All You Need: Fast Convergence at Large Depth](
        https://arxiv.org/abs/2003.04887) (UAI 2021)
    """

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **kwargs)
        self.scale = None

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.scale = self.add_weight(
            name="scale", shape=(), initializer="zeros", trainable=True
        )

    def call(self, inputs):
        # The training flag reaches `self.layer` through the call context.
        return inputs + self.scale * (self.layer(inputs) - inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


def add_attention(model, after, attention="ca", identity_init=True,
                  name_fn=None, **layer_kwargs):
    """Returns a copy of `model` with an attention block after chosen layers.

    The functional graph of `model` is walked in topological order and every
    node is called again on the new tensors, so the new model has the same
    layer connections plus one block after each selected layer: the block
    takes the layer's output and everything that consumed that output
    (layers, model outputs) consumes the block's. Every layer is a copy
    (`from_config(get_config())`) that receives the original's weights, so
    training the new model leaves `model` unchanged; only stateless
    operations (`keras.ops` nodes, `Lambda` layers) are reused. Trainable
    flags are kept and the inserted blocks are trainable, so a frozen
    backbone trains its blocks only. The new model is not compiled.

    Nested models (a functional or built `Sequential` model used as a layer)
    are rewritten recursively: `after` selects layers at every depth and
    each nested model becomes a new functional model of the same name with
    the blocks inside (a shared nested model stays shared).

    Args:
        model: a functional `keras.Model` or a built `keras.Sequential`.
        after: which layers get a block: a predicate `f(layer) -> bool`, a
            layer class or tuple of classes (`isinstance`), or a list or
            tuple of layer names (one name may be a string). Any layer
            with one 4D output can be selected, input layers included.
        attention: a registered name (`"ca"`, `"se"`, `"cbam"`) or a
            callable `f(channels, **layer_kwargs)` returning a new, unbuilt
            layer whose output has its input's shape.
        identity_init: True (default): each block is wrapped in
            `IdentityInitAttention` (`x + s * (A(x) - x)`, `s` starting at
            0), so the new model first computes exactly what `model`
            computes and the blocks learn during fine-tuning: `s` gets
            the gradient `sum(dL/dy * (A(x) - x))` at the first step, the
            block's weights gradients scaled by `s` (see
            `IdentityInitAttention`). False: the plain block `A(x)` (the
            authors' math) is inserted.
        name_fn: optional callable `f(layer) -> str` naming the block put
            after `layer`. Defaults to `{layer.name}_{attention}`
            (`{layer.name}_attention` for a callable `attention`).
        **layer_kwargs: arguments of the attention layer (`reduction`,
            `data_format`, ...). A registered layer gets the dtype policy
            of the layer it follows unless `dtype` is given.

    Returns:
        A new functional `keras.Model` named like `model`. A model with
        `pyramid_outputs` (a dict of layer outputs, as keras-hub backbones
        have) keeps them: the same keys, read after the blocks inserted at
        those layers. For a keras-hub `Backbone` the result is a
        `keras_coordatt.hub.InsertedBackbone`, a `Backbone` that keras-hub's
        DeepLabV3 and RetinaNet take as their image encoder and that saves
        (`.keras`, `save_to_preset`) with its pyramid.

    Raises:
        ValueError: if `model` has no functional graph (subclassed model,
            Sequential not built); `after` is malformed, names unknown
            layers or selects none; a selected layer is called more than
            once in the model (shared) or its output is not one 4D tensor;
            `attention` is not a registered name or a callable; a block name
            is already used in the model.

    Example:

    >>> base = keras.applications.MobileNetV2(weights=None)
    >>> model = add_attention(
    ...     base, after=lambda layer: layer.name.endswith("depthwise_relu"))

    Reference:
    - [Coordinate Attention for Efficient Mobile Network Design](
        https://arxiv.org/abs/2103.02907) (CVPR 2021)
    - [ReZero is All You Need: Fast Convergence at Large Depth](
        https://arxiv.org/abs/2003.04887) (UAI 2021)
    """
    graph = _graph_or_raise(model)
    select, names = _selector(after)
    factory, suffix = _factory(attention, layer_kwargs)
    uses, graphs = _survey(graph)
    selected = _check_selection(select, names, uses)
    name_fn = name_fn or (lambda layer: f"{layer.name}_{suffix}")
    block_names = _block_names(selected, graphs, name_fn)
    new = _Insert(block_names, factory, identity_init,
                  layer_kwargs).run(graph, model.name)
    return _as_hub_backbone(model, new)


def _as_hub_backbone(model, new):
    """`new` as an `InsertedBackbone` when `model` is a keras-hub Backbone
    (which exists only once keras-hub is imported)."""
    keras_hub = sys.modules.get("keras_hub")
    if keras_hub is None or not isinstance(model, keras_hub.models.Backbone):
        return new
    if not isinstance(getattr(new, "pyramid_outputs", None), dict):
        return new  # a backbone without a pyramid (a text model, ...)
    from keras_coordatt.hub.inserted import InsertedBackbone

    # Not `trainable=model.trainable`: False would freeze the inserted
    # blocks too (the copied layers keep their own flags).
    return InsertedBackbone.from_network(new)


def _graph_or_raise(model):
    graph = graph_lib.functional(model)
    if graph is not None:
        return graph
    if isinstance(model, keras.Sequential):
        raise ValueError(
            "add_attention needs the graph of the Sequential model, which "
            "has none until it is built: start it with a `keras.Input` or "
            f"call `model.build(input_shape)`. Received: model={model.name!r}"
        )
    raise ValueError(
        "add_attention needs a functional keras.Model (or a built "
        "Sequential): a subclassed model's call() has no graph to insert "
        "layers into. Rebuild it functionally, or call add_attention on its "
        "functional parts. Received: model of type "
        f"{type(model).__name__}"
    )


def _selector(after):
    """`(predicate, names or None)` from the `after` argument."""
    if isinstance(after, str):
        after = [after]
    if isinstance(after, type) or (
        isinstance(after, tuple) and after
        and all(isinstance(a, type) for a in after)
    ):
        return (lambda layer: isinstance(layer, after)), None
    if isinstance(after, (list, tuple)):
        if not all(isinstance(a, str) for a in after):
            raise ValueError(
                "A list `after` must hold layer names (strings). "
                f"Received: after={after!r}"
            )
        names = set(after)
        return (lambda layer: layer.name in names), names
    if callable(after):
        return (lambda layer: bool(after(layer))), None
    raise ValueError(
        "`after` must be a predicate `f(layer) -> bool`, a layer class or a "
        f"list of layer names. Received: after={after!r}"
    )


def _factory(attention, layer_kwargs):
    """`(factory(channels, dtype) -> unbuilt layer, name suffix)`."""
    if isinstance(attention, str):
        cls = get_attention(attention)
        # Made once now so that wrong arguments fail before the graph walk.
        cls(**layer_kwargs)

        def make(channels, dtype):
            return cls(**{"dtype": dtype, **layer_kwargs})

        return make, attention.lower()
    if callable(attention) and not isinstance(attention, keras.layers.Layer):
        return (lambda channels, dtype: attention(channels, **layer_kwargs)), \
            "attention"
    raise ValueError(
        "`attention` must be one of "
        f"{', '.join(repr(n) for n in ATTENTIONS)} or a callable "
        "`f(channels) -> layer` returning a new layer. "
        f"Received: attention={attention!r}"
    )


def _survey(graph):
    """Every operation of `graph` and of the graphs nested in it.

    Returns `(uses, graphs)`: `uses` maps `id(op)` to `[op, nodes]` (its
    calls in all graphs; a shared nested graph is counted once), `graphs`
    maps `id(graph)` to the ops it calls.
    """
    uses, graphs, pending = {}, {}, [graph]
    while pending:
        current = pending.pop()
        if id(current) in graphs:
            continue
        graphs[id(current)] = []
        for node in graph_lib.nodes(current):
            op = node.operation
            graphs[id(current)].append(op)
            uses.setdefault(id(op), [op, []])[1].append(node)
            inner = graph_lib.functional(op)
            if inner is not None and inner is not current:
                pending.append(inner)
    return uses, graphs


def _check_selection(select, names, uses):
    """The selected layers, after the checks on names, sharing and rank."""
    layers = [op for op, _ in uses.values()
              if isinstance(op, keras.layers.Layer)]
    if names is not None:
        unknown = sorted(names - {layer.name for layer in layers})
        if unknown:
            raise ValueError(
                "`after` names layers that are not in the model: "
                f"{unknown}. Received: after={sorted(names)}"
            )
    selected = [layer for layer in layers if select(layer)]
    if not selected:
        raise ValueError(
            "`after` selects no layer of the model, so there is nowhere to "
            "insert attention."
        )
    shared = [s.name for s in selected if len(uses[id(s)][1]) > 1]
    if shared:
        raise ValueError(
            "Layers called more than once in the model (shared) cannot get "
            "an attention block: which call's output would it take? "
            f"Received: shared selected layers {shared}"
        )
    shapes = {s.name: [tuple(t.shape) for t in uses[id(s)][1][0].outputs]
              for s in selected}
    bad = {n: v for n, v in shapes.items() if len(v) != 1 or len(v[0]) != 4}
    if bad:
        raise ValueError(
            "Attention blocks go after layers with one 4D output (image "
            "feature maps). Received: selected layers with other outputs "
            f"{bad}"
        )
    return selected


def _block_names(selected, graphs, name_fn):
    """Maps `id(layer)` to its block's name; no clash inside any graph."""
    block_names = {id(s): name_fn(s) for s in selected}
    for ops in graphs.values():
        new = [block_names[id(op)] for op in ops if id(op) in block_names]
        if not all(isinstance(n, str) and n and "/" not in n for n in new):
            raise ValueError(
                "`name_fn` must return non-empty strings without '/'. "
                f"Received: names {new}"
            )
        taken = {op.name for op in ops}
        clashes = sorted({n for n in new if n in taken or new.count(n) > 1})
        if clashes:
            raise ValueError(
                "Block names must be unique in their model; these are taken "
                "or repeated (pass `name_fn` to choose others). "
                f"Received: {clashes}"
            )
    return block_names


def _is_stateless(op):
    # `keras.ops` nodes hold no variables. A Lambda holds a Python function
    # that its config only rebuilds through unsafe deserialization.
    return not isinstance(op, keras.layers.Layer) or isinstance(
        op, keras.layers.Lambda)


class _Insert(graph_lib.Rewrite):
    """Copies every layer (weights included), nested graphs recursively,
    and calls the inserted block after each selected layer."""

    def __init__(self, block_names, factory, identity_init, layer_kwargs):
        super().__init__()
        self.block_names = block_names
        self.factory = factory
        self.identity_init = identity_init
        self.data_format = layer_kwargs.get("data_format") or \
            keras.config.image_data_format()

    def replace(self, op):
        inner = graph_lib.functional(op)
        if inner is not None:
            return self.run(inner, op.name)
        if _is_stateless(op):
            return op
        return self.copy_weights_of(op)

    def after(self, original, outputs):
        if id(original) not in self.block_names:
            return outputs
        return self._block(original, tree.flatten(outputs)[0])

    def _block(self, layer, tensor):
        """The block inserted after `layer`, called on its output."""
        name = self.block_names[id(layer)]
        axis = 1 if self.data_format == "channels_first" else -1
        # The block computes in the dtype policy of the layer it follows
        # (mixed precision models stay mixed).
        policy = layer.dtype_policy
        block = self.factory(tensor.shape[axis], policy)
        if not isinstance(block, keras.layers.Layer) or block.built:
            raise ValueError(
                "The `attention` callable must return a new, unbuilt Keras "
                f"layer. Received: {block!r} for layer {layer.name!r}"
            )
        # Names are only read when a layer is built, so renaming is safe.
        block.name = name
        if self.identity_init:
            block = IdentityInitAttention(block, name=name, dtype=policy)
        return block(tensor)



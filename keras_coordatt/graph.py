"""Rewriting functional Keras graphs: the one mechanism behind
`add_attention` and `quantize_model`.

Both rebuild a model node by node with `keras.models.clone_model`, given a
`clone` function (which layer stands in the new graph for each original
one) and a `call` function (how the new layer is called: with an attention
block after it, with an activation quantizer after it, or not at all for a
layer folded into the one before it, which passes its input through).
`Rewrite` keeps, for every new layer, the original it stands for, so that
`call` can decide by the original and copy its weights once the new layer
is built.

What `clone_model` does not give publicly is read here, in one place:
`nodes` (every call of every operation, inputs first: for the checks on
shared layers) reads `Functional._nodes_by_depth`; everything else uses
public API (`model.operations`, `layer.input`, `layer.output`).
"""

import weakref

import keras
from keras import tree

# `Rewrite.replace` returns it for a layer folded into the layer before it:
# called on its input, the stand-in returns that input.
PASS_THROUGH = object()


class _PassThrough:
    """The stand-in of one folded layer (one each: `Rewrite` keeps the
    original of every stand-in)."""
# Sequential model -> its functional view, made once: a nested Sequential
# is one graph however often it is met.
_VIEWS = weakref.WeakKeyDictionary()


def functional(model):
    """The functional graph of `model` (a functional model, or a built
    Sequential as a functional model over its layers), or None for a
    subclassed or unbuilt model."""
    if isinstance(model, keras.Sequential):
        if model not in _VIEWS:
            try:
                _VIEWS[model] = keras.Model(model.inputs, model.outputs,
                                            name=model.name)
            except (AttributeError, ValueError):  # not built: no inputs
                return None
        return _VIEWS[model]
    if isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth"):
        return model
    return None


def nodes(graph):
    """Every node (call) of a functional graph, inputs first."""
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        yield from graph._nodes_by_depth[depth]


def consumers(graph):
    """Maps `id(tensor)` to the operations of `graph` that take it."""
    taken = {}
    for op in graph.operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        for tensor in tree.flatten(op.input):
            taken.setdefault(id(tensor), []).append(op)
    return taken


def new_inputs(graph):
    """Fresh `keras.Input`s like the graph's, named like its input layers
    (`clone_model` would name them after their tensors)."""
    names = {id(op.output): op for op in graph.operations
             if isinstance(op, keras.layers.InputLayer)}

    def make(tensor):
        layer = names[id(tensor)]
        return keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype,
            sparse=tensor.sparse, name=layer.name,
            optional=getattr(layer, "optional", False))

    return tree.map_structure(make, graph.input)


class Rewrite:
    """One rebuild of a functional graph; subclasses say how each layer is
    replaced (`replace`) and what follows its call (`after`).

    `replace(layer)` returns the new layer for an original one: a copy,
    another layer, the original itself (stateless operations are reused),
    or `PASS_THROUGH`. `after(original, outputs)` returns the outputs the
    graph continues with. The weights of a `copy_weights_of` copy are set
    from its original when it is first built.
    """

    def __init__(self):
        self.copies = {}  # id(original) -> new layer, made once (sharing)
        self.originals = {}  # id(new layer) -> original layer
        self.unset = {}  # id(copy) -> original, until its weights are set
        self.results = {}  # id(original) -> outputs of its first call

    def replace(self, layer):
        raise NotImplementedError

    def after(self, original, outputs):
        return outputs

    def copy_weights_of(self, layer):
        """A fresh copy of `layer` (`from_config`) that receives its
        weights when it is built."""
        copy = layer.__class__.from_config(layer.get_config())
        self.unset[id(copy)] = layer
        return copy

    def begin(self, inputs):
        """Called with the new model inputs before any layer (a hook)."""

    def inputs(self, args, kwargs):
        """The call arguments of a new layer (a hook: quantized inputs)."""
        return args, kwargs

    def run(self, graph, name=None):
        """The rebuilt model, named `name` (default: the graph's name)."""
        def clone(layer):
            # Across nested graphs too, a shared layer stays shared.
            if id(layer) not in self.copies:
                new = self.replace(layer)
                if new is PASS_THROUGH:
                    new = _PassThrough()
                self.copies[id(layer)] = new
                self.originals[id(new)] = layer
            return self.copies[id(layer)]

        def call(new, *args, **kwargs):
            args, kwargs = self.inputs(args, kwargs)
            original = self.originals[id(new)]
            if isinstance(new, _PassThrough):
                self.results.setdefault(id(original), args[0])
                return args[0]
            outputs = new(*args, **kwargs)
            source = self.unset.pop(id(new), None)
            if source is not None:  # built by this first call
                new.set_weights(source.get_weights())
            outputs = self.after(original, outputs)
            self.results.setdefault(id(original), outputs)
            return outputs

        inputs = new_inputs(graph)
        self.begin(inputs)
        rebuilt = keras.models.clone_model(
            graph, input_tensors=inputs, clone_function=clone,
            call_function=call)
        # A plain functional model, uncompiled (`clone_model` compiles the
        # copy of a compiled model and keeps a subclass's constructor).
        new = keras.Model(rebuilt.input, rebuilt.output,
                          name=name or graph.name)
        pyramid = getattr(graph, "pyramid_outputs", None)
        if isinstance(pyramid, dict) and pyramid:
            # keras-hub's dense heads read it: the same levels, now from
            # the new graph (after a block inserted at that layer).
            new.pyramid_outputs = self.remap(graph, pyramid)
        return new

    def remap(self, graph, tensors):
        """The new tensors standing for `graph`'s (a structure of layer
        outputs), or a ValueError naming the one not rebuilt."""
        producers = {}
        for op in graph.operations:
            for tensor in tree.flatten(op.output):
                producers.setdefault(id(tensor), op)

        def new_tensor(tensor):
            op = producers.get(id(tensor))
            if op is None or id(op) not in self.results:
                raise ValueError(
                    "A pyramid output of the model is not the output of one "
                    "of its layers; it cannot be carried over. Received: "
                    f"{tensor!r}")
            original = tree.flatten(op.output)
            outputs = tree.flatten(self.results[id(op)])
            return outputs[[id(t) for t in original].index(id(tensor))]

        return tree.map_structure(new_tensor, tensors)

"""Multiply-adds and parameters of any Keras model, with no per-layer table.

`count_macs` converts the model to a float LiteRT graph (variables frozen,
so BatchNorm folds into the convolutions) and reads the cost off its ops and
tensor shapes, one image at a time:

- MACs (one multiply-add each): `CONV_2D` (output elements x kernel height
  x width x input channels per group), `DEPTHWISE_CONV_2D` (output elements
  x kernel area), `FULLY_CONNECTED` (output elements x inputs),
  `BATCH_MATMUL` (output elements x the contracted size) and
  `TRANSPOSE_CONV` (input elements x kernel area x output channels).
  Biases, BatchNorm, activations, pools and products are not MACs.
- Each op is attributed to the Keras layer whose name scope produced it
  (TensorFlow names every op after the layers it runs in), walking into
  nested models; a `keras.layers.Wrapper` counts under the class of the
  layer it wraps. A layer class defined outside Keras (the package's
  attention blocks, or any custom layer) is a *block*: its MACs are also
  summed apart (`attention`), and its element-wise work is counted: every
  other computing op (pools, products, sums, activations; not reshapes,
  transposes, concatenations, pads or slices) that touches a whole feature
  map of the block (a tensor as large as the block's largest activation)
  counts that tensor's elements; a product feeding a sum of the same block
  counts once with it, as one multiply-add.

Layers are found by name, never by class, so a new layer needs no entry
anywhere. The conversion needs the TensorFlow backend; on another backend
the model is saved and counted in a TensorFlow subprocess (its custom
layers must then be registered Keras serializables).
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

from keras_coordatt import litert

# Ops that move or reshape data without computing on it.
_DATA_MOVEMENT = frozenset((
    "RESHAPE", "TRANSPOSE", "CONCATENATION", "SPLIT", "SPLIT_V", "PAD",
    "PADV2", "MIRROR_PAD", "SLICE", "STRIDED_SLICE", "GATHER", "GATHER_ND",
    "PACK", "UNPACK", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE",
    "CAST", "SHAPE", "BROADCAST_TO", "TILE", "DEPTH_TO_SPACE",
    "SPACE_TO_DEPTH",
))
_SUFFIX = re.compile(r"_\d+$")


def _elements(tensor):
    return int(np.prod(tensor["shape"])) if len(tensor["shape"]) else 1


def _op_macs(op):
    """Multiply-adds of one LiteRT op (0 for ops without any)."""
    name, ins, outs = op["op_name"], op["inputs"], op["outputs"]
    if name in ("CONV_2D", "FULLY_CONNECTED"):
        # Filters (out, kh, kw, in / groups) and weights (units, inputs).
        return _elements(outs[0]) * int(np.prod(ins[1]["shape"][1:]))
    if name == "DEPTHWISE_CONV_2D":  # filter (1, kh, kw, out channels)
        return _elements(outs[0]) * int(np.prod(ins[1]["shape"][1:3]))
    if name == "TRANSPOSE_CONV":  # (output shape, filter, input)
        kernel = ins[1]["shape"]
        return _elements(ins[2]) * int(np.prod(kernel[:3]))
    if name == "BATCH_MATMUL":
        a, rows = ins[0]["shape"], outs[0]["shape"][-2]
        # a is (..., M, K), or (..., K, M) when adjointed.
        contracted = a[-1] if a[-2] == rows else a[-2]
        return _elements(outs[0]) * int(contracted)
    return 0


def count_params(model):
    """`{"total", "trainable", "non_trainable"}` parameters of a model.

    `trainable` is what PyTorch's `parameters()` counts; `non_trainable`
    holds e.g. the BatchNorm moving statistics; `total` is
    `model.count_params()`, their sum.
    """
    def size(variables):
        return sum(int(np.prod(v.shape)) for v in variables)

    return {"total": int(model.count_params()),
            "trainable": size(model.trainable_weights),
            "non_trainable": size(model.non_trainable_weights)}


def _static_shape(model, input_shape):
    if len(model.inputs) != 1:
        raise ValueError(
            "Only single-input models can be counted. Received: "
            f"{len(model.inputs)} inputs")
    shape = tuple(model.inputs[0].shape[1:]) if input_shape is None \
        else tuple(input_shape)
    if not shape or any(not isinstance(d, (int, np.integer)) or d < 1
                        for d in shape):
        raise ValueError(
            "Counting needs a static input shape without the batch axis, "
            "e.g. (224, 224, 3): pass `input_shape` or build the model with "
            f"one. Received: input_shape={shape}")
    return tuple(int(d) for d in shape)


def _float_graph(model, shape):
    """The float LiteRT flatbuffer of `model` on one `shape` image.

    Not `quantization.convert_float`: the input size may differ from the
    model's, and each output is flattened by a last `RESHAPE`, because the
    op producing a model output takes the signature's output name and would
    lose its layer's name scope.
    """
    import tensorflow as tf
    from tensorflow.python.framework import convert_to_constants

    from keras_coordatt.quiet import native_output_hidden

    spec = tf.TensorSpec((1,) + shape, tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def serve(images):
        outputs = tf.nest.flatten(model(images, training=False))
        return [tf.reshape(o, [-1]) for o in outputs]

    concrete = convert_to_constants.convert_variables_to_constants_v2(
        serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [concrete], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with native_output_hidden():
        return converter.convert()


def _is_block(layer):
    """A layer class defined outside Keras (wrapped or not)."""
    classes = [type(layer)]
    if isinstance(layer, _keras().layers.Wrapper):
        classes.append(type(layer.layer))
    return any(not c.__module__.startswith("keras.") for c in classes)


def _keras():
    import keras

    return keras


class _Owners:
    """Maps a LiteRT tensor name to the Keras layer whose scope made it.

    TensorFlow may suffix scopes with `_N` (a name scope entered twice); the
    model's own scope tells whether it did, and layer names are tried with
    and without the suffix in that order.
    """

    def __init__(self, model):
        self.model = model
        self.suffixed = None

    def _find(self, container, segment):
        names = {layer.name: layer for layer in container.layers}
        stripped = _SUFFIX.sub("", segment)
        order = (stripped, segment) if self.suffixed else (segment, stripped)
        return next((names[n] for n in order if n in names), None)

    def __call__(self, tensor_name):
        """`(scope of the owning call, layer)` or `(None, None)`."""
        # A fused op's name lists its parts; the last is the op it started
        # from (the convolution, not the activation fused into it).
        segments = tensor_name.split(";")[-1].split("/")
        if len(segments) < 2:
            return None, None
        if self.suffixed is None:
            self.suffixed = segments[0] != self.model.name
        container = self.model
        for depth, segment in enumerate(segments[1:], start=2):
            layer = self._find(container, segment)
            if layer is None:
                return None, None
            if not isinstance(layer, _keras().Model):
                return "/".join(segments[:depth]), layer
            container = layer
        return None, None


def _kind(layer, op):
    if layer is None:
        return op["op_name"]
    if isinstance(layer, _keras().layers.Wrapper):
        return type(layer.layer).__name__
    return type(layer).__name__


def _block_elementwise(block_ops, produced):
    """Element-wise operations of one block's ops (see the module doc)."""
    def activations(op):
        return [t for t in op["inputs"] + op["outputs"]
                if t["index"] in produced]

    largest = max((_elements(t) for op in block_ops
                   for t in activations(op)), default=0)
    consumers = {}
    for op in block_ops:
        for t in op["inputs"]:
            consumers.setdefault(t["index"], []).append(op["op_name"])
    total = 0
    for op in block_ops:
        name = op["op_name"]
        if name in _DATA_MOVEMENT or _op_macs(op) or name == "DELEGATE":
            continue
        if name == "MUL" and consumers.get(
                op["outputs"][0]["index"]) == ["ADD"]:
            continue  # a multiply-add: counted with its ADD
        size = max((_elements(t) for t in activations(op)), default=0)
        if size == largest:
            total += size
    return total


def _tally(listed, owners, model_inputs):
    """The `count_macs` result from the ops of the float graph."""
    result = {"total": 0, "by_type": {}, "attention": 0,
              "attention_layers": 0, "attention_elementwise": 0,
              "layers": []}
    by_layer, blocks = {}, {}
    for op in listed:
        scope, layer = owners(op["outputs"][0]["name"]) if op["outputs"] \
            else (None, None)
        macs = _op_macs(op)
        if layer is not None and _is_block(layer):
            blocks.setdefault(scope, []).append(op)
        if not macs:
            continue
        kind = _kind(layer, op)
        result["total"] += macs
        result["by_type"][kind] = result["by_type"].get(kind, 0) + macs
        key = (layer.name if layer is not None else op["op_name"], kind)
        by_layer[key] = by_layer.get(key, 0) + macs
        if layer is not None and _is_block(layer):
            result["attention"] += macs
    produced = {t["index"] for op in listed for t in op["outputs"]}
    produced |= set(model_inputs)
    for block_ops in blocks.values():
        result["attention_elementwise"] += _block_elementwise(
            block_ops, produced)
    result["attention_layers"] = len(blocks)
    result["layers"] = [(name, kind, macs)
                        for (name, kind), macs in by_layer.items()]
    return result


def count_macs(model, input_shape=None):
    """Counts multiply-adds of one image through a Keras model.

    Args:
        model: a single-input Keras model.
        input_shape: the image shape without the batch axis, e.g.
            `(224, 224, 3)`; None: the model's own (it must be static).

    Returns:
        A dict: `total` (MACs per image), `by_type` (layer class name ->
        MACs; a wrapped layer counts under its own class; an op no layer
        scope claims, under its LiteRT op name), `attention` (MACs inside
        blocks: layers of classes defined outside Keras, such as
        `CoordinateAttention`, `SqueezeExcitation`, `CBAM`),
        `attention_layers` (number of block calls), `attention_elementwise`
        (element-wise operations of the blocks' pools, products and
        blends), `layers` (list of `(name, class name, MACs)` for layers
        with MACs).
    """
    return count_each({"model": model}, input_shape)["model"]


def count_each(models, input_shape=None):
    """`{name: count_macs(model, input_shape)}` for a dict of models.

    On a backend other than TensorFlow, one subprocess counts them all (it
    starts TensorFlow once).
    """
    shapes = {name: _static_shape(model, input_shape)
              for name, model in models.items()}
    if _keras().backend.backend() != "tensorflow":
        return _count_in_tensorflow(models, shapes)
    counts = {}
    for name, model in models.items():
        runner = litert.interpreter(_float_graph(model, shapes[name]))
        inputs = [d["index"] for d in runner.get_input_details()]
        counts[name] = _tally(litert.ops(runner), _Owners(model), inputs)
    return counts


def _count_in_tensorflow(models, shapes):
    """`count_each` in a TensorFlow-backend subprocess, through `.keras`
    files (the LiteRT converter traces TensorFlow graphs only)."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))
    with tempfile.TemporaryDirectory() as folder:
        jobs = {}
        for i, (name, model) in enumerate(models.items()):
            jobs[name] = (os.path.join(folder, f"{i}.keras"), shapes[name])
            model.save(jobs[name][0])
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH")) if p)
        proc = subprocess.run(
            [sys.executable, "-m", "keras_coordatt.counting",
             json.dumps(jobs)],
            env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(
            "Counting in a TensorFlow subprocess failed:\n"
            + proc.stderr[-3000:])
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    for result in counts.values():
        result["layers"] = [tuple(row) for row in result["layers"]]
    return counts


def _main(jobs):
    import keras

    counts = {name: count_macs(keras.saving.load_model(path, compile=False),
                               tuple(shape))
              for name, (path, shape) in jobs.items()}
    print(json.dumps(counts))


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))

"""The one place that opens, runs and inspects LiteRT (`.tflite`) models.

- `interpreter(model)`: ai-edge-litert's `Interpreter` from flatbuffer bytes
  or a `.tflite` path;
- `predict(model, data)`: float outputs over images, arrays or batches
  (int8 inputs quantized and int8 outputs dequantized);
- `ops(model)`: the op list with each op's input and output tensors
  (dtype, shape, quantization), `op_names`, `inspect` (op and tensor type
  counts), `check_int8` (every inner tensor int8/int32, no Flex op) and
  `output_step` (the int8 resolution of a float output).

Everything LiteRT is imported inside the functions, so importing this module
costs nothing.
"""

import os

import numpy as np

from keras_coordatt.quiet import native_output_hidden

# Ops allowed to touch float tensors in an int8 model: the (de)quantization
# at the model's float inputs and outputs.
_IO_OPS = ("QUANTIZE", "DEQUANTIZE")
# Tensor types of an int8 model: int8 activations and weights, int32
# biases and shape operands.
_INT8_TYPES = ("int8", "int32")


def interpreter(model, num_threads=None, allocate=False, delegate=True):
    """A LiteRT interpreter for a `.tflite` model.

    Args:
        model: TFLite flatbuffer bytes or a `.tflite` path.
        num_threads: interpreter threads (None: LiteRT's default).
        allocate: whether to allocate the tensors. Before allocation the op
            list is the model's own; after it, the XNNPACK delegate has
            replaced the ops it runs by `DELEGATE` nodes.
        delegate: False runs every op on the builtin kernels (no default
            XNNPACK delegate).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_litert.interpreter import OpResolverType
    except ImportError as error:  # pragma: no cover - depends on the extra
        raise ImportError(
            "Running TFLite models needs the LiteRT interpreter: "
            "`pip install keras-coordatt[litert]` (ai-edge-litert)."
        ) from error
    kwargs = {"num_threads": num_threads}
    if not delegate:
        kwargs["experimental_op_resolver_type"] = \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray)):
        result = Interpreter(model_content=bytes(model), **kwargs)
    elif isinstance(model, (str, os.PathLike)):
        result = Interpreter(model_path=os.fspath(model), **kwargs)
    else:
        raise ValueError(
            "`model` must be TFLite flatbuffer bytes or a `.tflite` path. "
            f"Received: model of type {type(model).__name__}"
        )
    if allocate:
        with native_output_hidden():  # "INFO: Created ... XNNPACK delegate"
            result.allocate_tensors()
    return result


def ops(model, delegated=False):
    """The ops of a TFLite model, in execution order.

    Args:
        model: TFLite flatbuffer bytes, a `.tflite` path, or an interpreter
            from `interpreter()`.
        delegated: with a path or bytes, whether to list the ops after
            tensor allocation (XNNPACK partitions as `DELEGATE` nodes).

    Returns:
        A list of dicts: `op_name`, `inputs` and `outputs` (lists of the
        tensor details LiteRT reports: `index`, `name`, `shape`, `dtype`,
        `quantization`, `quantization_parameters`; an optional input that
        is absent is left out).
    """
    runner = model if hasattr(model, "get_tensor_details") else \
        interpreter(model, allocate=delegated)
    tensors = {t["index"]: t for t in runner.get_tensor_details()}

    def details(indices):
        return [tensors.get(int(i), {"index": int(i), "name": "",
                                     "shape": np.zeros(0, int),
                                     "dtype": None})
                for i in indices if i >= 0]

    # `_get_ops_details` is private to the interpreter, but the only way to
    # see the graph (op types and their tensors) without parsing the
    # flatbuffer schema ourselves; keep every use of it here.
    return [{"op_name": op["op_name"], "inputs": details(op["inputs"]),
             "outputs": details(op["outputs"])}
            for op in runner._get_ops_details()]


def op_names(model):
    """The sorted, distinct op names of a TFLite model (bytes or path)."""
    return sorted({op["op_name"] for op in ops(model)})


def _dtype_name(tensor):
    return np.dtype(tensor["dtype"]).name if tensor["dtype"] is not None \
        else "unknown"


def inspect(model):
    """Lists the ops and tensor types of a TFLite model.

    Args:
        model: TFLite flatbuffer bytes or a `.tflite` path.

    Returns:
        A dict: `ops` (list of `(op_name, input dtypes, output dtypes)`),
        `op_counts` (op name -> count), `tensor_types` (dtype name -> count),
        `input_types` and `output_types` (dtype names), `size` (bytes).
    """
    runner = interpreter(model)
    listed = [(op["op_name"], [_dtype_name(t) for t in op["inputs"]],
               [_dtype_name(t) for t in op["outputs"]])
              for op in ops(runner)]
    op_counts, tensor_types = {}, {}
    for name, _, _ in listed:
        op_counts[name] = op_counts.get(name, 0) + 1
    for t in runner.get_tensor_details():
        name = np.dtype(t["dtype"]).name
        tensor_types[name] = tensor_types.get(name, 0) + 1
    size = len(model) if isinstance(model, (bytes, bytearray)) else \
        os.path.getsize(model)
    return {
        "ops": listed,
        "op_counts": op_counts,
        "tensor_types": tensor_types,
        "input_types": [np.dtype(d["dtype"]).name
                        for d in runner.get_input_details()],
        "output_types": [np.dtype(d["dtype"]).name
                         for d in runner.get_output_details()],
        "size": size,
    }


def check_int8(model, int8_io=False):
    """Checks that every op of a TFLite model computes in int8.

    Passes when all tensors are int8 or int32 (biases, shapes), except the
    model's float input/output when `int8_io` is False, which only
    QUANTIZE/DEQUANTIZE ops may touch; and no op is a Flex (TF) or custom op.

    Args:
        model: TFLite flatbuffer bytes or a `.tflite` path.
        int8_io: whether the input and output must be int8 too.

    Returns:
        The `inspect` report.

    Raises:
        ValueError: naming the offending ops (with their tensor types).
    """
    report = inspect(model)
    offending = []
    for name, ins, outs in report["ops"]:
        types = set(ins + outs)
        if name.startswith("Flex") or name in ("CUSTOM", "DELEGATE"):
            offending.append(f"{name} (Flex/custom op)")
        elif name in _IO_OPS and not int8_io:
            # float <-> int8 at the boundary only.
            if not types <= {"float32", "int8"}:
                offending.append(f"{name} {ins}->{outs}")
        elif not types <= set(_INT8_TYPES):
            offending.append(f"{name} {ins}->{outs}")
    io_types = set(report["input_types"] + report["output_types"])
    expected_io = {"int8"} if int8_io else {"float32"}
    if io_types != expected_io:
        offending.append(
            f"model I/O types {sorted(io_types)} (expected "
            f"{sorted(expected_io)})"
        )
    if offending:
        raise ValueError(
            "The TFLite model is not fully int8: these ops compute in float "
            "or are not TFLite builtins: " + "; ".join(offending)
            + f". Op counts: {report['op_counts']}"
        )
    return report


def output_step(model):
    """The int8 quantization step of a LiteRT model's output, or None.

    For a full-integer model with a float output (`DEQUANTIZE` last), the
    scale of the int8 tensor it dequantizes: the resolution of the output
    (1/256 for a softmax).

    Args:
        model: the flatbuffer as bytes, or a path to a `.tflite` file.
    """
    runner = interpreter(model)
    output = runner.get_output_details()[0]
    scale = float(output["quantization"][0])
    if scale:  # an int8 output
        return scale
    for op in ops(runner):
        produced = [t["index"] for t in op["outputs"]]
        if output["index"] in produced and op["op_name"] == "DEQUANTIZE":
            scale = float(op["inputs"][0]["quantization"][0])
            return scale or None
    return None


def _iterate(data, batch_size):
    """Yields `(images, labels)` numpy batches; labels may be None."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(
        data[0], np.ndarray
    ):
        images, labels = data
        for i in range(0, len(images), batch_size):
            batch = slice(i, i + batch_size)
            yield images[batch], np.asarray(labels[batch])
        return
    if isinstance(data, np.ndarray):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size], None
        return
    for batch in data:
        if isinstance(batch, (tuple, list)):
            yield np.asarray(batch[0]), np.asarray(batch[1])
        else:
            yield np.asarray(batch), None


def quantize_input(images, detail):
    """Float images as the model's input expects them (int8: quantized with
    its scale and zero point)."""
    images = np.asarray(images, dtype="float32")
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        images = np.clip(np.round(images / scale + zero), -128, 127)
        images = images.astype(np.int8)
    return images


def predict(model, data, batch_size=32, num_threads=None):
    """Runs a TFLite model over images and returns its float outputs.

    Int8 inputs are quantized with the model's input scale and zero point,
    and int8 outputs dequantized, so float and int8-I/O models compare
    directly.

    Args:
        model: TFLite flatbuffer bytes or a `.tflite` path.
        data: images `(N, H, W, C)` preprocessed as the Keras model expects;
            or `(images, labels)` arrays; or an iterable / `tf.data.Dataset`
            of image batches or `(images, labels)` batches.
        batch_size: int >= 1, the interpreter batch for array inputs.
        num_threads: interpreter threads (None: LiteRT's default).

    Returns:
        `(outputs, labels)`: float32 array `(N, ...)` and the labels (None
        when the data has none).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or \
            batch_size < 1:
        raise ValueError(
            "`batch_size` must be an integer >= 1. "
            f"Received: batch_size={batch_size!r}"
        )
    runner = interpreter(model, num_threads)
    inp = runner.get_input_details()[0]
    out = runner.get_output_details()[0]
    current = None
    outputs, labels = [], []
    # A static batch (the converters' default, batch 1) runs image by image.
    dynamic = int(inp["shape_signature"][0]) == -1
    for images, batch_labels in _iterate(data, batch_size):
        images = quantize_input(images, inp)
        chunks = [images] if dynamic else [images[i:i + 1]
                                           for i in range(len(images))]
        for chunk in chunks:
            if current != chunk.shape:
                if dynamic:
                    runner.resize_tensor_input(inp["index"], chunk.shape)
                with native_output_hidden():  # the XNNPACK INFO line
                    runner.allocate_tensors()
                current = chunk.shape
            runner.set_tensor(inp["index"], chunk)
            runner.invoke()
            result = runner.get_tensor(out["index"])
            if out["dtype"] == np.int8:
                scale, zero = out["quantization"]
                result = (result.astype("float32") - zero) * scale
            outputs.append(result.astype("float32"))
        if batch_labels is not None:
            labels.append(batch_labels)
    outputs = np.concatenate(outputs) if outputs else np.zeros((0,))
    labels = np.concatenate(labels) if labels else None
    return outputs, labels

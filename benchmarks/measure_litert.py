"""The LiteRT rows: float, post-training int8 and QAT int8 models.

Converted in the TensorFlow worker, timed with the LiteRT interpreter
(XNNPACK) at batch 1 and each thread count, with their file sizes and how
the XNNPACK delegate partitions them.
"""

import os

import numpy as np

from measure import interleaved
from measure import log
from measure import pair_ratio
from measure import pair_row
from networks import BASE
from networks import CA
from networks import NO_CA

LITERT_KINDS = ("float", "ptq_int8", "qat_int8")
FILE_TAGS = {CA: "mobilenetv2_ca", BASE: "mobilenetv2",
             NO_CA: "mobilenetv2_ca_noattention"}


def convert_float(model):
    from keras_coordatt.quantization import convert_float

    return convert_float(model)


def _interpreter(blob, threads):
    from keras_coordatt import litert

    return litert.interpreter(blob, threads, allocate=True)


def litert_callables(blobs, threads, seed=4):
    """name -> the `invoke` of an interpreter fed random inputs."""
    rng = np.random.default_rng(seed)
    fns = {}
    for name, blob in blobs.items():
        interpreter = _interpreter(blob, threads)
        detail = interpreter.get_input_details()[0]
        x = rng.standard_normal(detail["shape"]).astype(detail["dtype"])
        interpreter.set_tensor(detail["index"], x)
        fns[name] = interpreter.invoke
    return fns


def delegate_report(blob):
    """Ops, XNNPACK partitions and the ops left outside the delegate.

    After `allocate_tensors`, every XNNPACK partition is a `DELEGATE` node;
    an op whose output feeds a partition (or the model output) without
    being produced by one runs on the builtin kernels.
    """
    from keras_coordatt import litert

    interpreter = _interpreter(blob, 1)
    ops = litert.ops(interpreter)

    def indices(op, key):
        return {int(t["index"]) for t in op[key]}

    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    delegated_in = {i for o in delegates for i in indices(o, "inputs")}
    delegated_out = {i for o in delegates for i in indices(o, "outputs")}
    outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    op_counts, outside = {}, {}
    for op in ops:
        name = op["op_name"]
        if name == "DELEGATE":
            continue
        op_counts[name] = op_counts.get(name, 0) + 1
        produced = indices(op, "outputs")
        if produced & delegated_out:
            continue
        if produced & (delegated_in | outputs):
            outside[name] = outside.get(name, 0) + 1
    return {"op_counts": op_counts, "partitions": len(delegates),
            "outside_delegate": outside}


def _kinds(args):
    """The kinds to convert: float too when the PyTorch rows need it."""
    kinds = args.litert_kinds
    if "torch" in args.sections and "float" not in kinds:
        kinds = ["float"] + list(kinds)
    return kinds


def convert_models(models, args):
    """kind -> name -> the converted LiteRT flatbuffer."""
    from keras_coordatt.quantization import calibrate
    from keras_coordatt.quantization import convert_ptq
    from keras_coordatt.quantization import convert_qat
    from keras_coordatt.quantization import quantize_model

    data = np.random.default_rng(5).standard_normal(
        (args.calibration, args.size, args.size, 3)).astype("float32")
    blobs = {kind: {} for kind in _kinds(args)}
    for name, model in models.items():
        if "float" in blobs:
            blobs["float"][name] = convert_float(model)
        if "ptq_int8" in blobs:
            blobs["ptq_int8"][name] = convert_ptq(
                model, data, num_samples=args.calibration)
        if "qat_int8" in blobs and name != NO_CA:
            twin = quantize_model(model)
            calibrate(twin, data, steps=max(1, min(4, args.calibration)))
            blobs["qat_int8"][name] = convert_qat(twin)
    return blobs


def save_models(blobs, workdir):
    """Writes every flatbuffer; returns "name|kind" -> its path."""
    files = {}
    for kind, by_model in blobs.items():
        for name, blob in by_model.items():
            path = os.path.join(workdir, f"{FILE_TAGS[name]}_{kind}.tflite")
            with open(path, "wb") as f:
                f.write(blob)
            files[f"{name}|{kind}"] = path
    return files


def time_kind(kind, by_model, counts, threads, reports, args):
    """One row: the models of one kind at one thread count, batch 1."""
    fns = litert_callables(by_model, threads)
    times, cpu = interleaved(fns, 2 * args.repeats, args.warmup)
    row = {
        "kind": kind,
        "threads": threads,
        "batch": 1,
        **pair_row(times, cpu, counts, 1),
    }
    if NO_CA in times:
        row["ratio_vs_no_attention"] = pair_ratio(times, CA, NO_CA)["ratio"]
        row["cpu_ratio_vs_no_attention"] = pair_ratio(
            cpu, CA, NO_CA)["ratio"]
    for name, stats in row["models"].items():
        stats["file_bytes"] = len(by_model[name])
        stats["delegate"] = reports[name]
    return row


def litert_section(models, counts, args, workdir):
    """`(rows, file sizes, files)` of every kind and thread count."""
    blobs = convert_models(models, args)
    files = save_models(blobs, workdir)
    rows = []
    for kind, by_model in blobs.items():
        reports = {name: delegate_report(b) for name, b in by_model.items()}
        for threads in args.threads:
            rows.append(time_kind(kind, by_model, counts, threads, reports,
                                  args))
            log(f"litert {kind} {threads} thread(s): "
                f"ratio {rows[-1]['ratio']:.3f}")
    sizes = {name: {kind: len(blobs[kind][name]) for kind in blobs
                    if name in blobs[kind]} for name in models}
    return rows, sizes, files

"""What PyTorch users ship: the authors' network through litert-torch.

The authors' MobileNetV2-CA (`torch_reference.py`, an independent PyTorch
implementation, random weights, eval mode) converted by litert-torch to
LiteRT float and to int8 with litert-torch's PT2E flow (per-channel
symmetric int8 weights, int8 activations, calibrated on random images), and
timed with the same LiteRT interpreter (XNNPACK) as our MobileNetV2CA float
and post-training int8 files, beside PyTorch eager and ONNX Runtime (the
network exported by `torch.onnx`). Batch 1, each thread count, the models
interleaved in one loop (`measure.interleaved`).

Also checked, per converted file: its op types (which ops stay float in the
int8 file), its XNNPACK partitions, the largest difference of the float file
from PyTorch eager, and how often the int8 file's top-1 class agrees with
PyTorch eager.

    python benchmarks/litert_torch_peer.py [--quick]
        [--torch-python /path/to/venv/bin/python] [--output DIR]

Three processes: this one (no Keras, no TensorFlow: it only orchestrates),
an `ours` worker in this Python (our package converts MobileNetV2CA) and a
`torch` worker in `--torch-python` (torch, litert-torch, onnxruntime and
the LiteRT interpreter; no Keras, no TensorFlow), which converts, checks
and times everything. The results land in `<output>/litert_torch.json` and
`litert_torch.md`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from measure import interleaved  # noqa: E402
from measure import json_default  # noqa: E402
from measure import loadavg  # noqa: E402
from measure import log  # noqa: E402
from measure import machine_info  # noqa: E402
from measure import pair_ratio  # noqa: E402
from measure import summarize  # noqa: E402

# The timed models, in table order: name -> (what it is, runtime).
MODELS = {
    "pytorch_eager": ("authors' network", "PyTorch eager"),
    "onnxruntime": ("authors' network (torch.onnx)", "ONNX Runtime"),
    "litert_torch_float": ("authors' network (litert-torch)", "LiteRT float"),
    "litert_torch_int8": ("authors' network (litert-torch PT2E)",
                          "LiteRT int8"),
    "ours_float": ("MobileNetV2CA (ours)", "LiteRT float"),
    "ours_int8": ("MobileNetV2CA (ours, post-training)", "LiteRT int8"),
}
LITERT = ("litert_torch_float", "litert_torch_int8", "ours_float",
          "ours_int8")
# Ops that only move values between float and int8 (or rescale int8).
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
INT_TYPES = ("int8", "int32")
ENV_PYTHON = "LITERT_TORCH_PYTHON"


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def _parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: alpha 0.35, 64x64, 3 repeats, 2 "
                        "calibration and 8 agreement images")
    p.add_argument("--alpha", type=float, default=None,
                   help="width multiplier (default 1.0; quick 0.35)")
    p.add_argument("--size", type=int, default=None,
                   help="image size (default 224; quick 64)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per thread count (default 50; "
                        "quick 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs of each model first (default 5; "
                        "quick 1)")
    p.add_argument("--threads", default="1,2",
                   help="thread counts (default 1,2)")
    p.add_argument("--calibration", type=int, default=None,
                   help="random images calibrating both int8 files "
                        "(default 16; quick 2)")
    p.add_argument("--agreement", type=int, default=None,
                   help="random images for the top-1 agreement (default "
                        "64; quick 8)")
    p.add_argument("--torch-python",
                   default=os.environ.get(ENV_PYTHON, sys.executable),
                   help="the Python with torch, litert-torch and "
                        f"onnxruntime (default ${ENV_PYTHON}, else this "
                        "one)")
    p.add_argument("--output", default=os.path.join(HERE, "results"),
                   help="directory for litert_torch.json/.md")
    p.add_argument("--worker", choices=("ours", "torch"),
                   help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p


def parse_args(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    quick = args.quick
    defaults = dict(alpha=0.35 if quick else 1.0, size=64 if quick else 224,
                    repeats=3 if quick else 50, warmup=1 if quick else 5,
                    calibration=2 if quick else 16,
                    agreement=8 if quick else 64)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.threads = [int(t) for t in str(args.threads).split(",") if t]
    except ValueError:
        p.error(f"--threads: comma-separated integers. Received: "
                f"{args.threads!r}")
    for key in ("repeats", "calibration", "agreement", "size"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1. Received: {getattr(args, key)}")
    if not args.threads or min(args.threads) < 1:
        p.error(f"--threads: integers >= 1. Received: {args.threads}")
    return args


def _forwarded(args):
    out = ["--alpha", str(args.alpha), "--size", str(args.size),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--threads", ",".join(str(t) for t in args.threads),
           "--calibration", str(args.calibration),
           "--agreement", str(args.agreement)]
    return out + (["--quick"] if args.quick else [])


def images(args, count, seed, layout="nhwc"):
    """Random images; the torch side takes the same ones as NCHW."""
    x = np.random.default_rng(seed).standard_normal(
        (count, args.size, args.size, 3)).astype("float32")
    return x.transpose(0, 3, 1, 2).copy() if layout == "nchw" else x


# --------------------------------------------------------------------------
# Pure helpers (tested without torch or LiteRT)
# --------------------------------------------------------------------------


def op_report(ops):
    """Op counts of a LiteRT model, and which ops compute in float.

    Args:
        ops: a list of dicts `op_name` and `dtypes` (the dtype names of the
            op's input and output tensors).

    Returns:
        `op_counts` (op -> count), `float_ops` (op -> count of the ops that
        touch a float32 tensor, QUANTIZE/DEQUANTIZE left out),
        `boundaries` (the QUANTIZE/DEQUANTIZE ops between float and int8),
        `int8_ops` (ops whose tensors are all int8/int32) and `ops`.
    """
    counts, float_ops, boundaries, int8_ops = {}, {}, 0, 0
    for op in ops:
        name, dtypes = op["op_name"], set(op["dtypes"])
        counts[name] = counts.get(name, 0) + 1
        if dtypes <= set(INT_TYPES):
            int8_ops += 1
        elif name in BOUNDARY_OPS:
            boundaries += "float32" in dtypes
        elif "float32" in dtypes:
            float_ops[name] = float_ops.get(name, 0) + 1
    return {"op_counts": counts, "float_ops": float_ops,
            "boundaries": boundaries, "int8_ops": int8_ops,
            "ops": len(ops)}


def top1_agreement(a, b):
    """The share of rows of two `(N, classes)` score arrays whose argmax
    agrees."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError("top1_agreement needs two (N, classes) arrays of "
                         f"one shape. Received: shapes {a.shape} and "
                         f"{b.shape}")
    return float(np.mean(a.argmax(1) == b.argmax(1)))


def _ms(row, name):
    stats = row["models"].get(name)
    return f"{stats['median_ms']:.2f}" if stats else "-"


def _ops_cell(checks, name):
    ops = checks.get(name, {}).get("ops")
    if not ops:
        return "-"
    floats = sum(ops["float_ops"].values())
    text = f"{ops['int8_ops']} int8 / {floats} float"
    if ops["float_ops"] and ops["int8_ops"]:
        text += " (" + ", ".join(f"{k} {v}" for k, v in
                                 sorted(ops["float_ops"].items())) + ")"
    return text


def markdown(result):
    """The table of litert_torch.md: one row per model."""
    rows = result["rows"]
    checks = result["checks"]
    head = ["model", "runtime", "file MB"] + \
        [f"ms, {r['threads']} thread(s)" for r in rows] + \
        ["ops: int8 / float", "XNNPACK partitions"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for name, (what, runtime) in MODELS.items():
        check = checks.get(name, {})
        size = check.get("file_bytes")
        cells = [what, runtime, f"{size / 1e6:.2f}" if size else "-"]
        cells += [_ms(r, name) for r in rows]
        cells += [_ops_cell(checks, name), str(check.get("partitions", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    config = result["config"]
    title = (f"# litert-torch peer: alpha {config['alpha']}, "
             f"{config['size']}x{config['size']}, batch 1\n\n"
             "Median wall-clock ms over interleaved rounds; load average "
             f"{_load(result)}.\n\n")
    return title + "\n".join(lines) + "\n\n" + _agreement(result) + "\n"


def _load(result):
    start = result["machine"].get("loadavg_start") or [float("nan")]
    end = result.get("loadavg_end") or [float("nan")]
    return f"{start[0]:.2f} at the start, {end[0]:.2f} at the end"


def _agreement(result):
    checks = result["checks"]
    parts = []
    for name, key, label in (
            ("litert_torch_float", "max_abs_diff", "float max |diff|"),
            ("onnxruntime", "max_abs_diff", "ONNX Runtime max |diff|"),
            ("litert_torch_int8", "top1_agreement", "int8 top-1 agreement")):
        value = checks.get(name, {}).get(key)
        if value is not None:
            parts.append(f"{label} {value:.3g}")
    n = result["config"]["agreement"]
    return (f"Against PyTorch eager on {n} random images: "
            + ", ".join(parts) + ".")


# --------------------------------------------------------------------------
# LiteRT (ai-edge-litert directly: no keras_coordatt in the torch worker)
# --------------------------------------------------------------------------


def _interpreter(blob, threads=1, allocate=True):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob, num_threads=threads)
    if allocate:
        interpreter.allocate_tensors()
    return interpreter


def _dtype(detail):
    return np.dtype(detail["dtype"]).name


def litert_ops(blob, delegated=False):
    """The ops of a flatbuffer as `op_report` takes them.

    `_get_ops_details` is the interpreter's private op list: the only way
    to read the graph without parsing the flatbuffer schema ourselves.
    Allocated (`delegated`), XNNPACK's partitions show as DELEGATE ops.
    """
    interpreter = _interpreter(blob, allocate=delegated)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    return [{"op_name": op["op_name"],
             "dtypes": sorted({_dtype(tensors[i]) for i in
                               list(op["inputs"]) + list(op["outputs"])
                               if i >= 0 and i in tensors})}
            for op in interpreter._get_ops_details()]


def _set_input(interpreter, x):
    """Feeds float images, quantized when the input is int8 (the PT2E
    file takes int8)."""
    detail = interpreter.get_input_details()[0]
    if _dtype(detail) == "int8":
        scale, zero = detail["quantization"]
        x = np.clip(np.round(x / scale) + zero, -128, 127).astype("int8")
    interpreter.set_tensor(detail["index"], x)


def _get_output(interpreter):
    detail = interpreter.get_output_details()[0]
    y = interpreter.get_tensor(detail["index"])
    if _dtype(detail) == "int8":
        scale, zero = detail["quantization"]
        y = (y.astype("float32") - zero) * scale
    return y


def litert_predict(blob, x):
    """Scores of a LiteRT model over a batch of images, one at a time."""
    interpreter = _interpreter(blob)
    out = []
    for image in x:
        _set_input(interpreter, image[None])
        interpreter.invoke()
        out.append(_get_output(interpreter)[0].copy())
    return np.stack(out)


def _write_atomic(path, data, mode="wb"):
    """Writes under a temporary name first: no half-written final file."""
    tmp = f"{path}.partial"
    with open(tmp, mode) as f:
        f.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# The `ours` worker: our package converts MobileNetV2CA
# --------------------------------------------------------------------------


def ours_worker(args):
    """Our float and post-training int8 files, random weights."""
    from keras_coordatt import MobileNetV2CA
    from keras_coordatt.quantization import convert_float
    from keras_coordatt.quantization import convert_ptq

    model = MobileNetV2CA(input_shape=(args.size, args.size, 3),
                          alpha=args.alpha, weights=None)
    data = images(args, args.calibration, seed=5)
    for kind, blob in (
            ("float", convert_float(model)),
            ("int8", convert_ptq(model, data,
                                 num_samples=args.calibration))):
        _write_atomic(os.path.join(args.workdir, f"ours_{kind}.tflite"),
                      blob)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return {"ours_params": int(model.count_params()),
            "ours_trainable_params": trainable}


# --------------------------------------------------------------------------
# The `torch` worker: conversions, checks, timing
# --------------------------------------------------------------------------


def _reference(args):
    import torch_reference as reference

    return reference.randomized(
        reference.MobileNetV2CA(width_mult=args.alpha))


def convert_litert_torch(net, args):
    """`(float, int8)` flatbuffers of the net through litert-torch.

    The int8 file is litert-torch's PT2E flow: `torch.export`, its
    `PT2EQuantizer` (per-channel symmetric weights), calibration on random
    images, `convert_pt2e`, then `litert_torch.convert` with the quantizer.
    """
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    sample = (torch.from_numpy(images(args, 1, seed=0, layout="nchw")),)
    float_blob = litert_torch.convert(net, sample).model_content()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(
            is_per_channel=True))
    graph = torch.export.export(net, sample).module()
    graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
    for image in images(args, args.calibration, seed=5, layout="nchw"):
        graph(torch.from_numpy(image[None]))
    graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    int8_blob = litert_torch.convert(
        graph, sample,
        quant_config=QuantConfig(pt2e_quantizer=quantizer)).model_content()
    return float_blob, int8_blob


def export_onnx(net, args, path):
    """The net through torch.onnx's TorchScript exporter (the dynamo one
    needs onnxscript, which ONNX Runtime users need not install)."""
    import warnings

    import torch

    sample = torch.from_numpy(images(args, 1, seed=0, layout="nchw"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (sample,), path, dynamo=False,
                          input_names=["image"], output_names=["scores"],
                          opset_version=17)


def _onnx_session(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"])


def _torch_scores(net, x):
    import torch

    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


def check_models(net, blobs, onnx_path, args):
    """Op types, partitions, sizes, agreement with PyTorch eager."""
    x = images(args, args.agreement, seed=7, layout="nchw")
    eager = _torch_scores(net, x)
    session = _onnx_session(onnx_path, 1)
    onnx_scores = np.concatenate(
        [session.run(None, {"image": image[None]})[0] for image in x])
    checks = {"onnxruntime": {
        "file_bytes": os.path.getsize(onnx_path),
        "max_abs_diff": float(np.abs(onnx_scores - eager).max())}}
    for name, blob in blobs.items():
        nhwc = name.startswith("ours")
        scores = litert_predict(blob, x.transpose(0, 2, 3, 1) if nhwc
                                else x)
        delegated = litert_ops(blob, delegated=True)
        check = {"file_bytes": len(blob),
                 "ops": op_report(litert_ops(blob)),
                 "partitions": sum(o["op_name"] == "DELEGATE"
                                   for o in delegated),
                 "input_dtype": _dtype(
                     _interpreter(blob).get_input_details()[0])}
        if not nhwc:  # ours has other (random) weights: nothing to compare
            check["max_abs_diff"] = float(np.abs(scores - eager).max())
            check["top1_agreement"] = top1_agreement(scores, eager)
        checks[name] = check
    checks["pytorch_eager"] = {}
    return checks


def _litert_fn(blob, threads, x):
    interpreter = _interpreter(blob, threads)
    _set_input(interpreter, x)
    return interpreter.invoke


def timing_fns(net, blobs, onnx_path, threads, args):
    """name -> a zero-argument callable running one batch-1 inference."""
    import torch

    torch.set_num_threads(threads)
    x = images(args, 1, seed=0, layout="nchw")
    tx = torch.from_numpy(x)
    session = _onnx_session(onnx_path, threads)

    def run_torch():
        with torch.inference_mode():
            net(tx)

    fns = {"pytorch_eager": run_torch,
           "onnxruntime": lambda: session.run(None, {"image": x})}
    for name, blob in blobs.items():
        fns[name] = _litert_fn(blob, threads, x.transpose(0, 2, 3, 1).copy()
                               if name.startswith("ours") else x)
    return fns


def time_row(fns, threads, args):
    """One thread count: every model interleaved, with the ratios of
    litert-torch's files to ours (wall and process CPU time)."""
    wall, cpu = interleaved(fns, args.repeats, args.warmup)
    models = {}
    for name in fns:
        models[name] = summarize(wall[name])
        models[name]["cpu_median_ms"] = summarize(cpu[name])["median_ms"]
    ratios = {}
    for kind in ("float", "int8"):
        theirs, ours = f"litert_torch_{kind}", f"ours_{kind}"
        ratios[f"litert_torch_over_ours_{kind}"] = pair_ratio(
            wall, theirs, ours)
        ratios[f"litert_torch_over_ours_{kind}_cpu"] = pair_ratio(
            cpu, theirs, ours)["ratio"]
    return {"threads": threads, "batch": 1, "models": models, **ratios}


def torch_worker(args):
    import litert_torch
    import onnxruntime
    import torch

    net = _reference(args)
    started = time.time()
    float_blob, int8_blob = convert_litert_torch(net, args)
    seconds = time.time() - started
    log(f"litert-torch conversions: {seconds:.0f} s")
    blobs = {"litert_torch_float": float_blob,
             "litert_torch_int8": int8_blob}
    for kind in ("float", "int8"):
        with open(os.path.join(args.workdir, f"ours_{kind}.tflite"),
                  "rb") as f:
            blobs[f"ours_{kind}"] = f.read()
    onnx_path = os.path.join(args.workdir, "reference.onnx")
    export_onnx(net, args, onnx_path)
    checks = check_models(net, blobs, onnx_path, args)
    rows = []
    for threads in args.threads:
        rows.append(time_row(timing_fns(net, blobs, onnx_path, threads,
                                        args), threads, args))
        log(f"{threads} thread(s): litert-torch/ours float "
            f"{rows[-1]['litert_torch_over_ours_float']['ratio']:.2f}, "
            f"int8 {rows[-1]['litert_torch_over_ours_int8']['ratio']:.2f}")
    return {"rows": rows, "checks": checks,
            "conversion_seconds": seconds,
            "torch_params": int(sum(p.numel() for p in net.parameters())),
            "versions": {"torch": torch.__version__,
                         "litert_torch": litert_torch.__version__,
                         "onnxruntime": onnxruntime.__version__,
                         "ai_edge_litert": _version("ai-edge-litert")}}


def _version(dist):
    from importlib.metadata import version

    return version(dist)


# --------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------


def run_worker(kind, python, args, workdir):
    """One worker process; returns its part (JSON) or raises naming it."""
    part = os.path.join(workdir, f"{kind}.json")
    cmd = [python, os.path.abspath(__file__), "--worker", kind,
           "--workdir", workdir] + _forwarded(args)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    log(f"worker {kind}: {python}")
    proc = subprocess.run(cmd, env=env, cwd=ROOT)
    if proc.returncode != 0 or not os.path.exists(part):
        raise RuntimeError(f"the {kind} worker ({python}) exited with "
                           f"{proc.returncode}")
    with open(part) as f:
        return json.load(f)


def config_dict(args):
    return {key: getattr(args, key) for key in (
        "alpha", "size", "repeats", "warmup", "threads", "calibration",
        "agreement", "quick")}


def orchestrate(args):
    started = time.time()
    result = {"command": " ".join(["python", "benchmarks/litert_torch_peer.py"]
                                  + sys.argv[1:]),
              "config": config_dict(args), "machine": machine_info(),
              "models": {k: list(v) for k, v in MODELS.items()}}
    with tempfile.TemporaryDirectory(prefix="litert-torch-") as workdir:
        result.update(run_worker("ours", sys.executable, args, workdir))
        result.update(run_worker("torch", args.torch_python, args, workdir))
    result["loadavg_end"] = loadavg()
    result["wall_seconds"] = time.time() - started
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "litert_torch.json")
    _write_atomic(path, json.dumps(result, indent=1, default=json_default),
                  mode="w")
    _write_atomic(os.path.join(args.output, "litert_torch.md"),
                  markdown(result), mode="w")
    log(f"wrote {path} ({result['wall_seconds']:.0f} s)")
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        part = (ours_worker if args.worker == "ours" else torch_worker)(args)
        _write_atomic(os.path.join(args.workdir, f"{args.worker}.json"),
                      json.dumps(part, default=json_default), mode="w")
        return 0
    orchestrate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks: what coordinate attention costs, what int8 buys.

One command measures, side by side and as ratios, `MobileNetV2CA` against
`keras.applications.MobileNetV2` (same alpha and size, random weights):

- inference latency, batch 1 and a large batch: Keras on TensorFlow
  (`tf.function`, and XLA as its own row) and on JAX (`jax.jit`);
- one training step (forward + backward + SGD update);
- the `CoordinateAttention` layer alone at the network's own shapes, next to
  its share of multiply-adds, a plain squeeze-and-excitation block and one
  element-wise pass over the same feature map;
- LiteRT (XNNPACK) float, post-training int8 and QAT int8, 1 and 2
  threads, file sizes and delegate partitions;
- the authors' network in PyTorch eager mode (`torch_reference.py`,
  an independent implementation) against our LiteRT float model, when
  torch is installed.

Every timing is a median over repeated runs after warm-up, with its
quartiles; the models of a comparison run interleaved (A, B, B, A, ...) in
the same loop, so that load from other processes hits both alike; each
row has the wall clock and the process CPU time (the steadier measure on a
shared machine). Counted multiply-adds and parameters sit next to every
timing, with the achieved GFLOP/s (2 FLOPs per multiply-add).

    python benchmarks/run.py [--quick] [--backend all|tensorflow|jax]
                             [--output benchmarks/results]

Each backend runs in its own process (`KERAS_BACKEND` set before Keras is
imported); PyTorch runs in a third one, with the LiteRT interpreter only.
The results land in `<output>/results.json`, `results.md` and
`results.png`.

This file is the command line and the orchestration; the measuring lives in
`measure.py` (timing, machine), `networks.py` (the models and their
counts), `measure_keras.py`, `measure_litert.py` and `measure_torch.py`
(the rows), `workers.py` (the worker processes), the derived numbers in
`summary.py` and the report in `report.py`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from measure import heavy  # noqa: E402
from measure import json_default  # noqa: E402
from measure import loadavg  # noqa: E402
from measure import log  # noqa: E402
from measure import machine_info  # noqa: E402
from measure import slowest  # noqa: E402
from measure_litert import LITERT_KINDS  # noqa: E402
from networks import CA  # noqa: E402
from networks import DESCRIPTIONS  # noqa: E402
from networks import SE_REDUCTION  # noqa: E402
import report  # noqa: E402
import summary  # noqa: E402

SCHEMA_VERSION = 1


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def _parser():
    """The command line, worker options included."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true",
                   help="tiny smoke run: alpha 0.35, 64x64, batches 1 and "
                        "4, 2 repeats, no XLA; checks the plumbing, not "
                        "the numbers")
    p.add_argument("--backend", default="all",
                   choices=("all", "tensorflow", "jax"),
                   help="Keras backends to measure (default: all). LiteRT, "
                        "the layer and PyTorch rows come with tensorflow.")
    p.add_argument("--output", default=os.path.join(HERE, "results"),
                   help="directory for results.json/.md/.png")
    p.add_argument("--alpha", type=float, default=None,
                   help="width multiplier (default 1.0; quick 0.35)")
    p.add_argument("--size", type=int, default=None,
                   help="image size (default 224; quick 64)")
    p.add_argument("--batch", type=int, default=None,
                   help="the large batch (default 32; quick 4)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs for batch-1 rows (default 30; quick 2); "
                        "large-batch and training rows use a quarter, XLA "
                        "at the large batch and JAX training an eighth, "
                        "at least 3")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed runs first (default 3; quick 1)")
    p.add_argument("--threads", default="1,2",
                   help="LiteRT/PyTorch thread counts (default 1,2)")
    p.add_argument("--calibration", type=int, default=None,
                   help="random images for PTQ/QAT ranges (default 16; "
                        "quick 2)")
    p.add_argument("--litert-kinds", default="float,ptq_int8,qat_int8",
                   help="LiteRT models to convert and time (default "
                        "float,ptq_int8,qat_int8)")
    p.add_argument("--no-xla", action="store_true",
                   help="skip the TensorFlow XLA rows")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the PyTorch rows")
    p.add_argument("--mixed-precision", action="store_true",
                   help="Keras rows with the mixed_float16 policy (a GPU "
                        "run: keras, train and layer sections only)")
    p.add_argument("--sections", default="keras,train,layer,litert,torch",
                   help="comma-separated subset of "
                        "keras,train,layer,litert,torch")
    p.add_argument("--no-plot", action="store_true",
                   help="do not write results.png")
    # Internal: one worker process per backend.
    p.add_argument("--worker", choices=("tensorflow", "jax", "torch"),
                   help=argparse.SUPPRESS)
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p


def _complete(p, args):
    """Defaults (quick or full run), parsed lists and checks."""
    quick = args.quick
    defaults = dict(alpha=0.35 if quick else 1.0, size=64 if quick else 224,
                    batch=4 if quick else 32, repeats=2 if quick else 30,
                    warmup=1 if quick else 3,
                    calibration=2 if quick else 16)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if quick:
        args.no_xla = True
    args.threads = [int(t) for t in str(args.threads).split(",") if t]
    args.sections = [s for s in args.sections.split(",") if s]
    if args.mixed_precision:
        args.sections = [s for s in args.sections
                         if s in ("keras", "train", "layer")]
    args.litert_kinds = [k for k in args.litert_kinds.split(",") if k]
    if set(args.litert_kinds) - set(LITERT_KINDS) or not args.litert_kinds:
        p.error(f"--litert-kinds: a subset of {LITERT_KINDS}")
    unknown = set(args.sections) - {"keras", "train", "layer", "litert",
                                    "torch"}
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}")
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        p.error("--repeats >= 1, --warmup >= 0 and --batch >= 1 please")
    return args


def parse_args(argv=None):
    p = _parser()
    return _complete(p, p.parse_args(argv))


def config_dict(args):
    return {
        "alpha": args.alpha,
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "heavy_repeats": heavy(args),
        "slowest_repeats": slowest(args),
        "warmup": args.warmup,
        "threads": args.threads,
        "calibration_images": args.calibration,
        "litert_kinds": args.litert_kinds,
        "xla": not args.no_xla,
        "mixed_precision": args.mixed_precision,
        "quick": args.quick,
        "sections": args.sections,
        "se_reduction": SE_REDUCTION,
    }


# --------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------


def _forwarded(args):
    """The command-line options a worker needs."""
    out = ["--alpha", str(args.alpha), "--size", str(args.size),
           "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--warmup", str(args.warmup),
           "--threads", ",".join(str(t) for t in args.threads),
           "--calibration", str(args.calibration),
           "--litert-kinds", ",".join(args.litert_kinds),
           "--sections", ",".join(args.sections)]
    if args.quick:
        out.append("--quick")
    if args.no_xla:
        out.append("--no-xla")
    if args.mixed_precision:
        out.append("--mixed-precision")
    return out


def run_worker(kind, args, workdir, part_path, backend_env):
    """This script as a worker process; returns its part (or the error)."""
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend_env
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind,
           "--part", part_path, "--workdir", workdir] + _forwarded(args)
    log(f"worker {kind}: {' '.join(cmd[1:])}")
    proc = subprocess.run(cmd, env=env, cwd=ROOT)
    if proc.returncode != 0 or not os.path.exists(part_path):
        return {"errors": [{"section": kind, "backend": kind,
                            "error": f"worker exited with {proc.returncode}"}]}
    with open(part_path) as f:
        return json.load(f)


def torch_available():
    import importlib.util

    return importlib.util.find_spec("torch") is not None


# --------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------


def new_result(args, backends):
    """The results skeleton: command, configuration, machine, empty rows."""
    return {
        "schema_version": SCHEMA_VERSION,
        "command": " ".join(["python", "benchmarks/run.py"]
                            + sys.argv[1:]),
        "config": config_dict(args),
        "machine": machine_info(),
        "models": dict(DESCRIPTIONS),
        "counts": {}, "reference_224": {},
        "keras": [], "train": [], "layer": [], "layer_summary": [],
        "litert": [], "file_sizes": {}, "torch": [], "errors": [],
        "backends": backends,
    }


def merge_part(result, part, backend):
    """Adds one Keras worker's rows, counts and devices to the results."""
    result["errors"].extend(part.get("errors", []))
    for key in ("keras", "train", "layer", "litert"):
        result[key].extend(part.get(key, []) or [])
    for key in ("counts", "reference_224", "file_sizes"):
        if part.get(key):
            result[key] = part[key]
    result["machine"].setdefault("devices", {})[backend] = \
        part.get("devices", [])


def run_keras_workers(result, args, backends, workdir):
    """One worker per backend; returns the TensorFlow worker's part."""
    tf_part = None
    for backend in backends:
        part = run_worker(backend, args, workdir,
                          os.path.join(workdir, f"{backend}.json"), backend)
        merge_part(result, part, backend)
        if backend == "tensorflow":
            tf_part = part
    return tf_part


def run_torch_worker(result, args, workdir, tf_part):
    """The PyTorch rows, against the TensorFlow worker's LiteRT float."""
    if ("torch" not in args.sections or args.no_torch or not tf_part
            or not tf_part.get("litert_float_path")):
        return
    if not torch_available():
        result["torch_skipped"] = "torch is not installed"
        return
    part_path = os.path.join(workdir, "torch_in.json")
    with open(part_path, "w") as f:
        json.dump({"litert_float_path": tf_part["litert_float_path"],
                   "counts": tf_part["counts"][CA]}, f)
    part = run_worker("torch", args, workdir, part_path, "tensorflow")
    result["errors"].extend(part.get("errors", []))
    result["torch"] = part.get("torch", [])
    result["torch_params"] = part.get("torch_params")


def orchestrate(args):
    """Workers, then the derived numbers, then the three output files."""
    started = time.time()
    os.makedirs(args.output, exist_ok=True)
    backends = ["tensorflow", "jax"] if args.backend == "all" \
        else [args.backend]
    result = new_result(args, backends)
    with tempfile.TemporaryDirectory(prefix="coordatt-bench-") as workdir:
        tf_part = run_keras_workers(result, args, backends, workdir)
        run_torch_worker(result, args, workdir, tf_part)
    result["layer_summary"] += summary.layer_summaries(result, backends)
    result["targets"] = summary.targets(result)
    result["machine"]["loadavg_end"] = loadavg()
    result["wall_seconds"] = time.time() - started
    write_outputs(result, args)
    return result


def _write_json(result, path):
    with open(path, "w") as f:
        json.dump(result, f, indent=1, default=json_default)


def write_outputs(result, args):
    """results.json, results.md and (unless --no-plot) results.png."""
    json_path = os.path.join(args.output, "results.json")
    _write_json(result, json_path)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(report.markdown(result))
    if not args.no_plot:
        try:
            report.plot(result, os.path.join(args.output, "results.png"))
        except Exception as e:
            result["errors"].append({"section": "plot", "backend": None,
                                     "error": f"{type(e).__name__}: {e}"})
            _write_json(result, json_path)
    log(f"wrote {json_path} ({result['wall_seconds']:.0f} s)")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        from workers import worker_main

        worker_main(args)
        return 0
    result = orchestrate(args)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

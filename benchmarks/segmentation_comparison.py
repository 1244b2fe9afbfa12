"""The paper's dense-prediction claim in miniature: none / SE / CA backbones.

Trains keras-hub's DeepLabV3 on MobileNetV2 (alpha 0.35) with each
attention kind (`attention=False`, `"se"`, `"ca"`, each at its default
reduction) on the offline digit scenes (`digits-seg`), with the shipped
`digits_seg` recipe (the same budget for every kind), for several seeds,
through `keras_coordatt.training.train`, and reports per kind the
validation mean IoU and pixel accuracy (mean, standard deviation, min-max
over the seeds) and the segmenter's parameters.

    python benchmarks/segmentation_comparison.py [--seeds 0 1 2]
        [--kinds none se ca] [--set key=value ...] [--work-dir DIR]
        [--output benchmarks/results] [--smoke]

It writes `<output>/segmentation_comparison.json` and `.md`. `--smoke`
trains one epoch of one seed on a few canvases: it checks the plumbing, not
the numbers.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

KINDS = {"none": False, "se": "se", "ca": "ca"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--kinds", nargs="+", default=list(KINDS),
                   choices=list(KINDS))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="digits_seg recipe overrides")
    p.add_argument("--work-dir", default=None,
                   help="run folders (default: a temporary folder)")
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks",
                                                    "results"))
    p.add_argument("--smoke", action="store_true",
                   help="1 epoch, 1 seed, 64 canvases: plumbing only")
    return p.parse_args(argv)


def measure(kind, seed, overrides, work_dir, source=None):
    """One training run; its validation metrics and parameter count."""
    from keras_coordatt.training import train

    result = train("digits_seg", overrides=dict(
        overrides, attention=KINDS[kind], seed=seed, tensorboard=False,
        output_dir=os.path.join(work_dir, f"{kind}-{seed}"),
    ), source=source, verbose=0)
    return {"kind": kind, "seed": seed,
            "mean_iou": result.metrics["mean_iou"],
            "pixel_accuracy": result.metrics["pixel_accuracy"],
            "parameters": int(result.model.count_params()),
            "wall_time": result.wall_time}


def spread(values):
    values = np.asarray(values, "float64")
    return {"mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "max": float(values.max())}


def summarize(runs):
    kinds = dict.fromkeys(run["kind"] for run in runs)
    return {kind: {
        "parameters": next(r["parameters"] for r in runs
                           if r["kind"] == kind),
        "mean_iou": spread([r["mean_iou"] for r in runs
                            if r["kind"] == kind]),
        "pixel_accuracy": spread([r["pixel_accuracy"] for r in runs
                                  if r["kind"] == kind]),
    } for kind in kinds}


def report_markdown(result):
    seeds = result["seeds"]
    lines = [
        "# Segmentation: none / SE / CA backbones (digits-seg)",
        "",
        f"`{result['command']}`: DeepLabV3 on MobileNetV2 alpha 0.35, the "
        f"`digits_seg` recipe ({result['epochs']} epochs), seeds {seeds}; "
        "validation mean IoU over 11 classes and pixel accuracy, mean ± "
        "std (min-max) over the seeds.",
        "",
        "| backbone | params | mean IoU | pixel accuracy % |",
        "|---|---|---|---|",
    ]
    for kind, row in result["summary"].items():
        iou, acc = row["mean_iou"], row["pixel_accuracy"]
        lines.append(
            f"| {kind} | {row['parameters']:,} | {iou['mean']:.3f} ± "
            f"{iou['std']:.3f} ({iou['min']:.3f}-{iou['max']:.3f}) | "
            f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} |")
    lines += ["", f"Machine: {result['machine']}; total "
              f"{result['wall_time'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def run(args):
    from keras_coordatt.training import get_config
    from keras_coordatt.training import parse_overrides

    overrides = parse_overrides(args.overrides)
    source = None
    seeds = args.seeds
    if args.smoke:
        from keras_coordatt.training.data.segmentation import (
            load_digits_scenes)

        overrides.update(epochs=1, per_replica_batch_size=16)
        source = load_digits_scenes(
            64, seed=0, examples={"train": 64, "validation": 32})
        seeds = seeds[:1]
    config = get_config("digits_seg", overrides)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="seg_comparison_")
    started = time.time()
    runs = []
    for seed in seeds:
        for kind in args.kinds:
            runs.append(measure(kind, seed, overrides, work_dir, source))
            print(json.dumps(runs[-1]), flush=True)
    return {
        "command": "python benchmarks/segmentation_comparison.py "
                   + " ".join(sys.argv[1:]),
        "seeds": seeds, "epochs": config.epochs, "runs": runs,
        "summary": summarize(runs), "wall_time": time.time() - started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }


def main(argv=None):
    args = parse_args(argv)
    result = run(args)
    os.makedirs(args.output, exist_ok=True)
    from keras_coordatt.utils.atomic import atomic_file

    for suffix, text in ((".json", json.dumps(result, indent=2)),
                         (".md", report_markdown(result))):
        path = os.path.join(args.output, "segmentation_comparison" + suffix)
        with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    print(report_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

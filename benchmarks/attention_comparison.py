"""Attention kinds side by side: none, SE, CBAM and CA in MobileNetV2.

Trains `MobileNetV2CA` (the digits recipe: alpha 0.35, 32x32, SGD with a
warm-up and cosine schedule, precise BatchNorm at the end) with each
attention kind (`attention=False`, `"se"`, `"cbam"`, `"ca"`, each at its
default reduction) for several seeds, at one budget, through
`keras_coordatt.training.train`, and reports per kind:

- validation top-1: mean, standard deviation and min-max over the seeds;
- trainable parameters and multiply-adds per image (`keras_coordatt.counting`);
- LiteRT int8: post-training quantization (`convert_ptq`, representative
  training images with the evaluation preprocessing, float I/O), its top-1
  on the same validation images (`evaluate_tflite`), and its latency at
  batch 1 on 1 thread: the four kinds' models (the first seed's) timed
  interleaved in one loop after a warm-up, median wall clock and process
  CPU time of N runs.

Then the insertion path: `keras.applications.MobileNetV2(weights=None)`
at the same alpha and size, trained on the same data as a base (the same
recipe, `--insertion-base-epochs`), and `add_attention(base, after=<the
depthwise ReLUs of the expanding blocks>, attention="ca")` (identity start)
fine-tuned for `--insertion-epochs` against the base fine-tuned without
attention for as many epochs, per seed. `train()` builds its own model, so
this part runs `model.fit` on the training module's pipelines
(`train_dataset` / `eval_dataset`, the same augmentation, the model's own
`preprocess_input`), its optimizer (`build_optimizer`, the phase plan of
`plan_phases`) and precise BatchNorm: the same recipe, one data path.

    python benchmarks/attention_comparison.py [--seeds 0 1 2] [--epochs 12]
        [--dataset digits|tfds:NAME|...] [--set key=value ...]
        [--work-dir DIR] [--output benchmarks/results] [--smoke]

It writes `<output>/attention_comparison.json` and `.md`. `--smoke` is a
tiny run (1 epoch, 1 seed, 256 training and 64 validation images, 20
timed runs) that checks the plumbing, not the numbers.
"""

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (ROOT, HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from keras_coordatt.layers.registry import attention_names  # noqa: E402
from keras_coordatt.layers.registry import get_attention  # noqa: E402

SCHEMA_VERSION = 1
# "none" and every registered attention kind: a kind registered with
# `register_attention` is compared with no edit here.
KINDS = ("none",) + attention_names()
RECIPE = "digits"
RESULTS = "attention_comparison"
# The depthwise activations of the expanding blocks of
# keras.applications.MobileNetV2 (block 0, `expanded_conv`, has none): CA's
# places in the paper's network.
INSERT_AFTER = re.compile(r"block_\d+_depthwise_relu")


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--smoke", action="store_true",
                   help="tiny run: 1 epoch, 1 seed, 256 training / 64 "
                        "validation images, 20 timed runs")
    p.add_argument("--dataset", default=None,
                   help="any dataset `train` accepts (default: the "
                        "recipe's offline digits; e.g. tfds:cifar10)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds (default 0 1 2; smoke 0)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run (default: the recipe's 12; smoke 1)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS),
                   choices=KINDS, help="attention kinds (default: all)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more TrainConfig overrides of the digits recipe "
                        "(e.g. image_size=64 alpha=0.5)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the held-out split when the dataset has "
                        "none; one split for every kind and seed")
    p.add_argument("--limit-train", type=int, default=None,
                   help="use this many training images (default all; "
                        "smoke 256)")
    p.add_argument("--limit-val", type=int, default=None,
                   help="use this many validation images (default all; "
                        "smoke 64)")
    p.add_argument("--calibration", type=int, default=None,
                   help="representative images for PTQ (default 200; "
                        "smoke 8)")
    p.add_argument("--latency-runs", type=int, default=None,
                   help="timed interpreter runs per model (default 500; "
                        "smoke 20)")
    p.add_argument("--latency-warmup", type=int, default=None,
                   help="untimed runs first (default 50; smoke 3)")
    p.add_argument("--insertion-base-epochs", type=int, default=None,
                   help="epochs of the keras.applications base (default "
                        "--epochs; smoke 1)")
    p.add_argument("--insertion-epochs", type=int, default=None,
                   help="fine-tuning epochs with and without inserted CA "
                        "(default half of --epochs, at least 1; smoke 1)")
    p.add_argument("--insertion-lr-factor", type=float, default=1.0,
                   help="fine-tuning peak LR relative to the recipe's "
                        "(default 1.0)")
    p.add_argument("--no-insertion", action="store_true",
                   help="skip the insertion path")
    p.add_argument("--work-dir", default=None,
                   help="folder for the runs (default: a temporary one, "
                        "removed at the end)")
    p.add_argument("--output", default=os.path.join(HERE, "results"),
                   help="folder for attention_comparison.json/.md")
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = dict(
        seeds=[0] if smoke else [0, 1, 2],
        epochs=1 if smoke else None,
        limit_train=256 if smoke else None,
        limit_val=64 if smoke else None,
        calibration=8 if smoke else 200,
        latency_runs=20 if smoke else 500,
        latency_warmup=3 if smoke else 50,
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds: distinct seeds please")
    args.kinds = [k for k in KINDS if k in args.kinds]
    for name in ("calibration", "latency_runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def base_config(args):
    """The digits recipe with the benchmark's overrides (no attention set)."""
    from keras_coordatt.training import get_config
    from keras_coordatt.training import parse_overrides

    overrides = parse_overrides(args.set)
    for key in ("attention", "seed", "output_dir"):
        if key in overrides:
            raise SystemExit(f"--set {key}=...: the benchmark sets {key}")
    if args.dataset:
        overrides["dataset"] = args.dataset
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    overrides.setdefault("tensorboard", False)
    if args.smoke:
        overrides.setdefault("bn_recalibration_steps", 2)
    config = get_config(RECIPE, overrides)
    if config.transfer:
        raise SystemExit("The comparison trains from scratch: transfer=false")
    return config


def insertion_budget(args, config):
    base = args.insertion_base_epochs
    tune = args.insertion_epochs
    if base is None:
        base = 1 if args.smoke else config.epochs
    if tune is None:
        tune = 1 if args.smoke else max(1, config.epochs // 2)
    return {"base_epochs": base, "finetune_epochs": tune,
            "lr_factor": args.insertion_lr_factor,
            "after": INSERT_AFTER.pattern}


# --------------------------------------------------------------------------
# Data: one source for every run
# --------------------------------------------------------------------------


def limit_source(source, train=None, val=None, seed=0):
    """`source` with at most `train` / `val` examples, each a fixed random
    subset (shuffled once with `seed`, the same for every run)."""
    changes = {}
    if train and train < source.train_examples:
        make_train = source.make_train
        buffer = min(source.train_examples, 10_000)

        def limited_train(input_context=None, seed_=0):
            return make_train(input_context, seed_).shuffle(
                buffer, seed=seed, reshuffle_each_iteration=False
            ).take(train)

        changes.update(make_train=limited_train, train_examples=train)
    if val and val < source.val_examples:
        make_val = source.make_val
        buffer = min(source.val_examples, 10_000)
        changes.update(
            make_val=lambda: make_val().shuffle(
                buffer, seed=seed, reshuffle_each_iteration=False
            ).take(val),
            val_examples=val,
        )
    return dataclasses.replace(source, **changes) if changes else source


def load_data(args, config):
    from keras_coordatt.training.fit import load_config_source

    source = load_config_source(config.replace(seed=args.split_seed))
    return limit_source(source, args.limit_train, args.limit_val,
                        args.split_seed)


def eval_arrays(source, config, preprocess, training_images=False,
                limit=None):
    """Validation (or training) images through the evaluation pipeline, as
    `(images, labels)` numpy arrays."""
    from keras_coordatt.training import eval_dataset

    if training_images:
        make_train = source.make_train
        source = dataclasses.replace(
            source, make_val=lambda: make_train(None, 0))
    ds = eval_dataset(
        source, image_size=config.image_size, global_batch_size=64,
        preprocess=preprocess, crop_fraction=config.eval_crop_fraction,
    )
    images, labels, count = [], [], 0
    for x, y in ds:
        images.append(np.asarray(x, "float32"))
        labels.append(np.asarray(y))
        count += len(images[-1])
        if limit is not None and count >= limit:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def count_model(model):
    from keras_coordatt import counting

    counted = counting.count_macs(model)
    return {
        "params": counting.count_params(model),
        "macs": counted["total"],
        "attention_macs": counted["attention"],
        "attention_layers": counted["attention_layers"],
        "attention_elementwise": counted["attention_elementwise"],
    }


def measure_kind(kind, seed, config, source, data, work_dir):
    """One training run of `kind` with `seed`, its counts and its int8
    model: a dict, and the int8 flatbuffer."""
    import keras

    from keras_coordatt.quantization import convert_ptq
    from keras_coordatt.quantization import evaluate_tflite
    from keras_coordatt.training import train

    started = time.time()
    run_dir = os.path.join(work_dir, f"{kind}-seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    result = train(config, overrides=dict(
        attention=kind != "none" and kind, seed=seed, output_dir=run_dir,
    ), source=source, verbose=0)
    trained = time.time()
    blob = convert_ptq(result.model, data["representative"],
                       num_samples=len(data["representative"]),
                       path=os.path.join(run_dir, "ptq_int8.tflite"))
    int8 = evaluate_tflite(blob, data["val"], num_threads=1)
    row = {
        "kind": kind,
        "seed": seed,
        "model": result.model.name,
        "top1": result.metrics["accuracy"],
        "int8_top1": int8["accuracy"],
        "int8_file_bytes": len(blob),
        "train_wall_s": trained - started,
        "wall_s": time.time() - started,
        "steps_per_epoch": result.steps_per_epoch,
        "optimizer_iterations": result.optimizer_iterations,
        **count_model(result.model),
    }
    keras.backend.clear_session()
    return row, blob


def measure_latency(blobs, runs, warmup, image):
    """Batch-1, 1-thread LiteRT timings of several int8 models, interleaved
    (A B ..., ... B A) so that load from other processes hits all alike.

    Returns:
        `{name: {"median_ms", "p25_ms", "p75_ms", "cpu_median_ms", "n"}}`.
    """
    from measure import interleaved

    from keras_coordatt import litert

    invokes = {}
    for name, blob in blobs.items():
        runner = litert.interpreter(blob, num_threads=1, allocate=True)
        detail = runner.get_input_details()[0]
        x = image[None].astype("float32")
        if detail["dtype"] == np.int8:
            scale, zero = detail["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        runner.set_tensor(detail["index"], x)
        invokes[name] = runner.invoke
    wall, cpu = interleaved(invokes, runs, warmup)
    stats = {}
    for name in invokes:
        ms = np.asarray(wall[name]) * 1e3
        stats[name] = {
            "median_ms": float(np.median(ms)),
            "p25_ms": float(np.percentile(ms, 25)),
            "p75_ms": float(np.percentile(ms, 75)),
            "cpu_median_ms": float(np.median(np.asarray(cpu[name]) * 1e3)),
            "n": int(ms.size),
        }
    return stats


def _fit_phase(model, config, source, epochs, seed, lr_factor, preprocess):
    """`model.fit` as one `train()` phase of `config`: the same pipelines,
    optimizer, schedule and precise BatchNorm. Returns the top-1."""
    import keras

    from keras_coordatt.training import build_optimizer
    from keras_coordatt.training import eval_dataset
    from keras_coordatt.training import plan_phases
    from keras_coordatt.training import train_dataset
    from keras_coordatt.training.batchnorm import recalibrate_batchnorm

    batch = config.per_replica_batch_size
    steps = source.train_examples // batch
    (phase,) = plan_phases(config.replace(epochs=epochs), steps, batch)
    common = dict(image_size=config.image_size, global_batch_size=batch,
                  preprocess=preprocess)
    train_data = train_dataset(
        source, scale=config.random_crop_scale, ratio=config.random_crop_ratio,
        horizontal_flip=config.horizontal_flip,
        shuffle_buffer=config.shuffle_buffer, seed=seed, **common)
    val_data = eval_dataset(source, crop_fraction=config.eval_crop_fraction,
                            **common)
    optimizer = build_optimizer(
        model, optimizer=config.optimizer,
        learning_rate=phase.learning_rate * lr_factor,
        total_steps=phase.total_steps, warmup_steps=phase.warmup_steps,
        final_fraction=config.final_learning_rate_fraction,
        momentum=config.momentum, nesterov=config.nesterov,
        weight_decay=config.weight_decay)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(
                      name="accuracy")])
    # As `train()` does: the optimizer's variables made now, not in the
    # first step, spare tf.function a second trace of the train step.
    model.optimizer.build(model.trainable_variables)
    model.fit(train_data, epochs=epochs, steps_per_epoch=steps, verbose=0)
    if config.bn_recalibration_steps:
        recalibrate_batchnorm(model, train_data,
                              config.bn_recalibration_steps)
    # Eager calls: on these few batches cheaper than tracing `evaluate`.
    correct = count = 0
    for images, labels in val_data:
        predicted = np.argmax(np.asarray(model(images, training=False)), -1)
        correct += int(np.sum(predicted == np.asarray(labels)))
        count += len(predicted)
    return correct / count


def measure_insertion(seed, config, source, budget, probe):
    """keras.applications.MobileNetV2 trained as a base, then fine-tuned
    with inserted CA and without, for the same epochs: a dict."""
    import keras

    from keras_coordatt import add_attention
    from keras_coordatt.insertion import IdentityInitAttention

    preprocess = keras.applications.mobilenet_v2.preprocess_input
    started = time.time()
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNetV2(
        input_shape=(config.image_size, config.image_size, 3),
        alpha=config.alpha, weights=None, classes=source.num_classes)
    base_top1 = _fit_phase(base, config, source, budget["base_epochs"], seed,
                           1.0, preprocess)
    after = [layer.name for layer in base.layers
             if INSERT_AFTER.fullmatch(layer.name)]
    keras.utils.set_random_seed(seed + 1)
    with_ca = add_attention(base, after=after, attention="ca")
    without = keras.models.clone_model(base)
    without.set_weights(base.get_weights())
    x = preprocess(np.array(probe, "float32"))
    reference = np.asarray(base(x, training=False))
    start_diff = float(np.max(
        np.abs(np.asarray(with_ca(x, training=False)) - reference))
        / np.max(np.abs(reference)))
    rows = {}
    for name, model in (("without", without), ("with_ca", with_ca)):
        rows[name] = {
            "top1": _fit_phase(model, config, source,
                               budget["finetune_epochs"], seed + 1,
                               budget["lr_factor"], preprocess),
            **count_model(model),
        }
    scales = [float(keras.ops.convert_to_numpy(layer.scale))
              for layer in with_ca.layers
              if isinstance(layer, IdentityInitAttention)]
    rows["with_ca"]["blend_scales"] = scales
    result = {
        "seed": seed,
        "base_top1": base_top1,
        "blocks": len(after),
        "start_max_rel_diff": start_diff,
        "rows": rows,
        "wall_s": time.time() - started,
    }
    keras.backend.clear_session()
    return result


# --------------------------------------------------------------------------
# Summaries and reporting
# --------------------------------------------------------------------------


def spread(values):
    values = np.asarray(values, dtype="float64")
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": float(values.min()),
        "max": float(values.max()),
        "values": [float(v) for v in values],
        "n": int(values.size),
    }


def summarize(runs, latency):
    """Per kind: counts (the same for every seed), top-1 spreads, latency."""
    kinds = {}
    for kind in dict.fromkeys(r["kind"] for r in runs):
        mine = [r for r in runs if r["kind"] == kind]
        first = mine[0]
        kinds[kind] = {
            "model": first["model"],
            "params": first["params"],
            "macs": first["macs"],
            "attention_macs": first["attention_macs"],
            "attention_layers": first["attention_layers"],
            "attention_elementwise": first["attention_elementwise"],
            "top1": spread([r["top1"] for r in mine]),
            "int8_top1": spread([r["int8_top1"] for r in mine]),
            "int8_file_bytes": first["int8_file_bytes"],
            "int8_latency": latency[kind],
            "seeds": [r["seed"] for r in mine],
        }
    return kinds


def summarize_insertion(seeds):
    rows = {}
    for name in ("without", "with_ca"):
        first = seeds[0]["rows"][name]
        rows[name] = {
            "params": first["params"],
            "macs": first["macs"],
            "top1": spread([s["rows"][name]["top1"] for s in seeds]),
        }
    scales = [v for s in seeds for v in s["rows"]["with_ca"]["blend_scales"]]
    rows["with_ca"]["blend_scale_mean_abs"] = float(np.mean(np.abs(scales)))
    return {
        "base_top1": spread([s["base_top1"] for s in seeds]),
        "blocks": seeds[0]["blocks"],
        "start_max_rel_diff": max(s["start_max_rel_diff"] for s in seeds),
        "rows": rows,
        "per_seed": seeds,
    }


def _pct(stats):
    text = f"{100 * stats['mean']:.2f}"
    if stats["n"] > 1:
        text += (f" ± {100 * stats['std']:.2f} "
                 f"({100 * stats['min']:.2f}-{100 * stats['max']:.2f})")
    return text


def _label(kind):
    if kind == "none":
        return "none (MobileNetV2)"
    return f"{get_attention(kind).__name__} (`{kind}`)"


def report_markdown(result):
    """The results as a small markdown document."""
    c = result["config"]
    seeds = " ".join(str(s) for s in c["seeds"])
    lines = [
        "# Attention comparison: MobileNetV2 with none / SE / CBAM / CA",
        "",
        f"`{c['command']}`: {c['dataset']} ({c['train_examples']} training "
        f"/ {c['val_examples']} validation images, {c['image_size']}x"
        f"{c['image_size']}), MobileNetV2CA alpha {c['alpha']}, "
        f"{c['epochs']} epochs per run ({c['steps_per_epoch']} steps of "
        f"{c['batch_size']}), recipe `{c['recipe']}`, precise BatchNorm on "
        f"{c['bn_recalibration_steps']} batches, seeds {seeds}; "
        f"{c['machine']['cpu_count']} CPUs ({c['machine']['processor']}); "
        f"wall time {result['wall_time_s'] / 60:.1f} min"
        f"{' (smoke run: plumbing, not numbers)' if c['smoke'] else ''}.",
        "",
        "Top-1 on the validation images: mean ± std (min-max) over seeds, %. "
        "int8: post-training quantization (LiteRT, "
        f"{c['calibration_images']} representative training images); "
        "latency: batch 1, 1 thread, XNNPACK, median of "
        f"{c['latency_runs']} interleaved runs after {c['latency_warmup']} "
        "warm-up runs (wall / process CPU time), the first seed's model.",
        "",
        "| kind | params | MACs | top-1 % | int8 top-1 % | int8 latency ms "
        "|",
        "|---|---|---|---|---|---|",
    ]
    for kind, row in result["kinds"].items():
        lat = row["int8_latency"]
        lines.append(
            f"| {_label(kind)} | {row['params']['trainable']:,} | "
            f"{row['macs'] / 1e6:.2f}M | {_pct(row['top1'])} | "
            f"{_pct(row['int8_top1'])} | {lat['median_ms']:.3f} / "
            f"{lat['cpu_median_ms']:.3f} |")
    ins = result.get("insertion")
    if ins:
        b = ins["budget"]
        lines += [
            "",
            "Insertion: `keras.applications.MobileNetV2(weights=None, "
            f"alpha={c['alpha']})` trained {b['base_epochs']} epochs as the "
            f"base (top-1 {_pct(ins['base_top1'])} %), then fine-tuned "
            f"{b['finetune_epochs']} epochs (peak LR x {b['lr_factor']:g}) "
            f"with `add_attention(base, after=<{ins['blocks']} "
            "block_i_depthwise_relu>, attention=\"ca\")` (identity start; "
            "largest relative output change at the start "
            f"{ins['start_max_rel_diff']:.1e}) and without; mean |s| of "
            "the learned blends x + s (CA(x) - x): "
            f"{ins['rows']['with_ca']['blend_scale_mean_abs']:.3f}.",
            "",
            "| fine-tuned | params | MACs | top-1 % |",
            "|---|---|---|---|",
        ]
        for name, label in (("without", "base, no attention"),
                            ("with_ca", "base + inserted CA")):
            row = ins["rows"][name]
            lines.append(
                f"| {label} | {row['params']['trainable']:,} | "
                f"{row['macs'] / 1e6:.2f}M | {_pct(row['top1'])} |")
    return "\n".join(lines) + "\n"


def write_results(result, output):
    os.makedirs(output, exist_ok=True)
    json_path = os.path.join(output, f"{RESULTS}.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    md_path = os.path.join(output, f"{RESULTS}.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(report_markdown(result))
    return json_path, md_path


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def log(message):
    print(f"[attention_comparison {time.strftime('%H:%M:%S')}] {message}",
          flush=True)


def machine():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def run_kinds(args, config, source, data, work_dir):
    """Trains and measures every kind for every seed; `(runs, latency)`."""
    runs, blobs = [], {}
    for seed in args.seeds:
        for kind in args.kinds:
            row, blob = measure_kind(kind, seed, config, source, data,
                                     work_dir)
            runs.append(row)
            blobs.setdefault(kind, blob)
            log(f"{kind} seed {seed}: top-1 {row['top1']:.4f}, int8 "
                f"{row['int8_top1']:.4f} ({row['wall_s']:.0f} s)")
    latency = measure_latency(blobs, args.latency_runs, args.latency_warmup,
                              data["val"][0][0])
    log("latency: " + ", ".join(
        f"{k} {v['median_ms']:.3f} ms" for k, v in latency.items()))
    return runs, latency


def run_insertion(args, config, source):
    """The insertion rows over the seeds (None with --no-insertion)."""
    if args.no_insertion:
        return None
    budget = insertion_budget(args, config)
    probe, _ = eval_arrays(source, config, lambda x: x, limit=32)
    per_seed = []
    for seed in args.seeds:
        per_seed.append(measure_insertion(seed, config, source, budget,
                                          probe))
        rows = per_seed[-1]["rows"]
        log(f"insertion seed {seed}: base {per_seed[-1]['base_top1']:.4f}, "
            f"without {rows['without']['top1']:.4f}, with CA "
            f"{rows['with_ca']['top1']:.4f}")
    return dict(summarize_insertion(per_seed), budget=budget)


def config_record(args, config, source, data):
    """The `config` entry of the results: what ran, on what, how."""
    import keras

    command = "python benchmarks/attention_comparison.py " + " ".join(
        sys.argv[1:] if args.argv is None else args.argv)
    return {
        "command": command.strip(),
        "recipe": RECIPE,
        "dataset": config.dataset,
        "model": config.model,
        "alpha": config.alpha,
        "image_size": config.image_size,
        "epochs": config.epochs,
        "batch_size": config.per_replica_batch_size,
        "steps_per_epoch": source.train_examples
        // config.per_replica_batch_size,
        "train_examples": source.train_examples,
        "val_examples": source.val_examples,
        "num_classes": source.num_classes,
        "bn_recalibration_steps": config.bn_recalibration_steps,
        "seeds": list(args.seeds),
        "kinds": list(args.kinds),
        "split_seed": args.split_seed,
        "calibration_images": len(data["representative"]),
        "latency_runs": args.latency_runs,
        "latency_warmup": args.latency_warmup,
        "latency_threads": 1,
        "smoke": args.smoke,
        "train_config": config.to_dict(),
        "keras_backend": keras.backend.backend(),
        "machine": machine(),
    }


def run(args):
    """Measures everything; returns the result dict (not yet written)."""
    from keras_coordatt.training.models import preprocess_for

    started = time.time()
    config = base_config(args)
    source = load_data(args, config)
    preprocess = preprocess_for(config.model)
    data = {
        "val": eval_arrays(source, config, preprocess),
        "representative": eval_arrays(
            source, config, preprocess, training_images=True,
            limit=args.calibration)[0],
    }
    owned = args.work_dir is None
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="attention_cmp_")
    os.makedirs(work_dir, exist_ok=True)
    try:
        runs, latency = run_kinds(args, config, source, data, work_dir)
        insertion = run_insertion(args, config, source)
    finally:
        if owned:
            shutil.rmtree(work_dir, ignore_errors=True)
    return {
        "schema_version": SCHEMA_VERSION,
        "config": config_record(args, config, source, data),
        "kinds": summarize(runs, latency),
        "runs": runs,
        "insertion": insertion,
        "wall_time_s": time.time() - started,
    }


def main(argv=None):
    args = parse_args(argv)
    args.argv = argv
    result = run(args)
    paths = write_results(result, args.output)
    print(report_markdown(result))
    log(f"wrote {', '.join(paths)} in {result['wall_time_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()

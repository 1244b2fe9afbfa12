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
- the authors' network in PyTorch eager mode (`tests/torch_reference.py`,
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
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TORCH_REFERENCE = os.path.join(ROOT, "tests", "torch_reference.py")
SCHEMA_VERSION = 1
CA = "MobileNetV2CA"
BASE = "MobileNetV2"
NO_CA = "MobileNetV2CA(attention=False)"
TARGET_RATIO = 1.10
TARGET_TORCH = 0.15
TARGET_INT8_SIZE = 0.30
SE_REDUCTION = 16
LITERT_KINDS = ("float", "ptq_int8", "qat_int8")

if HERE not in sys.path:
    sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


def parse_args(argv=None):
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
    args = p.parse_args(argv)
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


def heavy(args):
    """Repeats for the slow rows (large batch, training)."""
    return args.repeats if args.quick else max(3, args.repeats // 4)


def slowest(args):
    """Repeats for the slowest rows (XLA on CPU at the large batch, JAX
    training): seconds per call on a CPU."""
    return args.repeats if args.quick else max(3, args.repeats // 8)


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
# Timing
# --------------------------------------------------------------------------


def summarize(seconds):
    """Median and spread (in ms) of a list of durations in seconds."""
    ms = np.asarray(seconds, dtype="float64") * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p25_ms": float(np.percentile(ms, 25)),
        "p75_ms": float(np.percentile(ms, 75)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "n": int(ms.size),
    }


def interleaved(fns, repeats, warmup):
    """Times callables interleaved: A B C, C B A, A B C, ...

    Args:
        fns: dict name -> zero-argument callable that returns when its work
            is done.
        repeats: timed rounds.
        warmup: untimed calls of each callable first.

    Returns:
        `(wall, cpu)`: two dicts name -> list of durations in seconds, wall
        clock (`time.perf_counter`) and the CPU time of this process, all
        threads (`time.process_time`). CPU time does not count the time
        spent waiting for a core, so it is the steadier measure of work on
        a loaded machine (it does count threads that spin while waiting).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return wall, cpu


def pair_ratio(times, a, b):
    """Ratio of medians a/b, and the quartiles of the per-round ratios."""
    ta, tb = np.asarray(times[a]), np.asarray(times[b])
    paired = ta / tb
    return {
        "ratio": float(np.median(ta) / np.median(tb)),
        "ratio_p25": float(np.percentile(paired, 25)),
        "ratio_p75": float(np.percentile(paired, 75)),
    }


def cpu_stats(cpu, a=CA, b=BASE):
    """Process CPU time per model and the CPU-time ratio a/b."""
    return {"cpu": {name: summarize(t) for name, t in cpu.items()},
            "cpu_ratio": pair_ratio(cpu, a, b)["ratio"]}


def gflops(macs, batch, median_ms):
    return 2.0 * macs * batch / (median_ms * 1e-3) / 1e9


def timed_models(times, counts, batch):
    """Per-model stats with MACs, params, GFLOP/s and images/s."""
    out = {}
    for name, seconds in times.items():
        stats = summarize(seconds)
        c = counts.get(name)
        if c:
            stats["macs_per_image"] = c["macs"]
            stats["params"] = c["params"]
            stats["gflops"] = gflops(c["macs"], batch, stats["median_ms"])
        stats["images_per_s"] = batch / (stats["median_ms"] * 1e-3)
        stats["ms_per_image"] = stats["median_ms"] / batch
        out[name] = stats
    return out


# --------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------


def machine_info():
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": platform.processor() or "unknown",
        "isa": {},
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg")
        else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        flags = set()
        for line in text.splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        for flag in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "amx_int8", "asimd", "asimddp"):
            info["isa"][flag] = flag in flags
    except OSError:
        pass
    versions = {}
    for module in ("keras", "tensorflow", "jax", "torch", "ai_edge_litert",
                   "numpy"):
        try:
            from importlib.metadata import version
            dist = {"ai_edge_litert": "ai-edge-litert",
                    "tensorflow": "tensorflow-cpu"}.get(module, module)
            try:
                versions[module] = version(dist)
            except Exception:
                versions[module] = version(module)
        except Exception:
            versions[module] = None
    info["versions"] = versions
    return info


# --------------------------------------------------------------------------
# Models and counts (Keras workers)
# --------------------------------------------------------------------------


def build_models(args, include_noca=False):
    import keras

    from keras_coordatt import MobileNetV2CA

    shape = (args.size, args.size, 3)
    models = {
        CA: MobileNetV2CA(input_shape=shape, alpha=args.alpha,
                          weights=None),
        BASE: keras.applications.MobileNetV2(input_shape=shape,
                                             alpha=args.alpha, weights=None),
    }
    if include_noca:
        models[NO_CA] = MobileNetV2CA(input_shape=shape, alpha=args.alpha,
                                      weights=None, attention=False)
    randomize_statistics(models)
    return models


def randomize_statistics(models, seed=0):
    """Non-trivial BatchNorm statistics (as trained weights have)."""
    import keras

    rng = np.random.default_rng(seed)
    for model in models.values():
        for layer in _all_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                n = layer.moving_mean.shape[0]
                layer.moving_mean.assign(
                    (0.1 * rng.standard_normal(n)).astype("float32"))
                layer.moving_variance.assign(
                    (0.5 + rng.random(n)).astype("float32"))


def _all_layers(model):
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer
            for sub in getattr(layer, "_layers", []) or []:
                yield sub


def model_counts(models):
    from macs import count_macs
    from macs import count_params

    counts = {}
    for name, model in models.items():
        macs = count_macs(model)
        params = count_params(model)
        counts[name] = {
            "macs": macs["total"],
            "macs_by_type": macs["by_type"],
            "attention_macs": macs["attention"],
            "attention_layers": macs["attention_layers"],
            "attention_elementwise": macs["attention_elementwise"],
            "params": params["total"],
            "trainable_params": params["trainable"],
        }
    if CA in counts and BASE in counts:
        counts["mac_ratio"] = counts[CA]["macs"] / counts[BASE]["macs"]
        counts["param_ratio"] = counts[CA]["params"] / counts[BASE]["params"]
    return counts


def reference_counts():
    """MACs and parameters at alpha 1.0, 224x224 (the paper's setting)."""
    import keras

    from keras_coordatt import MobileNetV2CA

    models = {
        CA: MobileNetV2CA(weights=None),
        BASE: keras.applications.MobileNetV2(weights=None),
    }
    counts = model_counts(models)
    counts["note"] = ("alpha 1.0, 224x224, include_top; the paper: 300M "
                      "MAdds for MobileNetV2, 310M (306.7M) with CA")
    return counts


def attention_shapes(model):
    """[(H, W, C), count] of the CoordinateAttention layers of a model."""
    from keras_coordatt.layers import CoordinateAttention

    shapes = {}
    for layer in _all_layers(model):
        if isinstance(layer, CoordinateAttention):
            for node in layer._inbound_nodes:
                shape = tuple(int(d) for d in node.input_tensors[0].shape[1:])
                shapes[shape] = shapes.get(shape, 0) + 1
    return sorted(shapes.items(), key=lambda kv: -kv[0][0] * kv[0][1])


def se_block(shape, reduction=SE_REDUCTION):
    """A plain squeeze-and-excitation block written with Keras layers."""
    import keras

    h, w, c = shape
    inputs = keras.Input(shape, batch_size=1)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs)
    s = keras.layers.Conv2D(max(8, c // reduction), 1,
                            activation="relu")(s)
    s = keras.layers.Conv2D(c, 1, activation="sigmoid")(s)
    outputs = keras.layers.Multiply()([inputs, s])
    return keras.Model(inputs, outputs, name="se_block")


def layer_models(shape):
    """The three single-layer models timed at one feature-map shape."""
    import keras

    from keras_coordatt import CoordinateAttention

    inputs = keras.Input(shape, batch_size=1)
    ca = keras.Model(inputs, CoordinateAttention()(inputs),
                     name="coordinate_attention")
    inputs = keras.Input(shape, batch_size=1)
    elementwise = keras.Model(
        inputs, keras.layers.Rescaling(0.5)(inputs), name="elementwise_pass"
    )
    models = {"coordinate_attention": ca, "se_block": se_block(shape),
              "elementwise_pass": elementwise}
    randomize_statistics(models, seed=1)
    return models


# --------------------------------------------------------------------------
# Keras workers (TensorFlow and JAX)
# --------------------------------------------------------------------------


def _inputs(args, batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(
        (batch, args.size, args.size, 3)).astype("float32")


def keras_predictors(models, backend, batch, args, xla=False):
    """name -> zero-argument callable running one inference."""
    fns = {}
    x = _inputs(args, batch)
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        for name, model in models.items():
            spec = tf.TensorSpec(x.shape, tf.float32)

            def make(model):
                @tf.function(input_signature=[spec], jit_compile=xla)
                def serve(images):
                    return model(images, training=False)

                return lambda: serve(x).numpy()

            fns[name] = make(model)
    else:
        import jax

        x = jax.numpy.asarray(x)
        for name, model in models.items():
            def make(model):
                trainable = [v.value for v in model.trainable_variables]
                non_trainable = [v.value
                                 for v in model.non_trainable_variables]

                @jax.jit
                def serve(tv, ntv, images):
                    out, _ = model.stateless_call(tv, ntv, images,
                                                  training=False)
                    return out

                return lambda: serve(trainable, non_trainable,
                                     x).block_until_ready()

            fns[name] = make(model)
    return fns


def keras_section(models, counts, backend, args):
    rows = []
    engines = ["tf.function"] if backend == "tensorflow" else ["jax.jit"]
    if backend == "tensorflow" and not args.no_xla:
        engines.append("tf.function+XLA")
    for engine in engines:
        for batch in (1, args.batch):
            xla = engine.endswith("XLA")
            repeats, warmup = args.repeats, args.warmup
            if batch != 1:
                repeats = slowest(args) if xla else heavy(args)
                warmup = min(warmup, 1 if xla else 2)
            fns = keras_predictors(models, backend, batch, args, xla=xla)
            times, cpu = interleaved(fns, repeats, warmup)
            rows.append({
                "backend": backend,
                "engine": engine,
                "batch": batch,
                "models": timed_models(times, counts, batch),
                **pair_ratio(times, CA, BASE),
                **cpu_stats(cpu),
            })
            log(f"keras {backend} {engine} batch {batch}: "
                f"ratio {rows[-1]['ratio']:.3f}")
    return rows


def train_section(models, counts, backend, args):
    import keras

    batch = args.batch
    x = _inputs(args, batch, seed=1)
    y = np.random.default_rng(2).integers(0, 1000, size=(batch,))
    fns = {}
    for name, model in models.items():
        clone = keras.models.clone_model(model)
        clone.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            jit_compile=(backend == "jax"),
        )

        def make(clone):
            return lambda: clone.train_on_batch(x, y)

        fns[name] = make(clone)
    # The first call traces (and with JAX compiles) the step: one warm-up
    # call is enough, and a CPU step at batch 32 takes seconds.
    repeats = slowest(args) if backend == "jax" else heavy(args)
    times, cpu = interleaved(fns, repeats, 1)
    # A training step costs about 3x the forward multiply-adds (forward,
    # gradients with respect to activations and to weights).
    train_counts = {name: dict(c, macs=3 * c["macs"])
                    for name, c in counts.items() if isinstance(c, dict)}
    row = {
        "backend": backend,
        "engine": "train_on_batch (SGD)" + (" jit" if backend == "jax"
                                            else ""),
        "batch": batch,
        "macs_note": "3x the forward MACs per image",
        "models": timed_models(times, train_counts, batch),
        **pair_ratio(times, CA, BASE),
        **cpu_stats(cpu),
    }
    log(f"train {backend}: ratio {row['ratio']:.3f}")
    return [row]


def layer_section(ca_model, backend, args, litert=False):
    """CA alone vs SE vs one element-wise pass, at the network's shapes."""
    from macs import count_macs

    rows = []
    shapes = attention_shapes(ca_model)
    if args.quick:  # the largest and the smallest map are enough to smoke
        shapes = [shapes[0], shapes[-1]]
    for shape, count in shapes:
        models = layer_models(shape)
        macs = {name: count_macs(m)["total"] for name, m in models.items()}
        row = {"backend": backend, "shape": list(shape), "count": count,
               "macs": macs,
               "feature_map_elements": int(np.prod(shape)),
               "timings": {}}
        fns = keras_layer_callables(models, backend)
        times, _ = interleaved(fns, 3 * args.repeats, args.warmup)
        row["timings"]["keras"] = {
            name: summarize(t) for name, t in times.items()
        }
        if litert:
            blobs = {name: _convert_float(m) for name, m in models.items()}
            fns = litert_callables(blobs, threads=1)
            times, cpu = interleaved(fns, 3 * args.repeats, args.warmup)
            row["timings"]["litert_1thread_cpu"] = {
                name: summarize(t) for name, t in cpu.items()
            }
        rows.append(row)
        log(f"layer {backend} {shape} x{count}")
    return rows


def keras_layer_callables(models, backend):
    rng = np.random.default_rng(3)
    fns = {}
    for name, model in models.items():
        shape = tuple(model.inputs[0].shape)
        x = rng.standard_normal(shape).astype("float32")
        if backend == "tensorflow":
            import tensorflow as tf

            xt = tf.constant(x)

            def make(model, xt):
                @tf.function
                def f(v):
                    return model(v, training=False)

                # Eager TF returns once the op has run: no copy back.
                return lambda: f(xt)

            fns[name] = make(model, xt)
        else:
            import jax

            xj = jax.numpy.asarray(x)

            def make(model, xj):
                tv = [v.value for v in model.trainable_variables]
                ntv = [v.value for v in model.non_trainable_variables]
                f = jax.jit(lambda a, b, v: model.stateless_call(
                    a, b, v, training=False)[0])
                return lambda: f(tv, ntv, xj).block_until_ready()

            fns[name] = make(model, xj)
    return fns


def layer_summary(layer_rows, counts, engine_key, engine_row):
    """The CA layers' share of network MACs vs their share of time."""
    if not layer_rows or engine_row is None:
        return None
    ca_ms = sum(r["timings"][engine_key]["coordinate_attention"]["median_ms"]
                * r["count"] for r in layer_rows
                if engine_key in r["timings"])
    se_ms = sum(r["timings"][engine_key]["se_block"]["median_ms"]
                * r["count"] for r in layer_rows
                if engine_key in r["timings"])
    pass_ms = sum(r["timings"][engine_key]["elementwise_pass"]["median_ms"]
                  * r["count"] for r in layer_rows
                  if engine_key in r["timings"])
    network_ms = engine_row["models"][CA]["median_ms"]
    base_ms = engine_row["models"][BASE]["median_ms"]
    return {
        "engine": engine_key,
        "network_engine": engine_row["engine"],
        "attention_macs_share": counts[CA]["attention_macs"]
        / counts[CA]["macs"],
        "mac_ratio": counts["mac_ratio"],
        "sum_of_layers_ms": ca_ms,
        "se_sum_of_layers_ms": se_ms,
        "elementwise_passes_equivalent": ca_ms / pass_ms if pass_ms else None,
        "network_ms": network_ms,
        "layers_share_of_network_time": ca_ms / network_ms,
        "network_difference_share": (network_ms - base_ms) / network_ms,
    }


# --------------------------------------------------------------------------
# LiteRT (TensorFlow worker)
# --------------------------------------------------------------------------


def _convert_float(model):
    from keras_coordatt.quantization import convert_float

    return convert_float(model)


def _interpreter(blob, threads):
    from keras_coordatt.quantization.evaluate import interpreter

    result = interpreter(blob, threads)
    result.allocate_tensors()
    return result


def litert_callables(blobs, threads, seed=4):
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
    interpreter = _interpreter(blob, 1)
    ops = interpreter._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    delegated_in = {int(i) for o in delegates for i in o["inputs"]}
    delegated_out = {int(i) for o in delegates for i in o["outputs"]}
    outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    op_counts, outside = {}, {}
    for op in ops:
        name = op["op_name"]
        if name == "DELEGATE":
            continue
        op_counts[name] = op_counts.get(name, 0) + 1
        produced = {int(i) for i in op["outputs"]}
        if produced & delegated_out:
            continue
        if produced & (delegated_in | outputs):
            outside[name] = outside.get(name, 0) + 1
    return {"op_counts": op_counts, "partitions": len(delegates),
            "outside_delegate": outside}


def litert_section(models, counts, args, workdir):
    from keras_coordatt.quantization import calibrate
    from keras_coordatt.quantization import convert_ptq
    from keras_coordatt.quantization import convert_qat
    from keras_coordatt.quantization import quantize_model

    data = np.random.default_rng(5).standard_normal(
        (args.calibration, args.size, args.size, 3)).astype("float32")
    kinds = args.litert_kinds
    if "torch" in args.sections and "float" not in kinds:
        kinds = ["float"] + list(kinds)
    blobs = {kind: {} for kind in kinds}
    files = {}
    for name, model in models.items():
        if "float" in blobs:
            blobs["float"][name] = _convert_float(model)
        if "ptq_int8" in blobs:
            blobs["ptq_int8"][name] = convert_ptq(
                model, data, num_samples=args.calibration)
        if "qat_int8" in blobs and name != NO_CA:
            twin = quantize_model(model)
            calibrate(twin, data, steps=max(1, min(4, args.calibration)))
            blobs["qat_int8"][name] = convert_qat(twin)
    for kind, by_model in blobs.items():
        for name, blob in by_model.items():
            tag = {CA: "mobilenetv2_ca", BASE: "mobilenetv2",
                   NO_CA: "mobilenetv2_ca_noattention"}[name]
            path = os.path.join(workdir, f"{tag}_{kind}.tflite")
            with open(path, "wb") as f:
                f.write(blob)
            files[f"{name}|{kind}"] = path
    rows = []
    for kind, by_model in blobs.items():
        reports = {name: delegate_report(b) for name, b in by_model.items()}
        for threads in args.threads:
            fns = litert_callables(by_model, threads)
            times, cpu = interleaved(fns, 2 * args.repeats, args.warmup)
            row = {
                "kind": kind,
                "threads": threads,
                "batch": 1,
                "models": timed_models(times, counts, 1),
                **pair_ratio(times, CA, BASE),
                **cpu_stats(cpu),
            }
            if NO_CA in times:
                row["ratio_vs_no_attention"] = pair_ratio(
                    times, CA, NO_CA)["ratio"]
                row["cpu_ratio_vs_no_attention"] = pair_ratio(
                    cpu, CA, NO_CA)["ratio"]
            for name, stats in row["models"].items():
                stats["file_bytes"] = len(by_model[name])
                stats["delegate"] = reports[name]
            rows.append(row)
            log(f"litert {kind} {threads} thread(s): "
                f"ratio {row['ratio']:.3f}")
    sizes = {name: {kind: len(blobs[kind][name]) for kind in blobs
                    if name in blobs[kind]} for name in models}
    return rows, sizes, files


# --------------------------------------------------------------------------
# PyTorch worker (no Keras, no TensorFlow in this process)
# --------------------------------------------------------------------------


def torch_worker(args, part):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(
        "torch_reference", TORCH_REFERENCE)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    net = reference.randomized(
        reference.MobileNetV2CA(width_mult=args.alpha))
    x = torch.from_numpy(_inputs(args, 1).transpose(0, 3, 1, 2).copy())
    with open(part["litert_float_path"], "rb") as f:
        blob = f.read()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)

        def run_torch():
            with torch.inference_mode():
                net(x)

        fns = {"pytorch_eager": run_torch}
        fns.update({"litert_float": litert_callables(
            {"litert_float": blob}, threads)["litert_float"]})
        times, cpu = interleaved(fns, args.repeats, args.warmup)
        rows.append({
            "threads": threads,
            "batch": 1,
            "models": timed_models(
                times, {"pytorch_eager": part["counts"],
                        "litert_float": part["counts"]}, 1),
            **pair_ratio(times, "litert_float", "pytorch_eager"),
            **cpu_stats(cpu, "litert_float", "pytorch_eager"),
        })
        log(f"torch {threads} thread(s): litert/torch "
            f"{rows[-1]['ratio']:.3f}")
    params = sum(p.numel() for p in net.parameters())
    return {"torch": rows, "torch_params": int(params),
            "torch_version": torch.__version__}


# --------------------------------------------------------------------------
# Worker entry points
# --------------------------------------------------------------------------


def log(message):
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


def keras_worker(args):
    import keras

    backend = keras.backend.backend()
    if backend != args.worker:
        raise RuntimeError(
            f"worker {args.worker} started with KERAS_BACKEND={backend}")
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    result = {"backend": backend, "errors": [], "devices": devices(backend)}
    models = build_models(args, include_noca=(backend == "tensorflow"
                                              and "litert" in args.sections
                                              and not args.quick))
    counts = model_counts(models)
    result["counts"] = counts
    if backend == "tensorflow":
        result["reference_224"] = reference_counts()
    log(f"{backend}: models built and counted")

    result["section_seconds"] = {}

    def section(name, fn):
        if name not in args.sections:
            return None
        start = time.time()
        try:
            return fn()
        except Exception as e:  # keep the other sections' numbers
            result["errors"].append({
                "section": name, "backend": backend,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            })
            log(f"{name} failed: {e}")
            return None
        finally:
            result["section_seconds"][name] = time.time() - start
            log(f"{name}: {result['section_seconds'][name]:.1f} s")

    pair = {CA: models[CA], BASE: models[BASE]}
    result["keras"] = section(
        "keras", lambda: keras_section(pair, counts, backend, args)) or []
    result["train"] = section(
        "train", lambda: train_section(pair, counts, backend, args)) or []
    result["layer"] = section(
        "layer", lambda: layer_section(
            models[CA], backend, args,
            litert=backend == "tensorflow" and not args.mixed_precision,
        )) or []
    if backend == "tensorflow" and ("litert" in args.sections
                                    or "torch" in args.sections):
        out = section("litert", lambda: litert_section(
            models, counts, args, args.workdir))
        if out:
            result["litert"], result["file_sizes"], files = out
            result["litert_float_path"] = files.get(f"{CA}|float")
        else:
            result["litert"] = []
    return result


def devices(backend):
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_logical_devices()]
        import jax

        return [str(d) for d in jax.devices()]
    except Exception:
        return []


def worker_main(args):
    if args.worker == "torch":
        with open(args.part) as f:
            part = json.load(f)
        result = {"errors": []}
        try:
            result.update(torch_worker(args, part))
        except Exception as e:
            result["errors"].append({
                "section": "torch", "backend": "torch",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            })
    else:
        result = keras_worker(args)
    result["loadavg_end"] = list(os.getloadavg()) if hasattr(
        os, "getloadavg") else None
    with open(args.part, "w") as f:
        json.dump(result, f, default=_json_default)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --------------------------------------------------------------------------
# Orchestrator
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


def orchestrate(args):
    started = time.time()
    os.makedirs(args.output, exist_ok=True)
    backends = ["tensorflow", "jax"] if args.backend == "all" \
        else [args.backend]
    result = {
        "schema_version": SCHEMA_VERSION,
        "command": " ".join(["python", "benchmarks/run.py"]
                            + sys.argv[1:]),
        "config": config_dict(args),
        "machine": machine_info(),
        "models": {CA: "keras_coordatt.MobileNetV2CA(weights=None)",
                   BASE: "keras.applications.MobileNetV2(weights=None)",
                   NO_CA: "keras_coordatt.MobileNetV2CA(weights=None, "
                          "attention=False) (LiteRT diagnostics only)"},
        "counts": {}, "reference_224": {},
        "keras": [], "train": [], "layer": [], "layer_summary": [],
        "litert": [], "file_sizes": {}, "torch": [], "errors": [],
        "backends": backends,
    }
    tf_part = None
    with tempfile.TemporaryDirectory(prefix="coordatt-bench-") as workdir:
        for backend in backends:
            part = run_worker(backend, args, workdir,
                              os.path.join(workdir, f"{backend}.json"),
                              backend)
            result["errors"].extend(part.get("errors", []))
            for key in ("keras", "train", "layer", "litert"):
                result[key].extend(part.get(key, []) or [])
            if part.get("counts"):
                result["counts"] = part["counts"]
            if part.get("reference_224"):
                result["reference_224"] = part["reference_224"]
            if part.get("file_sizes"):
                result["file_sizes"] = part["file_sizes"]
            result["machine"].setdefault("devices", {})[backend] = \
                part.get("devices", [])
            if backend == "tensorflow":
                tf_part = part
        if ("torch" in args.sections and not args.no_torch
                and tf_part and tf_part.get("litert_float_path")):
            if torch_available():
                part_path = os.path.join(workdir, "torch_in.json")
                with open(part_path, "w") as f:
                    json.dump({"litert_float_path":
                               tf_part["litert_float_path"],
                               "counts": tf_part["counts"][CA]}, f)
                part = run_worker("torch", args, workdir, part_path,
                                  "tensorflow")
                result["errors"].extend(part.get("errors", []))
                result["torch"] = part.get("torch", [])
                result["torch_params"] = part.get("torch_params")
            else:
                result["torch_skipped"] = "torch is not installed"
    for backend in backends:
        engine_key = "keras"
        layer_rows = [r for r in result["layer"] if r["backend"] == backend]
        network = next((r for r in result["keras"]
                        if r["backend"] == backend and r["batch"] == 1
                        and not r["engine"].endswith("XLA")), None)
        if result["counts"]:
            summary = layer_summary(layer_rows, result["counts"],
                                    engine_key, network)
            if summary:
                summary["backend"] = backend
                result["layer_summary"].append(summary)
        if backend == "tensorflow":
            network = next((r for r in result["litert"]
                            if r["kind"] == "float" and r["threads"] == 1),
                           None)
            if network and result["counts"]:
                cpu_row = dict(network)
                cpu_row["models"] = network.get("cpu", network["models"])
                cpu_row["engine"] = "LiteRT float, 1 thread, CPU time"
                summary = layer_summary(layer_rows, result["counts"],
                                        "litert_1thread_cpu", cpu_row)
                if summary:
                    summary["backend"] = "litert"
                    result["layer_summary"].append(summary)
    result["targets"] = targets(result)
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(
        os, "getloadavg") else None
    result["wall_seconds"] = time.time() - started
    write_outputs(result, args)
    return result


# --------------------------------------------------------------------------
# Targets, markdown, plot
# --------------------------------------------------------------------------


def targets(result):
    """The issue's targets, each with the wall-clock and CPU-time value."""
    rows = []

    def add(name, value, limit, cpu_value=None):
        if value is None:
            return
        rows.append({
            "target": name, "value": value, "limit": limit,
            "met": bool(value <= limit),
            "value_cpu": cpu_value,
            "met_cpu": None if cpu_value is None
            else bool(cpu_value <= limit),
        })

    for row in result["keras"]:
        if row["backend"] == "tensorflow" and row["engine"] == "tf.function" \
                and row["batch"] != 1:
            add(f"Keras TF batch {row['batch']}: {CA}/{BASE} latency",
                row["ratio"], TARGET_RATIO, row.get("cpu_ratio"))
    for row in result["litert"]:
        add(f"LiteRT {row['kind']} batch 1, {row['threads']} thread(s): "
            f"{CA}/{BASE} latency", row["ratio"], TARGET_RATIO,
            row.get("cpu_ratio"))
    for name, sizes in result.get("file_sizes", {}).items():
        if name == CA and "float" in sizes:
            for kind in ("ptq_int8", "qat_int8"):
                if kind in sizes:
                    add(f"{name} {kind} file / float file",
                        sizes[kind] / sizes["float"], TARGET_INT8_SIZE)
    for row in result["litert"]:
        if row["kind"].endswith("int8"):
            floats = [r for r in result["litert"] if r["kind"] == "float"
                      and r["threads"] == row["threads"]]
            if floats:
                f = floats[0]
                add(f"LiteRT {row['kind']} / float latency, {CA}, "
                    f"{row['threads']} thread(s)",
                    row["models"][CA]["median_ms"]
                    / f["models"][CA]["median_ms"], 1.0,
                    row["cpu"][CA]["median_ms"] / f["cpu"][CA]["median_ms"])
    for row in result["torch"]:
        add(f"LiteRT float {CA} / PyTorch eager, {row['threads']} "
            "thread(s)", row["ratio"], TARGET_TORCH, row.get("cpu_ratio"))
    return rows


def _fmt_ms(stats):
    return (f"{stats['median_ms']:.2f} "
            f"[{stats['p25_ms']:.2f}-{stats['p75_ms']:.2f}]")


def _ratio(row):
    return (f"**{row['ratio']:.3f}** "
            f"[{row['ratio_p25']:.2f}-{row['ratio_p75']:.2f}]")


def _cpu(row):
    value = row.get("cpu_ratio")
    return "" if value is None else f"{value:.3f}"


def markdown(result):
    cfg = result["config"]
    m = result["machine"]
    lines = []
    isa = ", ".join(k for k, v in m.get("isa", {}).items() if v) or "unknown"
    lines += [
        "# Benchmark results",
        "",
        f"`{result['command']}` — alpha {cfg['alpha']}, {cfg['size']}x"
        f"{cfg['size']}, random weights; {cfg['repeats']} timed runs "
        f"({cfg['heavy_repeats']} for large batches and training, "
        f"{cfg.get('slowest_repeats', cfg['heavy_repeats'])} for XLA at the "
        f"large batch and JAX training) after up to {cfg['warmup']} warm-up "
        "runs, models interleaved; "
        f"{result.get('wall_seconds', 0):.0f} s in all.",
        "",
        f"Machine: {m.get('cpu_model')} ({m.get('cpu_count')} cores; "
        f"{isa}); load average {_load(m.get('loadavg_start'))} at the "
        f"start, {_load(m.get('loadavg_end'))} at the end (1/5/15 min). "
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()
                    if v) + ".",
        "",
        "Times in ms: median [25th-75th percentile] of the wall clock. "
        f"Ratio: {CA} / {BASE} medians [quartiles of the per-round ratios]; "
        "CPU ratio: the same with the process CPU time (all threads), "
        "which leaves out time spent waiting for a core. Absolute times "
        "are this machine's; the ratios are what carry over.",
        "",
    ]
    counts = result.get("counts") or {}
    if counts:
        lines += ["## Multiply-adds and parameters", "",
                  "| model | MACs / image | params (total) | trainable |",
                  "|---|---|---|---|"]
        for name in (CA, BASE, NO_CA):
            if name in counts:
                c = counts[name]
                lines.append(f"| {name} | {c['macs']:,} | {c['params']:,} | "
                             f"{c['trainable_params']:,} |")
        lines += ["", f"MAC ratio CA/base: {counts['mac_ratio']:.4f}; CA's "
                  f"own convolutions: {counts[CA]['attention_macs']:,} MACs "
                  f"in {counts[CA]['attention_layers']} layers, plus "
                  f"{counts[CA]['attention_elementwise']:,} element-wise "
                  "operations (pools and gate products) per image."]
        ref = result.get("reference_224") or {}
        if ref.get(CA):
            lines += ["", f"At alpha 1.0, 224x224: {CA} "
                      f"{ref[CA]['macs']:,} MACs, {BASE} "
                      f"{ref[BASE]['macs']:,} (ratio "
                      f"{ref['mac_ratio']:.4f}; paper: 300M and 310M)."]
        lines.append("")
    if result["keras"]:
        lines += ["## Keras inference", "",
                  f"| backend | engine | batch | {CA} ms | {BASE} ms | ratio |"
                  " CPU ratio | CA GFLOP/s | CA images/s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in result["keras"]:
            a, b = r["models"][CA], r["models"][BASE]
            lines.append(
                f"| {r['backend']} | {r['engine']} | {r['batch']} | "
                f"{_fmt_ms(a)} | {_fmt_ms(b)} | {_ratio(r)} | {_cpu(r)} | "
                f"{a.get('gflops', 0):.1f} | {a['images_per_s']:.1f} |")
        lines.append("")
    if result["train"]:
        lines += ["## Training step (forward + backward + SGD)", "",
                  f"| backend | batch | {CA} ms | {BASE} ms | ratio | "
                  "CPU ratio | CA GFLOP/s (3x forward MACs) |",
                  "|---|---|---|---|---|---|---|"]
        for r in result["train"]:
            a, b = r["models"][CA], r["models"][BASE]
            lines.append(
                f"| {r['backend']} | {r['batch']} | {_fmt_ms(a)} | "
                f"{_fmt_ms(b)} | {_ratio(r)} | {_cpu(r)} | "
                f"{a.get('gflops', 0):.1f} |")
        lines.append("")
    if result["layer"]:
        lines += ["## The layer alone (batch 1)", "",
                  "Per feature-map shape of the network (x: how many CA "
                  "layers have it): coordinate attention, a squeeze-and-"
                  f"excitation block (Keras layers, reduction {SE_REDUCTION})"
                  " and one element-wise pass (`x * 0.5`) over the same map. "
                  "Keras: wall clock; LiteRT: 1 thread, CPU time.", "",
                  "| backend | engine | shape (H, W, C) | x | CA MACs | "
                  "CA ms | SE ms | 1 pass ms | CA / pass |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in result["layer"]:
            for key, t in r["timings"].items():
                ca, se = t["coordinate_attention"], t["se_block"]
                one = t["elementwise_pass"]
                engine = "Keras" if key == "keras" else "LiteRT"
                lines.append(
                    f"| {r['backend']} | {engine} | {tuple(r['shape'])} | "
                    f"{r['count']} | {r['macs']['coordinate_attention']:,} | "
                    f"{ca['median_ms']:.3f} | {se['median_ms']:.3f} | "
                    f"{one['median_ms']:.3f} | "
                    f"{ca['median_ms'] / one['median_ms']:.1f} |")
        lines.append("")
        for s in result["layer_summary"]:
            lines.append(
                f"- {s['backend']} ({s['network_engine']}): CA holds "
                f"{100 * s['attention_macs_share']:.1f} % of the MACs; its "
                f"layers alone add up to {s['sum_of_layers_ms']:.2f} ms = "
                f"{100 * s['layers_share_of_network_time']:.1f} % of the "
                f"network's {s['network_ms']:.2f} ms (SE blocks at the same "
                f"places: {s['se_sum_of_layers_ms']:.2f} ms; one CA layer "
                f"costs {s['elementwise_passes_equivalent']:.1f} element-wise"
                " passes over its feature map); network difference "
                f"CA - base: {100 * s['network_difference_share']:.1f} %.")
        lines.append("")
    if result["litert"]:
        lines += ["## LiteRT (XNNPACK), batch 1", "",
                  f"| kind | threads | {CA} ms | {BASE} ms | ratio | "
                  f"CPU ratio | CA / {NO_CA} (CPU) | CA MB | base MB | "
                  "CA partitions | CA ops outside XNNPACK |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["litert"]:
            a, b = r["models"][CA], r["models"][BASE]
            no = r.get("cpu_ratio_vs_no_attention")
            outside = ", ".join(f"{k} x{v}" for k, v in
                                a["delegate"]["outside_delegate"].items())
            lines.append(
                f"| {r['kind']} | {r['threads']} | {_fmt_ms(a)} | "
                f"{_fmt_ms(b)} | {_ratio(r)} | {_cpu(r)} | "
                f"{'' if no is None else f'{no:.3f}'} | "
                f"{a['file_bytes'] / 1e6:.2f} | {b['file_bytes'] / 1e6:.2f} | "
                f"{a['delegate']['partitions']} | {outside or '-'} |")
        lines.append("")
    if result["torch"]:
        lines += ["## PyTorch eager (the authors' network) vs LiteRT float",
                  "", f"{CA} at batch 1 in both; the PyTorch network is "
                  "`tests/torch_reference.py` (random weights, eval mode, "
                  "`torch.inference_mode`).", "",
                  "| threads | PyTorch eager ms | LiteRT float ms | "
                  "LiteRT / PyTorch | CPU ratio |", "|---|---|---|---|---|"]
        for r in result["torch"]:
            lines.append(
                f"| {r['threads']} | {_fmt_ms(r['models']['pytorch_eager'])}"
                f" | {_fmt_ms(r['models']['litert_float'])} | {_ratio(r)} | "
                f"{_cpu(r)} |")
        lines.append("")
    if result.get("targets"):
        lines += ["## Targets (issue 8)", "",
                  "| target | wall | CPU time | limit | met (wall / CPU) |",
                  "|---|---|---|---|---|"]
        for t in result["targets"]:
            cpu = "" if t["value_cpu"] is None else f"{t['value_cpu']:.3f}"
            met = "yes" if t["met"] else "no"
            if t["met_cpu"] is not None:
                met += " / " + ("yes" if t["met_cpu"] else "no")
            lines.append(f"| {t['target']} | {t['value']:.3f} | {cpu} | "
                         f"{t['limit']} | {met} |")
        lines.append("")
    if result["errors"]:
        lines += ["## Errors", ""]
        for e in result["errors"]:
            lines.append(f"- {e.get('backend')} {e['section']}: {e['error']}")
        lines.append("")
    return "\n".join(lines)


def _load(values):
    if not values:
        return "?"
    return "/".join(f"{v:.1f}" for v in values)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = {"tensorflow": "TF", "jax": "JAX"}
    labels, ratios, lows, highs, cpus = [], [], [], [], []

    def add(label, row):
        labels.append(label)
        ratios.append(row["ratio"])
        lows.append(row["ratio_p25"])
        highs.append(row["ratio_p75"])
        cpus.append(row.get("cpu_ratio", np.nan))

    for r in result["keras"]:
        add(f"{short[r['backend']]} {r['engine']} b{r['batch']}", r)
    for r in result["train"]:
        add(f"{short[r['backend']]} train step b{r['batch']}", r)
    for r in result["litert"]:
        add(f"LiteRT {r['kind']} {r['threads']} thr", r)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.35 * max(len(labels), 6)
                                            + 1.5))
    ax = axes[0]
    y = np.arange(len(labels))
    err = np.array([np.subtract(ratios, lows), np.subtract(highs, ratios)])
    ax.barh(y, ratios, xerr=np.clip(err, 0, None), color="#4c72b0",
            label="wall clock")
    ax.plot(cpus, y, "o", color="orange", ms=5, label="CPU time")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(TARGET_RATIO, color="red", ls="--", lw=1,
               label=f"target {TARGET_RATIO}")
    mac_ratio = (result.get("counts") or {}).get("mac_ratio")
    if mac_ratio:
        ax.axvline(mac_ratio, color="green", ls=":", lw=1,
                   label=f"MAC ratio {mac_ratio:.3f}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"latency {CA} / {BASE} (median; bars: quartiles of "
                  "the per-round ratios)", fontsize=8)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0),
              ncol=4, frameon=False)
    ax = axes[1]
    names, values = [], []
    for r in result["litert"]:
        if r["threads"] == result["config"]["threads"][0]:
            for model in (CA, BASE):
                names.append(f"{r['kind']} {model}")
                values.append(r["models"][model]["median_ms"])
    for r in result["torch"]:
        if r["threads"] == result["config"]["threads"][0]:
            names.append(f"PyTorch eager {CA}")
            values.append(r["models"]["pytorch_eager"]["median_ms"])
    if names:
        yy = np.arange(len(names))
        ax.barh(yy, values, color="#dd8452")
        ax.set_yticks(yy, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"ms, batch 1, {result['config']['threads'][0]} "
                      "thread(s) (this machine)")
    else:
        ax.axis("off")
    fig.suptitle(f"{CA} vs {BASE}: alpha {result['config']['alpha']}, "
                 f"{result['config']['size']}px, "
                 f"{result['machine'].get('cpu_model', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result, args):
    json_path = os.path.join(args.output, "results.json")
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, default=_json_default)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(markdown(result))
    if not args.no_plot:
        try:
            plot(result, os.path.join(args.output, "results.png"))
        except Exception as e:
            result["errors"].append({"section": "plot", "backend": None,
                                     "error": f"{type(e).__name__}: {e}"})
            with open(json_path, "w") as f:
                json.dump(result, f, indent=1, default=_json_default)
    log(f"wrote {json_path} ({result['wall_seconds']:.0f} s)")


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return 0
    result = orchestrate(args)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

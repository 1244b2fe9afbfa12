"""Where coordinate attention's time goes in LiteRT, and what does not help.

Converts single-layer models (the `CoordinateAttention` layer, and rewrites
of its inference path that compute the same numbers) at the feature-map
shapes of MobileNetV2CA 1.0 at 224, and times them with the LiteRT
interpreter (XNNPACK, 1 thread by default, CPU time of this process,
interleaved).

Variants (all equal to the layer's output within 1e-5, checked):
- `layer`: the layer as shipped (MEAN over W and over H, the shared 1x1
  convolution on each strip, hard-swish as `y * relu6(y + 3)` with the 1/6
  folded into the gate kernels, two gates, `x * a_h * a_w`);
- `hard_swish_op`: the same with a HARD_SWISH op (the layer until
  2026-11-25; XNNPACK leaves int8 HARD_SWISH to the CPU kernels);
- `avg_pool`: AVERAGE_POOL_2D with a (1, W) / (H, 1) window for the pools;
- `sum_pool`: SUM then a scale for the pools;
- `outer_gate`: `x * (a_h * a_w)`;
- `gate_w_first`: `x * a_w * a_h`;
- `concat`: the strips concatenated, one shared convolution, split back
  (the authors' formulation).

Diagnostics (not equivalent to the layer; they locate the cost):
- `relu6_encoding`: ReLU6 instead of hard-swish in the encoding (int8:
  keeps the graph in a single XNNPACK partition);
- `one_gate`: only `x * a_h` (one pool, one product);
- `pools_only`: both pools and gates but `x + a_h[:1] * a_w[:, :1]`
  instead of the products (one pass instead of two);
- `pass`: one element-wise product `x * 0.5` (the price of one read + one
  write of the feature map); `mean`: one MEAN over W.

    python benchmarks/ca_variants.py [--int8] [--repeats 300] [--threads 1]
        [--network] [--output benchmarks/results/ca_variants.md]

`--network` also puts each variant into the whole MobileNetV2CA (alpha 1.0,
224, the CA layers swapped for the variant, same weights) and times it
against the same network without CA and against
`keras.applications.MobileNetV2`.

Also reports, per variant, the op counts, the XNNPACK partitions and the ops
left to the builtin kernels, and (`--no-delegate`) the same timings without
XNNPACK.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from keras_coordatt import CoordinateAttention  # noqa: E402
from measure_litert import delegate_report  # noqa: E402
from networks import randomize_statistics  # noqa: E402

# (H, W, C) of the 16 CA layers of MobileNetV2CA 1.0 at 224, and how many.
SHAPES = (((56, 56, 96), 1), ((56, 56, 144), 1), ((28, 28, 144), 1),
          ((28, 28, 192), 2), ((14, 14, 192), 1), ((14, 14, 384), 4),
          ((14, 14, 576), 2), ((7, 7, 576), 1), ((7, 7, 960), 3))
EQUIVALENT = ("layer", "hard_swish_op", "avg_pool", "sum_pool", "outer_gate",
              "gate_w_first", "concat")
DIAGNOSTIC = ("relu6_encoding", "one_gate", "pools_only", "pass", "mean")


class Variant(CoordinateAttention):
    """CoordinateAttention with a rewritten inference path (static shapes)."""

    def __init__(self, variant="layer", **kwargs):
        super().__init__(**kwargs)
        self.variant = variant

    def _encode_one(self, pooled):
        y = self.bn(self.conv(pooled), training=False)
        if self.variant == "relu6_encoding":
            return ops.relu6(y)
        if self.variant == "hard_swish_op":
            return ops.hard_swish(y)
        return y * ops.relu6(y + 3.0)  # 6 x hard-swish, as the layer

    def _strip_gate(self, conv, y):
        if self.variant in ("relu6_encoding", "hard_swish_op"):
            return ops.sigmoid(conv(y))
        return self._gate(conv, y)  # the layer's: 1/6 folded into the kernel

    def call(self, x, training=None):
        v = self.variant
        if v == "layer":
            return super().call(x, training=False)
        h, w, c = x.shape[1], x.shape[2], x.shape[3]
        if v == "avg_pool":
            p_h = ops.average_pool(x, (1, w), (1, w), padding="valid")
            p_w = ops.average_pool(x, (h, 1), (h, 1), padding="valid")
        elif v == "sum_pool":
            p_h = ops.sum(x, axis=2, keepdims=True) * (1.0 / w)
            p_w = ops.sum(x, axis=1, keepdims=True) * (1.0 / h)
        else:
            p_h = ops.mean(x, axis=2, keepdims=True)
            p_w = ops.mean(x, axis=1, keepdims=True)
        if v == "concat":
            strip = ops.concatenate(
                [p_h, ops.reshape(p_w, (-1, w, 1, c))], axis=1)
            y = self._encode_one(strip)
            y_h = y[:, :h]
            y_w = ops.reshape(y[:, h:], (-1, 1, w, self.hidden_channels))
        else:
            y_h = self._encode_one(p_h)
            y_w = self._encode_one(p_w)
        a_h = self._strip_gate(self.conv_h, y_h)
        a_w = self._strip_gate(self.conv_w, y_w)
        if v == "outer_gate":
            return x * (a_h * a_w)
        if v == "gate_w_first":
            return x * a_w * a_h
        if v == "one_gate":
            return x * a_h
        if v == "pools_only":
            return x + a_h[:, :1] * a_w[:, :, :1]
        return x * a_h * a_w


def build(shape, variant):
    inputs = keras.Input(shape, batch_size=1)
    if variant == "pass":
        return keras.Model(inputs, inputs * 0.5)
    if variant == "mean":
        return keras.Model(inputs, ops.mean(inputs, axis=2, keepdims=True))
    return keras.Model(inputs, Variant(variant)(inputs))


def randomize(layer, rng):
    for v in layer.weights:
        value = 0.3 * rng.standard_normal(v.shape)
        if "variance" in v.path:
            value = 0.5 + np.abs(value)
        v.assign(value.astype("float32"))


def convert(model, int8, data):
    from keras_coordatt.quantization import convert_float
    from keras_coordatt.quantization import convert_ptq

    if int8:
        return convert_ptq(model, data, num_samples=len(data), int8_io=True)
    return convert_float(model)


THREADS = 1


def time_blobs(blobs, repeats, delegate=True):
    from keras_coordatt import litert

    rng = np.random.default_rng(1)
    fns = {}
    for name, blob in blobs.items():
        interpreter = litert.interpreter(blob, THREADS, allocate=True,
                                         delegate=delegate)
        d = interpreter.get_input_details()[0]
        if d["dtype"] == np.int8:
            x = rng.integers(-128, 128, d["shape"]).astype(np.int8)
        else:
            x = rng.standard_normal(d["shape"]).astype(np.float32)
        interpreter.set_tensor(d["index"], x)
        interpreter.invoke()
        fns[name] = interpreter.invoke
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.process_time()
            fns[name]()
            times[name].append(time.process_time() - start)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def network_variants(variants, int8, repeats):
    """Each variant inside MobileNetV2CA 1.0 at 224, against the bases."""
    from keras_coordatt import MobileNetV2CA

    def swap(layer):
        if isinstance(layer, CoordinateAttention):
            return Variant(variant, **layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    source = MobileNetV2CA(weights=None)
    bases = {
        "no attention": MobileNetV2CA(weights=None, attention=False),
        "keras MobileNetV2": keras.applications.MobileNetV2(weights=None),
    }
    randomize_statistics(dict(bases, source=source))
    data = np.random.default_rng(2).standard_normal(
        (8, 224, 224, 3)).astype("float32")
    blobs = {name: convert(m, int8, data) for name, m in bases.items()}
    for variant in variants:
        if variant in ("pass", "mean"):
            continue
        model = keras.models.clone_model(source, clone_function=swap)
        model.set_weights(source.get_weights())
        blobs[variant] = convert(model, int8, data)
    medians = time_blobs(blobs, repeats)
    lines = ["", f"Inside MobileNetV2CA 1.0 at 224 "
             f"({'int8' if int8 else 'float'}, {THREADS} thread(s), CPU time, "
             "median "
             "ms; ratio to the same network without CA and to "
             "keras.applications.MobileNetV2):", "",
             "| network | ms | / no attention | / keras MobileNetV2 |",
             "|---|---|---|---|"]
    for name, ms in medians.items():
        lines.append(f"| {name} | {ms:.3f} | "
                     f"{ms / medians['no attention']:.3f} | "
                     f"{ms / medians['keras MobileNetV2']:.3f} |")
        print(lines[-1], flush=True)
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--int8", action="store_true",
                   help="post-training int8 (int8 input and output)")
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--no-delegate", action="store_true",
                   help="also time without XNNPACK (builtin kernels)")
    p.add_argument("--variants", default=",".join(EQUIVALENT + DIAGNOSTIC))
    p.add_argument("--shapes", default=None,
                   help="e.g. 56x56x144,7x7x960 (default: the network's)")
    p.add_argument("--network", action="store_true",
                   help="also time the variants inside the whole network")
    p.add_argument("--output", default=None, help="markdown file to write")
    p.add_argument("--threads", type=int, default=1,
                   help="interpreter threads (CPU time counts all)")
    return p.parse_args(argv)


def parse_shapes(text):
    """`((H, W, C), 1), ...` from "HxWxC,...", or the network's SHAPES."""
    if not text:
        return SHAPES
    return tuple((tuple(int(v) for v in s.split("x")), 1)
                 for s in text.split(","))


def variant_model(shape, variant, data, rng, reference):
    """The variant at one shape, with the first variant's weights, checked.

    `reference`: None for the first weighted variant (its weights are drawn
    from `rng` and it becomes the reference), else `(weights, outputs)`.
    Returns `(model, reference)`.
    """
    model = build(shape, variant)
    if variant in ("pass", "mean"):
        return model, reference
    layer = model.layers[-1]
    if reference is None:
        randomize(layer, rng)
        return model, (layer.get_weights(), model.predict(data, verbose=0))
    layer.set_weights(reference[0])
    if variant in EQUIVALENT:
        diff = np.abs(model.predict(data, verbose=0) - reference[1]).max()
        if diff > 1e-5:
            raise AssertionError(f"{variant} differs by {diff} at {shape}")
    return model, reference


def convert_variants(shape, variants, int8, rng):
    """variant -> the LiteRT flatbuffer of the variant at one shape."""
    data = rng.standard_normal((4,) + shape).astype("float32")
    reference, blobs = None, {}
    for variant in variants:
        model, reference = variant_model(shape, variant, data, rng,
                                         reference)
        blobs[variant] = convert(model, int8, data)
    return blobs


def time_shapes(args, variants, shapes):
    """Times every variant at every shape: the table's rows and totals.

    Returns `(lines, totals, totals without XNNPACK, delegate reports at
    the first shape)`.
    """
    rng = np.random.default_rng(0)
    totals = {v: 0.0 for v in variants}
    totals_nd = {v: 0.0 for v in variants}
    lines, reports = [], {}
    for shape, count in shapes:
        blobs = convert_variants(shape, variants, args.int8, rng)
        if shape == shapes[0][0]:
            reports = {v: delegate_report(blobs[v]) for v in variants}
        medians = time_blobs(blobs, args.repeats)
        for v in variants:
            totals[v] += count * medians[v]
        if args.no_delegate:
            nd = time_blobs(blobs, max(10, args.repeats // 10),
                            delegate=False)
            for v in variants:
                totals_nd[v] += count * nd[v]
        lines.append(f"| {shape} | {count} | "
                     + " | ".join(f"{medians[v]:.4f}" for v in variants)
                     + " |")
        print(lines[-1], flush=True)
    return lines, totals, totals_nd, reports


def ops_lines(variants, reports, shape):
    """Per variant: its op counts, partitions and ops outside XNNPACK."""
    lines = ["", f"Ops of each variant at {shape} (XNNPACK "
             "partitions; ops left to the builtin kernels):", ""]
    for v in variants:
        r = reports[v]
        ops_text = ", ".join(f"{k} {n}" for k, n in
                             sorted(r["op_counts"].items()))
        outside = ", ".join(f"{k} {n}" for k, n in
                            r["outside_delegate"].items()) or "none"
        lines.append(f"- `{v}`: {ops_text}; {r['partitions']} partition(s);"
                     f" outside XNNPACK: {outside}")
    return lines


def write(text, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def main(argv=None):
    args = parse_args(argv)
    global THREADS
    THREADS = args.threads
    variants = args.variants.split(",")
    shapes = parse_shapes(args.shapes)
    lines = [f"# CA inference-path variants in LiteRT "
             f"({'int8' if args.int8 else 'float'}, {THREADS} thread(s), "
             "CPU time, "
             "median ms)", "",
             "| shape | x | " + " | ".join(variants) + " |",
             "|---|---|" + "---|" * len(variants)]
    rows, totals, totals_nd, reports = time_shapes(args, variants, shapes)
    lines += rows
    lines.append("| **network (sum x count)** | 16 | "
                 + " | ".join(f"**{totals[v]:.3f}**" for v in variants)
                 + " |")
    if args.no_delegate:
        lines.append("| without XNNPACK (sum) | 16 | "
                     + " | ".join(f"{totals_nd[v]:.3f}" for v in variants)
                     + " |")
    lines += ops_lines(variants, reports, shapes[0][0])
    if args.network:
        lines += network_variants(variants, args.int8,
                                  max(20, args.repeats // 5))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        write(text, args.output)


if __name__ == "__main__":
    main()

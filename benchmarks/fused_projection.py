"""Does folding one CA gate into the next 1x1 convolution pay in LiteRT?

In an inverted residual block CA is followed by the 1x1 projection
`y = conv(x * a_h * a_w, K)`. Row by row, `x * a_h` can go into the weights:
`y[h] = (x * a_w)[h] @ (a_h[h, :, None] * K)`, one BATCH_MATMUL with
per-row weights (H x C x O, smaller than the map) instead of one
element-wise pass over the map plus the convolution. This script times both
forms of one block (float LiteRT, XNNPACK, 1 thread, CPU time, interleaved;
the outputs agree within 1e-5, checked) against the projection alone.

    python benchmarks/fused_projection.py [--shape 56x56x144x24] [--repeats 400]

Measured on the development VM at 56x56x144 -> 24 (two runs): CA +
projection 0.49-0.52 ms, fused 0.53-0.55 ms, projection alone 0.22-0.24 ms:
XNNPACK's batched matmul with run-time weights is slower than the saved
pass, so the rewrite is not used.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import ca_variants  # noqa: E402
from keras_coordatt import CoordinateAttention  # noqa: E402


class FusedProjection(CoordinateAttention):
    """CA followed by a bias-free 1x1 projection `kernel` (C, O), with the
    row gate folded into per-row projection weights (static H, W, batch 1)."""

    def __init__(self, kernel, **kwargs):
        super().__init__(**kwargs)
        self.projection = kernel

    def call(self, x, training=None):
        _, h, w, c = x.shape
        out = self.projection.shape[-1]
        a_h, a_w = self._gates(x, training=False)
        rows = ops.reshape(x * a_w, (h, w, c))
        weights = ops.reshape(a_h, (h, c, 1)) * ops.reshape(
            self.projection, (1, c, out))
        return ops.reshape(ops.matmul(rows, weights), (1, h, w, out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="56x56x144x24", help="HxWxCxO")
    p.add_argument("--repeats", type=int, default=400)
    args = p.parse_args(argv)
    h, w, c, out = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    inputs = keras.Input((h, w, c), batch_size=1)
    attention = CoordinateAttention(name="ca")
    projection = keras.layers.Conv2D(out, 1, use_bias=False, name="proj")
    block = keras.Model(inputs, projection(attention(inputs)))
    ca_variants.randomize(attention, rng)
    kernel = (0.1 * rng.standard_normal((1, 1, c, out))).astype("float32")
    projection.set_weights([kernel])
    fused_layer = FusedProjection(kernel.reshape(c, out), name="ca")
    fused = keras.Model(inputs, fused_layer(inputs))
    fused_layer.set_weights(attention.get_weights())
    x = rng.standard_normal((2, h, w, c)).astype("float32")[:1]
    diff = np.abs(block.predict(x, verbose=0)
                  - fused.predict(x, verbose=0)).max()
    if diff > 1e-5:
        raise AssertionError(f"the fused block differs by {diff}")
    models = {"CA + projection": block, "fused": fused,
              "projection alone": keras.Model(inputs, projection(inputs))}
    blobs = {name: ca_variants.convert(m, False, None)
             for name, m in models.items()}
    medians = ca_variants.time_blobs(blobs, args.repeats)
    print(f"{h}x{w}x{c} -> {out}, float LiteRT, 1 thread, CPU time "
          f"(max diff {diff:.1e}):")
    for name, ms in medians.items():
        report = ca_variants.delegate_report(blobs[name])
        print(f"  {name:18s} {ms:.3f} ms  ops {report['op_counts']}, "
              f"{report['partitions']} partition(s)")


if __name__ == "__main__":
    main()

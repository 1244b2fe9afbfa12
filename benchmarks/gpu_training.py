"""Training throughput of MobileNetV2-CA against MobileNetV2 on one backend.

Runs `keras_coordatt.training.train` (the package's own path: strategy,
mixed precision and XLA chosen per device, tf.data input) for the network
with coordinate attention and without it (`attention=False`: the
architecture of `keras.applications.MobileNetV2`, 3,504,872 parameters at
1000 classes), on synthetic images held in memory, and records:

- images per second of the third epoch, from the first step's start to
  the last step's end, the loss read back so the device has finished (on
  JAX the first step of each of the first two epochs compiles, measured on
  CPU: about 9 s each, 0.4 s a step after);
- the CA / base time ratio;
- whether any loss or validation metric is NaN or infinite.

The backend is the process's (`KERAS_BACKEND`); run it once per backend:

    KERAS_BACKEND=tensorflow python benchmarks/gpu_training.py
    KERAS_BACKEND=jax python benchmarks/gpu_training.py

On a GPU, `mixed_precision="auto"` is float16 with loss scaling on
TensorFlow and bfloat16 on JAX, and the steps are XLA-compiled. `--quick`
is a CPU check of the script itself (tiny images, few steps).
"""

import argparse
import json
import math
import os
import tempfile
import time

import keras
import numpy as np

from keras_coordatt.training import from_arrays
from keras_coordatt.training import train
from keras_coordatt.utils.atomic import atomic_file

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {"ca": "ca", "base": False}


class EpochTimer(keras.callbacks.Callback):
    """Times the train steps of epoch `epoch` (0-based)."""

    def __init__(self, epoch=1):
        super().__init__()
        self.epoch = epoch
        self.current = None
        self.started = None
        self.elapsed = None
        self.steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.current == self.epoch and self.started is None:
            self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch:
            float(logs["loss"])  # Waits for the device.
            self.elapsed = time.perf_counter() - self.started
            self.steps = batch + 1


def _source(image_size, examples, num_classes=1000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (examples, image_size, image_size, 3), "uint8")
    y = rng.integers(0, num_classes, examples).astype("int32")
    held = max(1, examples // 8)
    return from_arrays(x[held:], y[held:], x[:held], y[:held],
                       num_classes=num_classes, name="synthetic")


def measure(attention, args, source, folder):
    """One run; its throughput and finiteness."""
    timer = EpochTimer(epoch=2)
    result = train("paper_imagenet", overrides=dict(
        model="mobilenetv2_ca", attention=attention, alpha=args.alpha,
        image_size=args.image_size, per_replica_batch_size=args.batch,
        epochs=3, warmup_epochs=0, bn_recalibration_steps=0,
        backup_every=0, tensorboard=False, output_dir=folder,
        random_crop_scale=(0.5, 1.0)), source=source, callbacks=[timer],
        verbose=0)
    values = [v for key in ("loss", "val_loss") for v in
              result.history[key]] + list(result.metrics.values())
    return {
        "images_per_second": timer.steps * result.global_batch_size
        / timer.elapsed,
        "timed_steps": timer.steps,
        "global_batch": result.global_batch_size,
        "policy": keras.config.dtype_policy().name,
        "loss": [float(v) for v in result.history["loss"]],
        "metrics": result.metrics,
        "all_finite": all(math.isfinite(float(v)) for v in values),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128,
                        help="images per replica and step")
    parser.add_argument("--steps", type=int, default=40,
                        help="steps per epoch")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true",
                        help="tiny CPU check: 64x64, batch 8, 3 steps")
    parser.add_argument("--output", help="JSON file (default benchmarks/"
                        "results/gpu_training_BACKEND.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.batch, args.steps = 64, 8, 3
    backend = keras.backend.backend()
    output = args.output or os.path.join(
        HERE, "results", f"gpu_training_{backend}.json")
    from keras_coordatt.training import get_strategy

    replicas = get_strategy("auto").num_replicas_in_sync
    examples = args.steps * args.batch * replicas
    source = _source(args.image_size, examples + examples // 7 + 1)
    record = {"backend": backend, "image_size": args.image_size,
              "alpha": args.alpha, "replicas": replicas, "runs": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name, attention in MODELS.items():
            record["runs"][name] = measure(
                attention, args, source, os.path.join(folder, name))
            print(name, json.dumps(record["runs"][name]), flush=True)
    runs = record["runs"]
    record["ca_over_base_time"] = (runs["base"]["images_per_second"]
                                   / runs["ca"]["images_per_second"])
    record["all_finite"] = all(run["all_finite"] for run in runs.values())
    with atomic_file(output) as tmp:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
    print(json.dumps({k: record[k] for k in (
        "backend", "ca_over_base_time", "all_finite")}))
    return 0 if record["all_finite"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

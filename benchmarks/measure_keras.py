"""The Keras rows: inference, one training step, and the layer alone.

Runs in a worker process whose `KERAS_BACKEND` is TensorFlow
(`tf.function`, and XLA as its own row) or JAX (`jax.jit`). The layer rows
time coordinate attention, a squeeze-and-excitation block and one
element-wise pass at the network's own feature-map shapes, in Keras and
(TensorFlow worker) in LiteRT.
"""

import numpy as np

from measure import heavy
from measure import interleaved
from measure import log
from measure import pair_row
from measure import slowest
from measure import summarize
from networks import attention_shapes
from networks import layer_models


def inputs(args, batch, seed=0):
    """Random NHWC images at the benchmark's size."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(
        (batch, args.size, args.size, 3)).astype("float32")


# --------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------


def keras_predictors(models, backend, batch, args, xla=False):
    """name -> zero-argument callable running one inference."""
    x = inputs(args, batch)
    if backend == "tensorflow":
        return _tf_predictors(models, x, xla)
    return _jax_predictors(models, x)


def _tf_predictors(models, x, xla):
    import tensorflow as tf

    x = tf.constant(x)
    spec = tf.TensorSpec(x.shape, tf.float32)

    def make(model):
        @tf.function(input_signature=[spec], jit_compile=xla)
        def serve(images):
            return model(images, training=False)

        return lambda: serve(x).numpy()

    return {name: make(model) for name, model in models.items()}


def _jax_predictors(models, x):
    import jax

    x = jax.numpy.asarray(x)

    def make(model):
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def serve(tv, ntv, images):
            out, _ = model.stateless_call(tv, ntv, images, training=False)
            return out

        return lambda: serve(trainable, non_trainable,
                             x).block_until_ready()

    return {name: make(model) for name, model in models.items()}


def keras_section(models, counts, backend, args):
    """Batch 1 and the large batch, per engine of the backend."""
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
                **pair_row(times, cpu, counts, batch),
            })
            log(f"keras {backend} {engine} batch {batch}: "
                f"ratio {rows[-1]['ratio']:.3f}")
    return rows


# --------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------


def _train_steps(models, backend, x, y):
    """name -> zero-argument callable running one SGD step on a clone."""
    import keras

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
    return fns


def train_section(models, counts, backend, args):
    batch = args.batch
    x = inputs(args, batch, seed=1)
    y = np.random.default_rng(2).integers(0, 1000, size=(batch,))
    fns = _train_steps(models, backend, x, y)
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
        **pair_row(times, cpu, train_counts, batch),
    }
    log(f"train {backend}: ratio {row['ratio']:.3f}")
    return [row]


# --------------------------------------------------------------------------
# The layer alone
# --------------------------------------------------------------------------


def layer_section(ca_model, backend, args, litert=False):
    """CA alone vs SE vs one element-wise pass, at the network's shapes."""
    shapes = attention_shapes(ca_model)
    if args.quick:  # the largest and the smallest map are enough to smoke
        shapes = [shapes[0], shapes[-1]]
    rows = []
    for shape, count in shapes:
        rows.append(_layer_row(shape, count, backend, args, litert))
        log(f"layer {backend} {shape} x{count}")
    return rows


def _layer_row(shape, count, backend, args, litert):
    """The three single-layer models at one shape: Keras (and LiteRT)."""
    from keras_coordatt.counting import count_each

    from measure_litert import convert_float
    from measure_litert import litert_callables

    models = layer_models(shape)
    macs = {name: c["total"] for name, c in count_each(models).items()}
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
        blobs = {name: convert_float(m) for name, m in models.items()}
        fns = litert_callables(blobs, threads=1)
        times, cpu = interleaved(fns, 3 * args.repeats, args.warmup)
        row["timings"]["litert_1thread_cpu"] = {
            name: summarize(t) for name, t in cpu.items()
        }
    return row


def keras_layer_callables(models, backend):
    """name -> zero-argument callable running one single-layer model."""
    rng = np.random.default_rng(3)
    fns = {}
    for name, model in models.items():
        shape = tuple(model.inputs[0].shape)
        x = rng.standard_normal(shape).astype("float32")
        if backend == "tensorflow":
            fns[name] = _tf_layer_callable(model, x)
        else:
            fns[name] = _jax_layer_callable(model, x)
    return fns


def _tf_layer_callable(model, x):
    import tensorflow as tf

    xt = tf.constant(x)

    @tf.function
    def f(v):
        return model(v, training=False)

    # Eager TF returns once the op has run: no copy back.
    return lambda: f(xt)


def _jax_layer_callable(model, x):
    import jax

    xj = jax.numpy.asarray(x)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    f = jax.jit(lambda a, b, v: model.stateless_call(
        a, b, v, training=False)[0])
    return lambda: f(tv, ntv, xj).block_until_ready()


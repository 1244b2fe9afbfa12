"""Distribution strategies: one call from a laptop to a TPU pod.

`get_strategy("auto")` returns a `TPUStrategy` when a TPU cluster resolves,
else a `MirroredStrategy` over the local GPUs, else TensorFlow's default
strategy. Build the model and the optimizer inside `strategy.scope()`
(`keras_coordatt.training.train` does).

TPU and multi-worker strategies must be created before TensorFlow runs any
op, so call `get_strategy` first thing in the program.

Multi-worker training (`"multi_worker"`): one process per worker, each with
the same command and a `TF_CONFIG` naming the cluster and its own task.
`MultiWorkerMirroredStrategy` here is TensorFlow's with a `reduce` that
Keras 3's `Model.fit` can call (TensorFlow's rejects the nested batches and
the per-replica scalar metrics Keras reduces with `axis=0`, tensorflow
issue 72388). The chief (`chief:0`, or `worker:0` in a cluster without a
chief) writes the run's files; the other workers write theirs in temporary
folders (`worker_dir`) and restore from the chief's backup.

On the JAX backend the strategies are `keras.distribution` ones (see
`distribution.py`): `get_strategy` returns a `DistributionStrategy` and the
functions here take it as well as a `tf.distribute.Strategy`.
"""

import json
import os
import tempfile

import keras

from keras_coordatt.backend import require_tensorflow
from keras_coordatt.training.distribution import DistributionStrategy
from keras_coordatt.training.distribution import get_distribution_strategy
from keras_coordatt.training.distribution import single_device_strategy

STRATEGIES = ("auto", "tpu", "gpu", "cpu", "multi_worker")
# Environment variables that name a TPU (Cloud TPU nodes, Colab, TPU VMs).
_TPU_ENV = ("TPU_NAME", "COLAB_TPU_ADDR")


def _tf():
    return require_tensorflow(
        "keras_coordatt.training (tf.distribute and tf.data)"
    )


def get_strategy(name="auto", tpu=None):
    """Returns the `tf.distribute.Strategy` for `name`.

    Args:
        name: one of
            - `"auto"`: a TPU if a TPU cluster resolves (`tpu`, `TPU_NAME`,
              `COLAB_TPU_ADDR`, or a TPU VM's local chips), else
              `MirroredStrategy` over all local GPUs if there is one, else
              the default strategy (one CPU device).
            - `"tpu"`: `TPUStrategy`; fails when no TPU resolves.
            - `"gpu"`: `MirroredStrategy` over all local GPUs; fails without
              one.
            - `"cpu"`: the CPU only: `OneDeviceStrategy("/cpu:0")`, or a
              `MirroredStrategy` over the logical CPU devices when they were
              split into several (`tf.config.set_logical_device_
              configuration`, as tests do).
            - `"multi_worker"`: `MultiWorkerMirroredStrategy` from the
              cluster described in the `TF_CONFIG` environment variable.
        tpu: TPU name or gRPC address for `"auto"`/`"tpu"`; `"local"` on a
            TPU VM.

    On the JAX backend: `keras.distribution.DataParallel` over the devices
    of the platform `name` asks for (`"auto"`: JAX's default one), as a
    `DistributionStrategy`; `tpu` is not used (JAX finds a TPU VM's chips
    itself) and `"multi_worker"` is refused.

    Returns:
        A `tf.distribute.Strategy` (a `DistributionStrategy` on JAX).

    Raises:
        ValueError: unknown `name`, or the hardware/cluster it names is not
            there.
    """
    if keras.backend.backend() == "jax":
        return get_distribution_strategy(name)
    if keras.backend.backend() == "torch":
        return single_device_strategy(name)
    tf = _tf()
    if name not in STRATEGIES:
        raise ValueError(
            f"Unknown strategy. Received: strategy={name!r}; accepted: "
            f"{', '.join(STRATEGIES)}"
        )
    if name in ("auto", "tpu"):
        resolver = _resolve_tpu(tf, tpu, required=name == "tpu")
        if resolver is not None:
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
    if name in ("auto", "gpu"):
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        if name == "gpu":
            raise ValueError(
                "strategy='gpu' needs at least one GPU and TensorFlow sees "
                "none (tf.config.list_logical_devices('GPU') is empty). "
                "Accepted alternatives: 'auto', 'cpu'."
            )
        return tf.distribute.get_strategy()
    if name == "cpu":
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in cpus])
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    # multi_worker
    if not os.environ.get("TF_CONFIG"):
        raise ValueError(
            "strategy='multi_worker' reads the cluster from the TF_CONFIG "
            "environment variable, which is not set. Received: "
            "TF_CONFIG=None; accepted: a JSON cluster spec, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
        raise ValueError(
            "TF_CONFIG must be JSON. Received: "
            f"TF_CONFIG={os.environ['TF_CONFIG']!r} ({e})"
        ) from e
    return _multi_worker_class()()


_MULTI_WORKER_CLASS = []


def _multi_worker_class():
    """`MultiWorkerMirroredStrategy` with a reduce Keras 3 can use, made on
    first use (TensorFlow is imported lazily)."""
    if _MULTI_WORKER_CLASS:
        return _MULTI_WORKER_CLASS[0]
    tf = _tf()

    class MultiWorkerMirroredStrategy(
            tf.distribute.MultiWorkerMirroredStrategy):
        """TensorFlow's `MultiWorkerMirroredStrategy` whose `reduce` takes
        what Keras 3's TensorFlow trainer gives it.

        Every `fit`/`evaluate` first calls `strategy.reduce("MEAN", batch,
        axis=None)` on a nested batch of `PerReplica` values (only to build
        the model's metrics from its shapes), then `strategy.reduce("MEAN",
        metric, axis=0)` on the per-replica scalar metrics of every step.
        TensorFlow's collective reduce takes neither: it converts the nest
        to one tensor ("Attempt to convert a value (PerReplica:...) to a
        Tensor") and reduces a scalar over its non-existent axis 0
        (tensorflow issue 72388). Here:

        - a scalar is reduced across the replicas only (`axis=None`), which
          for a scalar is what `axis=0` asks for;
        - a nested value is not all-reduced: each leaf is this worker's
          first replica's value. All-reducing Keras' sample batch would
          send a whole batch between the workers and fail whenever their
          first batches differ in size (a validation set smaller than a
          global batch), for the shapes only.

        Everything else is TensorFlow's `reduce`.
        """

        def reduce(self, reduce_op, value, axis):
            if value is None:
                return None
            if tf.nest.is_nested(value):
                return tf.nest.map_structure(self._first_local, value)
            if axis is not None and _rank(self, value) == 0:
                axis = None
            return super().reduce(reduce_op, value, axis)

        def _first_local(self, value):
            if isinstance(value, tf.distribute.DistributedValues):
                return self.experimental_local_results(value)[0]
            return value

    MultiWorkerMirroredStrategy.__module__ = __name__
    MultiWorkerMirroredStrategy.__qualname__ = "MultiWorkerMirroredStrategy"
    _MULTI_WORKER_CLASS.append(MultiWorkerMirroredStrategy)
    return MultiWorkerMirroredStrategy


def __getattr__(name):
    # `strategy.MultiWorkerMirroredStrategy`, without importing TensorFlow
    # with this module.
    if name == "MultiWorkerMirroredStrategy":
        return _multi_worker_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _rank(strategy, value):
    tf = _tf()
    if isinstance(value, tf.distribute.DistributedValues):
        value = strategy.experimental_local_results(value)[0]
    shape = getattr(value, "shape", None)
    if shape is None:
        return 0  # A Python number.
    return tf.TensorShape(shape).rank


def is_multi_worker(strategy):
    """Whether `strategy` spans several worker processes."""
    if isinstance(strategy, DistributionStrategy):
        return False
    tf = _tf()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi_worker_mode = getattr(
        strategy.extended, "_in_multi_worker_mode", None)
    if in_multi_worker_mode is not None:
        return bool(in_multi_worker_mode())
    return len(strategy.cluster_resolver.cluster_spec().as_dict()) > 0


def check_multi_worker(strategy):
    """Raises if `strategy` is TensorFlow's own `MultiWorkerMirroredStrategy`
    (Keras 3's `fit` fails in it); returns `strategy` otherwise."""
    if isinstance(strategy, DistributionStrategy):
        return strategy
    tf = _tf()
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
            not isinstance(strategy, _multi_worker_class())):
        raise ValueError(
            "Keras 3's Model.fit cannot reduce its metrics with TensorFlow's "
            "own MultiWorkerMirroredStrategy. Received: strategy="
            f"{type(strategy).__module__}.{type(strategy).__name__}; "
            "accepted: strategy='multi_worker' or keras_coordatt.training."
            "strategy.MultiWorkerMirroredStrategy(...) (same arguments)."
        )
    return strategy


def _resolve_tpu(tf, tpu, required):
    """Returns a connected-ready TPU cluster resolver, or None."""
    candidates = [tpu] if tpu else []
    candidates += [os.environ[k] for k in _TPU_ENV if os.environ.get(k)]
    if not candidates and os.path.exists("/dev/accel0"):
        candidates.append("local")  # TPU VM.
    if not candidates and required:
        candidates.append(None)  # Let TensorFlow try its own discovery.
    errors = []
    for candidate in candidates:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
                tpu=candidate
            )
            if candidate != "local":
                resolver.master()  # Raises when nothing answers.
            return resolver
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            errors.append(f"{candidate!r}: {e}")
    if required:
        raise ValueError(
            "strategy='tpu' found no TPU. Received: "
            f"tpu={tpu!r}; tried {'; '.join(errors) or 'nothing'}. Accepted: "
            "a TPU name or grpc:// address (argument `tpu` or TPU_NAME), or "
            "'local' on a TPU VM."
        )
    return None


def device_kind(strategy):
    """Returns `"tpu"`, `"gpu"` or `"cpu"`: where `strategy` computes."""
    if isinstance(strategy, DistributionStrategy):
        return strategy.device_kind
    tf = _tf()
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    try:
        devices = strategy.extended.worker_devices
    except (AttributeError, NotImplementedError, RuntimeError):
        devices = None  # The default strategy: wherever TF places ops.
    if not devices:
        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    names = " ".join(devices).upper()
    return "gpu" if "GPU" in names else "cpu"


def is_chief(strategy):
    """Whether this worker writes the run's files (always, off clusters)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type in (None, "chief"):
        return True
    task_id = getattr(resolver, "task_id", 0) or 0
    try:
        has_chief = "chief" in resolver.cluster_spec().as_dict()
    except (AttributeError, ValueError, RuntimeError):
        has_chief = False
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_dir(output_dir, strategy):
    """`output_dir` on the chief, a new temporary folder on other workers.

    Every worker of a multi-worker run runs the same callbacks and saves
    (saving reads variables that other workers hold a part of), but only
    the chief's files are the run's: the others write theirs (checkpoints,
    logs, backups, model) in a folder of the system's temporary directory,
    which the caller removes at the end (`train()` does). They restore from
    the chief's backup in `output_dir`, which must therefore be on storage
    every worker sees (one machine, NFS, GCS).
    """
    if is_chief(strategy):
        return output_dir
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(
        prefix=f"keras-coordatt-{resolver.task_type}-{resolver.task_id}-"
    )

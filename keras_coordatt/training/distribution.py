"""Training on the JAX backend: `keras.distribution` in a strategy's place.

On JAX, Keras distributes a model with `keras.distribution`, not with
tf.distribute: variables created inside `distribution.scope()` are laid out
on a `DeviceMesh`, and `Model.fit` splits every global batch over the mesh's
batch axis (one XLA program over all devices, so BatchNorm sees the global
batch). `DistributionStrategy` gives a `keras.distribution.Distribution` the
few members of a `tf.distribute.Strategy` that `train()` uses (`scope()`,
`num_replicas_in_sync`, `run`, `distribute_datasets_from_function`), so the
run's steps, recipes, backups and metrics are the same on both backends.
tf.data stays the input pipeline: one pipeline that yields global batches.

- `strategy="auto"` on JAX: `keras.distribution.DataParallel` over all
  devices of JAX's default platform (the TPU chips of a TPU VM, the GPUs of
  a host, else the CPU); `"cpu"`, `"gpu"`, `"tpu"` ask for that platform.
- Any `keras.distribution.Distribution` (a `DataParallel` on your own
  `DeviceMesh`, a `ModelParallel` with a `LayoutMap`) can be passed as
  `train(strategy=...)`; its `batch_dim_name` axis is the data-parallel one.
- One process only: a multi-host JAX job (`jax.distributed.initialize`) is
  not driven by `train()`; `"multi_worker"` runs on the TensorFlow backend.

The PyTorch backend trains on one device (`SingleDeviceStrategy`): Keras'
torch trainer has no `keras.distribution` support to build on.
"""

import contextlib

import keras
import numpy as np

_PLATFORMS = ("cpu", "gpu", "tpu")
# The public distributions (their base class is not exported).
_DISTRIBUTIONS = (keras.distribution.DataParallel,
                  keras.distribution.ModelParallel)


class DistributionStrategy:
    """A `keras.distribution.Distribution` seen as a training strategy.

    Args:
        distribution: a `keras.distribution.Distribution` whose device mesh
            has an axis named `distribution.batch_dim_name`.
    """

    def __init__(self, distribution):
        if not isinstance(distribution, _DISTRIBUTIONS):
            raise ValueError(
                "DistributionStrategy wraps a keras.distribution.DataParallel "
                "or ModelParallel. Received: distribution="
                f"{type(distribution).__name__}"
            )
        mesh = distribution.device_mesh
        if distribution.batch_dim_name not in mesh.axis_names:
            raise ValueError(
                "The distribution's batch axis is not an axis of its device "
                f"mesh. Received: batch_dim_name="
                f"{distribution.batch_dim_name!r}, mesh axes "
                f"{tuple(mesh.axis_names)}"
            )
        self.distribution = distribution

    @property
    def num_replicas_in_sync(self):
        """Devices along the batch axis: the global batch is split so."""
        mesh = self.distribution.device_mesh
        axis = list(mesh.axis_names).index(self.distribution.batch_dim_name)
        return int(mesh.shape[axis])

    @property
    def devices(self):
        """The mesh's devices (`"cpu:0"`, ...), in mesh order."""
        return [str(d) for d in np.ravel(self.distribution.device_mesh.devices)]

    @property
    def device_kind(self):
        """`"cpu"`, `"gpu"` or `"tpu"`: the platform of the mesh."""
        platform = self.devices[0].split(":")[0].lower()
        return "gpu" if platform in ("gpu", "cuda", "rocm") else platform

    def scope(self):
        """Variables created in it are laid out on the mesh; `fit` called
        in it splits the batches."""
        return self.distribution.scope()

    def run(self, fn, args=(), kwargs=None):
        """Calls `fn` once: the mesh runs it on all devices."""
        return fn(*args, **(kwargs or {}))

    def distribute_datasets_from_function(self, dataset_fn):
        """The one input pipeline, yielding global batches (`fit` splits
        them over the batch axis)."""
        import tensorflow as tf

        return dataset_fn(tf.distribute.InputContext(1, 0, 1))

    def __repr__(self):
        return (f"DistributionStrategy({type(self.distribution).__name__}, "
                f"{self.num_replicas_in_sync} x {self.device_kind})")


class SingleDeviceStrategy(DistributionStrategy):
    """The PyTorch backend's strategy: one device, Keras' own placement
    (the GPU when torch sees one). `train()` distributes nothing there."""

    def __init__(self, kind):
        self.distribution = None
        self._kind = kind

    num_replicas_in_sync = 1

    @property
    def devices(self):
        return [f"{self._kind}:0"]

    @property
    def device_kind(self):
        return self._kind

    def scope(self):
        return contextlib.nullcontext()

    def __repr__(self):
        return f"SingleDeviceStrategy({self._kind})"


def single_device_strategy(name="auto"):
    """The PyTorch backend's `get_strategy`: `"auto"` or the one local
    device kind there is; anything distributed is refused."""
    import torch

    kind = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in ("auto", kind):
        raise ValueError(
            "On the PyTorch backend train() runs on one device (the GPU if "
            f"torch sees one, else the CPU; here: {kind}). Received: "
            f"strategy={name!r} with KERAS_BACKEND=torch; accepted: 'auto', "
            f"{kind!r}, or KERAS_BACKEND=tensorflow / jax for distributed "
            "training."
        )
    return SingleDeviceStrategy(kind)


def get_distribution_strategy(name="auto"):
    """The JAX backend's `get_strategy`: data parallel over local devices.

    Args:
        name: `"auto"` (JAX's default platform), `"cpu"`, `"gpu"` or
            `"tpu"`.

    Returns:
        A `DistributionStrategy` around `keras.distribution.DataParallel`.

    Raises:
        ValueError: `name` is `"multi_worker"` or unknown, or the platform
            it names has no device.
    """
    if name == "multi_worker":
        raise ValueError(
            "strategy='multi_worker' runs on the TensorFlow backend "
            "(MultiWorkerMirroredStrategy). Received: strategy="
            "'multi_worker' with KERAS_BACKEND=jax; accepted on JAX: 'auto', "
            "'cpu', 'gpu', 'tpu' or a keras.distribution.Distribution."
        )
    if name != "auto" and name not in _PLATFORMS:
        raise ValueError(
            f"Unknown strategy. Received: strategy={name!r}; accepted on "
            "JAX: 'auto', 'cpu', 'gpu', 'tpu' or a keras.distribution."
            "Distribution."
        )
    try:
        devices = keras.distribution.list_devices(
            None if name == "auto" else name)
    except RuntimeError as e:  # JAX has no backend for that platform.
        devices, reason = [], str(e).splitlines()[0]
    else:
        reason = "none found"
    if not devices:
        raise ValueError(
            f"strategy={name!r} needs a {name.upper()} and JAX sees none "
            f"({reason}). Accepted alternatives: 'auto', 'cpu'."
        )
    return DistributionStrategy(
        keras.distribution.DataParallel(devices=devices))


def as_strategy(strategy):
    """Wraps a `keras.distribution` distribution; returns anything else."""
    if isinstance(strategy, _DISTRIBUTIONS):
        return DistributionStrategy(strategy)
    return strategy


def run_scope(strategy):
    """The context a whole run executes in: the distribution's scope on JAX
    (`fit`, `evaluate` and saving must see it), nothing for tf.distribute
    (whose scope is only needed to create variables)."""
    if isinstance(strategy, DistributionStrategy):
        return strategy.scope()
    return contextlib.nullcontext()

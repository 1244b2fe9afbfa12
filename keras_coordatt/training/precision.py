"""Mixed precision and XLA defaults per device kind.

- TPU: `mixed_bfloat16` (bfloat16 needs no loss scaling); the TPU compiles
  every step with XLA anyway, so `jit_compile` adds nothing there.
- GPU: `mixed_float16`; `Model.compile` wraps the optimizer in a
  `LossScaleOptimizer` (dynamic loss scaling). XLA on: it fuses the
  BatchNorm/ReLU6/attention elementwise ops of these networks.
- CPU: float32 and no XLA: XLA made keras' MobileNetV2 about 5x slower at
  batch 1 on a CPU we measured.

On the JAX backend every step is an XLA program (`jit_compile=False` would
run it op by op), and GPUs take `mixed_bfloat16`, which needs no loss
scaling; the rest is as above.
"""

import keras

PRECISION_BY_DEVICE = {
    "tpu": "mixed_bfloat16",
    "gpu": "mixed_float16",
    "cpu": "float32",
}
JIT_BY_DEVICE = {"tpu": False, "gpu": True, "cpu": False}
_JAX_PRECISION = {**PRECISION_BY_DEVICE, "gpu": "mixed_bfloat16"}
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def resolve_precision(mixed_precision, device_kind):
    """Returns the Keras dtype policy name for a run.

    Args:
        mixed_precision: `"auto"` or one of `POLICIES`.
        device_kind: `"tpu"`, `"gpu"` or `"cpu"`.

    Returns:
        A policy name: `"float32"`, `"mixed_float16"` or `"mixed_bfloat16"`.
    """
    if mixed_precision == "auto":
        if keras.backend.backend() == "jax":
            return _JAX_PRECISION[device_kind]
        return PRECISION_BY_DEVICE[device_kind]
    if mixed_precision not in POLICIES:
        raise ValueError(
            "Unknown mixed_precision. Received: "
            f"mixed_precision={mixed_precision!r}; accepted: 'auto', "
            f"{', '.join(repr(p) for p in POLICIES)}"
        )
    return mixed_precision


def resolve_jit_compile(jit_compile, device_kind):
    """Returns whether to XLA-compile the train step (`"auto"` resolved)."""
    if jit_compile == "auto":
        return keras.backend.backend() == "jax" or JIT_BY_DEVICE[device_kind]
    if not isinstance(jit_compile, bool):
        raise ValueError(
            "`jit_compile` must be 'auto', True or False. Received: "
            f"jit_compile={jit_compile!r}"
        )
    return jit_compile


def set_policy(policy_name):
    """Sets the global Keras dtype policy; returns the previous one's name.

    Set it before building the model: layers take the global policy when
    they are created.
    """
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy_name)
    return previous

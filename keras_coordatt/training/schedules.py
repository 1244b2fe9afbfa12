"""Learning rate: linear batch-size scaling, warm-up + cosine schedule."""

import keras


def scaled_learning_rate(base_learning_rate, global_batch_size,
                         base_batch_size=256):
    """The linear scaling rule: `base_lr * global_batch / base_batch`.

    Args:
        base_learning_rate: the LR tuned for `base_batch_size` images per
            step (the paper: 0.05 for 256).
        global_batch_size: images per optimizer step over all replicas.
        base_batch_size: the batch `base_learning_rate` belongs to.

    Returns:
        The peak learning rate for `global_batch_size`.
    """
    for name, value in (("global_batch_size", global_batch_size),
                        ("base_batch_size", base_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{name}` must be a positive integer. Received: "
                f"{name}={value!r}"
            )
    return base_learning_rate * global_batch_size / base_batch_size


def warmup_cosine(peak_learning_rate, total_steps, warmup_steps=0,
                  final_fraction=0.0):
    """Linear warm-up from 0, then cosine decay, per optimizer step.

    With `W = warmup_steps`, `T = total_steps`, `a = final_fraction`:

    - `lr(s) = peak * s / W` for `s < W`;
    - `lr(s) = peak * (a + (1 - a) * (1 + cos(pi * (s - W) / (T - W))) / 2)`
      for `W <= s <= T`, and `lr(s) = lr(T) = a * peak` after.

    Args:
        peak_learning_rate: LR at the end of the warm-up.
        total_steps: optimizer steps of the whole schedule (warm-up
            included).
        warmup_steps: steps of the linear warm-up (0: start at the peak).
        final_fraction: LR at `total_steps`, relative to the peak.

    Returns:
        A `keras.optimizers.schedules.CosineDecay` (serializable with the
        model).
    """
    total_steps = int(total_steps)
    warmup_steps = int(warmup_steps)
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(
            "Need 0 <= warmup_steps < total_steps and total_steps >= 1. "
            f"Received: total_steps={total_steps}, "
            f"warmup_steps={warmup_steps}"
        )
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(
            peak_learning_rate, total_steps, alpha=final_fraction
        )
    return keras.optimizers.schedules.CosineDecay(
        0.0,
        total_steps - warmup_steps,
        alpha=final_fraction,
        warmup_target=peak_learning_rate,
        warmup_steps=warmup_steps,
    )


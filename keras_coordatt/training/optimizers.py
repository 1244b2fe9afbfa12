"""Optimizers with the weight-decay scope of the paper's recipe.

Weight decay shrinks convolution and dense kernels only: BatchNorm scales
(`gamma`) and offsets (`beta`) and all biases are left alone, as in the usual
ImageNet recipes (decaying BN scales fights the normalisation, and biases
have nothing to regularise).
"""

import keras

from keras_coordatt.training.schedules import warmup_cosine

# Keras names these variables so in every built-in layer: BatchNormalization,
# LayerNormalization, GroupNormalization (gamma, beta), Dense/Conv (bias).
NO_DECAY_NAMES = ("gamma", "beta", "bias")


def no_decay_variables(model):
    """The variables of `model` that weight decay must skip.

    Args:
        model: a Keras model (nested layers and models included).

    Returns:
        A list of the normalisation scales/offsets and the biases.
    """
    return [v for v in model.weights if v.name in NO_DECAY_NAMES]


def build_optimizer(model, *, optimizer="sgd", learning_rate=0.05,
                    total_steps, warmup_steps=0, final_fraction=0.0,
                    momentum=0.9, nesterov=False, weight_decay=4e-4):
    """Builds an SGD/AdamW optimizer on a warm-up + cosine schedule.

    Create it inside the strategy's scope, before `model.compile`.

    Args:
        model: the model it will train (for the weight-decay exclusions).
        optimizer: `"sgd"` (with momentum) or `"adamw"`.
        learning_rate: peak learning rate (already batch-scaled).
        total_steps: optimizer steps of the schedule.
        warmup_steps: linear warm-up steps.
        final_fraction: LR at `total_steps`, relative to the peak.
        momentum: SGD momentum.
        nesterov: Nesterov momentum (SGD).
        weight_decay: decoupled decay per step, `w -= lr * weight_decay * w`,
            on kernels only; 0 disables it.

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    schedule = warmup_cosine(
        learning_rate, total_steps, warmup_steps, final_fraction
    )
    decay = weight_decay or None
    if optimizer == "sgd":
        opt = keras.optimizers.SGD(
            schedule, momentum=momentum, nesterov=nesterov,
            weight_decay=decay,
        )
    elif optimizer == "adamw":
        opt = keras.optimizers.AdamW(schedule, weight_decay=decay or 0.0)
    else:
        raise ValueError(
            f"Unknown optimizer. Received: optimizer={optimizer!r}; "
            "accepted: 'sgd', 'adamw'"
        )
    if decay:
        opt.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return opt

"""Weights copied between two builds of one network, layer by layer name."""


def copy_weights_by_name(source, pairs):
    """Sets each target layer's weights to those of `source`'s layer of the
    same name.

    Args:
        source: a model holding the weights.
        pairs: `(target_layer, source_layer_name)` pairs; targets without
            weights are skipped.

    Raises:
        ValueError: names `source` lacks, or weights of other shapes, all
            listed in one message (nothing is left half-copied: the
            weights are set only when every pair matches).
    """
    layers = {layer.name: layer for layer in source.layers}
    problems, ready = [], []
    for target, name in pairs:
        if not target.weights:
            continue
        if name not in layers:
            problems.append(f"{name}: missing")
            continue
        weights = layers[name].get_weights()
        shapes = [tuple(w.shape) for w in target.weights]
        if [tuple(w.shape) for w in weights] != shapes:
            problems.append(f"{name}: {[tuple(w.shape) for w in weights]} "
                            f"vs {shapes}")
            continue
        ready.append((target, weights))
    if problems:
        raise ValueError(
            "The two networks differ layer for layer (built with other "
            "arguments?). Received mismatches: " + "; ".join(problems))
    for target, weights in ready:
        target.set_weights(weights)

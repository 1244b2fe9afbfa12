"""Numbers derived from the measured rows: the layer's share and the targets.

Pure functions of the merged results (no timing here): what the CA layers
alone add up to against the network they sit in, and the issue's targets
with their wall-clock and CPU-time values.
"""

from networks import BASE
from networks import CA

TARGET_RATIO = 1.10
TARGET_TORCH = 0.15
TARGET_INT8_SIZE = 0.30


# --------------------------------------------------------------------------
# The layers' share of the network
# --------------------------------------------------------------------------


def _sum_of_layers(layer_rows, engine_key, model):
    return sum(r["timings"][engine_key][model]["median_ms"] * r["count"]
               for r in layer_rows if engine_key in r["timings"])


def layer_summary(layer_rows, counts, engine_key, engine_row):
    """The CA layers' share of network MACs vs their share of time."""
    if not layer_rows or engine_row is None:
        return None
    ca_ms = _sum_of_layers(layer_rows, engine_key, "coordinate_attention")
    se_ms = _sum_of_layers(layer_rows, engine_key, "se_block")
    pass_ms = _sum_of_layers(layer_rows, engine_key, "elementwise_pass")
    network_ms = engine_row["models"][CA]["median_ms"]
    base_ms = engine_row["models"][BASE]["median_ms"]
    return {
        "engine": engine_key,
        "network_engine": engine_row["engine"],
        "attention_macs_share": counts[CA]["attention_macs"]
        / counts[CA]["macs"],
        "mac_ratio": counts["mac_ratio"],
        "sum_of_layers_ms": ca_ms,
        "se_sum_of_layers_ms": se_ms,
        "elementwise_passes_equivalent": ca_ms / pass_ms if pass_ms else None,
        "network_ms": network_ms,
        "layers_share_of_network_time": ca_ms / network_ms,
        "network_difference_share": (network_ms - base_ms) / network_ms,
    }


def _keras_network_row(result, backend):
    """The backend's batch-1 network row without XLA, or None."""
    return next((r for r in result["keras"]
                 if r["backend"] == backend and r["batch"] == 1
                 and not r["engine"].endswith("XLA")), None)


def _litert_network_row(result):
    """LiteRT float at 1 thread, its CPU times in place of the wall clock."""
    network = next((r for r in result["litert"]
                    if r["kind"] == "float" and r["threads"] == 1), None)
    if network is None:
        return None
    cpu_row = dict(network)
    cpu_row["models"] = network.get("cpu", network["models"])
    cpu_row["engine"] = "LiteRT float, 1 thread, CPU time"
    return cpu_row


def layer_summaries(result, backends):
    """`layer_summary` per backend, and for LiteRT after TensorFlow."""
    summaries = []
    counts = result["counts"]
    for backend in backends:
        layer_rows = [r for r in result["layer"] if r["backend"] == backend]
        if counts:
            summary = layer_summary(layer_rows, counts, "keras",
                                    _keras_network_row(result, backend))
            if summary:
                summaries.append(dict(summary, backend=backend))
        if backend == "tensorflow" and counts:
            summary = layer_summary(layer_rows, counts, "litert_1thread_cpu",
                                    _litert_network_row(result))
            if summary:
                summaries.append(dict(summary, backend="litert"))
    return summaries


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------


def _latency_targets(result):
    for row in result["keras"]:
        if row["backend"] == "tensorflow" and row["engine"] == "tf.function" \
                and row["batch"] != 1:
            yield (f"Keras TF batch {row['batch']}: {CA}/{BASE} latency",
                   row["ratio"], TARGET_RATIO, row.get("cpu_ratio"))
    for row in result["litert"]:
        yield (f"LiteRT {row['kind']} batch 1, {row['threads']} thread(s): "
               f"{CA}/{BASE} latency", row["ratio"], TARGET_RATIO,
               row.get("cpu_ratio"))


def _size_targets(result):
    for name, sizes in result.get("file_sizes", {}).items():
        if name == CA and "float" in sizes:
            for kind in ("ptq_int8", "qat_int8"):
                if kind in sizes:
                    yield (f"{name} {kind} file / float file",
                           sizes[kind] / sizes["float"], TARGET_INT8_SIZE,
                           None)


def _int8_targets(result):
    for row in result["litert"]:
        if not row["kind"].endswith("int8"):
            continue
        floats = [r for r in result["litert"] if r["kind"] == "float"
                  and r["threads"] == row["threads"]]
        if floats:
            f = floats[0]
            yield (f"LiteRT {row['kind']} / float latency, {CA}, "
                   f"{row['threads']} thread(s)",
                   row["models"][CA]["median_ms"]
                   / f["models"][CA]["median_ms"], 1.0,
                   row["cpu"][CA]["median_ms"] / f["cpu"][CA]["median_ms"])


def _torch_targets(result):
    for row in result["torch"]:
        yield (f"LiteRT float {CA} / PyTorch eager, {row['threads']} "
               "thread(s)", row["ratio"], TARGET_TORCH, row.get("cpu_ratio"))


def _target(name, value, limit, cpu_value):
    return {
        "target": name, "value": value, "limit": limit,
        "met": bool(value <= limit),
        "value_cpu": cpu_value,
        "met_cpu": None if cpu_value is None else bool(cpu_value <= limit),
    }


def targets(result):
    """The issue's targets, each with the wall-clock and CPU-time value."""
    rows = []
    for source in (_latency_targets, _size_targets, _int8_targets,
                   _torch_targets):
        rows += [_target(*t) for t in source(result) if t[1] is not None]
    return rows

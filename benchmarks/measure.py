"""How the benchmarks time, summarize and describe the machine.

Every timing is a median over repeated runs after warm-up, with its
quartiles; the models of a comparison run interleaved (A, B, B, A, ...) in
the same loop, so that load from other processes hits both alike; each row
has the wall clock and the process CPU time (the steadier measure on a
shared machine). Also: the repeat counts of the slow rows, the machine's
CPU, instruction sets and library versions, the log line and the JSON
encoding of numpy values.
"""

import os
import platform
import sys
import time

import numpy as np

from networks import BASE
from networks import CA

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "amx_int8", "asimd", "asimddp")
VERSIONED = ("keras", "tensorflow", "jax", "torch", "ai_edge_litert",
             "numpy")


def log(message):
    print(f"[benchmarks] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Repeats
# --------------------------------------------------------------------------


def heavy(args):
    """Repeats for the slow rows (large batch, training)."""
    return args.repeats if args.quick else max(3, args.repeats // 4)


def slowest(args):
    """Repeats for the slowest rows (XLA on CPU at the large batch, JAX
    training): seconds per call on a CPU."""
    return args.repeats if args.quick else max(3, args.repeats // 8)


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def summarize(seconds):
    """Median and spread (in ms) of a list of durations in seconds."""
    ms = np.asarray(seconds, dtype="float64") * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p25_ms": float(np.percentile(ms, 25)),
        "p75_ms": float(np.percentile(ms, 75)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "n": int(ms.size),
    }


def interleaved(fns, repeats, warmup):
    """Times callables interleaved: A B C, C B A, A B C, ...

    Args:
        fns: dict name -> zero-argument callable that returns when its work
            is done.
        repeats: timed rounds.
        warmup: untimed calls of each callable first.

    Returns:
        `(wall, cpu)`: two dicts name -> list of durations in seconds, wall
        clock (`time.perf_counter`) and the CPU time of this process, all
        threads (`time.process_time`). CPU time does not count the time
        spent waiting for a core, so it is the steadier measure of work on
        a loaded machine (it does count threads that spin while waiting).
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start)
    return wall, cpu


def pair_ratio(times, a, b):
    """Ratio of medians a/b, and the quartiles of the per-round ratios."""
    ta, tb = np.asarray(times[a]), np.asarray(times[b])
    paired = ta / tb
    return {
        "ratio": float(np.median(ta) / np.median(tb)),
        "ratio_p25": float(np.percentile(paired, 25)),
        "ratio_p75": float(np.percentile(paired, 75)),
    }


def cpu_stats(cpu, a=CA, b=BASE):
    """Process CPU time per model and the CPU-time ratio a/b."""
    return {"cpu": {name: summarize(t) for name, t in cpu.items()},
            "cpu_ratio": pair_ratio(cpu, a, b)["ratio"]}


def gflops(macs, batch, median_ms):
    return 2.0 * macs * batch / (median_ms * 1e-3) / 1e9


def timed_models(times, counts, batch):
    """Per-model stats with MACs, params, GFLOP/s and images/s."""
    out = {}
    for name, seconds in times.items():
        stats = summarize(seconds)
        c = counts.get(name)
        if c:
            stats["macs_per_image"] = c["macs"]
            stats["params"] = c["params"]
            stats["gflops"] = gflops(c["macs"], batch, stats["median_ms"])
        stats["images_per_s"] = batch / (stats["median_ms"] * 1e-3)
        stats["ms_per_image"] = stats["median_ms"] / batch
        out[name] = stats
    return out


def pair_row(times, cpu, counts, batch, a=CA, b=BASE):
    """The timed models of one comparison row, with its two ratios a/b."""
    return {"models": timed_models(times, counts, batch),
            **pair_ratio(times, a, b), **cpu_stats(cpu, a, b)}


# --------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------


def loadavg():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info():
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": platform.processor() or "unknown",
        "isa": {},
        "loadavg_start": loadavg(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = None
    if text is not None:
        _read_cpuinfo(text, info)
    info["versions"] = {module: _version(module) for module in VERSIONED}
    return info


def _read_cpuinfo(text, info):
    """The CPU model and the instruction-set flags from /proc/cpuinfo."""
    for line in text.splitlines():
        if line.startswith("model name"):
            info["cpu_model"] = line.split(":", 1)[1].strip()
            break
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    for flag in ISA_FLAGS:
        info["isa"][flag] = flag in flags


def _version(module):
    """The installed version of a module's distribution, or None."""
    try:
        from importlib.metadata import version
        dist = {"ai_edge_litert": "ai-edge-litert",
                "tensorflow": "tensorflow-cpu"}.get(module, module)
        try:
            return version(dist)
        except Exception:
            return version(module)
    except Exception:
        return None


def devices(backend):
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_logical_devices()]
        import jax

        return [str(d) for d in jax.devices()]
    except Exception:
        return []


def json_default(value):
    """`json.dump`'s fallback for numpy scalars and arrays."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)

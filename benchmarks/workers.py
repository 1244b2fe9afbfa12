"""The worker processes `run.py` starts: one per Keras backend, one for torch.

Each worker measures its sections and writes them to its part file (JSON)
for the orchestrator to merge. A failing section is recorded in `errors`
and leaves the other sections' numbers.
"""

import json
import time
import traceback

from measure import devices
from measure import json_default
from measure import loadavg
from measure import log
from networks import BASE
from networks import CA
from networks import build_models
from networks import model_counts
from networks import reference_counts


def _error(section, backend, e):
    """The `errors` entry of the exception being handled."""
    return {"section": section, "backend": backend,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc()}


class Sections:
    """Runs the requested sections of a worker, timing each one."""

    def __init__(self, args, backend, result):
        self.args, self.backend, self.result = args, backend, result
        result["section_seconds"] = {}

    def run(self, name, fn):
        if name not in self.args.sections:
            return None
        start = time.time()
        try:
            return fn()
        except Exception as e:  # keep the other sections' numbers
            self.result["errors"].append(_error(name, self.backend, e))
            log(f"{name} failed: {e}")
            return None
        finally:
            seconds = time.time() - start
            self.result["section_seconds"][name] = seconds
            log(f"{name}: {seconds:.1f} s")


def _keras_setup(args):
    """The backend's result skeleton, its models and their counts."""
    import keras

    backend = keras.backend.backend()
    if backend != args.worker:
        raise RuntimeError(
            f"worker {args.worker} started with KERAS_BACKEND={backend}")
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    result = {"backend": backend, "errors": [], "devices": devices(backend)}
    models = build_models(args, include_noca=(backend == "tensorflow"
                                              and "litert" in args.sections
                                              and not args.quick))
    result["counts"] = model_counts(models)
    if backend == "tensorflow":
        result["reference_224"] = reference_counts()
    log(f"{backend}: models built and counted")
    return backend, result, models


def keras_worker(args):
    from measure_keras import keras_section
    from measure_keras import layer_section
    from measure_keras import train_section

    backend, result, models = _keras_setup(args)
    counts = result["counts"]
    section = Sections(args, backend, result).run
    pair = {CA: models[CA], BASE: models[BASE]}
    result["keras"] = section(
        "keras", lambda: keras_section(pair, counts, backend, args)) or []
    result["train"] = section(
        "train", lambda: train_section(pair, counts, backend, args)) or []
    result["layer"] = section(
        "layer", lambda: layer_section(
            models[CA], backend, args,
            litert=backend == "tensorflow" and not args.mixed_precision,
        )) or []
    if backend == "tensorflow" and ("litert" in args.sections
                                    or "torch" in args.sections):
        _litert_rows(args, models, counts, result, section)
    return result


def _litert_rows(args, models, counts, result, section):
    from measure_litert import litert_section

    out = section("litert", lambda: litert_section(
        models, counts, args, args.workdir))
    if out:
        result["litert"], result["file_sizes"], files = out
        result["litert_float_path"] = files.get(f"{CA}|float")
    else:
        result["litert"] = []


def torch_worker(args):
    from measure_torch import torch_section

    with open(args.part) as f:
        part = json.load(f)
    result = {"errors": []}
    try:
        result.update(torch_section(args, part))
    except Exception as e:
        result["errors"].append(_error("torch", "torch", e))
    return result


def worker_main(args):
    """Measures one worker's sections into its part file."""
    result = torch_worker(args) if args.worker == "torch" \
        else keras_worker(args)
    result["loadavg_end"] = loadavg()
    with open(args.part, "w") as f:
        json.dump(result, f, default=json_default)

"""Reads a checkpoint under a memory limit; prints the outcome as JSON.

Usage: python read_limited.py PATH LIMIT_MIB [state_dict]

The reader needs numpy and the standard library only, so its two modules are
imported without the package's `__init__` (which imports Keras). The address
space limit is set above what the interpreter already maps, so the reader
gets LIMIT_MIB more at most: an unbounded allocation fails instead of taking
the machine.
"""

import importlib
import json
import os
import resource
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_reader():
    for name in ("keras_coordatt", "keras_coordatt.weights"):
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(ROOT, *name.split("."))]
        sys.modules[name] = package
    return importlib.import_module("keras_coordatt.weights.torch_checkpoint")


def _status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(path, limit_mib, what="object"):
    reader = _import_reader()
    limit = _status_bytes("VmSize") + int(limit_mib) * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        if what == "state_dict":
            result = reader.load_torch_state_dict(path)
        else:
            result = reader.read_torch_checkpoint(path)
        outcome = {"error": None, "type": type(result).__name__}
    except Exception as err:  # reported, for the test to judge
        outcome = {"error": type(err).__name__, "message": str(err)}
    # VmHWM, not ru_maxrss: the latter survives exec from the parent.
    outcome["peak_rss_mib"] = round(_status_bytes("VmHWM") / (1 << 20), 1)
    print(json.dumps(outcome))


if __name__ == "__main__":
    main(*sys.argv[1:])

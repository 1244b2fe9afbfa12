"""Run a function once a module has been imported, whoever imports it.

Why hand-written: the keras-hub classes of our networks must be registered
with Keras before a saved keras-hub preset or `.keras` file that names them
(`keras_coordatt>MobileNetV2CABackbone`) can load, yet `import
keras_coordatt` must not import keras-hub (seconds of start-up, an optional
extra). Keras itself imports `keras_hub` when it deserializes a keras-hub
class, and `from_preset` needs `keras_hub` imported: so registering ours
right after `keras_hub` is imported covers every load, in either import
order. The standard library has no post-import hook; this is the usual
meta-path finder that wraps the module's loader (as `wrapt` does).
"""

import importlib.abc
import importlib.util
import sys
import warnings


def when_imported(module_name, callback):
    """Calls `callback()` now if `module_name` is imported, else right after
    its first import. A failing callback warns; the import itself never
    fails because of it."""
    if sys.modules.get(module_name) is not None:
        _run(module_name, callback)
        return
    sys.meta_path.insert(0, _Finder(module_name, callback))


def _run(module_name, callback):
    try:
        callback()
    except Exception as error:  # noqa: BLE001 - a hook must not break imports
        warnings.warn(
            f"keras_coordatt could not register its classes after importing "
            f"{module_name!r}: {type(error).__name__}: {error}",
            stacklevel=3,
        )


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, module_name, callback):
        self.module_name = module_name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module_name:
            return None
        # One shot: out of the way before asking the other finders.
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, fullname, self.callback)
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, module_name, callback):
        self.loader = loader
        self.module_name = module_name
        self.callback = callback

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _run(self.module_name, self.callback)

    def __getattr__(self, name):
        # Resource readers and the like: the wrapped loader's own.
        return getattr(self.loader, name)

"""Keras-serializable names whose classes are imported on first load.

Why: `keras.saving.load_model` looks a saved class up by its registered
name (`keras_coordatt>InsertedBackbone`) before anything else, and imports
a module by itself only for Keras' own packages. A class that subclasses a
keras-hub class cannot be defined without importing keras-hub, which
`import keras_coordatt` must not do (seconds of start-up, an optional
extra). So the name is registered at once with a stand-in whose
`from_config` imports the real class's module and hands it the config;
importing that module registers the real class under the same name, which
replaces the stand-in for every later load and save.
"""

import importlib

import keras


def register_lazy_class(package, name, target):
    """Registers `package>name` for `target` (`"module:Class"`), imported
    when a config naming it is first deserialized. Does nothing when the
    name is registered already (the real class imported first)."""
    if keras.saving.get_registered_object(f"{package}>{name}") is not None:
        return

    class Deferred:
        __doc__ = f"Stands for `{target}` until it is imported."

        def get_config(self):  # required by the registration; never called
            raise NotImplementedError

        @classmethod
        def from_config(cls, config):
            module, _, attribute = target.partition(":")
            real = getattr(importlib.import_module(module), attribute)
            return real.from_config(config)

    Deferred.__name__ = Deferred.__qualname__ = name
    keras.saving.register_keras_serializable(package=package, name=name)(
        Deferred)

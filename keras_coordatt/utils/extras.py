"""Optional dependencies, imported where they are needed.

A missing one is a `MissingExtraError` that says in one line what needs it
and the pip command that installs it; the command line prints that line
(exit 2) instead of a traceback.
"""

import importlib


class MissingExtraError(ImportError):
    """An optional dependency is not installed."""


def require(module, extra, purpose):
    """Imports and returns `module`.

    Args:
        module: the module to import (e.g. `"keras_hub"`).
        extra: the keras-coordatt extra that installs it (e.g. `"hub"`).
        purpose: what needs it, for the message (e.g. "Segmentation").

    Raises:
        MissingExtraError: `module` cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}, which is not "
            f"installed: pip install \"keras-coordatt[{extra}]\" "
            f"({type(error).__name__}: {error})"
        ) from error

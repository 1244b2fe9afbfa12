"""Quiet command lines: TensorFlow's C++ start-up logs and known harmless
warnings are hidden unless the user asks for them (`keras-coordatt
--verbose ...` or `KERAS_COORDATT_VERBOSE=1`).

TensorFlow and XLA write their start-up lines (`I0000 ... cudart_stub.cc`,
`oneDNN custom operations are on`) from C++ straight to file descriptor 2,
some before `TF_CPP_MIN_LOG_LEVEL` is read, so the only way to hide them is to
point that descriptor elsewhere while TensorFlow is imported.
"""

import contextlib
import os
import sys
import warnings

# Harmless for our users, printed by libraries on every run.
HARMLESS_WARNINGS = (
    r".*`trackable_obj`.*",  # TFLiteConverter.from_concrete_functions
    r".*Your input ran out of data.*",  # Keras, after a finite evaluation
    r".*tf\.data.*is deprecated.*",
)


def running_command_line():
    """Whether this process is the `keras-coordatt` command, not verbose."""
    argv = sys.argv or [""]
    return os.path.basename(argv[0]) == "keras-coordatt" and not \
        verbose_requested(argv[1:])


def verbose_requested(argv):
    """Whether `--verbose` leads `argv` or KERAS_COORDATT_VERBOSE is set."""
    return bool(argv and argv[0] == "--verbose") or os.environ.get(
        "KERAS_COORDATT_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def quiet_imports(verbose=False):
    """Hides C++ log lines written while the block imports TensorFlow.

    Python errors raised in the block are still shown: the descriptor is
    restored before they propagate.
    """
    if verbose:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)

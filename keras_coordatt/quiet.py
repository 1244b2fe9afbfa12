"""Quiet command lines: TensorFlow's C++ start-up logs and known harmless
warnings are hidden unless the user asks for them (`keras-coordatt
--logs ...` or `KERAS_COORDATT_LOGS=1`). (`--verbose` is the subcommands'
progress flag, as Keras' `fit(verbose=...)`: one meaning.)

TensorFlow and XLA write their start-up lines (`I0000 ... cudart_stub.cc`,
`oneDNN custom operations are on`) from C++ straight to file descriptor 2,
some before `TF_CPP_MIN_LOG_LEVEL` is read, so the only way to hide them is to
point that descriptor elsewhere while TensorFlow is imported.
"""

import contextlib
import logging
import os
import re
import sys
import warnings

# Harmless for our users, printed by libraries on every run.
HARMLESS_WARNINGS = (
    r".*trackable_obj.*",  # TFLiteConverter.from_concrete_functions
    r".*Your input ran out of data.*",  # Keras, after a finite evaluation
    r".*tf\.data.*is deprecated.*",
    r"Statistics for quantized inputs were expected.*",  # TFLite PTQ
)
_QUIET = {"on": False}  # set once the command line asked for quiet


LOGS_FLAG = "--logs"


def running_command_line():
    """Whether this process is the `keras-coordatt` command, logs hidden."""
    argv = sys.argv or [""]
    return os.path.basename(argv[0]) == "keras-coordatt" and not \
        logs_requested(argv[1:])


def logs_requested(argv):
    """Whether `--logs` leads `argv` or KERAS_COORDATT_LOGS is set."""
    return bool(argv and argv[0] == LOGS_FLAG) or os.environ.get(
        "KERAS_COORDATT_LOGS", "") not in ("", "0")


@contextlib.contextmanager
def quiet_imports(verbose=False):
    """Hides C++ log lines written while the block imports TensorFlow.

    Python errors raised in the block are still shown: the descriptor is
    restored before they propagate.
    """
    if verbose:
        yield
        return
    _QUIET["on"] = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # TensorFlow's Python side logs through absl's logger ("WARNING:absl:"),
    # whose level absl.logging.set_verbosity resets later: a filter stays.
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.ERROR)
    if not any(isinstance(f, _Harmless) for f in absl_logger.filters):
        absl_logger.addFilter(_Harmless())
    with _descriptors_to_devnull((2,)):
        yield


class _Harmless(logging.Filter):
    """Drops log records whose message is one of HARMLESS_WARNINGS."""

    def filter(self, record):
        message = record.getMessage()
        return not any(re.match(p, message) for p in HARMLESS_WARNINGS)


@contextlib.contextmanager
def native_output_hidden():
    """Hides what C++ code prints in the block (the TFLite converter's
    `fully_quantize: 0, inference_type: 6 ...`), once the command line asked
    for quiet; a no-op otherwise (a library user sees everything)."""
    if not _QUIET["on"]:
        yield
        return
    with _descriptors_to_devnull((1, 2)):
        yield


@contextlib.contextmanager
def _descriptors_to_devnull(descriptors):
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in descriptors]
    try:
        with open(os.devnull, "w") as devnull:
            for fd in descriptors:
                os.dup2(devnull.fileno(), fd)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, copy in zip(descriptors, saved):
                    os.dup2(copy, fd)
    finally:
        for copy in saved:
            os.close(copy)

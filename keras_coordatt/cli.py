"""The `keras-coordatt` command line: convert, train, quantize, export.

Each subcommand lives with the module it drives and parses its own
arguments; this file only dispatches, importing the module on demand.
"""

import importlib
import sys

from keras_coordatt.quiet import quiet_imports
from keras_coordatt.quiet import LOGS_FLAG
from keras_coordatt.quiet import logs_requested
from keras_coordatt.utils.extras import MissingExtraError

COMMANDS = {
    "convert": ("keras_coordatt.weights.cli", "convert PyTorch weights"),
    "train": ("keras_coordatt.training.cli", "train or fine-tune a model"),
    "quantize": ("keras_coordatt.quantization.cli", "QAT and int8 TFLite"),
    "export": ("keras_coordatt.export.cli", "hub models: preset, SavedModel, "
               "LiteRT, ONNX"),
}


def _usage():
    lines = [f"usage: keras-coordatt [{LOGS_FLAG}] COMMAND [ARGS]", "",
             f"{LOGS_FLAG} shows TensorFlow's own logs and warnings (the "
             "commands' --verbose sets their progress output).", "",
             "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines.append("\n`keras-coordatt COMMAND --help` describes each command.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = logs_requested(argv)
    if argv and argv[0] == LOGS_FLAG:
        argv = argv[1:]
    if argv and argv[0] == "--verbose":  # Its meaning before the commands.
        print(f"keras-coordatt: --verbose goes after the command (progress "
              f"output); {LOGS_FLAG} shows TensorFlow's logs. Received: "
              f"keras-coordatt --verbose {' '.join(argv[1:2])}",
              file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(
            f"keras-coordatt: unknown command {argv[0]!r}; expected one of "
            f"{', '.join(COMMANDS)}.\n\n{_usage()}",
            file=sys.stderr,
        )
        return 2
    with quiet_imports(verbose):
        module = importlib.import_module(COMMANDS[argv[0]][0])
        import tensorflow  # noqa: F401  (its C++ start-up logs, here)
    try:
        return module.main(argv[1:])
    except MissingExtraError as error:  # one line: what to install
        print(f"keras-coordatt {argv[0]}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `keras-coordatt` command line: convert, train, quantize, export.

Each subcommand lives with the module it drives and parses its own
arguments; this file only dispatches, importing the module on demand.
"""

import importlib
import sys

from keras_coordatt.quiet import quiet_imports
from keras_coordatt.quiet import verbose_requested
from keras_coordatt.utils.extras import MissingExtraError

COMMANDS = {
    "convert": ("keras_coordatt.weights.cli", "convert PyTorch weights"),
    "train": ("keras_coordatt.training.cli", "train or fine-tune a model"),
    "quantize": ("keras_coordatt.quantization.cli", "QAT and int8 TFLite"),
    "export": ("keras_coordatt.export.cli", "hub models: preset, SavedModel, "
               "LiteRT, ONNX"),
}


def _usage():
    lines = ["usage: keras-coordatt [--verbose] COMMAND [ARGS]", "",
             "--verbose shows TensorFlow's own logs and warnings.", "",
             "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines.append("\n`keras-coordatt COMMAND --help` describes each command.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = verbose_requested(argv)
    if argv and argv[0] == "--verbose":
        argv = argv[1:]
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

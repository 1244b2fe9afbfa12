"""The `keras-coordatt` command line: convert, train, quantize, export.

Each subcommand lives with the module it drives and parses its own
arguments; this file only dispatches, importing the module on demand.
"""

import importlib
import sys

COMMANDS = {
    "convert": ("keras_coordatt.weights.cli", "convert PyTorch weights"),
    "train": ("keras_coordatt.training.cli", "train or fine-tune a model"),
    "quantize": ("keras_coordatt.quantization.cli", "QAT and int8 TFLite"),
    "export": ("keras_coordatt.export.cli", "hub models: preset, SavedModel, "
               "LiteRT, ONNX"),
}


def _usage():
    lines = ["usage: keras-coordatt COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines.append("\n`keras-coordatt COMMAND --help` describes each command.")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
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
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

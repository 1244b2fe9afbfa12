"""`keras-coordatt export`: hub artifacts (.keras, keras-hub preset,
SavedModel, LiteRT, ONNX).

Examples:

    keras-coordatt export --model mobilenetv2_ca --alpha 1.0 \\
        --weights imagenet --format saved_model --variant feature_vector \\
        --output saved_models/mobilenetv2_ca_1.0_224_feature_vector
    keras-coordatt export --model runs/digits/model.keras --format litert \\
        --output exports/digits_litert

`--model` is a registered application (built from --alpha, --input-size,
--classes, --weights) or a `.keras` file, whose architecture and weights
come from the file: flags given with it must agree with it.

Bad arguments (unknown format or variant, missing weights file, existing
output) exit with status 2 and a one-line message, before anything is
written; a failed export (including a failed verification) exits with 1
and leaves no output folder.
"""

import argparse
import json
import os
import sys
import time

PROG = "keras-coordatt export"


def _parser():
    from keras_coordatt.applications.registry import DEFAULT_APPLICATION
    from keras_coordatt.applications.registry import application_names
    from keras_coordatt.export.exporter import VARIANTS
    from keras_coordatt.export.formats import FORMATS

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a Coordinate Attention model to a hub format: "
        "a .keras file (keras), a keras-hub preset (keras-hub), a TF "
        "SavedModel, a LiteRT "
        "(.tflite) model or ONNX. The output is a folder holding the "
        "artifact and metadata.json; it is checked against the Keras model "
        "on random images before it is moved into place.",
    )
    parser.add_argument("--model", default=DEFAULT_APPLICATION,
                        help=f"one of {', '.join(application_names())} "
                        f"(default {DEFAULT_APPLICATION}), or a .keras file "
                        "(the architecture and weights are read from it)")
    # Architecture flags default to None ("not given"): with a .keras file
    # only the given ones are checked against it.
    parser.add_argument("--alpha", type=float,
                        help="width multiplier (default 1.0)")
    parser.add_argument("--weights",
                        help="'imagenet' (default: the authors' checkpoint, "
                        "downloaded), 'none' (random) or a weights file "
                        "(.weights.h5, .keras, .h5, .pth, .pt)")
    parser.add_argument("--format", required=True, dest="export_format",
                        help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--variant", default="classification",
                        help=f"one of {', '.join(VARIANTS)} (default "
                        "classification)")
    parser.add_argument("--output", required=True,
                        help="output folder (must not exist)")
    parser.add_argument("--input-size", type=int,
                        help="square image size (default 224)")
    parser.add_argument("--classes", type=int,
                        help="classes of the classifier (default 1000)")
    parser.add_argument("--logits", action="store_true",
                        help="classifier without softmax")
    parser.add_argument("--int8", action="store_true",
                        help="litert only: post-training int8 quantization "
                        "(needs keras_coordatt.quantization)")
    parser.add_argument("--representative",
                        help="with --int8: a .npy of RGB images in [0, 255] "
                        "(N, H, W, 3) or a folder of images")
    parser.add_argument("--num-samples", type=int, default=200,
                        help="with --int8: calibration images (default 200)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output folder")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the comparison with the Keras model")
    return parser


def main(argv=None):
    """Runs `keras-coordatt export`; returns the exit status."""
    started = time.time()
    args = _parser().parse_args(argv)
    try:
        export = _prepare(args)
        if os.path.lexists(args.output) and not args.overwrite:
            raise FileExistsError(
                f"the output {args.output!r} already exists (use "
                "--overwrite to replace it)")
    except (ValueError, FileNotFoundError, FileExistsError,
            RuntimeError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    _remove_killed_exports(args.output, started)
    try:
        metadata = export(
            args.output, args.export_format, variant=args.variant,
            int8=args.int8, representative=args.representative,
            num_samples=args.num_samples, overwrite=args.overwrite,
            verify=not args.no_verify)
    except Exception as e:  # noqa: BLE001 (reported, output removed)
        print(f"{PROG}: export failed, nothing was written: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    summary = {
        "output": os.path.abspath(args.output),
        "format": metadata["format"],
        "variant": metadata["variant"],
        "parameters": metadata["parameter_count"]["total"],
        "verification": metadata.get("verification"),
    }
    print(json.dumps(summary, indent=2))
    return 0


def _prepare(args):
    """Checks the arguments (and loads a .keras file, checking the flags
    against it); returns the export function, its model arguments bound.

    Raises:
        ValueError, FileNotFoundError, RuntimeError: bad arguments.
    """
    import functools

    from keras_coordatt.export import exporter
    from keras_coordatt.export import model_file

    weights = args.weights
    if weights is not None and weights.lower() == "none":
        weights = None
    if model_file.is_model_file(args.model):
        exporter.check_format(args.export_format, args.variant,
                              int8=args.int8,
                              representative=args.representative)
        source = model_file.load_model_file(
            args.model, args.variant, alpha=args.alpha,
            input_size=args.input_size, classes=args.classes,
            logits=args.logits, weights=args.weights)
        if args.export_format == "keras-hub":  # refused before any export
            from keras_coordatt.hub.from_application import find_application

            find_application(source.model, source.run_config, source.path)
        return functools.partial(exporter.export_model_file, source=source)
    weights = "imagenet" if args.weights is None else weights
    exporter.check_arguments(
        args.model, weights, args.export_format, args.variant,
        int8=args.int8, representative=args.representative)
    return functools.partial(
        exporter.export_model, model_name=args.model,
        alpha=1.0 if args.alpha is None else args.alpha, weights=weights,
        input_size=224 if args.input_size is None else args.input_size,
        classes=1000 if args.classes is None else args.classes,
        classifier_activation=None if args.logits else "softmax")


def _remove_killed_exports(output, started):
    """Removes the hidden folders that killed exports into `output` left
    (`.NAME.tmp-*` being written, `.NAME.old-*` being replaced: the
    prefixes of `atomic_directory`), those older than this run only: a
    younger one belongs to an export still running."""
    from keras_coordatt.utils.atomic import remove_stale

    output = os.path.abspath(output)
    parent, name = os.path.split(output)
    # A `.old-` folder is the only copy when the kill came between its two
    # renames (no `output` then): it stays.
    prefixes = (f".{name}.tmp-",) + (
        (f".{name}.old-",) if os.path.isdir(output) else ())
    if os.path.isdir(parent):
        removed = remove_stale(parent, prefixes,
                               max_age=time.time() - started)
        for entry in removed:
            print(f"{PROG}: removed {os.path.join(parent, entry)}, left by "
                  "a killed export", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

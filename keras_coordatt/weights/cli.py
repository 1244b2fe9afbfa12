"""`keras-coordatt convert`: the authors' `.pth` to a Keras `.weights.h5`."""

import argparse
import math
import os
import sys


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-coordatt convert",
        description="Convert a PyTorch MobileNetV2 + CA checkpoint (the "
        "layout of the authors' mbv2_ca.pth) to Keras weights, without "
        "PyTorch.",
    )
    parser.add_argument("checkpoint", help="path to the .pth/.pt file")
    parser.add_argument("-o", "--output", required=True,
                        help="output file, ending in .weights.h5 or .keras")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="width multiplier of the checkpoint (1.0)")
    parser.add_argument("--no-top", action="store_true",
                        help="drop the classifier (include_top=False)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if not args.output.endswith((".weights.h5", ".keras")):
        print(f"keras-coordatt convert: --output must end in .weights.h5 or "
              f".keras. Received: {args.output!r}", file=sys.stderr)
        return 2
    if not os.path.isfile(args.checkpoint):
        print(f"keras-coordatt convert: no such file: {args.checkpoint!r}",
              file=sys.stderr)
        return 2
    from keras_coordatt.applications import MobileNetV2CA
    from keras_coordatt.utils.atomic import atomic_file
    from keras_coordatt.weights import load_torch_state_dict
    from keras_coordatt.weights import load_torch_weights

    state_dict = load_torch_state_dict(args.checkpoint)
    classes = 1000
    if "classifier.1.weight" in state_dict:
        classes = int(state_dict["classifier.1.weight"].shape[0])
    model = MobileNetV2CA(alpha=args.alpha, weights=None, classes=classes,
                          include_top=not args.no_top)
    load_torch_weights(model, state_dict)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    # A failed or interrupted save leaves any earlier output as it was.
    with atomic_file(args.output) as tmp:
        if args.output.endswith(".keras"):
            model.save(tmp)
        else:
            model.save_weights(tmp)
    params = sum(math.prod(v.shape) for v in model.trainable_weights)
    print(f"Converted {len(state_dict)} tensors from {args.checkpoint} into "
          f"{model.name} ({params:,} trainable parameters, {classes} "
          f"classes): {args.output}")
    return 0


"""`keras-coordatt train`: train or fine-tune from the command line.

    keras-coordatt train                                  # digits demo
    keras-coordatt train --model mobilenetv2_ca --alpha 0.35 \\
        --dataset digits --epochs 3
    keras-coordatt train --model keras:MobileNetV3Small --attention ca \\
        --dataset tfds:tf_flowers                         # keras.applications
    keras-coordatt train --model runs/X/model.keras --dataset npz:more.npz
    keras-coordatt train --config paper_imagenet --data-dir ~/tfds \\
        --strategy auto --resume
    keras-coordatt train --config transfer --dataset tfds:tf_flowers \\
        --set weights=/path/to/mbv2_ca.weights.h5
    keras-coordatt train --task segmentation              # mnist-seg demo
    keras-coordatt train --task segmentation --dataset tfds:oxford_iiit_pet
    keras-coordatt train --task detection                 # mnist-det demo
    keras-coordatt train --task detection --dataset tfds:voc --image-size 320

Flags override the recipe picked by `--config` (default: a named
dataset's own recipe, `digits` for classification without `--dataset`,
`mnist_seg` for segmentation, `mnist_det` for detection, else
`paper_imagenet`); `--set KEY=VALUE` reaches every `TrainConfig`
field. The run ends by printing the validation metrics and the
path of the saved `.keras` model.
"""

import argparse
import json
import sys

from keras_coordatt.layers.registry import attention_names
from keras_coordatt.training.fit import TrainingError
from keras_coordatt.training.fit import train
from keras_coordatt.training.models import accepted_models
from keras_coordatt.training.models import check_model
from keras_coordatt.training.models import file_signature
from keras_coordatt.training.models import is_model_file
from keras_coordatt.training.models import keras_family
from keras_coordatt.training.recipes import PRECISIONS
from keras_coordatt.training.recipes import RECIPES
from keras_coordatt.training.recipes import STRATEGY_NAMES
from keras_coordatt.training.recipes import get_config
from keras_coordatt.training.recipes import parse_overrides
from keras_coordatt.training.tasks import default_recipe
from keras_coordatt.training.tasks import task_names

# Flag -> TrainConfig field.
_FLAG_FIELDS = {
    "task": "task",
    "model": "model",
    "alpha": "alpha",
    "dataset": "dataset",
    "data_dir": "data_dir",
    "manual_dir": "manual_dir",
    "image_size": "image_size",
    "epochs": "epochs",
    "batch_size": "per_replica_batch_size",
    "lr": "base_learning_rate",
    "weight_decay": "weight_decay",
    "weights": "weights",
    "strategy": "strategy",
    "tpu": "tpu",
    "output_dir": "output_dir",
    "mixed_precision": "mixed_precision",
    "jit_compile": "jit_compile",
    "seed": "seed",
    "backup_every": "backup_every",
}


FOLDER_LAYOUTS = """\
folder:PATH layouts (images: .jpg .jpeg .png .bmp .gif):
  classification  PATH/CLASS/IMAGE (10 % held out, seeded), or
                  PATH/train/CLASS/IMAGE with PATH/val/CLASS/IMAGE
                  (or validation/, test/)
  segmentation    PATH/images/STEM.jpg with PATH/masks/STEM.png: one class
                  id per pixel (palette or grayscale PNG, 16-bit kept),
                  255 ignored; optional PATH/classes.txt, one name a line
npz:PATH          x_train (N, H, W[, 1 or 3]) in [0, 255], y_train (N,)
                  integer labels[, x_val, y_val]
"""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-coordatt train",
        description="Train or fine-tune MobileNetV2-CA / MobileNeXt-CA, a "
        "keras.applications network with attention or a .keras file with "
        "model.fit: strategy, input pipeline, recipe, mixed precision, "
        "backups, checkpoints and logs.",
        epilog=FOLDER_LAYOUTS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--task", choices=task_names(),
        help="classification (default), segmentation (DeepLabV3 on the "
        "network; datasets mnist-seg (default), digits-seg, "
        "tfds:oxford_iiit_pet, folder:PATH with images/ and masks/) or "
        "detection (RetinaNet on the network, COCO mAP; datasets mnist-det "
        "(default), digits-det, tfds:voc, tfds:coco)",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in the output folder from its backup",
    )
    add_overwrite_argument(parser)
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="0 silent, 1 progress bars, 2 a line per epoch")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit")
    return parser


def add_overwrite_argument(parser):
    """`--overwrite` (shared with `quantize`)."""
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an output folder that holds a finished or "
        "unfinished run (its results and backup are deleted)",
    )


def add_config_arguments(parser):
    """The flags that make a `TrainConfig` (see `resolve_config`), shared by
    `train` and `quantize`."""
    parser.add_argument(
        "--config", default=None,
        help=f"recipe ({', '.join(RECIPES)}) or JSON config file; default: "
        "a named dataset's own (digits, mnist_seg, mnist_det, ...), else "
        "paper_imagenet",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[],
        metavar="KEY=VALUE",
        help="override any config field (repeatable), e.g. --set "
        "warmup_epochs=0 --set random_crop_scale=[0.5,1]",
    )
    parser.add_argument(
        "--model", type=_model_argument, metavar="MODEL",
        help=f"{accepted_models()} (fine-tuned as it is: no --alpha, "
        "--attention or --weights; --image-size is the file's). With "
        "--task segmentation|detection: the encoder, also keras:NAME "
        "(its pyramid by strides) or the .keras file of a keras-hub "
        "Backbone",
    )
    parser.add_argument("--alpha", type=float, help="width multiplier")
    parser.add_argument("--attention", choices=attention_names() + ("none",),
                        help="attention blocks (none: the plain network)")
    parser.add_argument(
        "--dataset",
        help="digits (offline), tfds:NAME (e.g. tfds:imagenet2012, "
        "tfds:tf_flowers), folder:PATH or npz:PATH; for segmentation "
        "mnist-seg (real digits, the default) or digits-seg (offline), "
        "tfds:oxford_iiit_pet or folder:PATH; for detection mnist-det "
        "(real digits, the default) or digits-det (offline), tfds:voc or "
        "tfds:coco",
    )
    parser.add_argument("--data-dir", help="tensorflow-datasets data dir")
    parser.add_argument(
        "--manual-dir", help="manually downloaded archives (ImageNet tars)"
    )
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int,
                        help="batch size per replica")
    parser.add_argument("--lr", type=float,
                        help="base learning rate for a batch of "
                        "base_batch_size (256), scaled linearly")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--weights",
                        help="imagenet or a weights file to start from")
    parser.add_argument("--strategy", choices=STRATEGY_NAMES)
    parser.add_argument("--tpu", help="TPU name/address ('local' on TPU VMs)")
    parser.add_argument("--output-dir",
                        help="run folder (default runs/MODEL-DATASET)")
    parser.add_argument("--mixed-precision", choices=PRECISIONS)
    parser.add_argument("--jit-compile", choices=("auto", "true", "false"))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--backup-every", type=int, metavar="STEPS",
                        help="also back up every STEPS steps mid-epoch")
    parser.add_argument("--deterministic", action="store_true",
                        default=None, help="reproducible (slower) run")


def resolve_config(args):
    """The `TrainConfig` of parsed arguments: recipe, --set, then flags."""
    name = args.config or default_recipe(args.task, args.dataset)
    overrides = parse_overrides(args.overrides)
    for flag, field in _FLAG_FIELDS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    if args.jit_compile is not None:
        overrides["jit_compile"] = {
            "auto": "auto", "true": True, "false": False
        }[args.jit_compile]
    if args.deterministic:
        overrides["deterministic"] = True
    if args.attention is not None:
        overrides["attention"] = args.attention != "none" and args.attention
    return _check_model_flags(get_config(name, overrides), overrides)


# What a `.keras` file fixes (the first three shape its variables, the
# file holds its weights): flags for them are refused, not ignored.
_FILE_FIXES = ("alpha", "attention", "reduction", "weights")


def _model_argument(value):
    try:
        check_model(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _flag(field):
    """The flag that sets config `field` (`--set field=` for the others)."""
    for flag, name in {**_FLAG_FIELDS, "attention": "attention"}.items():
        if name == field:
            return "--" + flag.replace("_", "-")
    return f"--set {field}"


def _check_model_flags(config, overrides):
    """`config`, after refusing flags (`overrides`) that do not apply to
    its model; a `.keras` file's image size becomes the run's."""
    model = config.model
    family = keras_family(model)
    if family is not None and not family.alpha and "alpha" in overrides:
        raise ValueError(
            f"{family.name} has no width multiplier: leave out "
            f"{_flag('alpha')}. Received: alpha={overrides['alpha']!r}")
    if not is_model_file(model):
        return config
    for field in _FILE_FIXES:
        if field in overrides:
            raise ValueError(
                f"{_flag(field)} does not apply to a .keras file: the file "
                f"fixes its network and weights. Received: {field}="
                f"{overrides[field]!r} with model={model!r}")
    size, _ = file_signature(model)
    given = overrides.get("image_size")
    if size is not None and given not in (None, size):
        raise ValueError(
            f"{_flag('image_size')} disagrees with the model file {model}, "
            f"which takes {size}x{size} images. Received: image_size="
            f"{given}; pass {size} or leave it out")
    return config if size is None else config.replace(image_size=size)


def main(argv=None):
    """Runs `keras-coordatt train ARGS`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = resolve_config(args)
    except ValueError as e:
        print(f"keras-coordatt train: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    try:
        result = train(config, resume=args.resume, verbose=args.verbose,
                       overwrite=args.overwrite)
    except TrainingError as e:  # The run itself failed: exit 1.
        print(f"keras-coordatt train: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # Bad input (arguments, data): exit 2.
        print(f"keras-coordatt train: {e}", file=sys.stderr)
        return 2
    metrics = " | ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    print(f"Validation metrics: {metrics}")
    print(f"Optimizer steps: {result.optimizer_iterations} "
          f"({result.steps_per_epoch} per epoch); wall time "
          f"{result.wall_time:.1f} s")
    print(f"Model saved to {result.model_path}")
    return 0


"""`keras-coordatt quantize`: QAT fine-tuning and int8 TFLite, with a report.

    # The README's main job: the digits model of `keras-coordatt train`.
    keras-coordatt quantize --model runs/digits/model.keras --dataset digits \\
        --qat-epochs 2 --output runs/digits/model_int8.tflite
    # From scratch: 12 float epochs first (the digits recipe), then QAT.
    keras-coordatt quantize --model mobilenetv2_ca --alpha 0.35 \\
        --dataset digits --epochs 12 --output model_int8.tflite

The data and the training are `keras-coordatt train`'s: the same
`--dataset` forms (digits, npz:PATH, folder:PATH, tfds:NAME), recipes,
`--set KEY=VALUE` and flags. `--epochs N` first trains the float model with
`train()`; the QAT twin (`quantize_model`, calibrated on training images)
is then fine-tuned by `train()` too, for `--qat-epochs` epochs at
`--qat-learning-rate-factor` times the recipe's learning rate, in its own run
folder. The float model is converted to float TFLite and to post-training
int8 TFLite (the baseline), the QAT twin to int8 TFLite; the report gives
the validation accuracy of each `.tflite` (LiteRT interpreter), the file
sizes, the Keras-vs-TFLite agreement of the QAT model and the int8 op check.
"""

import argparse
import contextlib
import functools
import json
import sys
import time

import numpy as np

from keras_coordatt.training.cli import add_config_arguments
from keras_coordatt.training.cli import add_overwrite_argument

# Not recipe settings for a QAT fine-tune: the twin has no BatchNorm to
# recalibrate, starts from trained weights (no warm-up), and trains in
# float32 (its fake-quantization is the precision it learns).
_QAT_SETTINGS = dict(warmup_fraction=0.0, bn_recalibration_steps=0,
                     mixed_precision="float32", weights=None)


def _parser():
    p = argparse.ArgumentParser(
        prog="keras-coordatt quantize",
        description="Quantization-aware fine-tuning and int8 TFLite export, "
        "on keras-coordatt train's data and training.",
    )
    add_config_arguments(p)
    p.set_defaults(task="classification")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-learning-rate-factor", type=float, default=0.1,
                   help="QAT learning rate over the recipe's (default 0.1)")
    p.add_argument("--ptq-samples", type=int, default=200,
                   help="calibration images of the post-training baseline")
    p.add_argument("--int8-io", action="store_true",
                   help="int8 model input and output (default float I/O)")
    p.add_argument("--output", default="model_int8.tflite",
                   help="path of the QAT int8 .tflite")
    p.add_argument("--ptq-output", default=None)
    p.add_argument("--float-output", default=None)
    p.add_argument("--json", default=None,
                   help="optional path for the results as JSON")
    p.add_argument(
        "--resume", action="store_true",
        help="continue the interrupted training runs (float with --epochs, "
        "then QAT in OUTPUT_DIR-qat) from their backups")
    add_overwrite_argument(p)
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="0 silent, 1 progress bars, 2 a line per epoch "
                   "(as `train`); 1 and 2 also name each stage and its "
                   "time (QAT, conversions, evaluation)")
    return p


def _configs(args):
    """The run's `TrainConfig` (its model a registered network, a
    `keras:NAME` or a `.keras` file, as `keras-coordatt train` takes) and
    the float epochs."""
    from keras_coordatt.training.cli import resolve_config

    epochs, args.epochs = args.epochs or 0, None
    return resolve_config(args), epochs


def _qat_config(config, args):
    from keras_coordatt.training.fit import default_output_dir

    return config.replace(
        epochs=args.qat_epochs, transfer=False, frozen_epochs=0,
        base_learning_rate=config.base_learning_rate
        * args.qat_learning_rate_factor,
        output_dir=(config.output_dir or default_output_dir(config))
        + "-qat",
        **_QAT_SETTINGS,
    )


def _float_model(config, epochs, source, verbose, runs):
    """The float model `config.model` builds (a `.keras` file: loaded),
    trained first by `train()` when `--epochs` is given."""
    from keras_coordatt.training.fit import train
    from keras_coordatt.training.models import build_model

    if epochs:
        return train(config.replace(epochs=epochs), source=source,
                     verbose=verbose, **runs).model
    model, _ = build_model(
        config.model, source.num_classes, image_size=config.image_size,
        alpha=config.alpha, weights=config.weights,
        reduction=config.reduction, attention=config.attention,
    )
    return model


def run(args):
    """Runs the quantize pipeline; returns the results dict."""
    from keras_coordatt import quantization as q
    from keras_coordatt.training.fit import input_pipelines
    from keras_coordatt.training.fit import load_config_source
    from keras_coordatt.training.fit import train

    config, epochs = _configs(args)
    source = load_config_source(config)
    # What to do with the folders of earlier (killed or finished) runs.
    runs = dict(resume=args.resume, overwrite=args.overwrite)
    model = _float_model(config, epochs, source, args.verbose, runs)
    train_data, val_data = input_pipelines(
        config, source, config.per_replica_batch_size)

    def twin():
        return q.quantize_model(model, calibration_data=train_data,
                                calibration_steps=4)

    stage = functools.partial(_stage, verbose=args.verbose)
    if args.qat_epochs:
        with stage(f"QAT fine-tuning, {args.qat_epochs} epoch(s)"):
            qat = train(_qat_config(config, args), source=source,
                        model=twin, verbose=args.verbose, **runs).model
    else:
        with stage("QAT model (no fine-tuning: --qat-epochs 0)"):
            qat = twin()
    blobs = {}
    with stage("Converting the float model to LiteRT"):
        blobs["float"] = q.convert_float(model, path=args.float_output)
    with stage(f"Post-training int8 (calibrating on {args.ptq_samples} "
               "images)"):
        blobs["ptq_int8"] = q.convert_ptq(
            model, train_data, num_samples=args.ptq_samples,
            int8_io=args.int8_io, path=args.ptq_output)
    with stage("Converting the QAT model to int8 LiteRT"):
        blobs["qat_int8"] = q.convert_qat(qat, int8_io=args.int8_io,
                                          path=args.output)
    with stage("Evaluating the three files on the validation images"):
        return _report(blobs, qat, val_data, args.int8_io)


@contextlib.contextmanager
def _stage(what, verbose):
    """Says what runs and, after it, how long it took (verbose > 0): the
    conversions and evaluation print nothing of their own for minutes."""
    if verbose:
        print(f"{what} ...", flush=True)
    started = time.monotonic()
    yield
    if verbose:
        print(f"  done in {time.monotonic() - started:.1f} s", flush=True)


def _report(blobs, qat, val_data, int8_io):
    """Accuracy and size of each `.tflite` on the validation data; the QAT
    Keras model's accuracy and agreement with its int8 file; op check."""
    from keras_coordatt import quantization as q

    labels = np.concatenate([np.asarray(y) for _, y, *_ in val_data])
    results = {"num_test": int(len(labels))}
    evaluations = {name: q.evaluate_tflite(blob, val_data)
                   for name, blob in blobs.items()}
    for name, evaluation in evaluations.items():
        results[name] = {"accuracy": evaluation["accuracy"],
                         "size_bytes": len(blobs[name])}
    keras_pred = qat.predict(val_data, verbose=0).argmax(-1)
    results["qat_keras_accuracy"] = float(np.mean(keras_pred == labels))
    results["qat_keras_tflite_agreement"] = float(
        np.mean(keras_pred == evaluations["qat_int8"]["predictions"]))
    report = q.check_int8(blobs["qat_int8"], int8_io=int8_io)
    results["qat_int8"]["op_counts"] = report["op_counts"]
    results["qat_int8"]["tensor_types"] = report["tensor_types"]
    return results


def _print(results, args):
    print(f"\nValidation images: {results['num_test']} (LiteRT interpreter)")
    print(f"{'model':<10} {'top-1':>8} {'size':>10}")
    for name in ("float", "ptq_int8", "qat_int8"):
        r = results[name]
        print(f"{name:<10} {100 * r['accuracy']:>7.2f}% "
              f"{r['size_bytes'] / 1024:>8.1f} KiB")
    print(f"QAT Keras top-1: {100 * results['qat_keras_accuracy']:.2f}%; "
          f"Keras vs TFLite top-1 agreement: "
          f"{100 * results['qat_keras_tflite_agreement']:.2f}%")
    types = results["qat_int8"]["tensor_types"]
    print(f"int8 op check: passed; tensor types {types}; "
          f"ops {results['qat_int8']['op_counts']}")
    print(f"wrote {args.output}")


def main(argv=None):
    """Entry point of `keras-coordatt quantize`; returns the exit status
    (2 for bad input, 1 when training fails)."""
    from keras_coordatt.training.fit import TrainingError

    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    for flag in ("qat_epochs", "ptq_samples"):
        value = getattr(args, flag)
        if value < (0 if flag == "qat_epochs" else 1):
            print(f"keras-coordatt quantize: --{flag.replace('_', '-')} must "
                  f"be >= {0 if flag == 'qat_epochs' else 1}. "
                  f"Received: {value}", file=sys.stderr)
            return 2
    if args.resume and args.overwrite:
        print("keras-coordatt quantize: --resume and --overwrite exclude "
              "each other. Received: both", file=sys.stderr)
        return 2
    try:
        results = run(args)
        _print(results, args)
        if args.json:
            _write_json(results, args.json)
    except TrainingError as error:
        print(f"keras-coordatt quantize: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # WriteError (a full disk) included.
        print(f"keras-coordatt quantize: {error}", file=sys.stderr)
        return 2
    return 0


def _write_json(results, path):
    from keras_coordatt.utils.atomic import atomic_file

    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())

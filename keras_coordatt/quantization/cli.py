"""`keras-coordatt quantize`: QAT fine-tuning and int8 TFLite, with a report.

Example (the offline digits demo, from scratch):

    keras-coordatt quantize --model mobilenetv2_ca --alpha 0.35 \\
        --weights none --float-epochs 8 --dataset digits --image-size 32 \\
        --qat-epochs 2 --output model_int8.tflite

It builds (or loads) the float model, converts it to float TFLite and to
post-training int8 TFLite (the baseline), fine-tunes the QAT twin for
`--qat-epochs` epochs with `model.fit`, converts that to int8 TFLite, and
prints the held-out accuracy of each `.tflite` (LiteRT interpreter), the
file sizes, the Keras-vs-TFLite agreement of the QAT model and the int8 op
check.
"""

import argparse
import json
import os
import sys

import numpy as np

def _parser():
    p = argparse.ArgumentParser(
        prog="keras-coordatt quantize",
        description="Quantization-aware fine-tuning and int8 TFLite export.",
    )
    p.add_argument("--model", default="mobilenetv2_ca",
                   help="a registered application (mobilenetv2_ca, "
                        "mobilenext_ca) or a .keras file of a trained float "
                        "model")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet', 'none', or a weights file (.weights.h5,"
                        " .keras, .pth); ignored when --model is a .keras "
                        "file")
    p.add_argument("--dataset", default="digits",
                   help="'digits' (scikit-learn, offline) or an .npz file "
                        "with x_train, y_train, x_test, y_test (RGB images "
                        "in [0, 255], integer labels)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--float-epochs", type=int, default=0,
                   help="epochs of float training before quantizing (for a "
                        "model without trained weights)")
    p.add_argument("--qat-epochs", type=int, default=3)
    p.add_argument("--augment-copies", type=int, default=2,
                   help="shifted copies of the training images appended "
                        "for the fits (0: none)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=3e-3,
                   help="peak Adam learning rate of float training")
    p.add_argument("--qat-learning-rate", type=float, default=1e-4)
    p.add_argument("--ptq-samples", type=int, default=200)
    p.add_argument("--int8-io", action="store_true",
                   help="int8 model input and output (default float I/O)")
    p.add_argument("--output", default="model_int8.tflite",
                   help="path of the QAT int8 .tflite")
    p.add_argument("--ptq-output", default=None)
    p.add_argument("--float-output", default=None)
    p.add_argument("--save-qat", default=None,
                   help="optional .keras path for the fine-tuned QAT model")
    p.add_argument("--json", default=None,
                   help="optional path for the results as JSON")
    p.add_argument("--seed", type=int, default=0)
    return p


def _load_data(name, image_size, seed):
    if name == "digits":
        from keras_coordatt.quantization.data import load_digits

        return load_digits(image_size, seed=seed)
    if name.endswith(".npz") and os.path.isfile(name):
        from keras_coordatt.applications import preprocess_input

        data = np.load(name)
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(data)
        if missing:
            raise ValueError(
                f"--dataset {name!r} lacks arrays {sorted(missing)}; "
                "expected x_train, y_train, x_test, y_test."
            )
        prep = lambda x: np.asarray(
            preprocess_input(x.astype("float32")), "float32"
        )
        return (prep(data["x_train"]), data["y_train"].astype("int32")), (
            prep(data["x_test"]), data["y_test"].astype("int32")
        )
    raise ValueError(
        "--dataset must be 'digits' or an existing .npz file. "
        f"Received: {name!r}"
    )


def _build_model(args, classes):
    import keras

    if args.model.endswith(".keras"):
        return keras.models.load_model(args.model)
    from keras_coordatt.applications.registry import get_application

    cls = get_application(args.model)
    shape = (args.image_size, args.image_size, 3)
    weights = None if args.weights.lower() == "none" else args.weights
    if weights is None:
        return cls(shape, alpha=args.alpha, weights=None, classes=classes)
    # Pretrained backbone, new classifier for this dataset's classes.
    base = cls(shape, alpha=args.alpha, weights=weights, include_top=False,
               pooling="avg")
    x = keras.layers.Dropout(0.2, name="dropout")(base.output)
    out = keras.layers.Dense(classes, activation="softmax",
                             name="predictions")(x)
    return keras.Model(base.input, out, name=base.name)


def _fit(model, x, y, epochs, batch_size, learning_rate, schedule):
    import keras

    steps = epochs * (-(-len(x) // batch_size))
    lr = keras.optimizers.schedules.CosineDecay(learning_rate, steps) \
        if schedule else learning_rate
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=2)


def run(args):
    """Runs the quantize pipeline; returns the results dict."""
    import keras

    from keras_coordatt import quantization as q

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = _load_data(
        args.dataset, args.image_size, args.seed
    )
    classes = int(max(y_train.max(), y_test.max())) + 1
    model = _build_model(args, classes)
    x_fit, y_fit = x_train, y_train
    if args.augment_copies and (args.float_epochs or args.qat_epochs):
        from keras_coordatt.quantization.data import shift_augment

        x_fit, y_fit = shift_augment(
            x_train, y_train, copies=args.augment_copies,
            max_shift=max(1, args.image_size // 8), seed=args.seed,
        )
    if args.float_epochs:
        _fit(model, x_fit, y_fit, args.float_epochs, args.batch_size,
             args.learning_rate, schedule=True)
    test = (x_test, y_test)
    float_tfl = q.convert_float(model, path=args.float_output)
    ptq_tfl = q.convert_ptq(model, x_train, num_samples=args.ptq_samples,
                            int8_io=args.int8_io, path=args.ptq_output)
    qat = q.quantize_model(model, calibration_data=x_train[:256],
                           calibration_steps=4)
    if args.qat_epochs:
        _fit(qat, x_fit, y_fit, args.qat_epochs, args.batch_size,
             args.qat_learning_rate, schedule=False)
    if args.save_qat:
        qat.save(args.save_qat)
    qat_tfl = q.convert_qat(qat, int8_io=args.int8_io, path=args.output)
    report = q.check_int8(qat_tfl, int8_io=args.int8_io)
    results = {"num_test": int(len(x_test))}
    for name, blob in (("float", float_tfl), ("ptq_int8", ptq_tfl),
                       ("qat_int8", qat_tfl)):
        evaluation = q.evaluate_tflite(blob, test)
        results[name] = {"accuracy": evaluation["accuracy"],
                         "size_bytes": len(blob)}
        if name == "qat_int8":
            keras_pred = qat.predict(x_test, verbose=0).argmax(-1)
            results["qat_keras_accuracy"] = float(
                np.mean(keras_pred == y_test)
            )
            results["qat_keras_tflite_agreement"] = float(
                np.mean(keras_pred == evaluation["predictions"])
            )
    results["qat_int8"]["op_counts"] = report["op_counts"]
    results["qat_int8"]["tensor_types"] = report["tensor_types"]
    return results


def _print(results, args):
    print(f"\nHeld-out images: {results['num_test']} (LiteRT interpreter)")
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
    """Entry point of `keras-coordatt quantize`; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    for flag in ("qat_epochs", "float_epochs", "augment_copies"):
        if getattr(args, flag) < 0:
            print(f"keras-coordatt quantize: --{flag.replace('_', '-')} must "
                  f"be >= 0. Received: {getattr(args, flag)}",
                  file=sys.stderr)
            return 2
    try:
        results = run(args)
    except ValueError as error:
        print(f"keras-coordatt quantize: {error}", file=sys.stderr)
        return 1
    _print(results, args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

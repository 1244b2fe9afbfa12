"""Runs CoordinateAttention on the backend named by KERAS_BACKEND.

Usage: backend_script.py CASE.npz OUT.npz (called by the backend tests).
"""

import sys

import keras
import numpy as np

import numpy_reference as ref
from keras_coordatt import CoordinateAttention


def main(case_path, out_path):
    case = dict(np.load(case_path))
    x = case.pop("x")
    outputs = {"backend": keras.backend.backend()}
    for fmt in ("last", "first"):
        for training in (False, True):
            layer = CoordinateAttention(data_format=f"channels_{fmt}")
            channels = x.shape[-1]
            layer.build((None, channels, None, None) if fmt == "first"
                        else (None, None, None, channels))
            ref.set_layer_weights(layer, case)
            inputs = x if fmt == "last" else np.transpose(x, (0, 3, 1, 2))
            out = keras.ops.convert_to_numpy(layer(inputs, training=training))
            if fmt == "first":
                out = np.transpose(out, (0, 2, 3, 1))
            outputs[f"{fmt}_{int(training)}"] = out
    inp = keras.Input((None, None, x.shape[-1]))
    layer = CoordinateAttention()
    model = keras.Model(inp, layer(inp))
    ref.set_layer_weights(layer, case)
    outputs["model"] = model.predict(x, verbose=0)
    np.savez(out_path, **outputs)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

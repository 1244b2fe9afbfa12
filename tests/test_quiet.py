"""The command line's output has no line the user did not cause: the
converter's absl deprecation warning and LiteRT's XNNPACK INFO line (both
seen in the main job's `quantize`) are hidden in quiet mode, shown with
`--logs`."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import sys
from keras_coordatt import quiet
with quiet.quiet_imports(verbose=sys.argv[1] == "logs"):
    import tensorflow as tf
from absl import logging as absl_logging
absl_logging.set_verbosity(absl_logging.WARNING)  # what TF's modules do
absl_logging.warning("Please consider providing the trackable_obj argument "
                     "in the from_concrete_functions.")
absl_logging.warning("a warning of the user's own")
from keras_coordatt import litert
import keras
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
litert.interpreter(blob, allocate=True)
print("DONE")
"""


def _run(mode):
    return subprocess.run([sys.executable, "-c", _SCRIPT, mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_quiet_mode_hides_known_library_lines_only():
    out = _run("quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DONE" in out.stdout
    assert "trackable_obj" not in out.stderr
    assert "XNNPACK" not in out.stderr + out.stdout
    assert "a warning of the user's own" in out.stderr
    shown = _run("logs")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "trackable_obj" in shown.stderr
    assert "XNNPACK" in shown.stderr + shown.stdout

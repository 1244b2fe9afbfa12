"""Runs the notebooks (collected by nbmake, see setup.cfg) in small mode.

The kernels nbmake starts inherit this process's environment, so setting the
flag here makes every notebook pick its small, offline settings. Export
KERAS_COORDATT_SMOKE=0 to test the full settings instead.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("KERAS_COORDATT_SMOKE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The notebooks write their runs (models, checkpoints, .tflite files) under
# the temporary folder: give the kernels one that goes away with the session.
# (This process keeps its own: mkdtemp has already fixed tempfile.tempdir.)
_KERNEL_TMP = tempfile.mkdtemp(prefix="keras-coordatt-notebooks-")
os.environ["TMPDIR"] = _KERNEL_TMP
atexit.register(shutil.rmtree, _KERNEL_TMP, ignore_errors=True)

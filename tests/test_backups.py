"""Training backups: a sha256 per backup, the previous backup kept until the
next one is written, a damaged latest backup falling back to the previous
one (or one error naming the files), `fsync` before every rename, and
`--resume` from a damaged backup through `train()`."""

import hashlib
import json
import os

import keras
import numpy as np
import pytest

from keras_coordatt.training import TrainingBackup
from keras_coordatt.training import train
from keras_coordatt.utils import atomic

X = np.arange(12, dtype="float32").reshape(4, 3)
Y = np.ones((4, 2), "float32")


def _tiny_model():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    return model


def _values(model):
    return [v.numpy().copy()
            for v in model.weights + model.optimizer.variables]


def _two_backups(tmp_path):
    """A backup at iteration 4 (epoch 1), then one at 6 (epoch 2); the
    model's variables at each."""
    model = _tiny_model()
    model.fit(X, Y, batch_size=2, epochs=2, verbose=0)  # 4 steps
    backup = TrainingBackup(tmp_path / "backup")
    first = backup.save(model, phase=0, epoch=1, step=0)
    at_first = _values(model)
    model.fit(X, Y, batch_size=2, epochs=1, verbose=0)  # 6 steps
    second = backup.save(model, phase=0, epoch=2, step=0)
    return backup, first, second, at_first


def _snapshot(folder):
    return {name: (folder / name).read_bytes()
            for name in sorted(os.listdir(folder))}


def _overwrite_middle(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * 64)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


def test_each_backup_records_its_sha256_and_keeps_one_previous(tmp_path):
    backup, first, second, _ = _two_backups(tmp_path)
    folder = tmp_path / "backup"
    for state in (first, second):
        digest = hashlib.sha256(
            (folder / state["weights"]).read_bytes()).hexdigest()
        assert state["sha256"] == digest
    stored = json.loads((folder / "state.json").read_text())
    assert stored["previous"] == first and stored["weights"] == (
        "ckpt-000000006.weights.h5")
    # A third backup drops the first, keeps the second.
    model = _tiny_model()
    backup.restore(model)
    model.fit(X, Y, batch_size=2, epochs=1, verbose=0)  # 8 steps
    backup.save(model, phase=0, epoch=3, step=0)
    assert sorted(os.listdir(folder)) == [
        "ckpt-000000006.weights.h5", "ckpt-000000008.weights.h5",
        "state.json"]


@pytest.mark.parametrize("damage", [_overwrite_middle, _truncate])
def test_a_damaged_latest_backup_falls_back_to_the_previous(tmp_path,
                                                            damage):
    backup, first, second, at_first = _two_backups(tmp_path)
    latest = tmp_path / "backup" / second["weights"]
    damage(latest)
    before = _snapshot(tmp_path / "backup")
    with pytest.warns(UserWarning, match=(
            r"latest training backup is damaged: .*ckpt-000000006\.weights"
            r"\.h5 is damaged \(sha256 .*Resuming from the previous backup "
            r"\(ckpt-000000004\.weights\.h5: phase 0, epoch 1, step 0\)")):
        state = TrainingBackup(tmp_path / "backup").read_state()
    assert state == first
    fresh = _tiny_model()
    backup.restore(fresh, state)
    assert int(fresh.optimizer.iterations.numpy()) == 4
    for restored, saved in zip(_values(fresh), at_first):
        np.testing.assert_array_equal(restored, saved)
    assert _snapshot(tmp_path / "backup") == before  # Nothing deleted.
    # The next backup replaces the damaged one, never the intact one.
    fresh.fit(X, Y, batch_size=2, epochs=1, verbose=0)  # 6 steps again
    written = backup.save(fresh, phase=0, epoch=2, step=0)
    stored = json.loads((tmp_path / "backup" / "state.json").read_text())
    assert stored["previous"] == first
    assert written["weights"] == "ckpt-000000006.weights.h5"
    assert TrainingBackup(tmp_path / "backup").read_state() == written


def test_no_intact_backup_is_one_error_naming_the_files(tmp_path):
    _, first, second, _ = _two_backups(tmp_path)
    folder = tmp_path / "backup"
    _truncate(folder / second["weights"])
    _overwrite_middle(folder / first["weights"])
    before = _snapshot(folder)
    with pytest.raises(ValueError, match=(
            r"No intact training backup in .*backup to resume from: "
            r".*ckpt-000000006\.weights\.h5 is damaged .*; "
            r".*ckpt-000000004\.weights\.h5 is damaged")):
        TrainingBackup(folder).read_state()
    assert _snapshot(folder) == before
    (folder / "state.json").write_text('{"phase": 0, "epo')
    with pytest.raises(ValueError, match=(
            r"training backup state .*state\.json is damaged "
            r"\(JSONDecodeError")):
        TrainingBackup(folder).read_state()


def test_every_rename_follows_an_fsync(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (
        events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (
        events.append(("replace", os.path.basename(b))),
        real_replace(a, b))[1])
    model = _tiny_model()
    model.fit(X, Y, batch_size=2, epochs=1, verbose=0)
    TrainingBackup(tmp_path / "b").save(model, phase=0, epoch=1, step=0)
    assert events == [
        "fsync", ("replace", "ckpt-000000002.weights.h5"), "fsync",
        "fsync", ("replace", "state.json"), "fsync"]
    # `atomic_file` itself: the same order for any file.
    events.clear()
    with atomic.atomic_file(tmp_path / "out.txt") as tmp:
        with open(tmp, "w") as f:
            f.write("x")
    assert events == ["fsync", ("replace", "out.txt"), "fsync"]


class _Stop(Exception):
    pass


class _StopAfter(keras.callbacks.Callback):
    """Kills the run at an epoch's end (after the backup callback)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Stop()


@pytest.mark.slow
def test_resume_from_a_damaged_backup_continues_from_the_previous(tmp_path):
    overrides = dict(output_dir=str(tmp_path), epochs=2, tensorboard=False,
                     bn_recalibration_steps=0)
    with pytest.raises(Exception) as stopped:
        train("digits", overrides=overrides, verbose=0,
              callbacks=[_StopAfter(1)])
    assert isinstance(stopped.value, _Stop) or isinstance(
        stopped.value.__cause__, _Stop)
    stored = json.loads((tmp_path / "backup" / "state.json").read_text())
    assert (stored["epoch"], stored["previous"]["epoch"]) == (2, 1)
    _overwrite_middle(tmp_path / "backup" / stored["weights"])
    with pytest.warns(UserWarning, match="Resuming from the previous"):
        result = train("digits", overrides=overrides, verbose=0,
                       resume=True)
    assert result.resumed_from["epoch"] == 1
    steps = result.steps_per_epoch
    assert result.optimizer_iterations == 2 * steps
    assert len(result.history["loss"]) == 1  # the second epoch again
    assert np.isfinite(result.metrics["loss"])

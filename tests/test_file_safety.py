"""Issue 24 (3, 4, 6, 11): full disks, two runs in one folder, reruns of a
killed `quantize`, and errors that name the file.

Every test checks what is left on the disk too: a final file absent or
byte-identical to before the failure.
"""

import contextlib
import errno
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile

import keras
import numpy as np
import pytest

from keras_coordatt.export import cli as export_cli
from keras_coordatt.quantization import cli as quantize_cli
from keras_coordatt.training import callbacks as callbacks_lib
from keras_coordatt.training import cli as train_cli
from keras_coordatt.training import fit
from keras_coordatt.training.callbacks import TrainingBackup
from keras_coordatt.utils import atomic
from keras_coordatt.utils import model_files
from keras_coordatt.utils.atomic import WriteError

ATOMIC_PY = os.path.abspath(atomic.__file__)


def _tiny_model(units=2, inputs=3):
    x = keras.Input((inputs,))
    model = keras.Model(x, keras.layers.Dense(units)(x))
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = f.read()
    return files


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@contextlib.contextmanager
def _small_tmpfs(size):
    """A `size`-byte tmpfs (root and a kernel that lets this container
    mount one), else the test is skipped with the reason."""
    folder = tempfile.mkdtemp(prefix="kc-tmpfs-")
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
               folder]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:
        done = None
        reason = str(e)
    if done is None or done.returncode != 0:
        os.rmdir(folder)
        reason = done.stderr.strip() if done is not None else reason
        print(f"cannot mount a tmpfs: {reason}")
        pytest.skip(f"cannot mount a small tmpfs ({' '.join(command)}): "
                    f"{reason}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=False)
        os.rmdir(folder)


# --- 3. A full disk: one error naming the file, nothing truncated. -------


def test_enospc_in_a_writer_keeps_the_previous_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_bytes(b'{"old": 1}')

    def write():
        with atomic.atomic_file(path) as tmp, open(tmp, "w") as f:
            f.write('{"new": ')  # half written, then the disk is full
            _enospc()

    with pytest.raises(WriteError) as info:
        write()
    assert str(info.value) == (
        f"Could not write {path}: No space left on device. Nothing was "
        "written under that name (a previous version is left as it was).")
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value, ValueError)
    assert path.read_bytes() == b'{"old": 1}'
    assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_results_and_truncated_csv_are_replaced_atomically(tmp_path,
                                                           monkeypatch):
    csv = tmp_path / "training_log.csv"
    csv.write_text("epoch,loss\n0,1.0\n1,0.5\n2,0.25\n")
    (tmp_path / "results.json").write_text("{}")
    before = _snapshot(tmp_path)
    monkeypatch.setattr(json, "dump", _enospc)
    result = fit.TrainResult(
        model=None, metrics={}, model_path="m.keras", output_dir="",
        history={}, optimizer_iterations=0, steps_per_epoch=1,
        global_batch_size=1, learning_rate=0.1, resumed_from=None,
        wall_time=0.0, config=None)
    with pytest.raises(WriteError, match=r"results\.json: No space"):
        fit._write_results(result, str(tmp_path))
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(WriteError, match=r"training_log\.csv: No space"):
        callbacks_lib.truncate_csv(str(csv), 1)
    assert _snapshot(tmp_path) == before


def test_a_checkpoint_that_fails_midway_leaves_the_last_one(tmp_path,
                                                            monkeypatch):
    model = _tiny_model()
    path = tmp_path / "last.keras"
    checkpoint = callbacks_lib.ModelCheckpoint(path)
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {})
    before = path.read_bytes()
    assert zipfile.is_zipfile(path)

    def half_save(filepath, *args, **kwargs):
        with open(filepath, "wb") as f:
            f.write(before[:100])
        _enospc()

    monkeypatch.setattr(model, "save", half_save)
    with pytest.raises(WriteError, match=rf"{path}: No space left"):
        checkpoint.on_epoch_end(1, {})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.keras"]


def test_best_checkpoint_saves_only_improvements(tmp_path):
    model = _tiny_model()
    checkpoint = callbacks_lib.ModelCheckpoint(tmp_path / "best.keras",
                                               monitor="val_accuracy")
    checkpoint.set_model(model)
    checkpoint.on_epoch_end(0, {"val_accuracy": 0.5})
    first = (tmp_path / "best.keras").read_bytes()
    model.layers[-1].kernel.assign(np.ones((3, 2)))
    checkpoint.on_epoch_end(1, {"val_accuracy": 0.4})
    assert (tmp_path / "best.keras").read_bytes() == first
    assert checkpoint.best == 0.5
    checkpoint.on_epoch_end(2, {"val_accuracy": 0.75})
    assert checkpoint.best == 0.75
    loaded = keras.saving.load_model(tmp_path / "best.keras")
    np.testing.assert_array_equal(loaded.layers[-1].kernel.numpy(),
                                  np.ones((3, 2)))


def test_backup_refuses_before_h5py_when_the_disk_is_too_small(
        tmp_path, monkeypatch):
    model = _tiny_model(units=64, inputs=64)
    backup = TrainingBackup(tmp_path / "backup")
    backup.save(model, phase=0, epoch=1, step=0)
    before = _snapshot(tmp_path)
    size = os.path.getsize(tmp_path / "backup" /
                           backup.read_state()["weights"])
    free = size  # less than the previous backup plus the margin
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 0, free))
    calls = []
    monkeypatch.setattr(model, "save_weights",
                        lambda *a, **k: calls.append(a))
    model.optimizer.iterations.assign(5)
    with pytest.raises(WriteError, match=(
            r"Not enough free space to write .*ckpt-000000005\.weights\.h5: "
            rf"about \d+ bytes needed, {free} free")) as info:
        backup.save(model, phase=0, epoch=2, step=0)
    assert info.value.errno == errno.ENOSPC
    assert calls == []  # h5py never ran
    assert _snapshot(tmp_path) == before


def test_a_real_full_disk_gives_one_error_and_no_truncated_file():
    # 256 KiB of tmpfs; the model's variables (and its backup) need about
    # 2 x 512 x 512 x 4 bytes = 2 MiB: without the free-space check h5py
    # would hit ENOSPC (and segfault), with it one error, nothing written.
    model = _tiny_model(units=512, inputs=512)
    with _small_tmpfs(256 * 1024) as folder:
        backup = TrainingBackup(os.path.join(folder, "backup"))
        with pytest.raises(WriteError, match=(
                rf"Not enough free space to write {folder}/backup/"
                r"ckpt-000000000\.weights\.h5")):
            backup.save(model, phase=0, epoch=1, step=0)
        with pytest.raises(WriteError, match=(
                rf"Not enough free space to write {folder}/model\.keras")):
            model_files.save_model(model, os.path.join(folder, "model.keras"))
        # A writer without a check (the .tflite bytes): real ENOSPC.
        target = os.path.join(folder, "float.tflite")
        with open(target, "wb") as f:
            f.write(b"previous")
        from keras_coordatt.quantization.convert import _write

        with pytest.raises(WriteError, match=(
                rf"Could not write {target}: No space left on device")):
            _write(b"\0" * (1 << 20), target)
        with open(target, "rb") as f:
            assert f.read() == b"previous"
        assert sorted(os.listdir(folder)) == ["backup", "float.tflite"]
        assert os.listdir(os.path.join(folder, "backup")) == []


# --- 4. One run per folder. -----------------------------------------------

_HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("atomic", {path!r})
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
with atomic.folder_lock({folder!r}):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_a_locked_folder_exits_2(tmp_path, capsys):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER.format(path=ATOMIC_PY,
                                              folder=folder)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status = train_cli.main(["--output-dir", folder, "--epochs", "1"])
        err = capsys.readouterr().err.strip()
    finally:
        holder.kill()
        holder.wait()
    assert status == 2
    assert err == (f"keras-coordatt train: Another training run (pid "
                   f"{holder.pid}) is writing to {folder}; wait for it to "
                   "end or choose another output folder.")
    assert os.listdir(folder) == [".lock"]  # nothing else written
    # The holder is gone (killed, its .lock left): the lock went with it;
    # a run that ends deletes the file.
    with atomic.folder_lock(folder):
        with open(os.path.join(folder, ".lock")) as f:
            assert f.read().strip() == str(os.getpid())
    assert os.listdir(folder) == []


def _finished_run(folder):
    os.makedirs(folder)
    model_path = os.path.join(folder, "model.keras")
    with open(model_path, "wb") as f:
        f.write(b"the trained model")
    results = {"completed": True, "metrics": {"accuracy": 0.95},
               "model_path": model_path, "optimizer_iterations": 264,
               "steps_per_epoch": 22, "global_batch_size": 64,
               "learning_rate": 0.0125, "resumed_from": None,
               "wall_time": 60.0}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f)
    return model_path


def test_train_into_a_finished_folder_asks_for_overwrite(tmp_path, capsys):
    folder = str(tmp_path / "run")
    _finished_run(folder)
    before = _snapshot(folder)
    status = train_cli.main(["--output-dir", folder, "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err == [
        f"keras-coordatt train: {folder} holds a finished run "
        "(results.json); a new run would overwrite its model and results. "
        "Received: overwrite=False; pass overwrite=True (--overwrite) to "
        "replace it, resume=True (--resume) to return its result, or "
        "choose another output_dir."]
    assert _snapshot(folder) == before


def test_resuming_a_finished_run_whose_model_is_missing_fails(tmp_path,
                                                              capsys):
    folder = str(tmp_path / "run")
    model_path = _finished_run(folder)
    os.remove(model_path)
    status = train_cli.main(["--output-dir", folder, "--resume"])
    err = capsys.readouterr()
    assert status == 2
    assert "Model saved to" not in err.out
    assert err.err.strip() == (
        f"keras-coordatt train: The finished run's results "
        f"{folder}/results.json name the model {model_path}, which does "
        "not exist. Restore it, or pass overwrite=True (--overwrite) to "
        "train again.")


def test_overwrite_discards_the_previous_results_and_backup(tmp_path):
    folder = str(tmp_path / "run")
    _finished_run(folder)
    backup = TrainingBackup(os.path.join(folder, "backup"))
    backup.save(_tiny_model(), phase=0, epoch=1, step=0)
    fit._discard_previous_run(folder, backup)
    assert sorted(os.listdir(folder)) == ["model.keras"]


# --- 6. A killed quantize can be rerun. -----------------------------------


def test_quantize_passes_resume_and_overwrite_to_its_runs(monkeypatch,
                                                          capsys):
    calls = []

    def fake_train(config, **kwargs):
        calls.append((config.output_dir, kwargs["resume"],
                      kwargs["overwrite"]))
        raise ValueError("stop here")

    monkeypatch.setattr(fit, "train", fake_train)
    monkeypatch.setattr(fit, "load_config_source", lambda config: None)
    common = ["--model", "mobilenetv2_ca", "--dataset", "digits",
              "--epochs", "1", "--output-dir", "/nonexistent/q"]
    assert quantize_cli.main(common + ["--resume"]) == 2
    assert quantize_cli.main(common + ["--overwrite"]) == 2
    assert calls == [("/nonexistent/q", True, False),
                     ("/nonexistent/q", False, True)]
    assert quantize_cli.main(common + ["--resume", "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "keras-coordatt quantize: --resume and --overwrite exclude each "
        "other. Received: both")


def test_the_flag_a_killed_runs_message_names_exists(tmp_path, capsys):
    # The QAT run's folder of a killed quantize: its backup.
    qat = tmp_path / "q-qat" / "backup"
    qat.mkdir(parents=True)
    (qat / "state.json").write_text(json.dumps(
        {"phase": 0, "epoch": 1, "step": 3, "iterations": 9,
         "weights": "x.weights.h5"}))
    status = quantize_cli.main([
        "--model", "mobilenetv2_ca", "--alpha", "0.35", "--dataset",
        "digits", "--qat-epochs", "1", "--output-dir", str(tmp_path / "q"),
        "--output", str(tmp_path / "m.tflite")])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert "pass resume=True (--resume)" in err
    assert "overwrite=True (--overwrite)" in err
    flags = quantize_cli._parser().parse_args(["--resume", "--overwrite"])
    assert flags.resume and flags.overwrite
    assert not (tmp_path / "m.tflite").exists()


# --- 11. Errors that name the file. ---------------------------------------


def test_damaged_missing_and_foreign_model_files_are_named(tmp_path,
                                                           capsys):
    truncated = tmp_path / "truncated.keras"
    model_files.save_model(_tiny_model(), truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=(
            rf"The model file {truncated} is not a \.keras \(zip\) archive: "
            rf"it is damaged or truncated \({len(data) // 2} bytes\)")):
        model_files.load_model(truncated)
    bad_zip = tmp_path / "bad.keras"
    with zipfile.ZipFile(bad_zip, "w") as archive:
        archive.writestr("config.json", "{not json")
    with pytest.raises(ValueError, match=(
            rf"The model file {bad_zip} could not be loaded \(\w+Error: ")):
        model_files.load_model(bad_zip)
    missing = tmp_path / "missing.keras"
    with pytest.raises(ValueError, match=(
            rf"The model file {missing} does not exist")):
        model_files.load_model(missing)
    # The quantize CLI: one line naming the file, exit 2, no traceback.
    status = quantize_cli.main(["--model", str(truncated), "--dataset",
                                "digits"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and str(truncated) in err[0]
    assert "File not found" not in err[0]


def test_finished_exports_get_the_usual_modes(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic.atomic_directory(tmp_path / "out") as tmp:
            with open(os.path.join(tmp, "model.tflite"), "wb") as f:
                f.write(b"x")
        with atomic.atomic_file(tmp_path / "single.json") as tmp:
            with open(tmp, "w") as f:
                f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755
    assert stat.S_IMODE(
        os.stat(tmp_path / "out" / "model.tflite").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "single.json").st_mode) == 0o644


def test_killed_exports_tmp_folders_are_removed_by_the_next(tmp_path,
                                                            capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "metadata.json").write_text("{}")
    killed = tmp_path / ".out.tmp-abc123"
    (killed / "sub").mkdir(parents=True)
    (killed / "sub" / "variables.data").write_bytes(b"half")
    old = time.time() - 10
    for path in (killed / "sub" / "variables.data", killed / "sub", killed):
        os.utime(path, (old, old))
    other = tmp_path / ".other.tmp-abc123"  # another output's: kept
    other.mkdir()
    os.utime(other, (old, old))
    started = time.time()
    young = tmp_path / ".out.tmp-running"  # an export started after us
    young.mkdir()
    os.utime(young, (started + 1, started + 1))
    export_cli._remove_killed_exports(str(output), started)
    assert sorted(os.listdir(tmp_path)) == [
        ".other.tmp-abc123", ".out.tmp-running", "out"]
    assert (output / "metadata.json").read_text() == "{}"
    assert capsys.readouterr().err.strip() == (
        f"keras-coordatt export: removed {killed}, left by a killed export")


@pytest.mark.slow
def test_train_on_a_full_disk_exits_1_with_one_line():
    # A 512 KiB tmpfs: the config and the CSV log fit, the checkpoints
    # (MobileNetV2CA 0.35, about 2 MB with its optimizer) do not. In a
    # subprocess, so that a segfault (exit 139) would show.
    with _small_tmpfs(512 * 1024) as folder:
        run = os.path.join(folder, "run")
        done = subprocess.run(
            [sys.executable, "-m", "keras_coordatt.cli", "train",
             "--dataset", "digits", "--epochs", "1", "--output-dir", run,
             "--set", "tensorboard=false", "--verbose", "0"],
            capture_output=True, text=True, timeout=900,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        lines = [line for line in done.stderr.splitlines()
                 if line.startswith("keras-coordatt train:")]
        assert done.returncode == 1, done.stderr[-2000:]
        assert len(lines) == 1, done.stderr[-2000:]
        assert re.fullmatch(
            r"keras-coordatt train: Training \(phase full\) failed: "
            rf"WriteError: Not enough free space to write {run}/checkpoints/"
            r"best\.keras: about \d+ bytes needed, \d+ free\. Free some "
            r"space or choose another output folder\.", lines[0]), lines[0]
        left = _snapshot(run)
        assert sorted(left) == ["config.json", "training_log.csv"]
        assert json.loads(left["config.json"])["epochs"] == 1


@pytest.mark.slow
def test_a_killed_quantize_resumes_with_the_flag_its_message_names(
        tmp_path):
    # The README's main job: `quantize --model FILE.keras`, its QAT run
    # killed after its first backup, then run again.
    from keras_coordatt.quantization.data import load_digits
    from keras_coordatt.training.models import build_model

    (x, y), (xt, yt) = load_digits(32, preprocess=False)
    npz = str(tmp_path / "small.npz")
    np.savez(npz, x_train=x[:128], y_train=y[:128], x_val=xt[:40],
             y_val=yt[:40])
    float_file = str(tmp_path / "float.keras")
    build_model("mobilenetv2_ca", 10, image_size=32, alpha=0.35)[0].save(
        float_file)
    output = str(tmp_path / "q.tflite")
    command = [
        sys.executable, "-m", "keras_coordatt.cli", "quantize", "--model",
        float_file, "--dataset", f"npz:{npz}",
        "--image-size", "32", "--batch-size", "32", "--qat-epochs", "2",
        "--ptq-samples", "16", "--set", "backup_every=1", "--set",
        "tensorboard=false", "--output-dir", str(tmp_path / "run"),
        "--output", output, "--verbose", "0"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    state = tmp_path / "run-qat" / "backup" / "state.json"
    killed = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not state.exists() and killed.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    killed.kill()
    killed.wait()
    assert state.exists() and not os.path.exists(output)
    again = subprocess.run(command, env=env, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 2
    assert "pass resume=True (--resume) to continue it" in again.stderr
    resumed = subprocess.run(command + ["--resume"], env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resumed from the backup" in resumed.stdout
    assert os.path.getsize(output) > 0
    results = json.loads((tmp_path / "run-qat" / "results.json").read_text())
    assert results["optimizer_iterations"] == 2 * 4  # 128 / 32 per epoch


def test_temporaries_of_ended_processes_go_at_once(tmp_path):
    """A killed process's temporary (its host and pid in the name) goes at
    the next clean-up whatever its age; a live process's stays until old."""
    import socket
    import subprocess
    import sys

    from keras_coordatt.utils import atomic

    with atomic.atomic_file(tmp_path / "mine.json") as tmp:
        own = os.path.basename(tmp)
        assert f".{os.getpid()}-" in own  # the owner is in the name
    ended = subprocess.run([sys.executable, "-c", "import os; "
                            "print(os.getpid())"], capture_output=True,
                           text=True, check=True).stdout.strip()
    host = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40]
    dead = tmp_path / f".out.tmp-{host}.{ended}-abc"
    alive = tmp_path / f".out.tmp-{host}.{os.getpid()}-def"
    other_host = tmp_path / f".out.tmp-elsewhere.{ended}-ghi"
    for folder in (dead, alive, other_host):
        folder.mkdir()
    removed = atomic.remove_stale(str(tmp_path), (".out.tmp-",),
                                  max_age=3600)
    assert removed == [dead.name]
    assert alive.exists() and other_host.exists()

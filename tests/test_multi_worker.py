"""Multi-worker training with MultiWorkerMirroredStrategy (issue 16).

Fast, in-process tests first: the strategy's `reduce` on what Keras 3's
`fit` gives it, in a one-worker MultiWorkerMirroredStrategy (TF_CONFIG
unset); the chief and the workers' folders; the per-source data sharding;
one-line errors. Then two slow tests with two real worker processes on
loopback ports picked at run time (tests/fixtures/multi_worker_training.py
runs `keras-coordatt train` and dumps what the workers' files do not keep):
an uninterrupted run, and a run whose non-chief worker is SIGKILLed
mid-epoch, then resumed with `--resume` by both.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="multi-worker training runs on the TensorFlow backend",
)

from keras_coordatt.training.data import (  # noqa: E402
    classification as data_lib)
from keras_coordatt.training import fit as fit_lib  # noqa: E402
from keras_coordatt.training import strategy as strategy_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "fixtures", "multi_worker_training.py")

# The small run: MobileNetV2CA at alpha 0.35 on the 1,438 training digits at
# 32x32, 240 images per replica (one replica per worker): a global batch of
# 480, 2 steps per epoch, 2 epochs; precise BatchNorm on 2 batches.
PER_REPLICA_BATCH = 240
WORKERS = 2
GLOBAL_BATCH = PER_REPLICA_BATCH * WORKERS
STEPS_PER_EPOCH = 1438 // GLOBAL_BATCH
EPOCHS = 2
RUN_TIMEOUT = 600  # seconds a two-worker run may take (2-5 min on 2 cores).
CHIEF_FILES = {"config.json", "training_log.csv", "model.keras",
               "results.json", "checkpoints/best.keras",
               "checkpoints/last.keras"}


# ---------------------------------------------------------------------------
# Fast, in-process.


@pytest.fixture(scope="module")
def local_strategy():
    # TF_CONFIG unset: one local worker (a cluster of one).
    assert not os.environ.get("TF_CONFIG")
    return strategy_lib.MultiWorkerMirroredStrategy()


def test_reduce_takes_what_keras_fit_gives_it(local_strategy):
    strategy = local_strategy
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    assert not strategy_lib.is_multi_worker(strategy)
    scalar = strategy.run(lambda: tf.constant(3.0))
    # Keras reduces per-replica scalar metrics with axis=0, which
    # TensorFlow's own strategy rejects (a scalar has no axis 0).
    with pytest.raises(ValueError, match="reduction dimension 0"):
        tf.distribute.MultiWorkerMirroredStrategy.reduce(
            strategy, "MEAN", scalar, axis=0)
    assert float(strategy.reduce("MEAN", scalar, axis=0)) == 3.0
    assert float(strategy.reduce("SUM", scalar, axis=0)) == 3.0
    # Keras' sample batch, a nested structure: this worker's first
    # replica's values (no batch sent between the workers).
    images = np.arange(24, dtype="float32").reshape(4, 2, 3)
    labels = np.arange(4, dtype="int32")
    batch = strategy.run(lambda: (tf.constant(images),
                                  {"y": tf.constant(labels), "w": None}))
    reduced = strategy.reduce("MEAN", batch, axis=None)
    np.testing.assert_array_equal(reduced[0], images)
    np.testing.assert_array_equal(reduced[1]["y"], labels)
    assert reduced[1]["w"] is None
    from tensorflow.python.distribute import values
    per_replica = values.PerReplica((tf.constant(images),))
    first, = strategy.reduce("MEAN", (per_replica,), axis=None)
    np.testing.assert_array_equal(first, images)
    # A batched value with axis=0 is still TensorFlow's reduce.
    np.testing.assert_allclose(
        strategy.reduce("MEAN", batch[0], axis=0), images.mean(axis=0))


def test_fit_and_evaluate_in_the_strategy(local_strategy):
    with local_strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse", metrics=["mae"])
    data = tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 3), "float32"), np.ones((8, 2), "float32"))).batch(4)
    history = model.fit(data, epochs=2, verbose=0)
    assert len(history.history["mae"]) == 2
    assert set(model.evaluate(data, return_dict=True, verbose=0)) == {
        "loss", "mae"}


def test_tensorflows_own_strategy_is_refused_in_one_line(local_strategy):
    plain = tf.distribute.MultiWorkerMirroredStrategy()
    with pytest.raises(ValueError, match="strategy='multi_worker'") as info:
        strategy_lib.check_multi_worker(plain)
    assert "\n" not in str(info.value)
    assert strategy_lib.check_multi_worker(local_strategy) is local_strategy


def _strategy_of(task_type, task_id, jobs):
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(jobs), task_type=task_type, task_id=task_id)

    class Strategy:
        cluster_resolver = resolver

    return Strategy()


def test_chief_writes_the_output_folder_the_others_a_temporary_one(
        tmp_path, monkeypatch):
    workers = {"worker": ["localhost:1", "localhost:2"]}
    with_chief = {"chief": ["localhost:3"], **workers}
    assert strategy_lib.is_chief(_strategy_of("worker", 0, workers))
    assert not strategy_lib.is_chief(_strategy_of("worker", 1, workers))
    assert strategy_lib.is_chief(_strategy_of("chief", 0, with_chief))
    assert not strategy_lib.is_chief(_strategy_of("worker", 0, with_chief))
    assert strategy_lib.is_chief(tf.distribute.get_strategy())
    output = str(tmp_path / "run")
    chief = _strategy_of("worker", 0, workers)
    assert strategy_lib.worker_dir(output, chief) == output
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tmp_path / "tmp")
    other = strategy_lib.worker_dir(output, _strategy_of("worker", 1,
                                                         workers))
    assert os.path.dirname(other) == str(tmp_path / "tmp")
    assert os.path.basename(other).startswith("keras-coordatt-worker-1-")
    assert os.path.isdir(other) and not os.path.exists(output)


def _indexed_examples(builder, split, decoders=None, read_config=None,
                      **kwargs):
    """Mock tfds `_as_dataset`: 20 cifar10-like images whose first pixel is
    their index; records the read config it was given."""
    del builder, split, decoders, kwargs
    _indexed_examples.read_configs.append(read_config)
    images = np.zeros((20, 32, 32, 3), "uint8")
    images[:, 0, 0, 0] = np.arange(20)
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(20, "int64")})


def test_training_data_is_sharded_by_files_or_by_examples(monkeypatch):
    import tensorflow_datasets as tfds

    contexts = [tf.distribute.InputContext(2, i, 2) for i in range(2)]
    _indexed_examples.read_configs = []
    with tfds.testing.mock_data(as_dataset_fn=_indexed_examples):
        source = data_lib.load_source("tfds:cifar10", train_split="train",
                                      val_split="test")
        _indexed_examples.read_configs = []  # Not the counting reads.
        # Fewer files than pipelines (none known here): every pipeline
        # reads the same examples and keeps every other one (DATA).
        shards = [
            sorted(int(image[0, 0, 0]) for image, _ in
                   source.make_train(context, seed=context.input_pipeline_id))
            for context in contexts
        ]
        assert [c.input_context for c in _indexed_examples.read_configs] \
            == [None, None]
        # Enough files: one file shard per pipeline, read by tfds (FILE).
        monkeypatch.setattr(data_lib, "_num_files", lambda *_: 16)
        _indexed_examples.read_configs = []
        for context in contexts:
            source.make_train(context, seed=0)
        assert [c.input_context for c in _indexed_examples.read_configs] \
            == contexts
    assert shards == [list(range(0, 20, 2)), list(range(1, 20, 2))]
    # The training pipeline is sharded by hand: tf.data must not shard it
    # again; the evaluation input is sharded by examples.
    arrays = data_lib.from_arrays(np.zeros((8, 32, 32, 3), "uint8"),
                                  np.arange(8) % 2, validation_fraction=0.5)
    policy = tf.data.experimental.AutoShardPolicy
    kwargs = dict(image_size=32, global_batch_size=2, preprocess=lambda x: x)
    train = data_lib.train_dataset(arrays, **kwargs)
    evaluation = data_lib.eval_dataset(arrays, **kwargs)
    assert train.options().experimental_distribute.auto_shard_policy == \
        policy.OFF
    assert evaluation.options().experimental_distribute.auto_shard_policy \
        == policy.DATA


def test_errors_are_one_line_without_tensor_values():
    from tensorflow.python.distribute import values

    per_replica = values.PerReplica((tf.ones((64, 32, 32, 3)),
                                     tf.zeros((64,), tf.int32)))
    with pytest.raises(ValueError) as info:
        tf.constant(per_replica)  # What TensorFlow's reduce did.
    assert "numpy=" in str(info.value)  # TensorFlow's message: a dump.
    line = fit_lib.one_line(info.value)
    assert "\n" not in line and "numpy" not in line and len(line) <= 300
    assert line.startswith("Attempt to convert a value (PerReplica:{...})")
    assert line.endswith("to a Tensor.")
    error = tf.errors.UnavailableError(
        None, None, "Collective ops is aborted by: peer down\n"
        "Additional GRPC error information:\n[[{{node CollectiveReduceV2}}]]")
    assert fit_lib.one_line(error) == (
        "Collective ops is aborted by: peer down")
    error = tf.errors.InvalidArgumentError(
        None, None, "{{function_node __wrapped__CollectiveReduceV2_device_/"
        "job:worker/replica:0/task:0/device:CPU:0}} Shape mismatch [[node]]")
    assert fit_lib.one_line(error) == "Shape mismatch [[node]]"
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        tf.function(lambda x: tf.gather(x, 5))(tf.ones(3))
    assert fit_lib.one_line(info.value) == "indices = 5 is not in [0, 3)"
    assert fit_lib.one_line(ValueError("x" * 1000)) == "x" * 297 + "..."
    assert issubclass(fit_lib.TrainingError, ValueError)


# ---------------------------------------------------------------------------
# Slow: two real worker processes.


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _train_args(output_dir, *extra):
    return [
        "--model", "mobilenetv2_ca", "--alpha", "0.35", "--dataset",
        "digits", "--image-size", "32", "--epochs", str(EPOCHS),
        "--batch-size", str(PER_REPLICA_BATCH), "--strategy", "multi_worker",
        "--output-dir", str(output_dir), "--verbose", "2",
        "--set", "bn_recalibration_steps=2", "--set", "tensorboard=false",
        *extra,
    ]


class _Cluster:
    """Two worker processes of one run, each logging to its own file."""

    def __init__(self, folder, name, args):
        self.folder = folder
        self.name = name
        self.dump = folder / f"{name}-dump"
        # Each run's own temporary directory: where the non-chief worker's
        # folder goes (and must be gone from at the end).
        self.tmp = folder / f"{name}-tmp"
        os.makedirs(self.tmp)
        ports = _free_ports(WORKERS)
        self.started = time.time()
        self.processes, self.log_paths, self._logs = [], [], []
        for index in range(WORKERS):
            env = dict(os.environ)
            env.update({
                "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
                "KERAS_BACKEND": "tensorflow",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONUNBUFFERED": "1",
                "TMPDIR": str(self.tmp),
                "MULTI_WORKER_TEST_NO_GRAPH_OPTIMIZER": "1",
                "TF_CONFIG": json.dumps({
                    "cluster": {"worker": [f"localhost:{p}" for p in ports]},
                    "task": {"type": "worker", "index": index},
                }),
            })
            path = folder / f"{name}-worker-{index}.log"
            log = open(path, "w")
            self.log_paths.append(path)
            self._logs.append(log)
            self.processes.append(subprocess.Popen(
                [sys.executable, WORKER, str(self.dump), *args], cwd=REPO,
                env=env, stdout=log, stderr=subprocess.STDOUT,
            ))

    def wait(self, timeout=RUN_TIMEOUT):
        deadline = self.started + timeout
        for process in self.processes:
            process.wait(timeout=max(1, deadline - time.time()))
        self.wall = time.time() - self.started
        return [p.returncode for p in self.processes]

    def logs(self):
        for log in self._logs:
            if not log.closed:
                log.flush()
        return [path.read_text() for path in self.log_paths]

    def dumps(self):
        results = []
        for index in range(WORKERS):
            with open(self.dump / f"worker-{index}.json") as f:
                results.append(json.load(f))
        return results

    def weights(self, index):
        with np.load(self.dump / f"worker-{index}.npz") as data:
            return [data[k] for k in sorted(data.files)]

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for log in self._logs:
            log.close()


def _run(folder, name, args):
    cluster = _Cluster(folder, name, args)
    try:
        codes = cluster.wait()
    finally:
        cluster.stop()
    return cluster, codes


def _tail(cluster):
    return "\n".join(f"--- {cluster.name} worker {i}:\n{text[-2500:]}"
                     for i, text in enumerate(cluster.logs()))


def _files(folder):
    return {os.path.relpath(os.path.join(root, name), folder)
            for root, _, names in os.walk(folder) for name in names}


def _chief_model_weights(path):
    return keras.saving.load_model(path).get_weights()


def _assert_same_weights(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multi_worker")
    cluster, codes = _run(folder, "uninterrupted",
                          _train_args(folder / "run"))
    return folder, cluster, codes


@pytest.mark.slow
def test_two_workers_train_the_same_model_and_only_the_chief_writes(
        uninterrupted):
    folder, cluster, codes = uninterrupted
    assert codes == [0, 0], _tail(cluster)
    print(f"two-worker run: {cluster.wall:.0f} s")
    chief, other = cluster.dumps()
    # The global batch is the sum of the workers' batches (read from each
    # worker's input pipeline), and the learning rate scales with it.
    assert chief["num_workers"] == other["num_workers"] == WORKERS
    assert chief["worker_batch_size"] == other["worker_batch_size"] == \
        PER_REPLICA_BATCH
    assert chief["global_batch_size"] == other["global_batch_size"] == \
        chief["worker_batch_size"] + other["worker_batch_size"] == \
        GLOBAL_BATCH
    assert chief["learning_rate"] == other["learning_rate"] == \
        pytest.approx(0.05 * GLOBAL_BATCH / 256)
    for text in cluster.logs():
        assert (f"{WORKERS} replica(s) on cpu, global batch {GLOBAL_BATCH} "
                f"over {WORKERS} workers ({PER_REPLICA_BATCH} on this one)"
                ) in text
    assert chief["steps_per_epoch"] == STEPS_PER_EPOCH
    assert chief["optimizer_iterations"] == other["optimizer_iterations"] \
        == EPOCHS * STEPS_PER_EPOCH
    # Same final weights (BatchNorm statistics included) on both workers
    # and in the chief's saved model.
    run = folder / "run"
    saved = _chief_model_weights(str(run / "model.keras"))
    _assert_same_weights(saved, cluster.weights(0))
    _assert_same_weights(saved, cluster.weights(1))
    # The chief alone wrote the run's files; the other worker wrote in a
    # temporary folder that is gone, and points to the chief's model.
    assert _files(run) == CHIEF_FILES
    assert chief["run_dir"] == str(run) and other["run_dir"] != str(run)
    assert os.path.dirname(other["run_dir"]) == str(cluster.tmp)
    assert not other["run_dir_exists"] and os.listdir(cluster.tmp) == []
    assert other["model_path"] == chief["model_path"] == str(
        run / "model.keras")
    results = json.loads((run / "results.json").read_text())
    assert results["global_batch_size"] == GLOBAL_BATCH
    assert results["num_workers"] == WORKERS
    assert results["optimizer_iterations"] == EPOCHS * STEPS_PER_EPOCH
    rows = (run / "training_log.csv").read_text().splitlines()
    assert len(rows) == 1 + EPOCHS


@pytest.mark.slow
def test_a_killed_worker_resumes_the_job_with_resume(uninterrupted):
    folder, baseline, codes = uninterrupted
    assert codes == [0, 0], _tail(baseline)
    run = folder / "killed-run"
    state_path = run / "backup" / "state.json"
    args = _train_args(run, "--backup-every", "1")
    killed = _Cluster(folder, "killed", args)
    try:
        # SIGKILL the non-chief worker once the chief backed up mid-epoch.
        deadline = time.time() + RUN_TIMEOUT
        state = None
        while time.time() < deadline and all(
                p.poll() is None for p in killed.processes):
            if state_path.exists():
                state = json.loads(state_path.read_text())
                if 0 < state["step"] < STEPS_PER_EPOCH:
                    killed.processes[1].send_signal(signal.SIGKILL)
                    break
            time.sleep(0.05)
        assert state is not None and 0 < state["step"], _tail(killed)
        assert killed.processes[1].wait(timeout=30) == -signal.SIGKILL
        # The chief cannot go on alone: it fails (in one line) or waits for
        # its peer; either way the job is stopped.
        try:
            killed.processes[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        killed.stop()
    killed_wall = time.time() - killed.started
    chief_log = killed.logs()[0]
    if killed.processes[0].returncode not in (-signal.SIGKILL, None):
        errors = [line for line in chief_log.splitlines()
                  if line.startswith("keras-coordatt train:")]
        assert errors and "numpy=" not in chief_log, chief_log[-3000:]
    # What the kill left: the chief's mid-epoch backup.
    state = json.loads(state_path.read_text())
    epoch, step = state["epoch"], state["step"]
    assert 0 < step < STEPS_PER_EPOCH
    assert state["iterations"] == epoch * STEPS_PER_EPOCH + step

    resumed, codes = _run(folder, "resumed", [*args, "--resume"])
    assert codes == [0, 0], _tail(resumed)
    print(f"killed run then resumed run: {killed_wall:.0f} s + "
          f"{resumed.wall:.0f} s")
    for text in resumed.logs():
        assert (f"Resumed from the backup: phase full, epoch {epoch + 1}/"
                f"{EPOCHS}, step {step}/{STEPS_PER_EPOCH}, optimizer step "
                f"{state['iterations']}.") in text
    # Both workers end with as many optimizer steps as the uninterrupted
    # run, with the same weights.
    expected = baseline.dumps()[0]["optimizer_iterations"]
    assert expected == EPOCHS * STEPS_PER_EPOCH
    chief, other = resumed.dumps()
    assert chief["optimizer_iterations"] == other["optimizer_iterations"] \
        == expected
    assert chief["resumed_from"] == other["resumed_from"] == state
    results = json.loads((run / "results.json").read_text())
    assert results["optimizer_iterations"] == expected
    saved = _chief_model_weights(str(run / "model.keras"))
    _assert_same_weights(saved, resumed.weights(1))
    assert _files(run) == CHIEF_FILES  # The backup is gone.
    assert not other["run_dir_exists"] and os.listdir(resumed.tmp) == []
    rows = (run / "training_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in
                                                   range(EPOCHS)]

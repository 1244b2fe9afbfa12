"""Training on the JAX backend with keras.distribution, and on PyTorch's
one device (issue 16).

Each test runs tests/fixtures/training_backends.py in a subprocess with
KERAS_BACKEND=jax and two virtual CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2), or KERAS_BACKEND=torch:
the backend and the device count are fixed when the process starts.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "fixtures", "training_backends.py")


def _run_script(tmp_path, *args, timeout, backend="jax"):
    out = tmp_path / "out.json"
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               CUDA_VISIBLE_DEVICES="")
    completed = subprocess.run(
        [sys.executable, SCRIPT, *args, str(out)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text())


def test_strategies_on_jax_are_keras_distributions(tmp_path):
    results = _run_script(tmp_path, "strategies", timeout=300)
    for name in ("auto", "cpu"):
        assert results[name] == {"replicas": 2, "kind": "cpu",
                                 "devices": ["cpu:0", "cpu:1"]}
    assert "strategy='gpu' needs a GPU and JAX sees none" in (
        results["gpu"]["error"])
    assert "strategy='tpu' needs a TPU" in results["tpu"]["error"]
    assert "runs on the TensorFlow backend" in (
        results["multi_worker"]["error"])
    assert "Received: strategy='bogus'" in results["bogus"]["error"]
    # A (batch 1, model 2) mesh: one data-parallel replica.
    assert results["model_parallel"]["replicas"] == 1
    assert "Received: distribution=str" in (
        results["not_a_distribution"]["error"])


@pytest.mark.slow
def test_data_parallel_training_on_two_devices(tmp_path):
    # 1-4 minutes on 2 cores: four small runs sharing one compilation cache.
    results = _run_script(tmp_path, "train", str(tmp_path / "runs"),
                          timeout=900)
    two, one = results["two"], results["one"]
    # Every compiled train step saw the global batch of 64 split in two
    # halves, one per device; the one-device run saw it whole.
    assert two["sharding"] and all(
        s == {"devices": 2, "shard": [32, 32, 32, 3],
              "global": [64, 32, 32, 3]} for s in two["sharding"])
    assert all(s["devices"] == 1 and s["shard"][0] == 64
               for s in one["sharding"])
    assert two["replicas"] == 2 and two["global_batch"] == 64
    assert two["iterations"] == one["iterations"] == 8
    # Same seed, same global batch: the loss curves agree within 2 %
    # (measured: 0.1 % and 0.3 % after epochs 1 and 2; the float32 order of
    # a sharded program is not a single device's).
    for a, b in zip(two["loss"] + two["val_loss"],
                    one["loss"] + one["val_loss"]):
        assert abs(a - b) <= 0.02 * abs(b)
    # The zero-weight padding of the 99 validation images to 100 does not
    # count: the reported accuracy is the one of the real images.
    for run in (two, one, results["resumed"]):
        assert run["metrics"]["accuracy"] == pytest.approx(
            run["accuracy_here"], abs=1e-6)
    # Interrupted after 6 optimizer steps with a backup every 2 (epoch 2,
    # step 2), resumed: the same 8 steps as the uninterrupted run.
    state = results["interrupted_state"]
    assert (state["epoch"], state["step"], state["iterations"]) == (1, 2, 6)
    assert results["resumed"]["iterations"] == 8


@pytest.mark.slow
def test_pytorch_trains_on_one_device_and_refuses_the_rest(tmp_path):
    pytest.importorskip("torch")
    results = _run_script(tmp_path, "torch", str(tmp_path / "run"),
                          timeout=600, backend="torch")
    assert results["auto"] == {"replicas": 1, "kind": "cpu",
                               "devices": ["cpu:0"]}
    for name in ("gpu", "multi_worker"):
        error = results[name]["error"]
        assert "On the PyTorch backend train() runs on one device" in error
        assert f"Received: strategy={name!r}" in error
    run = results["run"]
    assert run["iterations"] == 2 * (256 // 64)  # EPOCHS x steps.
    assert run["metrics"]["accuracy"] == pytest.approx(
        run["accuracy_here"], abs=1e-6)

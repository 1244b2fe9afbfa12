"""Smoke tests of benchmarks/: the script's plumbing and its counted numbers.

Timings are never asserted (they belong to the machine); the multiply-add and
parameter counts are.
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import pytest

from keras_coordatt import CoordinateAttention
from keras_coordatt import counting as macs
from keras_coordatt import MobileNetV2CA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
SCRIPT = os.path.join(BENCHMARKS, "run.py")
CA, BASE = "MobileNetV2CA", "MobileNetV2"


def _load(name):
    if BENCHMARKS not in sys.path:  # the modules import their siblings
        sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module



def test_mac_counter_on_a_hand_counted_model():
    inputs = keras.Input((8, 6, 16))
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = CoordinateAttention(reduction=4)(x)  # mip = max(8, 32 // 4) = 8
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    result = macs.count_macs(keras.Model(inputs, outputs))
    conv = 4 * 3 * 3 * 3 * 16 * 32
    depthwise = 4 * 3 * 3 * 3 * 32
    attention = 2 * (4 + 3) * 32 * 8  # shared conv + the two gates
    dense = 32 * 10
    assert result["by_type"] == {
        "Conv2D": conv, "DepthwiseConv2D": depthwise,
        "CoordinateAttention": attention, "Dense": dense,
    }
    assert result["total"] == conv + depthwise + attention + dense
    assert result["attention"] == attention
    assert result["attention_layers"] == 1
    assert result["attention_elementwise"] == 4 * 4 * 3 * 32


def test_report_remakes_the_stored_results_md():
    """report.py (no measuring) turns the stored results.json into the
    stored results.md, byte for byte, and recomputes its derived numbers."""
    report, summary = _load("report"), _load("summary")
    folder = os.path.join(BENCHMARKS, "results")
    with open(os.path.join(folder, "results.json")) as f:
        result = json.load(f)
    with open(os.path.join(folder, "results.md")) as f:
        assert report.markdown(result) == f.read()
    assert summary.targets(result) == result["targets"]
    assert summary.layer_summaries(result, result["backends"]) == \
        result["layer_summary"]


def test_benchmarks_import_nothing_from_tests():
    """No benchmark module imports, or reads a file from, tests/."""
    import ast

    tests = os.path.dirname(os.path.abspath(__file__))
    forbidden = {"tests"} | {f[:-3] for f in os.listdir(tests)
                             if f.endswith(".py")}
    for name in sorted(os.listdir(BENCHMARKS)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(BENCHMARKS, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                modules = []
            assert not any(m.split(".")[0] in forbidden
                           for m in modules), (name, modules)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value != "tests", name
                assert not node.value.startswith("tests/"), name


def _run(tmp_path, *extra, timeout=600):
    out = tmp_path / "results"
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--output", str(out), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "results.json") as f:
        result = json.load(f)
    assert (out / "results.md").read_text().startswith("# Benchmark results")
    return result, out


def _check_stats(stats):
    for key in ("median_ms", "p25_ms", "p75_ms", "min_ms", "max_ms"):
        assert stats[key] > 0
    assert stats["p25_ms"] <= stats["median_ms"] <= stats["p75_ms"]
    assert stats["n"] >= 1


def _check_pair_row(row, counts, batch=None):
    assert set(row["models"]) >= {CA, BASE}
    for name in (CA, BASE):
        stats = row["models"][name]
        _check_stats(stats)
        assert stats["macs_per_image"] == counts[name]["macs"] or \
            stats["macs_per_image"] == 3 * counts[name]["macs"]
        assert stats["params"] == counts[name]["params"]
        assert stats["gflops"] > 0 and stats["images_per_s"] > 0
    assert row["ratio"] > 0
    if batch is not None:
        assert row["batch"] == batch


def _check_counts(result):
    counts = result["counts"]
    ca = MobileNetV2CA(input_shape=(64, 64, 3), alpha=0.35, weights=None)
    base = keras.applications.MobileNetV2(input_shape=(64, 64, 3),
                                          alpha=0.35, weights=None)
    assert counts[CA]["params"] == ca.count_params()
    assert counts[BASE]["params"] == base.count_params()
    assert counts[CA]["trainable_params"] == 1_750_970  # the authors' count
    assert counts[CA]["macs"] == macs.count_macs(ca)["total"]
    assert counts[CA]["attention_layers"] == 16
    assert 1.0 < counts["mac_ratio"] < 1.10
    ref = result["reference_224"]
    assert abs(ref[BASE]["macs"] - 300.8e6) / 300.8e6 < 0.02
    assert 1.015 < ref["mac_ratio"] < 1.025
    assert ref[CA]["trainable_params"] == 3_950_648
    return counts


def test_quick_run_tensorflow(tmp_path):
    """Keras TF, the layer rows and LiteRT float, end to end (< 60 s)."""
    result, out = _run(
        tmp_path, "--backend", "tensorflow", "--sections",
        "keras,layer,litert", "--litert-kinds", "float", "--no-torch",
    )
    assert result["schema_version"] == 1
    assert result["errors"] == []
    assert result["config"]["alpha"] == 0.35 and result["config"]["size"] == 64
    assert result["machine"]["cpu_count"] >= 1
    counts = _check_counts(result)
    assert [(r["engine"], r["batch"]) for r in result["keras"]] == [
        ("tf.function", 1), ("tf.function", 4)]
    for row in result["keras"]:
        _check_pair_row(row, counts)
    # --quick times the largest and the smallest map of the network.
    assert [tuple(r["shape"]) for r in result["layer"]] == [
        (16, 16, 48), (2, 2, 336)]
    assert [r["count"] for r in result["layer"]] == [2, 3]
    for row in result["layer"]:
        assert row["macs"]["coordinate_attention"] > 0
        for timings in row["timings"].values():
            for name in ("coordinate_attention", "se_block",
                         "elementwise_pass"):
                _check_stats(timings[name])
    assert {s["backend"] for s in result["layer_summary"]} == {
        "tensorflow", "litert"}
    kinds = {(r["kind"], r["threads"]) for r in result["litert"]}
    assert kinds == {("float", 1), ("float", 2)}
    for row in result["litert"]:
        _check_pair_row(row, counts, batch=1)
        for name in (CA, BASE):
            assert row["models"][name]["file_bytes"] > 0
            assert row["models"][name]["delegate"]["partitions"] >= 1
        # The float graph must stay in one XNNPACK partition.
        assert row["models"][CA]["delegate"]["partitions"] == 1
        assert row["models"][CA]["delegate"]["outside_delegate"] == {}
    assert (out / "results.png").stat().st_size > 0
    assert all(isinstance(t["met"], bool) for t in result["targets"])


@pytest.mark.slow
def test_quick_run_everything(tmp_path):
    """Both backends, training, int8 and PyTorch rows."""
    result, _ = _run(tmp_path, timeout=900)
    assert result["errors"] == []
    counts = _check_counts(result)
    assert {r["backend"] for r in result["keras"]} == {"tensorflow", "jax"}
    assert {r["backend"] for r in result["train"]} == {"tensorflow", "jax"}
    for row in result["keras"] + result["train"]:
        _check_pair_row(row, counts)
    kinds = {r["kind"] for r in result["litert"]}
    assert kinds == {"float", "ptq_int8", "qat_int8"}
    sizes = result["file_sizes"][CA]
    assert sizes["ptq_int8"] < 0.5 * sizes["float"]
    # Per-tensor gate kernels make the QAT file smaller than the PTQ one.
    assert sizes["qat_int8"] < sizes["ptq_int8"]
    for row in result["litert"]:
        # CA leaves no op outside XNNPACK that MobileNetV2 does not (int8
        # HARD_SWISH would: the layer computes hard-swish as ADD and MUL).
        delegate = {name: row["models"][name]["delegate"]
                    for name in (CA, BASE)}
        assert delegate[CA]["outside_delegate"] == \
            delegate[BASE]["outside_delegate"], row["kind"]
        assert delegate[CA]["partitions"] == delegate[BASE]["partitions"]
    if importlib.util.find_spec("torch") is not None:
        assert [r["threads"] for r in result["torch"]] == [1, 2]
        assert result["torch_params"] == counts[CA]["trainable_params"]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="LiteRT conversion needs TensorFlow")
def test_fused_projection_script_runs(capsys):
    """The row gate folded into the next 1x1 convolution computes the same
    block (the script checks it to 1e-5) and converts to one partition."""
    _load("fused_projection").main(["--shape", "8x8x16x8", "--repeats", "2"])
    out = capsys.readouterr().out
    assert "BATCH_MATMUL" in out and "1 partition(s)" in out


def test_mac_counter_counts_se_cbam_and_wrapped_blocks():
    from keras_coordatt import CBAM
    from keras_coordatt import SqueezeExcitation
    from keras_coordatt import add_attention

    inputs = keras.Input((8, 6, 48))
    x = SqueezeExcitation(reduction=4)(inputs)  # hidden = 12
    x = CBAM(reduction=8, kernel_size=7, name="cbam")(x)  # hidden = 8
    outputs = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    model = keras.Model(inputs, outputs)
    result = macs.count_macs(model)
    se = 2 * 48 * 12  # reduce and expand on the pooled vector
    cbam = 2 * (2 * 48 * 8) + 8 * 6 * 7 * 7 * 2  # MLP twice, spatial conv
    depthwise = 8 * 6 * 3 * 3 * 48
    assert result["by_type"] == {
        "SqueezeExcitation": se, "CBAM": cbam, "DepthwiseConv2D": depthwise}
    assert result["attention"] == se + cbam
    assert result["attention_layers"] == 2
    assert result["attention_elementwise"] == (2 + 6) * 8 * 6 * 48
    # An identity-start block counts as the layer it wraps, plus its blend.
    inserted = macs.count_macs(add_attention(model, after=["dw"],
                                             attention="ca", reduction=8))
    ca = 2 * (8 + 6) * 48 * 8  # mip = max(8, 48 // 8) = 8
    assert inserted["by_type"]["CoordinateAttention"] == ca
    assert inserted["attention"] == se + cbam + ca
    assert inserted["attention_layers"] == 3
    assert inserted["attention_elementwise"] == (2 + 6 + 4 + 2) * 8 * 6 * 48


COMPARISON = os.path.join(ROOT, "benchmarks", "attention_comparison.py")


def _trainable(model):
    return macs.count_params(model)["trainable"]


@pytest.mark.slow
def test_attention_comparison_smoke(tmp_path):
    """`attention_comparison.py --smoke`: the kinds trained, counted,
    quantized and timed, and the insertion rows (a few minutes: every
    training run traces its graphs). ELA, registered like any kind, is
    compared with no edit of the script."""
    from keras_coordatt import add_attention

    out = tmp_path / "results"
    env = dict(os.environ)
    env.pop("KERAS_BACKEND", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run(
        [sys.executable, COMPARISON, "--smoke", "--output", str(out),
         "--work-dir", str(tmp_path / "runs"), "--kinds", "ela", "none",
         "ca"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "attention_comparison.json") as f:
        result = json.load(f)
    config = result["config"]
    assert config["smoke"] and config["alpha"] == 0.35
    assert config["image_size"] == 32 and config["epochs"] == 1
    assert config["seeds"] == [0]
    kinds = result["kinds"]
    assert list(kinds) == ["none", "ca", "ela"]  # the registry's order
    shape = (32, 32, 3)
    for kind, attention in (("none", False), ("ca", "ca"), ("ela", "ela")):
        row = kinds[kind]
        model = MobileNetV2CA(input_shape=shape, alpha=0.35, weights=None,
                              classes=10, attention=attention)
        # 408,938 (none) and 482,780 (CA) trainable parameters.
        assert row["params"]["trainable"] == _trainable(model), kind
        assert row["params"]["total"] == model.count_params(), kind
        counted = macs.count_macs(model)
        assert row["macs"] == counted["total"], kind
        assert row["attention_macs"] == counted["attention"], kind
        assert (row["attention_layers"] == 16) == (kind != "none"), kind
        for key in ("top1", "int8_top1"):
            stats = row[key]
            assert stats["n"] == 1 and stats["std"] == 0.0
            assert 0.0 <= stats["min"] <= stats["mean"] <= stats["max"] <= 1
        latency = row["int8_latency"]
        assert latency["median_ms"] > 0 and latency["cpu_median_ms"] >= 0
        assert latency["n"] == config["latency_runs"]
        assert row["int8_file_bytes"] > 0
    assert kinds["none"]["macs"] < kinds["ela"]["macs"]
    assert kinds["none"]["macs"] < kinds["ca"]["macs"]
    assert len(result["runs"]) == 3

    insertion = result["insertion"]
    base = keras.applications.MobileNetV2(input_shape=shape, alpha=0.35,
                                          weights=None, classes=10)
    after = [layer.name for layer in base.layers
             if layer.name.endswith("_depthwise_relu")
             and layer.name.startswith("block_")]
    assert insertion["blocks"] == len(after) == 16
    with_ca = add_attention(base, after=after, attention="ca")
    rows = insertion["rows"]
    assert set(rows) == {"without", "with_ca"}
    assert rows["without"]["params"]["trainable"] == _trainable(base)
    assert rows["with_ca"]["params"]["trainable"] == _trainable(with_ca)
    assert rows["with_ca"]["macs"] == macs.count_macs(with_ca)["total"]
    for row in (rows["without"], rows["with_ca"], insertion):
        stats = row["top1"] if "top1" in row else row["base_top1"]
        assert 0.0 <= stats["min"] <= stats["max"] <= 1.0
    # The identity start: the inserted blocks leave the outputs unchanged.
    assert insertion["start_max_rel_diff"] <= 1e-3
    text = (out / "attention_comparison.md").read_text()
    assert text.startswith("# Attention comparison")
    # The kinds this smoke run compares, labelled by the registry.
    for label in ("| none (MobileNetV2) |", "| CoordinateAttention (`ca`) |",
                  "| EfficientLocalAttention (`ela`) |",
                  "| base, no attention |", "| base + inserted CA |"):
        assert label in text


@pytest.mark.slow
def test_gpu_training_script_on_cpu(tmp_path):
    """`gpu_training.py --quick`: the script a GPU run will use, checked
    here on the CPU (two tiny runs through `train()`)."""
    out = tmp_path / "gpu_training.json"
    assert _load("gpu_training").main(["--quick", "--output", str(out)]) == 0
    with open(out) as f:
        record = json.load(f)
    assert record["backend"] == "tensorflow" and record["all_finite"]
    for run in record["runs"].values():
        assert run["timed_steps"] == 3 and run["global_batch"] == 8
        assert run["images_per_second"] > 0 and len(run["loss"]) == 3
    assert record["ca_over_base_time"] == pytest.approx(
        record["runs"]["base"]["images_per_second"]
        / record["runs"]["ca"]["images_per_second"])


@pytest.mark.slow
def test_segmentation_comparison_smoke(tmp_path):
    """`segmentation_comparison.py --smoke` with two kinds: one epoch each
    through train(), the parameter counts of the two segmenters, the
    tables."""
    out = tmp_path / "results"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks",
                                      "segmentation_comparison.py"),
         "--smoke", "--kinds", "none", "ca", "--output", str(out),
         "--work-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "segmentation_comparison.json") as f:
        result = json.load(f)
    assert [(r["kind"], r["seed"]) for r in result["runs"]] == [
        ("none", 0), ("ca", 0)]
    summary = result["summary"]
    # CA adds its blocks' weights to the encoder, nothing else changes.
    from keras_coordatt import MobileNetV2CA
    plain, with_ca = (MobileNetV2CA(input_shape=(64, 64, 3), alpha=0.35,
                                    include_top=False, weights=None,
                                    attention=kind).count_params()
                      for kind in (None, "ca"))
    assert summary["ca"]["parameters"] - summary["none"]["parameters"] == \
        with_ca - plain
    for row in summary.values():
        assert 0.0 <= row["mean_iou"]["mean"] <= 1.0
    assert "| ca | 4,373,662 |" in (out / "segmentation_comparison.md"
                                    ).read_text()


def test_litert_torch_op_report_and_top1_agreement():
    """The pure helpers of litert_torch_peer.py: which ops stay float in
    an int8 file, and the top-1 agreement (with its error text)."""
    peer = _load("litert_torch_peer")
    ops = [
        {"op_name": "QUANTIZE", "dtypes": ["float32", "int8"]},
        {"op_name": "CONV_2D", "dtypes": ["int32", "int8"]},
        {"op_name": "QUANTIZE", "dtypes": ["int8"]},  # a requantization
        {"op_name": "DEQUANTIZE", "dtypes": ["float32", "int8"]},
        {"op_name": "ADD", "dtypes": ["float32"]},
        {"op_name": "ADD", "dtypes": ["float32"]},
        {"op_name": "ADD", "dtypes": ["int8"]},
    ]
    assert peer.op_report(ops) == {
        "op_counts": {"QUANTIZE": 2, "CONV_2D": 1, "DEQUANTIZE": 1,
                      "ADD": 3},
        "float_ops": {"ADD": 2}, "boundaries": 2, "int8_ops": 3, "ops": 7}
    a = [[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [1, 0, 0]]
    b = [[0.0, 1.0, 0.0], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9], [2, 1, 0]]
    assert peer.top1_agreement(a, b) == 0.75
    with pytest.raises(ValueError, match=r"Received: shapes \(4, 3\) and "
                                         r"\(3, 3\)"):
        peer.top1_agreement(a, b[:3])


def test_litert_torch_md_remade_from_its_json():
    """The stored litert_torch.md is the stored JSON's table."""
    peer = _load("litert_torch_peer")
    folder = os.path.join(BENCHMARKS, "results")
    with open(os.path.join(folder, "litert_torch.json")) as f:
        result = json.load(f)
    with open(os.path.join(folder, "litert_torch.md")) as f:
        assert peer.markdown(result) == f.read()
    assert result["config"]["quick"] is False
    assert result["torch_params"] == result["ours_trainable_params"]


def _torch_python():
    """The Python that runs the litert-torch worker (as the script picks
    it), and why it cannot, if it cannot."""
    python = os.environ.get("LITERT_TORCH_PYTHON", sys.executable)
    proc = subprocess.run(
        [python, "-c", "import litert_torch, onnxruntime, torch"],
        capture_output=True, text=True)
    reason = None if proc.returncode == 0 else (
        f"litert_torch/onnxruntime not importable by {python} (set "
        "LITERT_TORCH_PYTHON to a venv with the torch-peer extra): "
        + proc.stderr.strip().splitlines()[-1])
    return python, reason


@pytest.mark.slow
def test_litert_torch_peer_quick(tmp_path):
    """`litert_torch_peer.py --quick`: the authors' network converted by
    litert-torch, float and PT2E int8, checked and timed beside ours (about
    10 minutes: litert-torch's conversions)."""
    python, reason = _torch_python()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "results"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "litert_torch_peer.py"),
         "--quick", "--torch-python", python, "--output", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "litert_torch.json") as f:
        result = json.load(f)
    # The same network: the authors' trainable parameter count, both sides.
    assert result["torch_params"] == result["ours_trainable_params"] \
        == 1_750_970
    checks = result["checks"]
    assert checks["litert_torch_float"]["max_abs_diff"] < 1e-4
    assert checks["onnxruntime"]["max_abs_diff"] < 1e-4
    assert checks["litert_torch_int8"]["top1_agreement"] >= 0.5
    theirs, ours = checks["litert_torch_int8"], checks["ours_int8"]
    assert theirs["input_dtype"] == "int8"  # PT2E quantizes the input too
    assert ours["ops"]["float_ops"] == {}  # ours: every op int8
    assert theirs["ops"]["int8_ops"] > 10 * sum(
        theirs["ops"]["float_ops"].values())
    for kind in ("litert_torch", "ours"):
        assert checks[f"{kind}_int8"]["file_bytes"] < \
            0.4 * checks[f"{kind}_float"]["file_bytes"]
        assert checks[f"{kind}_float"]["partitions"] == 1
    assert [r["threads"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert set(row["models"]) == set(_load("litert_torch_peer").MODELS)
        for stats in row["models"].values():
            _check_stats(stats)
    text = (out / "litert_torch.md").read_text()
    assert text.startswith("# litert-torch peer: alpha 0.35, 64x64")
    assert "| authors' network (litert-torch PT2E) | LiteRT int8 |" in text

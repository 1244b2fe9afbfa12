"""The README's example commands run and reach what the README states.

The main job's training command is checked by
`test_training.py::test_cli_trains_digits_to_90_percent`, its quantize
command (the same arguments) by `test_quantization.py::digits_models`; this
file checks that the README shows them, and the short-run example of the
Training section.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, os.pardir, "README.md")
SHORT_RUN = ("keras-coordatt train --model mobilenetv2_ca --alpha 0.35 "
             "--dataset mnist --epochs 3")


MAIN_JOB = ("keras-coordatt train --dataset digits --output-dir runs/digits "
            "&& keras-coordatt quantize --model runs/digits/model.keras "
            "--dataset digits --output-dir runs/digits --output "
            "runs/digits/model_int8.tflite")


def test_the_readme_shows_these_commands():
    text = open(README, encoding="utf-8").read()
    assert SHORT_RUN in text
    assert MAIN_JOB in text


@pytest.mark.slow
def test_short_run_example_learns(tmp_path):
    """The 3-epoch example on the real MNIST digits: 88.7 % measured
    (README; the issue asks >= 80 %). On the 8x8 digits it reached 70.2 %,
    and a warm-up of fixed length with the moving BatchNorm averages 16 %."""
    args = SHORT_RUN.split()[1:] + ["--output-dir", str(tmp_path / "run"),
                                    "--verbose", "2"]
    command = [sys.executable, "-m", "keras_coordatt.cli"] + args
    result = subprocess.run(command, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "run" / "results.json"))["metrics"]
    print(f"--epochs 3: validation accuracy {metrics['accuracy']:.4f}")
    assert metrics["accuracy"] >= 0.85
    assert "BatchNorm statistics recomputed on 16" in result.stdout

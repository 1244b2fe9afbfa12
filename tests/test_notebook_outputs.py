"""The outputs stored in the notebooks are what a visitor reads on GitHub:
no errors, fallback banners, library log noise or paths of the machine that
ran them, and the cells executed once, top to bottom."""

import json
import pathlib
import re

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

# Each pattern with why it must not show in a stored output.
FORBIDDEN = {
    "fallback banner": re.compile(r"FALLBACK|MEANINGLESS"),
    "traceback": re.compile(r"Traceback"),
    "CUDA probe": re.compile(r"cuInit"),
    "TensorFlow C++ log line": re.compile(r"^[IWE]\d{4} ", re.MULTILINE),
    "absl warning": re.compile(r"WARNING:absl"),
    "UserWarning": re.compile(r"UserWarning"),
    "machine path": re.compile(r"/tmp/|/work/|/root/|/home/|site-packages"),
}


def output_text(output):
    """The text a stored output shows (streams, results, displays)."""
    if output["output_type"] == "stream":
        parts = [output["text"]]
    else:
        parts = [value for key, value in output.get("data", {}).items()
                 if key.startswith("text/")]
    return "".join("".join(part) if isinstance(part, list) else part for part in parts)


def problems(notebook):
    """(cell index, problem) for every bad stored output or execution count."""
    found, last_count = [], 0
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        count = cell.get("execution_count")
        if count is not None:
            if count <= last_count:
                found.append((index, f"execution count {count} after {last_count}"))
            last_count = count
        elif cell.get("outputs"):
            found.append((index, "outputs without an execution count"))
        for output in cell.get("outputs", []):
            if output["output_type"] == "error":
                found.append((index, f"error output {output.get('ename')}"))
                continue
            text = output_text(output)
            for name, pattern in FORBIDDEN.items():
                match = pattern.search(text)
                if match:
                    found.append((index, f"{name}: {match.group(0)!r}"))
    return found


def test_notebooks_found():
    assert len(NOTEBOOKS) == 6, [path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_stored_outputs_are_clean(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    executed = [cell for cell in notebook["cells"]
                if cell["cell_type"] == "code" and cell.get("execution_count")]
    assert executed, f"{path.name} has no executed cell"
    assert problems(notebook) == []


def test_checker_catches_each_problem():
    def cell(count, *texts, error=False):
        outputs = [{"output_type": "stream", "name": "stdout", "text": [t]} for t in texts]
        if error:
            outputs.append({"output_type": "error", "ename": "ValueError",
                            "evalue": "", "traceback": []})
        return {"cell_type": "code", "execution_count": count, "outputs": outputs,
                "source": ""}

    bad = {"cells": [
        cell(2, "FALLBACK: random weights\n"),
        cell(1, "ok\nE0000 00:00:17 cuda_platform.cc:52] failed call to cuInit\n"),
        cell(3, "saved to /tmp/run/model.keras\n", error=True),
        cell(4, "WARNING:absl:x\n", "a.py:3: UserWarning: y\n"),
    ]}
    assert problems(bad) == [
        (0, "fallback banner: 'FALLBACK'"),
        (1, "execution count 1 after 2"),
        (1, "CUDA probe: 'cuInit'"),
        (1, "TensorFlow C++ log line: 'E0000 '"),
        (2, "machine path: '/tmp/'"),
        (2, "error output ValueError"),
        (3, "absl warning: 'WARNING:absl'"),
        (3, "UserWarning: 'UserWarning'"),
    ]
    clean = {"cells": [cell(1, "accuracy 0.95\n"), cell(2, "saved: run/model.keras\n")]}
    assert problems(clean) == []

"""A missing optional dependency: one line naming the extra to install, on
the command line exit 2, and no run folder left behind."""

import sys

import pytest

from keras_coordatt import cli
from keras_coordatt.utils.extras import MissingExtraError
from keras_coordatt.utils.extras import require


def test_require_names_the_extra():
    with pytest.raises(MissingExtraError) as info:
        require("no_such_module_kc", "hub", "Segmentation")
    message = str(info.value)
    assert message.startswith(
        'Segmentation needs no_such_module_kc, which is not installed: pip '
        'install "keras-coordatt[hub]"')
    assert "\n" not in message
    assert isinstance(info.value, ImportError)


@pytest.mark.parametrize("task,module", [("segmentation", "keras_hub"),
                                         ("detection", "pycocotools")])
def test_train_without_the_hub_extra(task, module, tmp_path, monkeypatch,
                                     capsys):
    # `None` in sys.modules: what Python does for a module that is absent.
    monkeypatch.setitem(sys.modules, module, None)
    out = tmp_path / "run"
    status = cli.main(["train", "--task", task, "--epochs", "1",
                       "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1, err
    assert f"needs {module}, which is not installed" in err[0]
    assert 'pip install "keras-coordatt[hub]"' in err[0]
    assert not out.exists()


def test_one_meaning_for_verbose(capsys):
    # Before the command, --verbose once meant "TensorFlow's logs"; that is
    # --logs now, and --verbose only sets a command's progress output.
    assert cli.main(["--verbose", "train"]) == 2
    err = capsys.readouterr().err
    assert "--verbose goes after the command" in err and "--logs" in err
    assert cli.main(["--logs", "--help"]) == 0
    assert "--logs shows TensorFlow's own logs" in capsys.readouterr().out


def test_train_help_shows_the_folder_layouts(capsys):
    from keras_coordatt.training import cli as train_cli

    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    out = capsys.readouterr().out
    assert "PATH/CLASS/IMAGE" in out
    assert "PATH/images/STEM.jpg with PATH/masks/STEM.png" in out
    assert "x_train (N, H, W[, 1 or 3])" in out


def _extras_in(text):
    import re

    return [set(m.group(1).split(",")) for m in re.finditer(
        r'pip install (?:-q )?-e "\.\[([a-z0-9,-]+)\]"', text)]


def test_no_install_command_leaves_two_tensorflow_wheels():
    """keras-hub (tensorflow-text) and tfmot (tf-keras) depend on the full
    `tensorflow` wheel: an install naming `tensorflow-cpu` beside them would
    leave two TensorFlow wheels in one folder. The README's commands and
    .ci/run name `tensorflow` with them, and the README's first command
    covers the dense demos (the hub extra)."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commands = []
    for name in ("README.md", "CONTRIBUTING.md", os.path.join(".ci", "run")):
        with open(os.path.join(root, name)) as f:
            commands += _extras_in(f.read())
    assert len(commands) >= 2, commands
    for extras in commands:
        if extras & {"hub", "tfmot"}:
            assert "tensorflow-cpu" not in extras, extras
    assert {"tensorflow", "hub", "datasets", "litert"} <= commands[0]


def _unconditional(dist):
    """Names `dist` requires whatever extras are chosen (its own markers
    evaluated on this machine, extras unset)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    names = set()
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.add(req.name)
    return names


def test_tensorflow_text_depends_on_the_full_wheel():
    """The reason above, read from the installed metadata (where the hub
    extra is installed): keras-hub requires tensorflow-text, which requires
    `tensorflow` (tensorflow-cpu only through its own extra)."""
    from importlib import metadata

    try:
        text = _unconditional("tensorflow-text")
    except metadata.PackageNotFoundError:
        pytest.skip("tensorflow-text (the hub extra) is not installed")
    assert "tensorflow" in text and "tensorflow-cpu" not in text
    assert "tensorflow-text" in _unconditional("keras-hub")

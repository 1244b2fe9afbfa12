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

import os
import sys

# The tests' own helper (numpy_reference) imports by name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import json  # noqa: E402

import pytest  # noqa: E402


def _train_digits_demo(folder):
    import keras

    from keras_coordatt.training import train

    keras.utils.set_random_seed(0)
    run = train("digits", overrides=dict(
        output_dir=str(folder), tensorboard=False,
    ), verbose=0)
    return run.model_path


@pytest.fixture(scope="session")
def digits_demo(tmp_path_factory, worker_id):
    """The README's main job's float model: MobileNetV2CA (alpha 0.35,
    32x32) trained by `train("digits")`, as `(model, metrics)`.

    Trained once per test session: under pytest-xdist the first worker to
    get here trains it and the others wait on a lock and load its file.
    """
    import keras

    if worker_id == "master":  # No xdist: this session's own folder.
        path = _train_digits_demo(tmp_path_factory.mktemp("digits_demo"))
    else:
        from filelock import FileLock

        shared = tmp_path_factory.getbasetemp().parent  # one per session
        folder = shared / "digits_demo"
        with FileLock(str(shared / "digits_demo.lock")):
            done = folder / "results.json"
            if not done.exists():
                _train_digits_demo(folder)
        path = folder / "model.keras"
    folder = os.path.dirname(str(path))
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
        metrics = json.load(f)["metrics"]
    return keras.models.load_model(str(path)), metrics

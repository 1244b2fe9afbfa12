"""Config values: every number finite and in range, bounded recipe chains
and JSON nesting, and `--resume` refusing another network before anything
in the run's folder changes; the CLI answers each with exit 2 and one
line."""

import json
import os

import pytest

from keras_coordatt.training import TrainConfig
from keras_coordatt.training import cli as train_cli
from keras_coordatt.training import train
from keras_coordatt.training.recipes import MAX_JSON_DEPTH
from keras_coordatt.training.recipes import MAX_RECIPE_CHAIN
from keras_coordatt.training.recipes import get_config
from keras_coordatt.training.recipes import parse_overrides


def _cli_error(capsys, argv):
    """`keras-coordatt train ARGV`'s exit status and its one stderr line."""
    code = train_cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return code, err


@pytest.mark.parametrize("key", [
    "base_learning_rate", "weight_decay", "alpha", "momentum",
    "label_smoothing", "warmup_epochs", "head_dropout"])
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=(
            rf"Config key `{key}` must be a finite number\. Received: "
            rf"{key}=-?(nan|inf)")):
        get_config("digits", parse_overrides([f"{key}={value}"]))


def test_a_non_finite_pair_element_is_refused():
    with pytest.raises(ValueError, match=(
            r"`random_crop_scale` must be a finite number\. Received: "
            r"random_crop_scale=nan")):
        TrainConfig(random_crop_scale=(float("nan"), 1.0))


@pytest.mark.parametrize("key, value, accepted", [
    ("momentum", 1.5, r">= 0 and <= 1\.0"),
    ("label_smoothing", 2.0, r">= 0 and <= 1\.0"),
    ("final_learning_rate_fraction", -0.1, r">= 0 and <= 1\.0"),
    ("head_dropout", 1.0, r">= 0 and < 1\.0"),
    ("weight_decay", -1e-4, r">= 0"),
    ("alpha", 0.0, r"> 0\.0"),
])
def test_numbers_out_of_range_are_refused(key, value, accepted):
    with pytest.raises(ValueError, match=(
            rf"`{key}` must be {accepted}, a finite number\. Received: "
            rf"{key}={value!r}")):
        get_config("digits", {key: value})


def test_cli_refuses_nan_with_exit_2_and_one_line(capsys):
    code, err = _cli_error(capsys, [
        "--print-config", "--set", "base_learning_rate=NaN"])
    assert code == 2
    assert err == ("keras-coordatt train: Config key `base_learning_rate` "
                   "must be a finite number. Received: "
                   "base_learning_rate=nan")
    code, err = _cli_error(capsys, ["--print-config", "--set",
                                    "momentum=Infinity"])
    assert code == 2 and "momentum=inf" in err


def test_a_recipe_naming_itself_is_refused_naming_the_file(tmp_path,
                                                           capsys):
    path = tmp_path / "self.json"
    path.write_text(json.dumps({"recipe": str(path), "epochs": 3}))
    with pytest.raises(ValueError, match=(
            rf"recipe` chain must end in a recipe name within "
            rf"{MAX_RECIPE_CHAIN} files, without a loop\. Received: "
            rf"config='{path}' reached through {path} -> {path}$")):
        get_config(str(path))
    # A loop through two files, and a chain too long.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"recipe": str(path)}))
    path.write_text(json.dumps({"recipe": str(other)}))
    with pytest.raises(ValueError, match=rf"config='{path}' reached "
                       rf"through {path} -> {other} -> {path}"):
        get_config(str(path))
    files = [tmp_path / f"c{i}.json" for i in range(MAX_RECIPE_CHAIN + 1)]
    for i, file in enumerate(files):
        file.write_text(json.dumps(
            {"recipe": str(files[i + 1]) if i + 1 < len(files) else
             "digits", "seed": i}))
    with pytest.raises(ValueError, match=rf"config='{files[-1]}'"):
        get_config(str(files[0]))
    assert get_config(str(files[1])).seed == 1  # 8 files: accepted.
    code, err = _cli_error(capsys, ["--print-config", "--config",
                                    str(path)])
    assert code == 2 and str(path) in err


def test_deep_json_is_refused_before_parsing(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=(
            rf"Config JSON may nest at most {MAX_JSON_DEPTH} levels\. "
            rf"Received: config='{path}' nesting 100000 levels")):
        get_config(str(path))
    # Brackets inside strings do not count; the limit itself is accepted.
    shallow = tmp_path / "shallow.json"
    shallow.write_text(json.dumps(
        {"output_dir": "[[[[" * 40, "epochs": 3}))
    assert get_config(str(shallow)).epochs == 3
    with pytest.raises(ValueError, match=(
            r"nest at most 32 levels\. Received: epochs=<200000 "
            r"characters> nesting 100000 levels")):
        parse_overrides(["epochs=" + "[" * 100_000 + "]" * 100_000])
    code, err = _cli_error(capsys, ["--print-config", "--config",
                                    str(path)])
    assert code == 2 and "nesting 100000 levels" in err


def _unfinished_run(folder):
    """A run folder as a killed `train("digits")` leaves it: its
    config.json and a backup state."""
    config = get_config("digits", {"output_dir": str(folder)})
    (folder / "config.json").write_text(json.dumps(config.to_dict(),
                                                   indent=2))
    backup = folder / "backup"
    backup.mkdir()
    (backup / "ckpt-000000022.weights.h5").write_bytes(b"weights")
    (backup / "state.json").write_text(json.dumps(
        {"phase": 0, "epoch": 1, "step": 0, "iterations": 22, "best": None,
         "weights": "ckpt-000000022.weights.h5"}))
    return {name: (folder / name).read_bytes()
            for name in ("config.json", "backup/state.json",
                         "backup/ckpt-000000022.weights.h5")}


def test_resume_refuses_another_network_and_keeps_config_json(tmp_path,
                                                              capsys):
    before = _unfinished_run(tmp_path)
    with pytest.raises(ValueError, match=(
            r"--resume \(resume=True\) must build the network of the run in "
            rf"{tmp_path}: `alpha` was 0\.35 there\. Received: alpha=0\.5; "
            r"resume with alpha=0\.35 or choose another output_dir\.")):
        train("digits", overrides={"output_dir": str(tmp_path),
                                   "alpha": 0.5}, resume=True)
    code, err = _cli_error(capsys, [
        "--resume", "--output-dir", str(tmp_path), "--attention", "se"])
    assert code == 2
    assert "`attention` was True there. Received: attention='se'" in err
    after = {name: (tmp_path / name).read_bytes() for name in before}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["backup", "config.json"]


def test_resume_refuses_data_of_another_class_count(tmp_path):
    before = _unfinished_run(tmp_path)
    state = json.loads(before["backup/state.json"])
    state["num_classes"] = 3  # digits has 10
    (tmp_path / "backup" / "state.json").write_text(json.dumps(state))
    before["backup/state.json"] = (tmp_path / "backup" /
                                   "state.json").read_bytes()
    with pytest.raises(ValueError, match=(
            r"The backup was written for 3 classes, this run's data has "
            r"10\. Resume with the interrupted run's data\. Received: "
            r"dataset='digits'")):
        train("digits", overrides={"output_dir": str(tmp_path)},
              resume=True)
    after = {name: (tmp_path / name).read_bytes() for name in before}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["backup", "config.json"]

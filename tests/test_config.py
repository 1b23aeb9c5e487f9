import dataclasses
import json

import pytest

from fmnist.arguments import build_parser, resolve_config
from fmnist.config import PRESET_PURPOSES, PRESETS, TrainConfig


def test_defaults_are_the_spec():
    config = TrainConfig()
    assert (config.model, config.epochs, config.batch_size, config.learning_rate, config.validation_fraction) == (
        "baseline", 10, 32, 1e-3, 0.1,
    )


def test_round_trip_through_json(tmp_path):
    config = TrainConfig(epochs=3, seed=7, train_subset=500)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert TrainConfig.load(path) == config


def test_unknown_keys_are_an_error():
    with pytest.raises(ValueError, match=r"unknown config keys \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize("values, message", [
    ({"epochs": "3"}, "'epochs': '3' is not of type"),
    ({"deterministic": 1}, "'deterministic'"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"validation_fraction": 1.5}, "validation_fraction must be 0 \\(none\\) or between 0 and 1"),
    ({"learning_rate": -1.0}, "learning_rate must be positive"),
    ({"time_budget": -60.0}, "time_budget must be 0 \\(off\\) or a number of seconds, got -60.0"),
    ({"max_steps": 0}, "max_steps must be at least 1 \\(or left out\\), got 0"),
    ({"erase": 1.5}, "erase must be a probability in \\[0, 1\\], got 1.5$"),
    ({"momentum": 1.0}, "momentum must be in \\[0, 1\\), got 1.0$"),
    ({"label_smoothing": float("nan")}, "label_smoothing must be in \\[0, 1\\), got nan$"),
    ({"translate": 15, "weight_decay": -0.1}, "weight_decay must be 0 or more, got -0.1; translate must be 0-14 pixels, got 15$"),
])  # fmt: skip
def test_bad_values_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "a config is a JSON object of settings, not a list"),
    ('{"epochs": 0}', "epochs must be at least 1"),
    ("{bad", "not valid JSON"),
])  # fmt: skip
def test_a_bad_config_file_is_named_in_the_error(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'config.json'}: .*{message}"):
        TrainConfig.load(tmp_path / "config.json")


def test_every_field_is_a_flag_and_flags_override_a_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TrainConfig(epochs=4, seed=3).to_dict()))
    arguments = build_parser().parse_args(
        ["train", "--config", str(path), "--seed", "5", "--no-deterministic", "--train-subset", "1000"]
    )
    assert resolve_config(arguments) == TrainConfig(epochs=4, seed=5, deterministic=False, train_subset=1000)
    flags = {action.dest for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert {field.name for field in dataclasses.fields(TrainConfig)} <= flags


def test_presets_are_valid_and_flags_override_them():
    from fmnist.config import preset
    from fmnist.models import MODELS

    for name in PRESETS:
        assert isinstance(preset(name), TrainConfig) and preset(name).model in MODELS
    assert preset("spec") == TrainConfig()
    arguments = build_parser().parse_args(["train", "--preset", "best", "--epochs", "2"])
    config = resolve_config(arguments)
    assert config.model == "compact" and config.flip and config.epochs == 2
    # `best` sizes its epochs to 15 minutes; --epochs or --max-steps alone asks for that length instead
    assert preset("best").time_budget == 900 and config.time_budget == 0
    steps = resolve_config(build_parser().parse_args(["train", "--preset", "best", "--max-steps", "300"]))
    assert (steps.epochs, steps.max_steps, steps.time_budget) == (preset("best").epochs, 300, 0)
    # beside a budget of its own the length would be ignored, as the budget sets it: an error, not a silent choice
    for length in (["--epochs", "2"], ["--max-steps", "300"], ["--epochs", "2", "--max-steps", "300"]):
        with pytest.raises(ValueError, match="--time-budget sets the epochs") as error:
            resolve_config(build_parser().parse_args(["train", "--preset", "best", *length, "--time-budget", "60"]))
        assert all(flag in str(error.value) for flag in length[::2])
    off = resolve_config(build_parser().parse_args(["train", "--preset", "best", "--epochs", "2", "--time-budget", "0"]))
    assert (off.epochs, off.time_budget) == (2, 0)
    # --no-tta turns off the preset's shifted views with its flips, and asking for both is still refused
    plain = resolve_config(build_parser().parse_args(["train", "--preset", "best", "--no-tta"]))
    assert (preset("best").tta_shift, plain.tta, plain.tta_shift) == (1, False, 0)
    with pytest.raises(ValueError, match="turn on tta"):
        resolve_config(build_parser().parse_args(["train", "--preset", "best", "--no-tta", "--tta-shift", "1"]))
    # best_bf16 is best in bfloat16 at batch 512, sized to the same 15 minutes; --epochs beside it trains that many instead
    assert preset("best_bf16") == dataclasses.replace(preset("best"), mixed_precision=True, batch_size=512)
    former = ["train", "--preset", "best_bf16", "--optimizer", "sgd", "--epochs", "26"]  # its former recipe (config.py)
    assert resolve_config(build_parser().parse_args(former)).time_budget == 0
    with pytest.raises(ValueError, match="give one of them"):
        resolve_config(build_parser().parse_args(["train", "--preset", "fast", "--config", "x.json"]))


def test_max_steps_cuts_the_last_epoch_short_and_never_lengthens_a_run():
    assert TrainConfig(epochs=3).epoch_steps(10) == [10, 10, 10] and TrainConfig(epochs=3).total_steps(10) == 30
    assert TrainConfig(epochs=3, max_steps=25).epoch_steps(10) == [10, 10, 5]
    assert TrainConfig(epochs=3, max_steps=25).total_steps(10) == 25
    assert TrainConfig(epochs=3, max_steps=8).epoch_steps(10) == [8]  # fewer epochs than asked for
    assert TrainConfig(epochs=3, max_steps=50).epoch_steps(10) == [10, 10, 10]  # a cap, not a target


def test_epochs_given_alone_drop_a_budgeted_runs_steps_as_well_as_its_budget(tmp_path):
    """A budgeted run's config.json holds the epochs and max_steps its budget chose; --epochs N there means N whole."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TrainConfig(epochs=9, max_steps=1831, time_budget=900).to_dict()))
    again = resolve_config(build_parser().parse_args(["train", "--config", str(path)]))
    assert (again.epochs, again.max_steps, again.time_budget) == (9, 1831, 900)
    longer = resolve_config(build_parser().parse_args(["train", "--config", str(path), "--epochs", "20"]))
    assert (longer.epochs, longer.max_steps, longer.time_budget) == (20, None, 0)
    capped = resolve_config(build_parser().parse_args(["train", "--config", str(path), "--epochs", "20",
                                                        "--max-steps", "3000"]))  # fmt: skip
    assert (capped.epochs, capped.max_steps, capped.time_budget) == (20, 3000, 0)


def test_every_preset_says_what_it_is_for_in_the_help(capsys):
    assert list(PRESET_PURPOSES) == ["spec", "fast", "fast_bf16", "best", "best_bf16", "gpu"]
    assert set(PRESET_PURPOSES) == set(PRESETS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    train_help = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for name, purpose in PRESET_PURPOSES.items():
        assert f"{name}: {purpose}" in train_help


def test_named_choices_are_checked_at_the_command_line(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--optimizer", "adm"])
    assert "invalid choice: 'adm' (choose from 'adam', 'adamw', 'sgd', 'muon')" in capsys.readouterr().err
    assert build_parser().parse_args(["train", "--jit-compile", "on", "--schedule", "cosine"]).jit_compile == "on"

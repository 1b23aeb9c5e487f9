"""Epochs sized to a time budget: the arithmetic, the timing of chunks, and runs trained and resumed with one."""

import dataclasses
import time

import pytest

from conftest import Killed
from fmnist import budget, runs
from fmnist.budget import Probe, epochs_within, seconds_per_unit
from fmnist.config import TrainConfig
from fmnist.train import train


def test_epochs_fill_the_planned_share_after_the_probe_and_the_first_calls_compiling():
    probe = Probe(step_seconds=0.1, validation_seconds=1.0, first_call_seconds=4.0, seconds=6.0)
    assert probe.epoch_seconds(steps_per_epoch=90) == pytest.approx(10.0)
    # 0.95 * 200 = 190 s planned; 190 - 6 - 4 = 180 s for epochs of 10 s
    assert epochs_within(200, probe, steps_per_epoch=90) == 18
    assert epochs_within(200 * 1.05, probe, steps_per_epoch=90) == 18  # 19.95 epochs: whole epochs only
    assert epochs_within(21 / 0.95, probe, steps_per_epoch=90) == 1


def test_a_budget_without_room_for_one_epoch_is_refused_with_the_least_that_would_do():
    probe = Probe(step_seconds=0.1, validation_seconds=1.0, first_call_seconds=4.0, seconds=6.0)
    with pytest.raises(ValueError, match=r"a time budget of 15 s fits no epoch here: one takes about 10.0 s, after 10.0 s "
                                         r"for the probe .*; give at least 22 s") as refused:  # fmt: skip
        epochs_within(15, probe, steps_per_epoch=90)
    assert "--epochs" in str(refused.value)
    assert epochs_within(22, probe, steps_per_epoch=90) == 1  # the figure it names is enough


def test_chunks_grow_until_one_is_long_enough_and_the_first_calls_extra_time_is_split_off(monkeypatch):
    monkeypatch.setattr(budget, "TIMED_SECONDS", 0.3)
    calls = []

    def run(units):  # 10 ms a unit, and 200 ms more on the first call, as tracing a step adds
        calls.append(units)
        time.sleep(0.01 * units + (0.2 if len(calls) == 1 else 0.0))

    per_unit, first_call = seconds_per_unit(run, available=1000, first=8, multiple=4)
    assert calls[0] == 8 and all(units % 4 == 0 for units in calls)
    assert calls[-1] == calls[-2] and calls[-1] * 0.01 >= 0.3 > calls[-3] * 0.01  # the first chunk long enough, twice
    assert all(later >= 2 * earlier for earlier, later in zip(calls, calls[1:-1], strict=False))  # growing at least twofold
    assert per_unit == pytest.approx(0.01, rel=0.3)
    assert first_call == pytest.approx(0.2, abs=0.1)


def test_a_stall_in_one_timed_chunk_does_not_set_the_estimate(monkeypatch):
    monkeypatch.setattr(budget, "TIMED_SECONDS", 0.3)
    calls = []

    def run(units):  # 10 ms a unit; the first chunk long enough to count stalls, running at less than half speed
        calls.append(units)
        time.sleep(0.01 * units * (2.2 if units * 0.01 >= 0.3 and calls.count(units) == 1 else 1.0))

    per_unit, _ = seconds_per_unit(run, available=1000, first=8)
    assert per_unit == pytest.approx(0.01, rel=0.3)  # not 0.022, which would plan less than half the epochs that fit


def test_chunks_stop_at_the_units_there_are():
    calls = []
    per_unit, _ = seconds_per_unit(lambda units: calls.append(units) or time.sleep(0.001 * units), available=5)
    assert calls == [1, 5, 5] and per_unit > 0  # all 5 units, far short of TIMED_SECONDS: the data ran out


def test_a_budgeted_run_records_its_epochs_and_resumes_with_them(tmp_path, dataset, kill_after_checkpoint):
    """The epochs chosen go into config.json; a resumed run keeps them instead of probing again."""
    config = TrainConfig(model="tiny", epochs=1, train_subset=1000, time_budget=10.0, checkpoint_seconds=0)
    messages = []
    kill_after_checkpoint(True)
    with pytest.raises(Killed):
        train(config, tmp_path, data=dataset, log=messages.append, report=False)
    chosen = TrainConfig.load(tmp_path / runs.CONFIG)
    assert chosen.time_budget == 10.0 and chosen.epochs > 1  # tiny's epochs of 900 images take well under a second
    assert any(message.startswith("time budget 10 s: an epoch takes about") and f"so {chosen.epochs} epochs" in message
               for message in messages)  # fmt: skip

    kill_after_checkpoint(False)
    messages.clear()
    metrics = train(config, tmp_path, data=dataset, log=messages.append, report=False)
    assert not any(message.startswith("time budget") for message in messages)  # no second probe
    assert [row["epoch"] for row in runs.read_csv(tmp_path / runs.HISTORY)] == list(range(1, chosen.epochs + 1))
    assert metrics["epochs"] == chosen.epochs and metrics["time_budget"] == 10.0
    assert TrainConfig.load(tmp_path / runs.CONFIG) == chosen

    # The probe leaves no trace in the run: the same epochs without a budget train the same model, step for step
    plain = train(dataclasses.replace(chosen, time_budget=0.0), tmp_path / "plain", data=dataset,
                  log=lambda *a, **k: None, report=False)  # fmt: skip
    assert runs.read_csv(tmp_path / "plain" / runs.HISTORY)[-1]["loss"] == runs.read_csv(tmp_path / runs.HISTORY)[-1]["loss"]
    assert plain["test_accuracy"] == metrics["test_accuracy"]


def test_a_budget_too_small_for_one_epoch_leaves_no_run_behind(tmp_path, dataset):
    with pytest.raises(ValueError, match="a time budget of 0.01 s fits no epoch here"):
        train(TrainConfig(model="tiny", train_subset=1000, time_budget=0.01), tmp_path / "run", data=dataset,
              log=lambda *a, **k: None, report=False)  # fmt: skip
    assert not (tmp_path / "run" / runs.CONFIG).exists()
    train(TrainConfig(model="tiny", epochs=1, train_subset=1000), tmp_path / "run", data=dataset,
          log=lambda *a, **k: None, report=False)  # fmt: skip
    assert runs.read_json(tmp_path / "run" / runs.METRICS)["epochs"] == 1  # the directory is free for another run

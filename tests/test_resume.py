"""Interrupted training resumes to the same result, through the real `fmnist train`; checkpoints keep their interval."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import cli_command, run_cli

pytestmark = pytest.mark.slow


def wait_for_epoch(run_dir, epochs_done, process, timeout=120):
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["epochs_done"] >= epochs_done:
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of epoch {epochs_done} appeared")


RESUME_OPTIONS = ["--epochs", "3", "--train-subset", "3000", "--seed", "7", "--no-report", "--checkpoint-seconds", "0"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, real_data_dir):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    run_cli("train", "--run-dir", str(run_dir), *RESUME_OPTIONS, "--data-dir", str(real_data_dir))
    return run_dir


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_training_resumes_to_the_same_result(tmp_path, real_data_dir, uninterrupted_run, how):
    """The same seed twice gives the same accuracy, whether or not the run was killed on the way."""
    assert_resumes_identically(tmp_path / "cut", [*RESUME_OPTIONS, "--data-dir", str(real_data_dir)], uninterrupted_run, how)


def test_interrupted_training_with_augmentation_and_ema_resumes_to_the_same_result(tmp_path, real_data_dir):
    """Augmentation and CutMix draw random numbers and EMA keeps averages in the optimizer: all must resume exactly (here with
    Muon's two kinds of state, and several steps per call into the backend, which the checkpoint's compiled model keeps)."""
    options = [*RESUME_OPTIONS, "--optimizer", "muon", "--translate", "2", "--flip", "--erase", "0.5", "--cutmix", "0.5",
               "--ema", "0.9", "--schedule", "onecycle", "--warmup-fraction", "0.3", "--label-smoothing", "0.1",
               "--steps-per-execution", "4", "--data-dir", str(real_data_dir)]  # fmt: skip
    run_cli("train", "--run-dir", str(tmp_path / "whole"), *options)
    assert_resumes_identically(tmp_path / "cut", options, tmp_path / "whole", signal.SIGKILL)


def assert_resumes_identically(cut_dir, options, whole, how):
    command = cli_command("train", "--run-dir", str(cut_dir), *options)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    wait_for_epoch(cut_dir, 1, process)
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (130 if how == signal.SIGTERM else -signal.SIGKILL), stderr
    assert not (cut_dir / "metrics.json").exists()
    resumed = run_cli("train", "--run-dir", str(cut_dir), *options)
    assert "resuming" in resumed.stdout
    assert not (cut_dir / "report.html").exists()  # --no-report
    whole_metrics = json.loads((whole / "metrics.json").read_text())
    cut = json.loads((cut_dir / "metrics.json").read_text())
    assert cut["test_accuracy"] == whole_metrics["test_accuracy"] and cut["test_loss"] == whole_metrics["test_loss"]
    history_whole = (whole / "history.csv").read_text().splitlines()
    history_cut = (cut_dir / "history.csv").read_text().splitlines()
    assert [line.rsplit(",", 1)[0] for line in history_cut] == [line.rsplit(",", 1)[0] for line in history_whole]


def test_checkpoints_wait_for_their_interval(tmp_path, real_data_dir):
    """With more seconds between checkpoints than the run lasts, only the last epoch would write one."""
    run_dir = tmp_path / "run"
    command = cli_command("train", "--run-dir", str(run_dir), "--model", "tiny", "--epochs", "40", "--train-subset",
                          "3000", "--checkpoint-seconds", "3600", "--no-report", "--data-dir", str(real_data_dir))  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if (run_dir / "history.csv").exists() and len((run_dir / "history.csv").read_text().splitlines()) > 3:
            break
        time.sleep(0.1)
    epochs_done = len((run_dir / "history.csv").read_text().splitlines()) - 1
    checkpointed = (run_dir / "checkpoint" / "state.json").exists()
    process.kill()
    process.communicate(timeout=60)
    assert 3 <= epochs_done < 40 and not checkpointed

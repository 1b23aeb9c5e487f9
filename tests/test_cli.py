"""End to end through the real `fmnist` command on slices of the real data."""

import csv
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from conftest import cli_command, run_cli
from fmnist.data import FILES

pytestmark = pytest.mark.slow
SMALL = ["--epochs", "1", "--train-subset", "3000"]


def test_data_verifies_and_draws_a_grid(real_data_dir, tmp_path):
    result = run_cli("data", "--data-dir", str(real_data_dir), "--grid", str(tmp_path / "grid.png"))
    assert "all four files verified" in result.stdout
    assert "6 Shirt" in result.stdout and "60000  10000" in result.stdout
    assert Image.open(tmp_path / "grid.png").size[0] > 500


def test_corrupt_data_gives_one_clear_error(real_data_dir, tmp_path):
    for spec in FILES.values():
        shutil.copy(real_data_dir / f"{spec.name}.gz", tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1_000_000])
    result = run_cli("data", "--data-dir", str(tmp_path), check=False)
    assert result.returncode == 1
    assert "train-images-idx3-ubyte.gz: broken gzip data" in result.stderr
    assert "fmnist data --download" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("train", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run"), *SMALL, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "broken gzip" in result.stderr


@pytest.fixture(scope="module")
def baseline_run(served_run):
    return served_run  # the baseline, 1 epoch on 3,000 images, trained through the CLI once per session


def test_train_writes_the_interface_other_work_relies_on(baseline_run):
    metrics = json.loads((baseline_run / "metrics.json").read_text())
    assert metrics["num_parameters"] == 121_930
    assert metrics["test_accuracy"] > 0.6  # one epoch on 2,700 images
    with open(baseline_run / "confusion_matrix.csv") as file:
        rows = list(csv.reader(file))[1:]
    assert [sum(int(value) for value in row[1:]) for row in rows] == [1000] * 10
    diagonal = sum(int(row[1 + index]) for index, row in enumerate(rows))
    assert diagonal / 10000 == pytest.approx(metrics["test_accuracy"])


def test_evaluate_rewrites_the_report(baseline_run, real_data_dir, tmp_path):
    (baseline_run / "confusion_matrix.png").unlink()
    result = run_cli("evaluate", str(baseline_run), "--data-dir", str(real_data_dir))
    metrics = json.loads((baseline_run / "metrics.json").read_text())
    assert f"accuracy {metrics['test_accuracy']:.4f}" in result.stdout
    assert (baseline_run / "confusion_matrix.png").exists()


def test_evaluate_on_given_arrays(baseline_run, dataset, tmp_path):
    np.save(tmp_path / "images.npy", dataset.x_test[:500])
    np.save(tmp_path / "labels.npy", dataset.y_test[:500])
    run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "images.npy"),
            "--labels", str(tmp_path / "labels.npy"), "--output", str(tmp_path / "out"))  # fmt: skip
    with open(tmp_path / "out" / "confusion_matrix.csv") as file:
        assert sum(int(value) for row in list(csv.reader(file))[1:] for value in row[1:]) == 500
    for name, content, message in (("bad.npy", b"not numpy", "not a readable .npy array"),
                                   ("big.npy", None, "labels must be whole numbers from 0 to 9")):  # fmt: skip
        if content is None:
            np.save(tmp_path / name, np.full(500, 12))
        else:
            (tmp_path / name).write_bytes(content)
        result = run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "images.npy"),
                         "--labels", str(tmp_path / name), check=False)  # fmt: skip
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_predict_png_files_as_json(baseline_run, dataset, tmp_path):
    paths = []
    for index in range(20):
        path = tmp_path / f"test{index}.png"
        Image.fromarray(dataset.x_test[index]).save(path)
        paths.append(str(path))
    np.save(tmp_path / "same.npy", dataset.x_test[:20])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    result = run_cli("predict", str(baseline_run), *paths, str(tmp_path / "same.npy"),
                     str(tmp_path / "broken.png"), "--json", check=False)  # fmt: skip
    assert result.returncode == 1  # one file failed ...
    entries = json.loads(result.stdout)  # ... and the others were still classified
    from_png, from_array, failed = entries[:20], entries[20:40], entries[40]
    assert failed == {"path": str(tmp_path / "broken.png"), "error": failed["error"]}
    assert "not an image format" in failed["error"]
    assert [entry["class_index"] for entry in from_png] == [entry["class_index"] for entry in from_array]
    correct = sum(entry["class_index"] == label for entry, label in zip(from_png, dataset.y_test[:20], strict=True))
    assert correct >= 12
    top = from_png[0]["top"]
    assert len(top) == 3 and top[0]["class_name"] == from_png[0]["class_name"]
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]


def wait_for_epoch(run_dir, epochs_done, process, timeout=120):
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if state.exists() and json.loads(state.read_text())["epochs_done"] >= epochs_done:
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint of epoch {epochs_done} appeared")


RESUME_OPTIONS = ["--epochs", "3", "--train-subset", "3000", "--seed", "7", "--no-report"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, real_data_dir):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    run_cli("train", "--run-dir", str(run_dir), *RESUME_OPTIONS, "--data-dir", str(real_data_dir))
    return run_dir


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_training_resumes_to_the_same_result(tmp_path, real_data_dir, uninterrupted_run, how):
    """The same seed twice gives the same accuracy, whether or not the run was killed on the way."""
    options = [*RESUME_OPTIONS, "--data-dir", str(real_data_dir)]
    whole = uninterrupted_run
    command = cli_command("train", "--run-dir", str(tmp_path / "cut"), *options)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    wait_for_epoch(tmp_path / "cut", 1, process)
    process.send_signal(how)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == (130 if how == signal.SIGTERM else -signal.SIGKILL), stderr
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = run_cli("train", "--run-dir", str(tmp_path / "cut"), *options)
    assert "resuming" in resumed.stdout
    assert not (tmp_path / "cut" / "report.html").exists()  # --no-report
    whole_metrics = json.loads((whole / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["test_accuracy"] == whole_metrics["test_accuracy"] and cut["test_loss"] == whole_metrics["test_loss"]
    history_whole = (whole / "history.csv").read_text().splitlines()
    history_cut = (tmp_path / "cut" / "history.csv").read_text().splitlines()
    assert [line.rsplit(",", 1)[0] for line in history_cut] == [line.rsplit(",", 1)[0] for line in history_whole]

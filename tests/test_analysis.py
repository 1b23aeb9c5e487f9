"""The analysis: calibration, McNemar, confident learning, the report and compare on a small run."""

import json
import re
import shutil

import numpy as np
import pytest
from sklearn import metrics

from conftest import as_numpy, run_cli
from fmnist.analysis import (
    Interpretation,
    accuracy_interval,
    calibration_bins,
    expected_calibration_error,
    find_label_issues,
    mcnemar,
)  # fmt: skip
from fmnist.compare import compare_runs
from fmnist.config import TrainConfig
from fmnist.runs import RunError
from fmnist.train import train


def probabilities_with_confidence(confidence: float, predicted: int, num_classes: int = 3) -> np.ndarray:
    row = np.full(num_classes, (1 - confidence) / (num_classes - 1))
    row[predicted] = confidence
    return row


def test_ece_is_zero_when_perfectly_calibrated():
    # 10 images at confidence 0.8 of which 8 are right, 10 at 0.5 of which 5 are right
    probabilities = np.array([probabilities_with_confidence(0.8, 0)] * 10 + [probabilities_with_confidence(0.5, 1)] * 10)
    labels = np.array([0] * 8 + [2] * 2 + [1] * 5 + [0] * 5)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_matches_a_hand_computed_value():
    # bin [0.9, 0.9333): confidences 0.9 and 0.92, one right -> |0.5 - 0.91| = 0.41, weight 2/4
    # bin [0.6, 0.6667): confidence 0.6, right -> |1 - 0.6| = 0.4, weight 1/4
    # confidence exactly 1.0 sits in a bin of its own: right -> 0, weight 1/4
    probabilities = np.array([probabilities_with_confidence(c, 0) for c in (0.9, 0.92, 0.6, 1.0)])
    labels = np.array([0, 1, 0, 0])
    expected = 0.41 * 2 / 4 + 0.4 * 1 / 4
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)
    confidence, accuracy, counts = calibration_bins(probabilities, labels)
    assert counts.sum() == 4 and counts[-1] == 1 and counts[13] == 2


def test_mcnemar():
    rng = np.random.default_rng(0)
    correct = rng.random(10000) < 0.9
    same = mcnemar(correct, correct)
    assert same == {"only_a_correct": 0, "only_b_correct": 0, "p_value": 1.0}
    worse = correct.copy()
    worse[np.flatnonzero(correct)[:300]] = False  # B loses 300 images A gets right
    different = mcnemar(correct, worse)
    assert different["only_a_correct"] == 300 and different["p_value"] < 1e-10
    slightly = correct.copy()
    slightly[np.flatnonzero(correct)[:3]] = False
    slightly[np.flatnonzero(~correct)[:2]] = True
    assert mcnemar(correct, slightly)["p_value"] > 0.5  # 3 against 2 is noise


def test_accuracy_interval_brackets_the_accuracy():
    low, high = accuracy_interval(9000, 10000)
    assert low < 0.9 < high and high - low == pytest.approx(2 * 1.96 * (0.9 * 0.1 / 10000) ** 0.5, rel=0.02)


def test_confident_learning_finds_flipped_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    probabilities = np.array([probabilities_with_confidence(rng.uniform(0.7, 0.95), label) for label in labels])
    flipped = [5, 150, 260]
    probabilities[flipped] = [probabilities_with_confidence(0.95, label) for label in labels[flipped]]
    probabilities[7] = [0.5, 0.3, 0.2]  # unsure but not confidently another class: not an issue
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + 1) % 3  # the model still sees the true class
    found = find_label_issues(probabilities, noisy)
    assert set(found) == set(flipped)


@pytest.fixture(scope="module")
def small_run(dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("analysis") / "run"
    train(TrainConfig(model="tiny", epochs=2, train_subset=3000, learning_rate=5e-3), run_dir, data=dataset,
          log=lambda *a, **k: None)  # fmt: skip
    return run_dir


def test_report_numbers_agree_with_scikit_learn(small_run, dataset):
    interpretation = Interpretation.from_run(small_run, data=dataset)
    results = interpretation.results
    import keras

    from fmnist.runs import load_model

    predictions = as_numpy(load_model(small_run)(dataset.x_test)).argmax(axis=1)
    np.testing.assert_array_equal(results.predictions, predictions)  # the saved predictions are the model's
    assert results.accuracy == pytest.approx(metrics.accuracy_score(dataset.y_test, predictions))
    assert interpretation.macro_f1 == pytest.approx(metrics.f1_score(dataset.y_test, predictions, average="macro"))
    counts = interpretation.results.confusion_matrix()
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(dataset.y_test))
    top_true, top_predicted, top_count = interpretation.most_confused()[0]
    names = list(interpretation.class_names)
    assert top_count == counts[names.index(top_true), names.index(top_predicted)]
    assert top_count == max(counts[i, j] for i in range(10) for j in range(10) if i != j)
    worst = interpretation.top_losses(5)
    assert results.losses[worst[0]] == results.losses.max()
    assert interpretation.embedding.shape == (2000, 2)
    assert keras.backend.backend() == "tensorflow"


def test_report_files(small_run):
    page = (small_run / "report.html").read_text()
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # nothing to fetch
    assert page.count("data:image/png;base64,") >= 6
    metrics_file = json.loads((small_run / "metrics.json").read_text())
    assert f"Test accuracy {metrics_file['test_accuracy']:.4f}" in page
    assert "Suspected label errors" in (small_run / "report.md").read_text()


def test_report_and_compare_commands(small_run, dataset, tmp_path, real_data_dir):
    (small_run / "report.html").unlink()
    run_cli("report", str(small_run), "--data-dir", str(real_data_dir))
    assert (small_run / "report.html").exists()
    other = tmp_path / "other"
    train(TrainConfig(model="tiny", epochs=1, train_subset=1000, learning_rate=5e-3), other, data=dataset,
          log=lambda *a, **k: None, report=False)  # fmt: skip
    comparison = compare_runs([small_run, small_run, other])
    assert comparison["pairs"][0]["p_value"] == 1.0 and not comparison["pairs"][0]["significant"]
    output = run_cli("compare", str(small_run), str(other)).stdout
    assert "McNemar" in output and str(other) in output


def test_compare_refuses_runs_it_cannot_pair(small_run, tmp_path):
    shuffled = tmp_path / "shuffled"
    shutil.copytree(small_run, shuffled)
    with np.load(small_run / "test_predictions.npz") as saved:
        logits, labels = saved["logits"], saved["labels"]
    np.savez(shuffled / "test_predictions.npz", logits=logits, labels=np.roll(labels, 1))  # other images' labels
    with pytest.raises(RunError, match=f"{shuffled} was evaluated on other test labels than {small_run}"):
        compare_runs([small_run, shuffled])
    (shuffled / "test_predictions.npz").unlink()
    with pytest.raises(RunError, match=f"{shuffled} has no saved test predictions; run `fmnist evaluate {shuffled}`"):
        compare_runs([small_run, shuffled])

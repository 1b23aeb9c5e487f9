"""ClassificationResults against scikit-learn and Keras computed independently."""

import csv

import numpy as np
import pytest
from sklearn import metrics

from fmnist.data import CLASS_NAMES
from fmnist.evaluate import ClassificationResults, write_results


@pytest.fixture
def results():
    generator = np.random.default_rng(1)
    labels = generator.integers(0, 10, size=500)
    logits = generator.normal(size=(500, 10)) * 2
    logits[np.arange(500), labels] += generator.uniform(0, 4, size=500)  # better than chance
    return ClassificationResults(logits, labels, CLASS_NAMES)


def test_views_agree_with_scikit_learn_and_keras(results):
    import keras

    assert results.accuracy == pytest.approx(metrics.accuracy_score(results.labels, results.logits.argmax(1)))
    np.testing.assert_allclose(results.probabilities.sum(axis=1), 1.0)
    keras_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        results.labels, results.logits.astype("float32")
    )
    assert results.loss == pytest.approx(float(keras_loss), rel=1e-5)
    np.testing.assert_array_equal(results.confusion_matrix(), metrics.confusion_matrix(results.labels, results.predictions))
    report = results.classification_report(as_dict=True)
    f1 = metrics.f1_score(results.labels, results.predictions, average=None)
    np.testing.assert_allclose([report[name]["f1-score"] for name in CLASS_NAMES], f1)


def test_confusion_matrix_rows_are_true_classes(results):
    counts = results.confusion_matrix()
    np.testing.assert_array_equal(counts.sum(axis=1), np.bincount(results.labels, minlength=10))
    normalized = results.confusion_matrix("true")
    np.testing.assert_allclose(normalized.sum(axis=1), 1.0)
    recall = metrics.recall_score(results.labels, results.predictions, average=None)
    np.testing.assert_allclose(np.diag(normalized), recall)


def test_written_files(results, tmp_path):
    write_results(results, tmp_path, "title")
    with open(tmp_path / "confusion_matrix.csv") as file:
        rows = list(csv.reader(file))
    assert rows[0][1:] == list(CLASS_NAMES) and [row[0] for row in rows[1:]] == list(CLASS_NAMES)
    np.testing.assert_array_equal(np.array([row[1:] for row in rows[1:]], dtype=int), results.confusion_matrix())
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Shirt" in (tmp_path / "classification_report.txt").read_text()

"""Evaluate a model once and derive every view (metrics, confusion matrix, per-class report).

    from fmnist.evaluate import evaluate_run
    results = evaluate_run("runs/baseline")          # the test set; rewrites the run's report
    results.accuracy, results.confusion_matrix()

`ClassificationResults` holds logits, labels and class names; probabilities, predictions and
per-image losses are computed once from them, and the views are cheap methods
(fastai's ClassificationInterpretation, scikit-learn's conventions: rows = true class).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from pathlib import Path

import numpy as np

from fmnist import runs

# scikit-learn and matplotlib (fmnist.plots) are imported where used: `fmnist predict` and the server
# need this module's helpers but neither library, and the two take about 2 s to import here

PREDICT_BATCH_SIZE = 1024
TEST_PREDICTIONS = "test_predictions.npz"  # logits (n, 10) and labels (n,) of the test set
PREDICTIONS = "predictions.csv"  # each image's label and prediction, for evaluations on other data


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def predict_logits(model, images: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE, tta: bool = False,
                   tta_shift: int = 0) -> np.ndarray:  # fmt: skip
    """Logits (n, classes) for uint8 images (n, 28, 28), in batches, without Keras' predict loop.

    With `tta`, each of the image's `tta_views` is predicted and their probabilities averaged;
    the log of that average is returned, so that softmax of the result is the average.
    """
    if tta:
        return log_mean_probabilities([predict_logits(model, view, batch_size) for view in tta_views(images, tta_shift)])
    batches = in_batches(functools.partial(predict_batch, model), images, batch_size)
    return np.concatenate(batches) if batches else np.zeros((0, model.output_shape[-1]))


def in_batches(predict, images: np.ndarray, batch_size: int = PREDICT_BATCH_SIZE) -> list[np.ndarray]:
    """`predict` on consecutive slices of at most `batch_size` images, so that no call holds the activations of a
    large array all at once; the results in order, one per slice."""
    return [predict(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]


def predict_batch(model, images: np.ndarray) -> np.ndarray:
    """One batch through Keras' compiled prediction step (`predict_on_batch`), as float64 logits.

    Compiled: a traced graph on TensorFlow, an XLA program on JAX, no gradients recorded on PyTorch. Calling the
    model directly runs it op by op: one image of `compact` took 25-37 ms that way on TensorFlow and 17-23 ms on
    JAX, against 4-5 and 2-3 ms compiled (BENCHMARKS.md). `predict`'s own loop adds milliseconds per call.
    JAX compiles one program per batch size, so batches are padded up to a power of two: at most 11 programs
    for batches of up to 1,024 (each image's logits depend on that image alone).
    """
    import keras

    count = len(images)
    if keras.backend.backend() == "jax" and count & (count - 1):
        padding = np.zeros(((1 << count.bit_length()) - count, *images.shape[1:]), images.dtype)
        images = np.concatenate([images, padding])
    return np.asarray(keras.ops.convert_to_numpy(model.predict_on_batch(images))[:count], dtype=np.float64)


def mirror(images: np.ndarray) -> np.ndarray:
    """Images (n, 28, 28) flipped left to right: the view flip test-time augmentation adds."""
    return np.ascontiguousarray(images[:, :, ::-1])


def tta_views(images: np.ndarray, shift: int = 0) -> list[np.ndarray]:
    """Test-time augmentation's views of images (n, 28, 28): the images and their mirror images, and with `shift`, both
    moved by every whole-pixel offset of up to `shift` each way, filled with black, as `--translate` shifts in training:
    2 (2 shift + 1)^2 views, the unshifted pair first (18 for a shift of 1)."""
    moved = [shifted(images, *offset) for offset in tta_offsets(shift)]
    return [view for each in moved for view in (each, mirror(each))]


def view_count(tta: bool = False, tta_shift: int = 0) -> int:
    """How many views of each image `predict_logits` predicts: 1 without TTA, else `len(tta_views(images, tta_shift))`."""
    return 2 * len(tta_offsets(tta_shift)) if tta else 1


def tta_offsets(shift: int) -> list[tuple[int, int]]:
    """The (down, right) offsets of `tta_views`, of up to `shift` pixels each way, (0, 0) first."""
    return sorted(itertools.product(range(-shift, shift + 1), repeat=2), key=lambda offset: offset != (0, 0))


def shifted(images: np.ndarray, down: int, right: int) -> np.ndarray:
    """Images (n, height, width) moved `down` rows and `right` columns (negative: up, left), filled with black (0)."""
    if not down and not right:
        return images
    height, width = images.shape[1:3]
    moved = np.zeros_like(images)
    moved[:, max(down, 0) : height + min(down, 0), max(right, 0) : width + min(right, 0)] = \
        images[:, max(-down, 0) : height + min(-down, 0), max(-right, 0) : width + min(-right, 0)]
    return moved


def log_mean_probabilities(logits: list[np.ndarray]) -> np.ndarray:
    """log(mean of softmax(l) over the list), computed without underflow; its softmax is that mean."""
    from scipy.special import log_softmax, logsumexp

    return logsumexp([log_softmax(each, axis=1) for each in logits], axis=0) - np.log(len(logits))


def engine_logits(engine, images: np.ndarray) -> np.ndarray:
    """An inference engine's float32 probabilities (n, classes) as logits: their logarithm, whose softmax gives them back.

    A probability that rounded to 0 in float32 is taken as float32's smallest normal number, so that an image the
    export is sure it is not gets a large but finite loss (87 nats), as Keras' losses clip theirs.
    """
    probabilities = np.asarray(engine.probabilities(images), dtype=np.float64)
    return np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))


def ensemble_logits(models: list, images: np.ndarray, tta: bool = False, tta_shift: int = 0) -> np.ndarray:
    """Several models as one: the log of their averaged probabilities (each with TTA when `tta`)."""
    return log_mean_probabilities([predict_logits(model, images, tta=tta, tta_shift=tta_shift) for model in models])


@dataclasses.dataclass(frozen=True)
class ClassificationResults:
    logits: np.ndarray  # (n, classes) float64
    labels: np.ndarray  # (n,) true class indices
    class_names: tuple[str, ...]

    @functools.cached_property
    def probabilities(self) -> np.ndarray:  # (n, classes), rows sum to 1
        return softmax(self.logits)

    @functools.cached_property
    def predictions(self) -> np.ndarray:  # (n,) argmax of the probabilities
        return self.probabilities.argmax(axis=1)

    @functools.cached_property
    def losses(self) -> np.ndarray:  # (n,) cross-entropy of each image, from the logits
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -log_probabilities[np.arange(len(self.labels)), self.labels]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.predictions == self.labels))

    @property
    def loss(self) -> float:
        return float(self.losses.mean())

    def confusion_matrix(self, normalize: str | None = None) -> np.ndarray:
        """Rows = true class, columns = predicted; normalize="true" puts recall on the diagonal."""
        from sklearn import metrics as sk_metrics

        return sk_metrics.confusion_matrix(
            self.labels, self.predictions, labels=range(len(self.class_names)), normalize=normalize
        )

    def classification_report(self, as_dict: bool = False):
        from sklearn import metrics as sk_metrics

        return sk_metrics.classification_report(
            self.labels, self.predictions, labels=range(len(self.class_names)),
            target_names=list(self.class_names), digits=4, output_dict=as_dict, zero_division=0,
        )  # fmt: skip

    def summary(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_accuracy": self.accuracy, f"{prefix}_loss": self.loss}


def evaluate_model(model, images: np.ndarray, labels: np.ndarray, class_names, tta: bool = False,
                   tta_shift: int = 0) -> ClassificationResults:  # fmt: skip
    logits = predict_logits(model, images, tta=tta, tta_shift=tta_shift)
    return ClassificationResults(logits, np.asarray(labels, dtype=np.int64), tuple(class_names))


def write_results(results: ClassificationResults, output_dir: Path, title: str) -> None:
    """Confusion matrices (CSV + PNG) and the per-class report, into `output_dir`."""
    from fmnist import plots

    names = list(results.class_names)
    header = "true\\predicted," + ",".join(names) + "\n"
    for normalize, name, number_format in ((None, "confusion_matrix", "{:d}"), ("true", "confusion_matrix_normalized", "{:.4f}")):
        matrix = results.confusion_matrix(normalize)
        rows = [f"{names[i]}," + ",".join(number_format.format(value) for value in row) for i, row in enumerate(matrix)]
        runs.write_text(output_dir / f"{name}.csv", header + "\n".join(rows) + "\n")
    figure = plots.confusion_matrices(results.confusion_matrix(), names, title)
    runs.save_figure(figure, output_dir / "confusion_matrix.png")
    runs.write_text(output_dir / "classification_report.txt", results.classification_report())
    runs.write_json(output_dir / "classification_report.json", results.classification_report(as_dict=True))


def write_predictions(results: ClassificationResults, output_dir: Path, names: list[str] | None = None) -> None:
    """predictions.csv: each image's label, prediction and loss, in the order given, to find the mistakes.

    `names` identifies the images (their files); without it, their positions in the evaluated set.
    """
    probabilities, names = results.probabilities, names or [str(index) for index in range(len(results.labels))]
    classes = results.class_names
    runs.write_csv(Path(output_dir) / PREDICTIONS, [
        {"image": name, "label": classes[label], "predicted": classes[predicted], "correct": int(label == predicted),
         "probability": f"{row[predicted]:.6f}", "label_probability": f"{row[label]:.6f}", "loss": f"{loss:.6f}"}
        for name, label, predicted, row, loss in zip(names, results.labels, results.predictions, probabilities,
                                                     results.losses, strict=True)
    ])  # fmt: skip


def write_run_evaluation(run_dir: Path, metrics: dict, results: ClassificationResults) -> dict:
    """Write a run's test-set views and predictions; metrics.json last, since it marks the run complete."""
    metrics = {**metrics, **results.summary("test")}
    write_results(results, run_dir, f"{metrics['model']}: test accuracy {results.accuracy:.4f}")
    with runs.atomic_path(Path(run_dir) / TEST_PREDICTIONS) as temporary:
        np.savez_compressed(temporary, logits=results.logits.astype(np.float32), labels=results.labels.astype(np.uint8))
    runs.write_json(run_dir / runs.METRICS, metrics)
    return metrics


def load_test_predictions(run_dir: Path, class_names) -> ClassificationResults | None:
    """The test-set results saved with a run, or None for a run saved without them."""
    path = Path(run_dir) / TEST_PREDICTIONS
    if not path.exists():
        return None
    with np.load(path) as saved:
        return ClassificationResults(saved["logits"].astype(np.float64), saved["labels"].astype(np.int64), tuple(class_names))


def evaluate_run(run_dir: Path, images: np.ndarray | None = None, labels: np.ndarray | None = None,
                 output_dir: Path | None = None, data_dir: Path | None = None,
                 ensemble: tuple[Path, ...] = (), tta: bool | None = None, tta_shift: int | None = None,
                 image_names: list[str] | None = None, engine: str = "keras") -> ClassificationResults:
    """Evaluate a finished run on the test set (default) or on the given images and labels.

    On the test set, as the run was trained (its own `tta` and `tta_shift`, no ensemble, its Keras model), the run's
    metrics, confusion matrix and report are rewritten in place. Otherwise (other data, other runs in
    `ensemble` whose probabilities are averaged with this one's, another `tta` or `tta_shift`, or `engine="onnx"`: each
    run's ONNX export through ONNX Runtime) the results go to `output_dir` (required then), with each
    image's prediction in predictions.csv under `image_names` (default: its position), and the run is
    left as it was.
    """
    run_dir = runs.require_run(run_dir)
    members = [run_dir, *map(Path, ensemble)]
    class_names = runs.ensemble_class_names(members)
    tta, tta_shift = runs.run_tta(run_dir, tta, tta_shift)
    as_trained = not ensemble and (tta, tta_shift) == runs.run_tta(run_dir) and engine == "keras"
    if engine == "onnx":
        from fmnist.engine import load_engines  # the engine module imports this one

        # fails here, with the fix, for a run without an export
        onnx_engine = load_engines(members, "onnx", tta=tta, tta_shift=tta_shift)
    else:
        models = [runs.load_model(member) for member in members]
    if images is None:
        from fmnist.data import load_dataset

        dataset = load_dataset(data_dir)
        images, labels = dataset.x_test, dataset.y_test
        if as_trained:
            results = evaluate_model(models[0], images, labels, class_names, tta, tta_shift)
            write_run_evaluation(run_dir, runs.read_json(run_dir / runs.METRICS), results)
            from fmnist.report import write_report  # report imports this module

            write_report(run_dir, data=dataset, test_results=results, model=models[0])
            return results
    if output_dir is None:
        raise ValueError("evaluating on other data, with an ensemble, another --tta or the ONNX export needs an output "
                         "directory")  # fmt: skip
    logits = engine_logits(onnx_engine, images) if engine == "onnx" else ensemble_logits(models, images, tta, tta_shift)
    results = ClassificationResults(logits, np.asarray(labels, dtype=np.int64), tuple(class_names))
    members_note = f" (ensemble of {len(members)} runs)" if ensemble else ""
    members_note += " (ONNX export)" if engine == "onnx" else ""
    write_results(results, Path(output_dir), f"accuracy {results.accuracy:.4f} on {len(labels):,} images{members_note}")
    write_predictions(results, Path(output_dir), image_names)
    summary = results.summary("eval") | {"num_images": len(labels), "runs": [str(member) for member in members], "tta": tta,
                                          "tta_shift": tta_shift, "engine": engine}  # fmt: skip
    runs.write_json(Path(output_dir) / runs.METRICS, summary)
    return results

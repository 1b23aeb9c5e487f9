"""Figures for the run directory and `fmnist data`; each returns a matplotlib Figure.

    from fmnist import plots
    figure = plots.confusion_matrices(matrix, class_names, "baseline")
    figure.savefig("confusion_matrix.png")

Uses matplotlib's Agg backend: no display is needed.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import pyplot  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from fmnist import runs  # noqa: E402


def confusion_matrices(counts: np.ndarray, class_names: list[str], title: str):
    """Counts and the same normalised over the true class, side by side (rows = true class)."""
    figure, axes = pyplot.subplots(1, 2, figsize=(17, 7.5))
    with np.errstate(invalid="ignore", divide="ignore"):
        normalized = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    for ax, matrix, subtitle, number_format in (
        (axes[0], counts, "counts", "d"),
        (axes[1], normalized, "normalised over the true class (recall on the diagonal)", ".2f"),
    ):
        display = ConfusionMatrixDisplay(matrix, display_labels=class_names)
        display.plot(ax=ax, cmap="Blues", values_format=number_format, colorbar=False, xticks_rotation=45)
        ax.set_title(subtitle)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    figure.suptitle(title)
    figure.tight_layout()
    pyplot.close(figure)
    return figure


def training_curves(history: list[dict]):
    """Loss and accuracy per epoch, training against validation (when the run held images out)."""
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    epochs = runs.epoch_ends(history)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [row[metric] for row in history], "o-", label="training")
        if all(f"val_{metric}" in row for row in history):
            ax.plot(epochs, [row[f"val_{metric}"] for row in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    pyplot.close(figure)
    return figure


def sample_grid(images: np.ndarray, labels: np.ndarray, class_names: list[str], per_class: int = 10, seed: int = 0):
    """A row of randomly chosen images per class, the class name at the start of each row."""
    generator = np.random.default_rng(seed)
    figure, axes = pyplot.subplots(len(class_names), per_class, figsize=(per_class * 0.9, len(class_names) * 0.95))
    for class_index, row in enumerate(np.atleast_2d(axes)):
        members = np.flatnonzero(labels == class_index)
        chosen = generator.choice(members, size=min(per_class, len(members)), replace=False)
        for column, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if column < len(chosen):
                ax.imshow(images[chosen[column]], cmap="gray", vmin=0, vmax=255)
        row[0].set_ylabel(class_names[class_index], rotation=0, ha="right", va="center", fontsize=9)
    figure.tight_layout()
    pyplot.close(figure)
    return figure


def image_grid(images: np.ndarray, captions: list[str], columns: int = 8, title: str = ""):
    """Images in rows of `columns`, each with a small caption above it (top losses, label issues)."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = pyplot.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.95), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index < len(images):
            ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
            ax.set_title(captions[index], fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    pyplot.close(figure)
    return figure


def reliability_diagram(mean_confidence: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, ece: float, ax=None):
    """Accuracy against confidence per bin; bars under the diagonal are over-confident."""
    figure, ax = _figure_and_axes(ax, (5.5, 5))
    occupied = counts > 0
    width = 1.0 / (len(counts) - 1)
    ax.bar(mean_confidence[occupied], accuracy[occupied], width=width * 0.9, alpha=0.7, edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram, ECE {ece:.4f}")
    ax.legend(loc="upper left")
    return figure


def embedding_scatter(points: np.ndarray, labels: np.ndarray, class_names, ax=None):
    """A 2-D map of images coloured by class."""
    figure, ax = _figure_and_axes(ax, (8, 7))
    colours = pyplot.get_cmap("tab10")
    for index, name in enumerate(class_names):
        members = labels == index
        ax.scatter(points[members, 0], points[members, 1], s=5, color=colours(index), label=name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=3, fontsize=8, loc="best")
    ax.set_title("t-SNE of penultimate-layer features (test sample)")
    return figure


def _figure_and_axes(ax, size):
    if ax is not None:
        return ax.figure, ax
    figure, ax = pyplot.subplots(figsize=size)
    pyplot.close(figure)
    return figure, ax

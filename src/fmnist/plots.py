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
    """Loss and accuracy per epoch, training against validation."""
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [row[metric] for row in history], "o-", label="training")
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

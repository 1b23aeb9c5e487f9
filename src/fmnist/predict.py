"""Classify users' files with a trained run.

    from fmnist.predict import Predictor
    predictor = Predictor.from_run("runs/baseline")
    predictor.predict_files(["shirt.png", "batch.npy"])
    # [{"path": "shirt.png", "class_index": 6, "class_name": "Shirt", "top": [...]}, ...]
    Predictor.from_runs(["runs/seed0", "runs/seed1"], tta=True)   # an ensemble, with flip TTA
    Predictor.from_run("runs/baseline", background="light")        # image files on a light background
    Predictor.from_run("runs/baseline", engine="keras")            # Keras even where an ONNX export exists

A file that cannot be read yields {"path": ..., "error": ...} and the others are still
classified. Array files with several images yield one entry per image, with its "index". A
directory stands for the image and array files directly in it, in name order. As `fmnist serve`,
a run with an ONNX export (`fmnist export RUN`) is run by ONNX Runtime, which starts in a fraction
of the time TensorFlow takes to import; the two agree within 1e-5.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fmnist import runs
from fmnist.engine import load_engines
from fmnist.images import ImageError, check_background, files_in, load_images


def describe(probabilities: np.ndarray, class_names: list[str], top_k: int = 3) -> dict:
    """The top classes of one image's probabilities, most likely first."""
    ranked = np.argsort(-probabilities, kind="stable")[:top_k]
    return {
        "class_index": int(ranked[0]),
        "class_name": class_names[ranked[0]],
        "top": [{"class_name": class_names[i], "probability": float(probabilities[i])} for i in ranked],
    }


def expand_directories(paths: list[str | Path]) -> list[Path]:
    """Each directory replaced by its image and array files; one with none stays, for load_images to say so."""
    return [member for path in map(Path, paths) for member in ((files_in(path) or [path]) if path.is_dir() else [path])]


@dataclasses.dataclass
class Predictor:
    engine: object  # engine.py's: one run's model, or several runs' and/or TTA's views, averaged
    class_names: list[str]
    top_k: int = 3
    background: str = "auto"  # of image files: told from each one's border, or "light" or "dark" for all

    @classmethod
    def from_run(cls, run_dir: str | Path, top_k: int = 3, tta: bool | None = None, background: str = "auto",
                 engine: str = "auto", tta_shift: int | None = None) -> Predictor:  # fmt: skip
        return cls.from_runs([run_dir], top_k, tta, background, engine, tta_shift)

    @classmethod
    def from_runs(cls, run_dirs: list[str | Path], top_k: int = 3, tta: bool | None = None, background: str = "auto",
                  engine: str = "auto", tta_shift: int | None = None) -> Predictor:  # fmt: skip
        """The runs' models as one classifier; `tta` and `tta_shift` default to what the first run was evaluated with.

        `engine`: "auto" (ONNX Runtime for each run with an ONNX export, Keras for the others), "onnx" or "keras".
        """
        run_dirs = [Path(run_dir) for run_dir in run_dirs]
        class_names = runs.ensemble_class_names(run_dirs)
        tta, tta_shift = runs.run_tta(run_dirs[0], tta, tta_shift)
        return cls(load_engines(run_dirs, engine, tta=tta, tta_shift=tta_shift), class_names, top_k, background)

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        check_background(self.background)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(n, classes) softmax probabilities for uint8 images (n, 28, 28)."""
        return self.engine.probabilities(images)

    def describe(self, probabilities: np.ndarray) -> dict:
        return describe(probabilities, self.class_names, self.top_k)

    def predict_files(self, paths: list[str | Path]) -> list[dict]:
        """One entry per image, in the order given; a directory stands for the image and array files in it."""
        entries, batches = [], []
        for path in expand_directories(paths):
            try:
                images = load_images(path, self.background)
            except ImageError as error:
                entries.append({"path": str(path), "error": str(error)})
                continue
            for index in range(len(images)):
                entry = {"path": str(path)} | ({"index": index} if len(images) > 1 else {})
                entries.append(entry)
            batches.append(images)
        if not batches:
            return entries
        probabilities = iter(self.probabilities(np.concatenate(batches)))
        return [entry if "error" in entry else entry | self.describe(next(probabilities)) for entry in entries]

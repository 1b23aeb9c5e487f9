"""The run directory: what one training run leaves behind, written atomically, read back alone.

    run/
      config.json            resolved TrainConfig
      class_names.json       index -> class name
      run_info.json          data source and checksums, library versions, backend, timings
      history.csv            one row per completed epoch
      model.keras            the trained model (takes raw uint8 (batch, 28, 28) images)
      metrics.json           final figures; its presence marks the run as complete
      confusion_matrix.csv / confusion_matrix_normalized.csv / confusion_matrix.png
      classification_report.txt / .json, training_curves.png, report.md
      checkpoint/            last completed epoch while training; removed when the run completes

Every file is written to a temporary name in the same folder, flushed to disk, and renamed into
place, so a killed process (or a power cut) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fmnist.config import tta_shift_problems, whole_epoch_steps

CONFIG = "config.json"
CLASS_NAMES = "class_names.json"
RUN_INFO = "run_info.json"
HISTORY = "history.csv"
MODEL = "model.keras"
METRICS = "metrics.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_STATE = "state.json"


_UMASK = os.umask(0)
os.umask(_UMASK)


class RunError(Exception):
    """A run directory is missing, incomplete or belongs to another configuration."""


class TrainingInterrupted(Exception):
    """Training stopped on request; the run directory holds the last completed epoch."""


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory, so two trainings cannot write one run at once."""
    import fcntl

    with open(Path(run_dir) / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir} is being written by another `fmnist train`; wait for it or stop it first") from None
        yield  # the lock goes with the file handle, also when the process is killed


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield Path(temporary)
        flush_to_disk(Path(temporary))
        os.replace(temporary, path)
        flush_to_disk(path.parent)
    finally:
        Path(temporary).unlink(missing_ok=True)


def flush_to_disk(path: Path) -> None:
    """fsync a file's data, or a folder's list of names (after a rename).

    Without it the rename can reach the disk before the data: after a power cut the new name would hold
    an empty or partial file, the case the temporary name is there to prevent.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_json(path: Path, value) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is missing") from None
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error})") from None


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_csv(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as file:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(file)]


def epoch_ends(history: list[dict]) -> list[float]:
    """Where each epoch of `history` ended, in epochs: 1, 2, ... and, for a last epoch cut short (max_steps), 10.46."""
    if len(history) < 2 or not all("steps" in row for row in history):  # runs from before `steps` was recorded
        return [row["epoch"] for row in history]
    whole = max(row["steps"] for row in history)
    return [end / whole for end in itertools.accumulate(row["steps"] for row in history)]


def epochs_trained(metrics: dict, config: dict) -> float:
    """The epochs a finished run trained: 10, or 10.46 where max_steps cut its last one short (to 2 decimals)."""
    if "steps" not in metrics:  # runs from before `steps` was recorded trained whole epochs
        return float(metrics["epochs"])
    return round(metrics["steps"] / whole_epoch_steps(metrics["num_train_images"], config["batch_size"],
                                                   config.get("drop_remainder", False)), 2)


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def save_model(model, path: Path) -> None:
    with atomic_path(path) as temporary:  # Keras insists on the .keras suffix, which atomic_path keeps
        model.save(temporary)


def save_figure(figure, path: Path) -> None:
    """Write a Matplotlib figure in the format its name ends with (.png, .svg, .pdf...)."""
    file_format, formats = path.suffix[1:].lower(), figure.canvas.get_supported_filetypes()
    if file_format not in formats:
        raise ValueError(f"{path}: Matplotlib cannot write {path.suffix or 'a name without a suffix'}; "
                         f"end the name with one of {', '.join('.' + name for name in sorted(formats))}")  # fmt: skip
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=file_format, dpi=110, bbox_inches="tight")


def remove_stale_temporaries(directory: Path) -> None:
    """Remove temporaries left by a process killed mid-write (SIGKILL skips the cleanup)."""
    for stale in Path(directory).rglob(".*.tmp*"):
        stale.unlink(missing_ok=True)


def require_run(run_dir: Path) -> Path:
    """Check that `run_dir` is a finished run; return it as a Path."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).exists():
        raise RunError(f"{run_dir} is not a run directory (no {CONFIG}); train one with `fmnist train --run-dir {run_dir}`")
    if not (run_dir / METRICS).exists() or not (run_dir / MODEL).exists():
        raise RunError(
            f"{run_dir} is not finished (no {METRICS} or {MODEL}): its training was interrupted; "
            f"run the same `fmnist train --run-dir {run_dir}` command again to resume it"
        )
    return run_dir


def load_class_names(run_dir: Path) -> list[str]:
    return read_json(Path(run_dir) / CLASS_NAMES)


def load_keras_file(path: Path, compile: bool = False):
    """A .keras file, with the project's own layers, losses and schedules registered first."""
    import keras

    from fmnist import models, recipe  # noqa: F401  (importing them registers their serialisable classes)

    return keras.saving.load_model(path, compile=compile)


def load_model(run_dir: Path):
    path = require_run(run_dir) / MODEL
    try:
        return load_keras_file(path)
    except Exception as error:  # Keras raises many kinds for a damaged archive
        raise RunError(f"{path} cannot be loaded ({type(error).__name__}: {error}); retrain the run") from None


def ensemble_class_names(run_dirs: list[Path]) -> list[str]:
    """The class names shared by several finished runs, which an ensemble needs; RunError if they differ."""
    names = [load_class_names(require_run(run_dir)) for run_dir in run_dirs]
    for run_dir, other in zip(run_dirs[1:], names[1:], strict=True):
        if other != names[0]:
            raise RunError(f"{run_dir} classifies into other classes than {run_dirs[0]}; an ensemble needs the same classes")
    return names[0]


def run_tta(run_dir: Path, requested: bool | None = None, requested_shift: int | None = None) -> tuple[bool, int]:
    """Test-time augmentation, flips and the shifts it adds (`evaluate.tta_views`), as requested, or else as the run
    was evaluated: its config's `tta` and `tta_shift` (no shifts for runs from before they existed)."""
    config = read_json(Path(run_dir) / CONFIG)
    tta = bool(config.get("tta")) if requested is None else requested
    shift = (int(config.get("tta_shift", 0)) if tta else 0) if requested_shift is None else requested_shift
    if problems := tta_shift_problems(shift, tta):
        raise ValueError(problems[0])
    return tta, shift

"""The checkpoint a run keeps while it trains, from which an interrupted run resumes.

    model, state = load_checkpoint(run_dir / "checkpoint")        # (None, None): nothing to resume
    save_checkpoint(run_dir / "checkpoint", model, {"epochs_done": 3, ...})
    state = track_best(run_dir / "checkpoint", model, state, val_accuracy=0.93, patience=5)

`state.json` holds the epochs done, the training seconds, the time budget's probe, the seed generators'
states and the name of the model file, which is new each epoch, so a kill between the two writes is harmless.
"""

from __future__ import annotations

from pathlib import Path

from fmnist import runs
from fmnist.seeds import restore_seed_states, seed_states


def load_checkpoint(checkpoint_dir: Path):
    """(model, state) after the last completed epoch, or (None, None) for a fresh start."""
    state_path = checkpoint_dir / runs.CHECKPOINT_STATE
    if not state_path.exists():
        return None, None
    state = runs.read_json(state_path)
    model = runs.load_keras_file(checkpoint_dir / state["model_file"], compile=True)
    restore_seed_states(model, state.get("seed_states", {}))
    return model, state


def save_checkpoint(checkpoint_dir: Path, model, state: dict) -> None:
    """The model file is new each epoch and state.json names it, so a kill between the two writes is harmless."""
    model_file = f"epoch-{state['epochs_done']:04d}.keras"
    runs.save_model(model, checkpoint_dir / model_file)
    previous = checkpoint_dir / runs.CHECKPOINT_STATE
    old_file = runs.read_json(previous)["model_file"] if previous.exists() else None
    runs.write_json(previous, {**state, "model_file": model_file, "seed_states": seed_states(model)})
    if old_file and old_file != model_file:
        (checkpoint_dir / old_file).unlink(missing_ok=True)


BEST_MODEL = "best.keras"  # in the checkpoint directory, with early stopping


def track_best(checkpoint_dir: Path, model, state: dict, val_accuracy: float, patience: int) -> dict:
    """Keep the best epoch's model (by validation accuracy) and decide whether to stop."""
    if val_accuracy > state.get("best_val_accuracy", -1.0):
        runs.save_model(model, checkpoint_dir / BEST_MODEL)  # before state.json names it the best
        state = {**state, "best_epoch": state["epochs_done"], "best_val_accuracy": val_accuracy}
    return {**state, "stopped_early": state["epochs_done"] - state["best_epoch"] >= patience}

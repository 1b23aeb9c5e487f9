"""Train a model from a TrainConfig into a run directory, resuming if it was interrupted.

    from fmnist.config import TrainConfig
    from fmnist.train import train
    metrics = train(TrainConfig(epochs=10), "runs/baseline")   # the spec's baseline
    metrics["test_accuracy"]

Each epoch is one `fit` call over the training split in an order drawn from (seed, epoch).
After it, once `checkpoint_seconds` of training have passed since the last checkpoint (and
after the last epoch), the model with its optimizer state is checkpointed atomically; running
the same command again picks up after the last checkpoint, and because the epoch order does
not depend on how many epochs ran in this process, the result is the one an uninterrupted run
gives. The test set is evaluated once, after the last epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from fmnist import budget, evaluate, inputs, mixing, plots, runs
from fmnist.checkpoints import BEST_MODEL, load_checkpoint, save_checkpoint, track_best
from fmnist.config import TrainConfig, whole_epoch_steps
from fmnist.data import Dataset, load_dataset
from fmnist.interrupts import GracefulStop
from fmnist.progress import EpochProgress
from fmnist.report import write_report
from fmnist.seeds import epoch_order, seed_everything
from fmnist.splits import split_indices


def build_and_compile(config: TrainConfig, num_classes: int, steps_per_epoch: int):
    from fmnist.models import augmentation_layers, build_model
    from fmnist.recipe import build_loss, build_optimizer, jit_compile, precision

    with precision(config.mixed_precision):  # each layer keeps its dtype policy, also when saved and loaded
        augmentation = augmentation_layers(config.translate, config.flip, config.erase, seed=config.seed)
        model = build_model(config.model, num_classes, augmentation)
    model.compile(optimizer=build_optimizer(config, steps_per_epoch), loss=build_loss(config), metrics=["accuracy"],
                  jit_compile=jit_compile(config.jit_compile), steps_per_execution=steps_per_execution(config))  # fmt: skip
    return model


def steps_per_execution(config: TrainConfig) -> int:
    import keras

    # Keras' PyTorch trainer refuses more than one; a preset that sets it still runs there, one step at a time.
    return 1 if keras.backend.backend() == "torch" else config.steps_per_execution


def probe_machine(config: TrainConfig, train: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray] | None,
                  num_classes: int, steps_per_epoch: int) -> budget.Probe:  # fmt: skip
    """Time the run's training step and validation on a throwaway model built as the run's will be."""
    import keras

    probe = budget.measure(build_and_compile(config, num_classes, steps_per_epoch), train, validation,
                           config.batch_size, steps_per_execution(config), steps_per_epoch)  # fmt: skip
    keras.backend.clear_session()  # the run's model is then built, and named, as without the probe
    return probe


def check_same_config(run_dir: Path, saved: TrainConfig, config: TrainConfig) -> None:
    if saved != config:
        changed = {key: (value, getattr(config, key)) for key, value in saved.to_dict().items() if getattr(config, key) != value}
        details = ", ".join(f"{key}: {old!r} in the run, {new!r} now" for key, (old, new) in changed.items())
        raise runs.RunError(
            f"{run_dir} holds a run with another config ({details}); "
            "repeat the original options to resume it, or choose another --run-dir"
        )


def library_versions() -> dict[str, str]:
    import keras
    import sklearn

    versions = {"python": platform.python_version(), "keras": keras.__version__, "numpy": np.__version__,
                "scikit-learn": sklearn.__version__, "backend": keras.backend.backend()}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    return versions


def train(config: TrainConfig, run_dir: str | Path, data: Dataset | None = None,
          data_dir: str | Path | None = None, log=None, report: bool = True) -> dict:
    """Train (or resume) the run in `run_dir` and evaluate it on the test set; return its metrics.

    With `report`, the analysis (report.html, report.md) is written at the end; it takes some
    seconds (a t-SNE map among others), and `fmnist report RUN` writes it later just as well.
    """
    from fmnist import models  # imports Keras, which must come after the choice of backend

    run_dir = Path(run_dir)
    log = log or functools.partial(print, flush=True)
    models.check_name(config.model)  # before anything is written: a misspelt name leaves no run directory behind
    log(f"training {config.model} into {run_dir}")
    if (run_dir / runs.CONFIG).exists():
        saved = TrainConfig.load(run_dir / runs.CONFIG)
        config = budget.budgeted_epochs_of(saved, config)
        check_same_config(run_dir, saved, config)
        if (run_dir / runs.METRICS).exists() and (run_dir / runs.MODEL).exists():
            log(f"{run_dir} is already complete; `fmnist evaluate {run_dir}` re-evaluates it")
            return runs.read_json(run_dir / runs.METRICS)
    if run_dir.exists() and not run_dir.is_dir():
        raise runs.RunError(f"{run_dir} is a file, not a directory; choose another --run-dir")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with runs.locked(run_dir):
        try:
            return train_locked(config, run_dir, data or load_dataset(data_dir), log, report)
        except BaseException:
            # stopped before config.json (bad data files, a time budget too short, Ctrl-C in the probe): nothing to
            # resume, so the folder this call made goes (under the lock), rather than stay holding only the lock file
            if created and not (run_dir / runs.CONFIG).exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def train_locked(config: TrainConfig, run_dir: Path, data: Dataset, log, report: bool) -> dict:
    from fmnist import averaging, recipe  # import Keras, which must come after the choice of backend

    runs.remove_stale_temporaries(run_dir)
    if steps_per_execution(config) != config.steps_per_execution:
        log(f"note: the PyTorch backend runs one training step per call; steps_per_execution {config.steps_per_execution} "
            "changes nothing there")  # fmt: skip
    seed_everything(config)
    train_indices, validation_indices = split_indices(data.y_train, config)
    x_train, y_train = data.x_train[train_indices], data.y_train[train_indices]
    validation = (data.x_train[validation_indices], data.y_train[validation_indices]) if len(validation_indices) else None
    # what fit reads: one-hot labels where CutMix mixes them, for validation too (fmnist.mixing)
    targets = mixing.training_targets(y_train, len(data.class_names), config)
    validation_targets = None if validation is None else (
        validation[0], mixing.training_targets(validation[1], len(data.class_names), config))
    statistics_images = x_train[: averaging.STATISTICS_IMAGES]  # BatchNorm statistics for averaged weights, short runs
    steps_per_epoch = whole_epoch_steps(len(x_train), config.batch_size, config.drop_remainder)
    if not steps_per_epoch:
        raise ValueError(f"drop_remainder leaves no step: {len(x_train)} training images do not fill one batch of "
                         f"{config.batch_size}; lower --batch-size, or train without --drop-remainder")  # fmt: skip
    probe = None
    if config.time_budget and not (run_dir / runs.CONFIG).exists():  # a run that exists keeps its epochs
        probe = probe_machine(config, (x_train, targets), validation_targets, len(data.class_names), steps_per_epoch)
        steps = budget.steps_within(config.time_budget, probe, steps_per_epoch)
        config = config.with_total_steps(steps, steps_per_epoch)
        log(f"time budget {config.time_budget:g} s: an epoch takes about {probe.epoch_seconds(steps_per_epoch):.1f} s "
            f"here ({steps_per_epoch} steps of {1000 * probe.step_seconds:.0f} ms, validation {probe.validation_seconds:.1f} s), "
            f"so {budget.describe_steps(steps, steps_per_epoch)} (the probe took {probe.seconds:.1f} s, compiling "
            f"{probe.first_call_seconds:.1f} s)")  # fmt: skip
        seed_everything(config)  # the probe's model drew from the seeds: the run's starts from them as without it
    runs.write_json(run_dir / runs.CONFIG, config.to_dict())
    runs.write_json(run_dir / runs.CLASS_NAMES, list(data.class_names))

    checkpoint_dir = run_dir / runs.CHECKPOINT_DIR
    epoch_steps = config.epoch_steps(steps_per_epoch)  # the last one fewer where max_steps cuts it short
    model, state = load_checkpoint(checkpoint_dir)
    if model is None:
        model = build_and_compile(config, len(data.class_names), steps_per_epoch)
        state = {"epochs_done": 0, "train_seconds": 0.0, "started": datetime.now(UTC).isoformat(), "stopped_early": False}
        if probe:  # kept for the revisions of the plan, also after a resume
            state.update(probe_seconds=round(probe.seconds, 3), probe=dataclasses.asdict(probe), traced=[0])
    else:
        log(f"resuming {run_dir} after epoch {state['epochs_done']} of {len(epoch_steps)}")
        model.steps_per_execution = steps_per_execution(config)  # the checkpoint's is that of the backend it was saved on
        # config.json is written before the checkpoint that follows a revised plan: a kill between the two leaves the
        # older schedule in the checkpoint
        recipe.revise_schedule(model.optimizer, config.total_steps(steps_per_epoch))
        if "traced" in state:
            state["traced"] = [*state["traced"], state["epochs_done"]]
    total_steps, settling_steps = config.total_steps(steps_per_epoch), averaging.settling_steps(model)
    if total_steps < settling_steps and not averaging.uses_ema(model):
        log(f"note: {total_steps} training steps are too few for BatchNorm's moving statistics to forget their start "
            f"(that takes {settling_steps}); they are recomputed from {len(statistics_images):,} training images for "
            "each validation and for the final model")  # fmt: skip
    probe = budget.Probe(**state["probe"]) if "probe" in state else None
    history = runs.read_csv(run_dir / runs.HISTORY)[: state["epochs_done"]]
    progress = EpochProgress(len(epoch_steps), steps_per_epoch, interactive=sys.stdout.isatty(), log=log)
    checkpointed, seconds_since_checkpoint = state["epochs_done"], 0.0

    def interrupted(when: str) -> runs.TrainingInterrupted:
        return runs.TrainingInterrupted(f"stopped {when}; {run_dir} keeps the {checkpointed} epochs of its last checkpoint")

    # Over the whole loop, so that a signal between two fits (while an epoch is written down) is caught too.
    with GracefulStop() as stop:
        # epoch_steps may change at an epoch's end, where the time budget revises its plan
        while (epoch := state["epochs_done"]) < len(epoch_steps) and not state.get("stopped_early"):
            # the epoch's order, drawn as for a whole epoch, so that cutting one short changes no earlier one
            order = epoch_order(config, epoch, len(x_train))[: epoch_steps[epoch] * config.batch_size]
            progress.start(epoch, epoch_steps[epoch])
            started = time.perf_counter()
            epoch_images, epoch_targets = x_train[order], targets[order]
            if config.cutmix:
                epoch_images, epoch_targets = mixing.cutmix(epoch_images, epoch_targets, config.cutmix,
                                                            mixing.epoch_generator(config, epoch))  # fmt: skip
            result = model.fit(
                **inputs.fit_arguments((epoch_images, epoch_targets), config.batch_size, validation_targets,
                                       evaluate.PREDICT_BATCH_SIZE),
                epochs=1, verbose=0, callbacks=[progress, stop, *averaging.validation_callbacks(model, statistics_images)],
            )  # fmt: skip
            if stop.requested:  # the epoch may be unfinished: it is dropped
                raise interrupted(f"during epoch {epoch + 1}")
            seconds = time.perf_counter() - started
            last_values = {key: float(values[-1]) for key, values in result.history.items()}
            row = {"epoch": epoch + 1, **last_values, "steps": epoch_steps[epoch], "seconds": round(seconds, 3)}
            history.append(row)
            progress.finish(row)
            state = {**state, "epochs_done": epoch + 1, "train_seconds": state["train_seconds"] + seconds}
            best_epoch = state.get("best_epoch")
            if config.early_stopping_patience:
                with averaging.averaged_weights(model, statistics_images):  # the weights that were validated
                    state = track_best(checkpoint_dir, model, state, row["val_accuracy"], config.early_stopping_patience)
            seconds_since_checkpoint += seconds
            revised = (probe and epoch + 1 < len(epoch_steps) and not state.get("stopped_early")
                       and budget.revised_plan(config, probe, history, state["traced"], steps_per_epoch, log,
                                               recipe.revision_retraces()))  # fmt: skip
            if revised:
                config, epoch_steps, progress.epochs = revised, revised.epoch_steps(steps_per_epoch), revised.epochs
                if recipe.revise_schedule(model.optimizer, config.total_steps(steps_per_epoch)):
                    model.make_train_function(force=True)
                    state["traced"] = [*state["traced"], epoch + 1]
            # The history goes first: a kill between the two writes then leaves a row past the checkpoint, which
            # resuming drops, rather than a checkpoint past the history, whose missing row nothing could restore.
            runs.write_csv(run_dir / runs.HISTORY, history)
            if revised:  # before the checkpoint, which resuming aligns with it
                runs.write_json(run_dir / runs.CONFIG, config.to_dict())
            # A checkpoint of resnet9 takes longer than a GPU epoch; one every few seconds loses little on a kill.
            # A new best model is saved with the state that names it, so that the two always agree; so is an
            # epoch finished when a stop was asked for.
            if (seconds_since_checkpoint >= config.checkpoint_seconds or epoch + 1 == len(epoch_steps)
                    or state.get("stopped_early") or state.get("best_epoch") != best_epoch or stop.requested or revised):
                save_checkpoint(checkpoint_dir, model, state)
                checkpointed, seconds_since_checkpoint = epoch + 1, 0.0
            if stop.requested:
                raise interrupted(f"after epoch {epoch + 1}")
            if state.get("stopped_early"):
                log(f"early stopping: no better validation accuracy since epoch {state['best_epoch']}; keeping that epoch")
                break

    if config.early_stopping_patience:
        model.set_weights(runs.load_keras_file(checkpoint_dir / BEST_MODEL).get_weights())
    else:
        averaging.adopt_averaged_weights(model, statistics_images)
        if validation is None:  # else the last epoch's validation settled them for these very weights
            averaging.settle_batchnorm_statistics(model, statistics_images)
    metrics = finish(run_dir, config, model, data, history, state, validation, len(x_train), epoch_steps, log)
    if report:
        log(f"writing the analysis report to {run_dir / 'report.html'}")
        write_report(run_dir, data=data, model=model)  # the test predictions come from the run, saved by finish
    return metrics


def finish(run_dir: Path, config: TrainConfig, model, data: Dataset, history: list[dict],
           state: dict, validation: tuple[np.ndarray, np.ndarray] | None, num_train_images: int,
           epoch_steps: list[int], log) -> dict:  # fmt: skip
    """Save the final model, evaluate on validation (if held out) and then, once, on the test set; write the run's files."""
    runs.save_model(model, run_dir / runs.MODEL)
    runs.save_figure(plots.training_curves(history), run_dir / "training_curves.png")
    tta = config.tta_options()
    # The time budget covers training only: the log and metrics.json say what the evaluation after it costs (README)
    images = len(data.y_test) + (0 if validation is None else len(validation[1]))
    views = evaluate.view_count(**tta)
    log(f"evaluating the final model: {images:,} images" + (f", {views} views of each" if views > 1 else ""))
    started = time.perf_counter()
    validation_summary = {}
    if validation is not None:
        validation_summary = evaluate.evaluate_model(model, *validation, data.class_names, **tta).summary("val")
    test_results = evaluate.evaluate_model(model, data.x_test, data.y_test, data.class_names, **tta)
    evaluation_seconds = time.perf_counter() - started
    epochs_trained = state["epochs_done"]
    steps_trained = epoch_steps[:epochs_trained]  # fewer than planned after early stopping
    # images of the epochs trained: whole epochs, and the last one's `steps * batch_size` where max_steps cut it short
    images_trained = sum(min(steps * config.batch_size, num_train_images) for steps in steps_trained)
    metrics = {
        "model": config.model,
        "num_parameters": int(model.count_params()),
        "epochs": epochs_trained,
        "steps": sum(steps_trained),
        **({"best_epoch": state["best_epoch"]} if config.early_stopping_patience else {}),
        "num_train_images": num_train_images,
        "num_validation_images": 0 if validation is None else len(validation[1]),
        "train_seconds": round(state["train_seconds"], 3),
        **({"time_budget": config.time_budget, "probe_seconds": state["probe_seconds"]} if "probe_seconds" in state else {}),
        "images_per_second": round(images_trained / state["train_seconds"], 1),
        "evaluation_seconds": round(evaluation_seconds, 3),  # the final model on the validation and test images
        **validation_summary,
    }
    runs.write_json(run_dir / runs.RUN_INFO, {
        "started": state["started"], "finished": datetime.now(UTC).isoformat(),
        "host": platform.node(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "versions": library_versions(), "data_directory": str(data.directory), "data_checksums": data.checksums,
        "command": sys.argv,
    })  # fmt: skip
    metrics = evaluate.write_run_evaluation(run_dir, metrics, test_results)  # metrics.json last: marks completion
    shutil.rmtree(run_dir / runs.CHECKPOINT_DIR, ignore_errors=True)
    return metrics

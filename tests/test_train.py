"""Training in-process on small slices of the real data: splits, run directory, resume guards."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import Killed
from fmnist import inputs, runs
from fmnist.compare import compare_runs, format_comparison
from fmnist.config import TrainConfig
from fmnist.seeds import epoch_order
from fmnist.splits import held_out_split, split_indices
from fmnist.train import train


def test_split_is_stratified_seeded_and_disjoint(dataset):
    config = TrainConfig()
    train_indices, validation_indices = split_indices(dataset.y_train, config)
    assert len(validation_indices) == 6000 and len(train_indices) == 54000
    assert not set(train_indices) & set(validation_indices)
    assert (np.bincount(dataset.y_train[validation_indices]) == 600).all()
    again = split_indices(dataset.y_train, TrainConfig(seed=99))  # the model seed does not move the split
    np.testing.assert_array_equal(again[1], validation_indices)
    other = split_indices(dataset.y_train, TrainConfig(split_seed=1))
    assert not np.array_equal(other[1], validation_indices)


def test_fit_reads_the_arrays_in_order_without_tf_data_autotuning(dataset):
    """On TensorFlow, fit reads a pipeline with no autotuning thread, whose end stalled epochs here (fmnist.inputs)."""
    images, labels = dataset.x_train[:10], dataset.y_train[:10]
    arguments = inputs.fit_arguments((images, labels), 4, (images[:3], labels[:3]), 2)
    assert set(arguments) == {"x", "validation_data", "shuffle"}  # the batch sizes are in the pipelines
    for pipeline, sizes, arrays in ((arguments["x"], [4, 4, 2], (images, labels)),
                                    (arguments["validation_data"], [2, 1], (images[:3], labels[:3]))):  # fmt: skip
        assert pipeline.options().autotune.enabled is False
        read = [(batch_images.numpy(), batch_labels.numpy()) for batch_images, batch_labels in pipeline]
        assert [len(batch_labels) for _, batch_labels in read] == sizes  # in order, the last batch partial
        np.testing.assert_array_equal(np.concatenate([batch_images for batch_images, _ in read]), arrays[0])
        np.testing.assert_array_equal(np.concatenate([batch_labels for _, batch_labels in read]), arrays[1])
    assert inputs.fit_arguments((images, labels), 4)["validation_data"] is None


def test_validation_batches_are_as_even_as_they_come():
    """One shape for every batch where the images divide: JAX compiles a program for each (fmnist.inputs)."""
    assert inputs.even_batch_size(6000, 1024) == 1000  # 6 batches, as 1,024 would make, of one size
    assert inputs.even_batch_size(6001, 1024) == 1001  # 5 of 1,001 and one of 996: 6 still, the fewest there can be
    assert inputs.even_batch_size(2048, 1024) == 1024 and inputs.even_batch_size(205, 1024) == 205
    images, labels = np.zeros((10, 28, 28, 1), np.uint8), np.arange(10)
    pipeline = inputs.fit_arguments((images, labels), 4, (images[:9], labels[:9]), 4)["validation_data"]
    assert [len(batch_labels) for _, batch_labels in pipeline] == [3, 3, 3]  # not 4, 4 and 1


def test_subset_is_stratified(dataset):
    train_indices, validation_indices = split_indices(dataset.y_train, TrainConfig(train_subset=2000))
    assert len(train_indices) + len(validation_indices) == 2000
    assert (np.bincount(dataset.y_train[np.concatenate([train_indices, validation_indices])]) == 200).all()


def test_a_run_without_validation_trains_on_every_image_and_says_so(tmp_path, dataset):
    """validation_fraction 0: the final model of a recipe chosen on a split, trained on all the images."""
    train_indices, validation_indices = split_indices(dataset.y_train, TrainConfig(validation_fraction=0))
    np.testing.assert_array_equal(train_indices, np.arange(60000))
    assert len(validation_indices) == 0

    # 10 s, as in test_budget: 5 s was refused once on a loaded machine, where the probe and compiling took 5.9 s
    config = TrainConfig(model="tiny", epochs=1, train_subset=1000, validation_fraction=0, time_budget=10.0)
    messages = []
    metrics = train(config, tmp_path, data=dataset, log=messages.append)
    assert metrics["num_train_images"] == 1000 and metrics["num_validation_images"] == 0
    assert "val_accuracy" not in metrics and 0.1 < metrics["test_accuracy"] <= 1.0
    assert any("validation 0.0 s" in message for message in messages)  # the budget's probe timed no validation pass
    assert "evaluating the final model: 10,000 images" in messages  # the test set alone, one view of each
    history = runs.read_csv(tmp_path / runs.HISTORY)
    assert len(history) == metrics["epochs"] and not any(key.startswith("val_") for key in history[0])
    report = (tmp_path / "report.md").read_text()
    assert "no validation;" in report and "trained on every image of the training file" in report

    with pytest.raises(runs.RunError, match="held out no validation images"):  # `fmnist evaluate --split validation`
        held_out_split([tmp_path], dataset)
    comparison = compare_runs([tmp_path])
    assert comparison["runs"][0]["val_accuracy"] is None and "| none held out |" in format_comparison(comparison)
    with pytest.raises(ValueError, match="early stopping watches the validation accuracy"):
        TrainConfig(validation_fraction=0, early_stopping_patience=3)


def test_epoch_order_depends_on_seed_and_epoch_only():
    config = TrainConfig(seed=3)
    np.testing.assert_array_equal(epoch_order(config, 2, 100), epoch_order(config, 2, 100))
    assert not np.array_equal(epoch_order(config, 2, 100), epoch_order(config, 3, 100))
    assert sorted(epoch_order(config, 0, 100)) == list(range(100))


@pytest.fixture(scope="module")
def tiny_run(dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny")
    config = TrainConfig(model="tiny", epochs=2, train_subset=2000, learning_rate=3e-3)
    return run_dir, config, train(config, run_dir, data=dataset, log=lambda *a, **k: None)


def test_run_directory_describes_itself(tiny_run):
    run_dir, config, metrics = tiny_run
    for name in (runs.CONFIG, runs.CLASS_NAMES, runs.RUN_INFO, runs.HISTORY, runs.MODEL, runs.METRICS,
                 "confusion_matrix.csv", "confusion_matrix_normalized.csv", "confusion_matrix.png",
                 "classification_report.txt", "training_curves.png", "report.md"):  # fmt: skip
        assert (run_dir / name).stat().st_size > 0, name
    assert not (run_dir / runs.CHECKPOINT_DIR).exists()
    assert TrainConfig.load(run_dir / runs.CONFIG) == config
    assert set(metrics) >= {"test_accuracy", "test_loss", "val_accuracy", "train_seconds", "num_parameters"}
    assert metrics["evaluation_seconds"] > 0
    assert json.loads((run_dir / runs.METRICS).read_text()) == metrics
    assert [row["epoch"] for row in runs.read_csv(run_dir / runs.HISTORY)] == [1, 2]
    info = json.loads((run_dir / runs.RUN_INFO).read_text())
    assert info["versions"]["backend"] == "tensorflow" and len(info["data_checksums"]) == 4
    assert 0.1 < metrics["test_accuracy"] <= 1.0


def test_completed_run_is_not_trained_again(tiny_run, dataset):
    run_dir, config, metrics = tiny_run
    messages = []
    assert train(config, run_dir, data=dataset, log=messages.append) == metrics
    assert messages[0] == f"training tiny into {run_dir}" and "already complete" in messages[1]


def test_other_config_in_the_same_directory_is_refused(tiny_run, dataset):
    run_dir, config, _ = tiny_run
    with pytest.raises(runs.RunError, match=r"another config \(epochs: 2 in the run, 5 now\)"):
        train(TrainConfig(model="tiny", epochs=5, train_subset=2000, learning_rate=3e-3), run_dir, data=dataset)


def test_a_locked_run_is_refused(tmp_path, dataset):
    with runs.locked(tmp_path):
        with pytest.raises(runs.RunError, match="being written by another"):
            train(TrainConfig(model="tiny", epochs=1, train_subset=1000), tmp_path, data=dataset)


def test_an_unknown_model_leaves_no_run_directory_behind(tmp_path, dataset):
    with pytest.raises(ValueError, match=r"unknown model 'compcat'; choose one of \['baseline'.*`fmnist models`"):
        train(TrainConfig(model="compcat", epochs=1, train_subset=1000), tmp_path / "run", data=dataset)
    assert not (tmp_path / "run").exists()


def test_a_file_in_place_of_the_run_directory_is_refused(tmp_path, dataset):
    (tmp_path / "run").write_text("a user's file")
    with pytest.raises(runs.RunError, match="is a file, not a directory; choose another --run-dir"):
        train(TrainConfig(model="tiny", epochs=1, train_subset=1000), tmp_path / "run", data=dataset)
    assert (tmp_path / "run").read_text() == "a user's file"


def test_figures_are_written_in_the_format_their_name_asks_for(tmp_path):
    from fmnist import plots

    figure = plots.sample_grid(np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10, [str(i) for i in range(10)], per_class=1)
    runs.save_figure(figure, tmp_path / "grid.svg")
    assert (tmp_path / "grid.svg").read_text().startswith("<?xml") and "<svg" in (tmp_path / "grid.svg").read_text()
    with pytest.raises(ValueError, match=r"grid.txt: Matplotlib cannot write .txt; end the name with one of .*\.png"):
        runs.save_figure(figure, tmp_path / "grid.txt")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["grid.svg"]


def test_a_file_reaches_the_disk_before_its_name_does(tmp_path, monkeypatch):
    """After a power cut the new name must not hold an empty file: the data is synced, then renamed, then the folder."""
    synced, real_fsync = [], os.fsync

    def watched_fsync(descriptor):  # the real fsync, noting what it synced and which names the folder had then
        synced.append((Path(os.readlink(f"/proc/self/fd/{descriptor}")), sorted(path.name for path in tmp_path.iterdir())))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", watched_fsync)
    runs.write_json(tmp_path / runs.METRICS, {"test_accuracy": 0.9})
    (data, names_before), (folder, names_after) = synced
    assert data.parent == tmp_path and data.name.startswith(".metrics.") and runs.METRICS not in names_before
    assert folder == tmp_path and names_after == [runs.METRICS]
    assert json.loads((tmp_path / runs.METRICS).read_text()) == {"test_accuracy": 0.9}


def test_unfinished_run_cannot_be_used(tmp_path):
    runs.write_json(tmp_path / runs.CONFIG, TrainConfig().to_dict())
    with pytest.raises(runs.RunError, match="run the same `fmnist train --run-dir"):
        runs.require_run(tmp_path)


def test_steps_per_execution_trains_the_same_steps(tmp_path, dataset):
    # 900 training images at batch 32 are 29 steps: 3 per call leaves a last call of 2, which must still run.
    def trained_weights(steps: int):
        config = TrainConfig(model="tiny", epochs=1, train_subset=1000, steps_per_execution=steps)
        train(config, tmp_path / str(steps), data=dataset, log=lambda *a, **k: None, report=False)
        model = runs.load_model(tmp_path / str(steps))
        return model.get_weights(), runs.read_csv(tmp_path / str(steps) / runs.HISTORY)[0]

    (one_by_one, history), (grouped, grouped_history) = trained_weights(1), trained_weights(3)
    for single, multiple in zip(one_by_one, grouped, strict=True):
        np.testing.assert_allclose(multiple, single, rtol=1e-5, atol=1e-6)
    assert grouped_history["loss"] == pytest.approx(history["loss"], rel=1e-5)


def test_drop_remainder_trains_full_batches_of_other_images_each_epoch(tmp_path, dataset):
    """900 training images at batch 32 are 28 full batches and 4 images over, which each epoch leaves out."""
    config = TrainConfig(model="tiny", epochs=2, train_subset=1000, drop_remainder=True)
    metrics = train(config, tmp_path / "run", data=dataset, log=lambda *a, **k: None, report=False)
    history = runs.read_csv(tmp_path / "run" / runs.HISTORY)
    assert [row["steps"] for row in history] == [28, 28] and metrics["steps"] == 56
    assert metrics["images_per_second"] * metrics["train_seconds"] == pytest.approx(2 * 28 * 32, rel=0.01)
    assert compare_runs([tmp_path / "run"])["runs"][0]["epochs"] == 2  # whole epochs of full batches
    left_out = [set(epoch_order(config, epoch, 900)[28 * 32:]) for epoch in (0, 1)]
    assert left_out[0] != left_out[1]  # the epoch's order is drawn anew, so other images miss out
    with pytest.raises(ValueError, match="90 training images do not fill one batch of 128; lower --batch-size"):
        train(TrainConfig(model="tiny", train_subset=100, batch_size=128, drop_remainder=True), tmp_path / "small",
              data=dataset, log=lambda *a, **k: None, report=False)  # fmt: skip
    assert not (tmp_path / "small").exists()  # the folder the call made, which would hold only the lock file
    (tmp_path / "made-by-the-user").mkdir()
    with pytest.raises(ValueError, match="do not fill one batch"):
        train(TrainConfig(model="tiny", train_subset=100, batch_size=128, drop_remainder=True), tmp_path / "made-by-the-user",
              data=dataset, log=lambda *a, **k: None, report=False)  # fmt: skip
    assert (tmp_path / "made-by-the-user").is_dir()


def test_a_kill_right_after_a_checkpoint_keeps_that_epoch_in_the_history(tmp_path, dataset, kill_after_checkpoint):
    """The history is written before the checkpoint: a checkpoint ahead of it would leave a row missing for good."""
    config = TrainConfig(model="tiny", epochs=2, train_subset=1000, checkpoint_seconds=0)
    kill_after_checkpoint(True)
    with pytest.raises(Killed):
        train(config, tmp_path, data=dataset, log=lambda *a, **k: None, report=False)
    assert [row["epoch"] for row in runs.read_csv(tmp_path / runs.HISTORY)] == [1]
    kill_after_checkpoint(False)
    train(config, tmp_path, data=dataset, log=lambda *a, **k: None, report=False)
    assert [row["epoch"] for row in runs.read_csv(tmp_path / runs.HISTORY)] == [1, 2]


def test_a_signal_between_epochs_checkpoints_the_finished_epoch_and_stops(tmp_path, dataset, monkeypatch):
    """SIGTERM while an epoch is written down (between two fits) is caught like one during a fit, and the
    finished epoch is checkpointed though the checkpoint interval has not passed."""
    import signal

    class Unhandled(Exception):
        pass

    def unhandled(signal_number, frame):  # what the test sees if no handler of fmnist's is in place
        raise Unhandled

    def write_then_signal(path, rows):
        real_write_csv(path, rows)
        if path.name == runs.HISTORY and len(rows) == 1:
            signal.raise_signal(signal.SIGTERM)

    real_write_csv = runs.write_csv
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        config = TrainConfig(model="tiny", epochs=2, train_subset=1000, checkpoint_seconds=3600)
        monkeypatch.setattr(runs, "write_csv", write_then_signal)
        with pytest.raises(runs.TrainingInterrupted, match="after epoch 1; .* keeps the 1 epochs"):
            train(config, tmp_path, data=dataset, log=lambda *a, **k: None, report=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert json.loads((tmp_path / runs.CHECKPOINT_DIR / runs.CHECKPOINT_STATE).read_text())["epochs_done"] == 1
    monkeypatch.setattr(runs, "write_csv", real_write_csv)
    train(config, tmp_path, data=dataset, log=lambda *a, **k: None, report=False)
    assert [row["epoch"] for row in runs.read_csv(tmp_path / runs.HISTORY)] == [1, 2]


def test_speed_settings_are_checked():
    with pytest.raises(ValueError, match="steps_per_execution must be at least 1"):
        TrainConfig(steps_per_execution=0)
    with pytest.raises(ValueError, match=r"jit_compile must be one of \['auto', 'on', 'off'\], got 'yes'"):
        TrainConfig(jit_compile="yes")
    with pytest.raises(ValueError, match="checkpoint_seconds must be 0 or more, got -1"):
        TrainConfig(checkpoint_seconds=-1)


@pytest.mark.parametrize(("setting", "expected"), [("off", False), ("on", True), ("auto", None)])
def test_jit_compile_setting_reaches_keras(setting, expected):
    # Keras turns XLA off under TensorFlow's op determinism, which other tests switch on for the process;
    # tf.config has no way to switch it off again, so this uses the module Keras itself asks.
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    from fmnist.train import build_and_compile

    if expected is None:  # Keras' choice: XLA with a GPU, none on a CPU
        expected = bool(tf.config.list_physical_devices("GPU"))
    deterministic = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        model = build_and_compile(TrainConfig(model="tiny", jit_compile=setting), num_classes=10, steps_per_epoch=10)
        assert model.jit_compile is expected
    finally:
        if deterministic:
            tf_config.enable_op_determinism()

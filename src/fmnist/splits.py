"""Which training images train and which validate: a stratified, seeded split, the same for every run that shares it.

    from fmnist.splits import held_out_split, split_indices
    train_indices, validation_indices = split_indices(data.y_train, config)   # into the 60,000 training images
    images, labels = held_out_split([Path("runs/seed0"), Path("runs/seed1")], data)   # what those runs held out

The split depends on `split_seed`, `validation_fraction` and `train_subset` alone, not on the model's `seed`, so runs
with different seeds are judged on the same validation images, and an ensemble of them on images none trained on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from fmnist import runs
from fmnist.config import TrainConfig
from fmnist.data import Dataset


def split_indices(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, validation) indices into the training set."""
    indices = np.arange(len(labels))
    if config.train_subset is not None and config.train_subset < len(labels):
        indices, _ = train_test_split(
            indices, train_size=config.train_subset, stratify=labels, random_state=config.split_seed
        )
    if not config.validation_fraction:  # every image trains: the final model, once the options are chosen
        return np.sort(indices), np.array([], dtype=indices.dtype)
    train_indices, validation_indices = train_test_split(
        indices, test_size=config.validation_fraction, stratify=labels[indices], random_state=config.split_seed
    )
    return np.sort(train_indices), np.sort(validation_indices)


def held_out_split(run_dirs: list[Path], data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The validation images and labels that finished runs held out, which must be the same for all of them."""
    configs = [TrainConfig.load(runs.require_run(run_dir) / runs.CONFIG) for run_dir in run_dirs]
    settings = ("split_seed", "validation_fraction", "train_subset")  # what split_indices draws the split from
    for run_dir, config in zip(run_dirs[1:], configs[1:], strict=True):
        differences = [f"{name} {getattr(config, name)} against {getattr(configs[0], name)}" for name in settings
                       if getattr(config, name) != getattr(configs[0], name)]  # fmt: skip
        if differences:
            raise runs.RunError(
                f"{run_dir} held out other validation images than {run_dirs[0]} ({', '.join(differences)}), so it "
                "trained on some of the images it would be judged on; an ensemble's runs must split alike"
            )
    for run_dir in run_dirs:
        trained_on = runs.read_json(Path(run_dir) / runs.RUN_INFO).get("data_checksums")
        if trained_on and trained_on != data.checksums:
            raise runs.RunError(f"{run_dir} was trained on other data files than those in {data.directory} (their "
                                "checksums differ); give the --data-dir it was trained with")  # fmt: skip
    if not configs[0].validation_fraction:
        raise runs.RunError(f"{run_dirs[0]} held out no validation images (validation_fraction 0): it trained on all "
                            "of them; evaluate it on the test set, or on images of your own with --images")  # fmt: skip
    _, validation_indices = split_indices(data.y_train, configs[0])
    return data.x_train[validation_indices], data.y_train[validation_indices]

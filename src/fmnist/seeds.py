"""Randomness that training must be able to replay: the seeds, each epoch's order, and the random
state of the augmentation layers, which checkpoints keep so that a resumed run draws what an
uninterrupted one would have drawn.

    seed_everything(config)                  # Python, NumPy and the backend, from config.seed
    order = epoch_order(config, epoch, n)    # a function of (seed, epoch) only
    states = seed_states(model); ...; restore_seed_states(model, states)
"""

from __future__ import annotations

import numpy as np

from fmnist.config import TrainConfig


def epoch_order(config: TrainConfig, epoch: int, size: int) -> np.ndarray:
    """The shuffle of one epoch: a function of (seed, epoch) only, so resuming replays it exactly."""
    return np.random.default_rng([config.seed, epoch]).permutation(size)


def seed_everything(config: TrainConfig) -> None:
    import keras

    keras.utils.set_random_seed(config.seed)
    if config.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def seed_state_variables(layer) -> list:
    return [variable for variable in layer.variables if variable.path.endswith("seed_generator_state")]


def seed_states(model) -> dict[str, list]:
    """The random-number states of the augmentation and dropout layers, by layer name.

    A .keras file does not keep them (Keras 3.15 starts a loaded layer's generator afresh), so
    without them a resumed run would draw other augmentations than an uninterrupted one.
    """
    import keras

    return {layer.name: [keras.ops.convert_to_numpy(variable).tolist() for variable in variables]
            for layer in model.layers if (variables := seed_state_variables(layer))}  # fmt: skip


def restore_seed_states(model, states: dict[str, list]) -> None:
    for layer in model.layers:
        for variable, value in zip(seed_state_variables(layer), states.get(layer.name, ()), strict=layer.name in states):
            variable.assign(np.asarray(value, dtype=variable.dtype))

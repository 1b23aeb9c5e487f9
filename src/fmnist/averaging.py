"""Weight averaging (EMA) over a training that runs one `fit` per epoch, with BatchNorm statistics to match.

    callbacks = validation_callbacks(model, statistics_images)  # validate on the averaged weights
    with averaged_weights(model, statistics_images): ...         # the averaged model inside the block
    adopt_averaged_weights(model, statistics_images)             # for good, at the end
    settle_batchnorm_statistics(model, statistics_images)        # a short run's statistics, without validation

Keras keeps the moving average in the optimizer (`use_ema`, set by `recipe.build_optimizer`, whose
optimizers warm its momentum up: `recipe.WarmedUpAverage`) and averages the trainable weights only.
BatchNorm's moving mean and variance are not trainable, so an averaged model would normalise with
the statistics of the raw weights, which in a short run are far from its own (a 6-epoch `best` run
with `--ema 0.999`, before the warm-up, had 0.913 validation accuracy that way and 0.934 once they
were recomputed, without TTA). So, as SWA does (torch.optim.swa_utils.update_bn), wherever the
averaged weights are used, the statistics are recomputed for them from `STATISTICS_IMAGES`
training images.

The same recomputation serves runs too short for the moving statistics to forget where they start
(mean 0, variance 1): a BatchNorm momentum of 0.9 leaves 0.9 ** t of the start after t steps, and a
`best` run of 22 steps validated 0.11, at chance, where statistics recomputed for it gave 0.81. Until a
run has trained `settling_steps` (88 steps at 0.9), they are recomputed before each validation (or at
the end of a run without one), and kept: no training step reads them, so the weights train the same.
"""

from __future__ import annotations

import contextlib
import math

import keras
from keras import ops

from fmnist.seeds import restore_seed_states, seed_states

STATISTICS_IMAGES = 4096  # 32 batches of 128: the statistics then vary by well under 1% between samples
_BATCH_SIZE = 128
# The share of their starting values that moving statistics may still hold for inference to use them as they are.
# `best` on 3,000 images (11 steps an epoch) validated 0.11, 0.37 and 0.86 after 22, 33 and 55 steps (shares of 0.1,
# 0.03 and 0.003 left), against 0.81, 0.83 and 0.88 with the statistics recomputed, and 0.89 either way after 88 (1e-4)
SETTLED_SHARE = 1e-4


def uses_ema(model: keras.Model) -> bool:
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)  # under a LossScaleOptimizer
    return bool(getattr(optimizer, "use_ema", False))


def values(variables) -> list:
    return [ops.convert_to_numpy(variable) for variable in variables]


def assign(variables, new_values: list) -> None:
    for variable, value in zip(variables, new_values, strict=True):
        variable.assign(value)


def batchnorm_layers(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [found for inner in getattr(layer, "layers", []) for found in batchnorm_layers(inner)]


def batchnorm_statistics(model: keras.Model) -> list:
    return [variable for layer in batchnorm_layers(model) for variable in (layer.moving_mean, layer.moving_variance)]


def recompute_batchnorm_statistics(model: keras.Model, images) -> None:
    """Set every BatchNorm's moving mean and variance to the mean of its batch statistics over `images`.

    The model runs in training mode, batch by batch, with each layer's momentum set so that every
    batch counts the same. The random state of the augmentation layers, which training mode
    advances, is put back (as a resumed run restores it), so the training that follows draws what
    it would have drawn.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return
    saved_seeds, momenta = seed_states(model), [layer.momentum for layer in layers]
    try:
        for count, start in enumerate(range(0, len(images), _BATCH_SIZE)):
            for layer in layers:
                layer.momentum = count / (count + 1)  # 0 for the first batch: its statistics replace the old ones
            with without_gradients():  # statistics only: nothing for PyTorch to record for a backward pass
                model(images[start : start + _BATCH_SIZE], training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        restore_seed_states(model, saved_seeds)


def settling_steps(model: keras.Model) -> int:
    """The training steps after which every BatchNorm's moving statistics hold less than SETTLED_SHARE of their start."""
    momenta = [layer.momentum for layer in batchnorm_layers(model) if 0 < layer.momentum < 1]
    return max((math.ceil(math.log(SETTLED_SHARE) / math.log(momentum)) for momentum in momenta), default=0)


def settle_batchnorm_statistics(model: keras.Model, images) -> None:
    """Recompute (and keep) BatchNorm's statistics if the model has trained too few steps for its moving ones. Nothing
    with EMA, whose averaged weights have their statistics recomputed wherever they are used."""
    if not uses_ema(model) and int(ops.convert_to_numpy(model.optimizer.iterations)) < settling_steps(model):
        recompute_batchnorm_statistics(model, images)


def without_gradients():
    """A context in which the backend records nothing for a backward pass, as Keras' own `predict` runs.

    PyTorch records every operation on a model's weights unless told not to (inference with `model(x)` ran
    25-45% slower here with it). TensorFlow and JAX record only inside a tape or a `grad`, so they need nothing.
    """
    if keras.backend.backend() != "torch":
        return contextlib.nullcontext()
    import torch

    return torch.no_grad()


class KeepTrainingWeights(keras.callbacks.Callback):
    """Undo the copy of the averaged weights into the model that ends every `fit` with EMA.

    Keras' `fit` finishes with `optimizer.finalize_variable_values`, which overwrites the weights
    with their moving average. Training runs one `fit` per epoch, so without this every epoch
    would restart from the average instead of from where training was. The averaged weights are
    used for validation (keras.callbacks.SwapEMAWeights) and at the end (`averaged_weights`).
    """

    def on_epoch_end(self, epoch, logs=None):
        self.training_weights = values(self.model.trainable_weights)

    def on_train_end(self, logs=None):
        assign(self.model.trainable_weights, self.training_weights)


class AveragedBatchNormStatistics(keras.callbacks.Callback):
    """During validation, BatchNorm statistics recomputed for the averaged weights that SwapEMAWeights put in."""

    def __init__(self, images):
        super().__init__()
        self.images = images

    def on_test_begin(self, logs=None):
        self.saved = values(batchnorm_statistics(self.model))
        recompute_batchnorm_statistics(self.model, self.images)

    def on_test_end(self, logs=None):
        assign(batchnorm_statistics(self.model), self.saved)  # training goes on with its own statistics


class SettledBatchNormStatistics(keras.callbacks.Callback):
    """Before each validation of a run that is still short of `settling_steps`, BatchNorm statistics recomputed."""

    def __init__(self, images):
        super().__init__()
        self.images = images

    def on_test_begin(self, logs=None):
        settle_batchnorm_statistics(self.model, self.images)


def validation_callbacks(model: keras.Model, statistics_images) -> list[keras.callbacks.Callback]:
    """With EMA: validate on the averaged weights and keep training from the raw ones. Without: validate a short run
    on BatchNorm statistics recomputed for it. Nothing for a model without BatchNorm and EMA."""
    if not uses_ema(model):
        return [SettledBatchNormStatistics(statistics_images)] if batchnorm_layers(model) else []
    # In this order: the averaged weights go in before their statistics are computed.
    return [keras.callbacks.SwapEMAWeights(), AveragedBatchNormStatistics(statistics_images), KeepTrainingWeights()]


def adopt_averaged_weights(model: keras.Model, statistics_images) -> None:
    """Replace the weights by their moving average, for good (the end of training); nothing without EMA."""
    if uses_ema(model):
        model.optimizer.finalize_variable_values(model.trainable_weights)
        recompute_batchnorm_statistics(model, statistics_images)


@contextlib.contextmanager
def averaged_weights(model: keras.Model, statistics_images):
    """Inside the block the model holds the moving average of its weights (unchanged without EMA)."""
    if not uses_ema(model):
        yield model
        return
    saved = model.get_weights()  # trainable and not: the raw weights and their BatchNorm statistics
    adopt_averaged_weights(model, statistics_images)
    try:
        yield model
    finally:
        model.set_weights(saved)

"""What `model.fit` reads: training and validation arrays in memory, in batches, in the order given.

    model.fit(**fit_arguments((x, y), 128, (x_val, y_val), 1024), epochs=1, verbose=0)
    model.evaluate(**evaluate_arguments((x_val, y_val), 1024), verbose=0)

On TensorFlow the arrays go in as a tf.data pipeline with autotuning off. Keras' own pipeline for
arrays prefetches with `tf.data.AUTOTUNE`, and on this project's machine (TensorFlow 2.21, Linux 6.18)
the end of such a pipeline often stalled the process for up to 20 seconds: the main thread, destroying
the epoch's iterator, waited for tf.data's autotuning thread, asleep in a timed wait until its next
round, with both cores idle (a native stack dump during a stall, BENCHMARKS.md). That turned about
one epoch in three into a 41-second one. The arrays sit in memory, so a fixed prefetch of two batches
is all the tuning they need; the batches are the same, so the run computes the same steps. JAX and
PyTorch get the arrays, as Keras takes them.
"""

from __future__ import annotations

import keras
import numpy as np

PREFETCH_BATCHES = 2
Arrays = tuple[np.ndarray, np.ndarray]  # images and labels


def fit_arguments(train: Arrays, batch_size: int,
                  validation: Arrays | None = None, validation_batch_size: int | None = None) -> dict:  # fmt: skip
    """Keyword arguments for `model.fit`: x (and y), the batch sizes and validation_data, in the order given; the
    validation images in batches of up to `validation_batch_size`, as even as they come (`even_batch_size`)."""
    if validation is not None:
        validation_batch_size = even_batch_size(len(validation[1]), validation_batch_size or batch_size)
    if keras.backend.backend() != "tensorflow":
        return {"x": train[0], "y": train[1], "batch_size": batch_size, "shuffle": False,
                "validation_data": validation, "validation_batch_size": validation_batch_size}  # fmt: skip
    validation_batches = None if validation is None else batches(*validation, validation_batch_size)
    return {"x": batches(*train, batch_size), "validation_data": validation_batches, "shuffle": False}


def even_batch_size(size: int, largest: int) -> int:
    """The batch size that splits `size` images into as few batches of at most `largest` as there can be, as even as
    they come: 6,000 validation images at up to 1,024 go in 6 batches of 1,000. Where they divide, every batch has
    one shape, and JAX compiles its evaluation step once, not once more for a smaller last batch."""
    return -(-size // -(-size // largest)) if size else largest


def evaluate_arguments(data: Arrays, batch_size: int) -> dict:
    """Keyword arguments for `model.evaluate` on `data`, through the same pipeline as `fit_arguments`' validation."""
    if keras.backend.backend() != "tensorflow":
        return {"x": data[0], "y": data[1], "batch_size": batch_size}
    return {"x": batches(*data, batch_size)}


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """A tf.data pipeline of (images, labels) batches in order, the last one partial, without autotuning."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False  # no autotuning thread, so nothing to wait for when the iterator ends
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size).prefetch(PREFETCH_BATCHES)
    return dataset.with_options(options)

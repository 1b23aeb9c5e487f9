"""No copies before each convolution and pooling on Keras' PyTorch backend: a backport of Keras' own fix.

    from fmnist import torch_layout
    torch_layout.install()     # True where it took effect (the torch backend on a Keras without the fix)
    torch_layout.uninstall()   # Keras' own again (the throughput benchmark compares the two)

Keras keeps images channels-last (batch, height, width, channels); PyTorch's kernels index them
channels-first. Keras 3.15.1 permutes each convolution's input to channels-first and makes it
contiguous (one copy), then converts it to PyTorch's channels-last memory format (a second copy)
so that oneDNN runs its fast kernels. The permuted view of a channels-last tensor already has
that memory format, so both copies are wasted: keras-team/keras#23279, fixed upstream by #23199
after 3.15.1 (which adds a `channels_last_memory_format` argument). This module makes the permute
keep that memory format, so a contiguous input is not copied at all; the convolution and pooling
kernels then compute the same numbers. In the throughput benchmark here `compact` trained 12% more
images per second with it and the spec's network 37% more, with the same losses (BENCHMARKS.md).

Models import this module's `install`, so it is in force wherever fmnist builds or loads a model.
It leaves TensorFlow and JAX alone, and steps aside once Keras has the fix (or changes the function).
"""

from __future__ import annotations

import inspect

import keras

CHANNELS_FIRST = {3: (0, 2, 1), 4: (0, 3, 1, 2), 5: (0, 4, 1, 2, 3)}  # ndim -> permutation
replaced: dict[str, object] = {}  # Keras' own function, while ours stands in for it


def install() -> bool:
    if keras.backend.backend() != "torch":
        return False
    from keras.src.backend.torch import nn

    if replaced:
        return True
    keras_transpose = getattr(nn, "_transpose_spatial_inputs", None)
    # The fixed Keras gives the function a second argument (channels_last_memory_format); any other
    # form than 3.15.1's one argument is left alone, since this replacement takes only that one
    if keras_transpose is None or list(inspect.signature(keras_transpose).parameters) != ["inputs"]:
        return False
    replaced["_transpose_spatial_inputs"] = keras_transpose
    nn._transpose_spatial_inputs = transpose_keeping_memory_format
    return True


def uninstall() -> None:
    if replaced:
        from keras.src.backend.torch import nn

        nn._transpose_spatial_inputs = replaced.pop("_transpose_spatial_inputs")


def transpose_keeping_memory_format(inputs):
    """Channels-last to channels-first, as a view kept in PyTorch's channels-last memory format.

    A contiguous channels-last input comes back without a copy; any other input is copied once into
    that format. For 1-D inputs, which have no such format, it makes the permuted tensor contiguous,
    as Keras does.
    """
    import torch

    if inputs.ndim not in CHANNELS_FIRST:
        raise ValueError(f"inputs must have 3, 4 or 5 dimensions, got shape {tuple(inputs.shape)}")
    permuted = torch.permute(inputs, CHANNELS_FIRST[inputs.ndim])
    memory_format = {4: torch.channels_last, 5: torch.channels_last_3d}.get(inputs.ndim, torch.contiguous_format)
    return permuted.contiguous(memory_format=memory_format)

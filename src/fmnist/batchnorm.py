"""Keras' BatchNormalization, trained with PyTorch's fused kernel on the PyTorch backend.

    from fmnist.batchnorm import BatchNormalization
    x = BatchNormalization(momentum=0.9)(x)     # as keras.layers.BatchNormalization, on every backend

Keras composes a training-mode BatchNorm from separate operations (two means, a square, a subtraction,
a product and a sum, then the gradient of each), which on PyTorch's eager CPU kernels is one pass over
the activations per operation. PyTorch's own batch norm computes the statistics and the normalisation in
one kernel, and its gradient in another: for one layer of `compact` at batch 128, forward and backward,
10 ms against 39 ms on (128, 28, 28, 32) activations and 1.3 ms against 4.3 ms on (128, 7, 7, 128),
and `compact` trains 24% more images per second (BENCHMARKS.md). The layer computes what Keras' does (the
batch's mean and biased variance normalise it, and the moving statistics follow them with Keras'
momentum) up to float rounding, which differs: a run does not repeat one trained with Keras' layer step for step;
on TensorFlow and JAX, in inference, and for the options the fused kernel lacks (masks, renorm), it is
Keras' layer unchanged. The saved model names it `fmnist>BatchNormalization`; runs saved with Keras' own
layer load and run as before.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fmnist")
class BatchNormalization(keras.layers.BatchNormalization):
    def call(self, inputs, training=None, mask=None):
        fused = keras.backend.backend() == "torch" and training and self.trainable and mask is None and not self.renorm
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        return self.fused_training_call(inputs)

    def fused_training_call(self, inputs):
        import torch

        # As Keras' layer: the statistics in float32 even under mixed precision, the output in the compute dtype
        inputs = keras.ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma = keras.ops.cast(self.gamma, inputs.dtype) if self.scale else None
        beta = keras.ops.cast(self.beta, inputs.dtype) if self.center else None
        # PyTorch normalises axis 1. For channels-last images the moved view is PyTorch's channels-last memory
        # format, which its CPU kernels read in place, and the output moved back is contiguous again: no copies.
        channels_first = torch.movedim(inputs, self.axis, 1)
        # The kernel F.batch_norm calls, which also returns the batch's statistics (F.batch_norm would only fold
        # them into running buffers, with the unbiased variance rather than Keras' biased one)
        outputs, mean, inverse_std = torch.native_batch_norm(channels_first, gamma, beta, None, None, True, 0.0,
                                                             self.epsilon)  # fmt: skip
        with torch.no_grad():
            variance = inverse_std.pow(-2) - self.epsilon  # the batch's biased variance, as Keras' moments give it
            self.moving_mean.assign(self.moving_mean.value * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance.value * self.momentum + variance * (1.0 - self.momentum))
        return keras.ops.cast(torch.movedim(outputs, 1, self.axis), self.compute_dtype)

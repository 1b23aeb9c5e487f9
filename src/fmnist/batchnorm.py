"""Keras' BatchNormalization, trained with the backend's fused kernel on PyTorch and TensorFlow.

    from fmnist.batchnorm import BatchNormalization
    x = BatchNormalization(momentum=0.9)(x)     # as keras.layers.BatchNormalization, on every backend

Keras composes a training-mode BatchNorm from separate operations (two means, a square, a subtraction,
a product and a sum, then the gradient of each), each one pass over the activations, and under mixed
precision it casts the 16-bit activations to float32 and back around them. PyTorch's and TensorFlow's own
batch norms compute the statistics and the normalisation in one kernel, and the gradient in another, and
take bfloat16 or float16 activations as they are (with float32 statistics inside). On PyTorch, for one layer
of `compact` at batch 128, forward and backward: 10 ms against 39 ms on (128, 28, 28, 32) activations and
1.3 ms against 4.3 ms on (128, 7, 7, 128), and `compact` trains 24% more images per second; without the
casts, 15% more again in bfloat16. On TensorFlow `compact` trains 20% more images per second in float32
and 45% more in bfloat16 (BENCHMARKS.md). The layer computes what Keras' does (the batch's mean and biased
variance normalise it, and the moving statistics follow them with Keras' momentum) up to float rounding,
which differs: a run does not repeat one trained with Keras' layer step for step. On JAX, in inference, for
the options the fused kernels lack (masks, renorm) and, on TensorFlow, for other than 4-D channels-last
inputs (its kernel's only layout), it is Keras' layer unchanged. The saved model names it
`fmnist>BatchNormalization`; runs saved with Keras' own layer load and run as before.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fmnist")
class BatchNormalization(keras.layers.BatchNormalization):
    def call(self, inputs, training=None, mask=None):
        backend = keras.backend.backend()
        fused = training and self.trainable and mask is None and not self.renorm
        if fused and backend == "torch":
            return self.fused_torch_call(inputs)
        if fused and backend == "tensorflow" and len(inputs.shape) == 4 and self.axis in (-1, 3):
            return self.fused_tensorflow_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def fused_tensorflow_call(self, inputs):
        import tensorflow as tf

        # FusedBatchNormV3, which oneDNN runs on a CPU; 16-bit activations go in and out as they are, with float32
        # scale and offset (the kernel's statistics are float32), as in fused_torch_call
        channels = inputs.shape[-1]
        scale = self.gamma.value if self.scale else tf.ones([channels], tf.float32)
        offset = self.beta.value if self.center else tf.zeros([channels], tf.float32)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(inputs, scale, offset, epsilon=self.epsilon,
                                                                   data_format="NHWC", is_training=True)  # fmt: skip
        count = tf.cast(tf.size(inputs) // channels, tf.float32)
        variance = variance * (count - 1.0) / count  # the kernel's is Bessel-corrected; Keras' moments are biased
        self.moving_mean.assign(self.moving_mean.value * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance.value * self.momentum + variance * (1.0 - self.momentum))
        return keras.ops.cast(outputs, self.compute_dtype)

    def fused_torch_call(self, inputs):
        import torch

        # Under mixed precision the kernel takes the 16-bit activations as they are, with float32 gamma and beta: it
        # accumulates the statistics in float32, as Keras' layer does, and writes its output in the activations' dtype.
        # Keras' layer casts the activations to float32 and back instead, two more passes over them (and two in the
        # backward pass): `compact` in bfloat16 trains 15% more images per second without them (BENCHMARKS.md).
        gamma = self.gamma.value if self.scale else None
        beta = self.beta.value if self.center else None
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

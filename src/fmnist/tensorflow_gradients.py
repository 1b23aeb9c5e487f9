"""Two of TensorFlow's slow gradient kernels on a CPU, replaced by faster ways to the same numbers.

    from fmnist import tensorflow_gradients
    tensorflow_gradients.install()     # True where it took effect (the TensorFlow backend, no GPU)
    tensorflow_gradients.uninstall()   # Keras' own again (the throughput benchmark compares the two)

On a CPU with AVX2 but no AVX-512, two of the kernels TensorFlow runs for a training step took
several times what the work needs (BENCHMARKS.md, 2026-12-03; a batch of 256):

- A convolution's gradient for its input (Conv2DBackpropInput): 84-94 ms at the shape of
  `compact`'s residual block (7x7, 128 -> 128 channels), three times the forward convolution of the
  same size (28 ms) and PyTorch's input gradient (25 ms). For stride 1, no dilation and "same"
  padding with an odd kernel (as much padding on each side), that gradient is itself such a forward
  convolution: of the output's gradient, with the kernel turned by 180 degrees and its input and
  output channels swapped. Equal up to float rounding; the kernel's gradient stays TensorFlow's.
- 2x2 max-pooling's gradient (MaxPoolGrad): 33-41 ms for `compact`'s first pooling (28x28, 32
  channels), ten times the pooling itself (3.6 ms). Here each output's gradient goes to the first
  of its window's four pixels, in row order, that equals the window's maximum, as TensorFlow's
  kernel sends it; written as comparisons and selections that XLA compiles into one pass (6 ms).
  Equal to the bit: nothing is computed but which pixel gets the gradient.

This module has Keras' TensorFlow `conv` and `max_pool` use those gradients (`tf.custom_gradient`):
there `compact` trained 57% more images per second and the spec's network 18%. Models import
`install`, so it is in force wherever fmnist builds or loads a model on TensorFlow. Every other
convolution (strides, dilations, "valid" padding as in the spec's `baseline`, even kernels, 1-D and
3-D, channels-first, groups) and pooling (other sizes and strides, padding, odd sizes) is Keras' own,
unchanged, and so is everything on a machine where TensorFlow sees a GPU (cuDNN has its own kernels)
and on the other backends. It steps aside if Keras' functions change form.
"""

from __future__ import annotations

import functools
import inspect

import keras

KERAS_PARAMETERS = {
    "conv": ["inputs", "kernel", "strides", "padding", "data_format", "dilation_rate"],
    "max_pool": ["inputs", "pool_size", "strides", "padding", "data_format"],
}
replaced: dict[str, object] = {}  # Keras' own functions, while ours stand in for them


def install() -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    if replaced:
        return True
    from keras.src.backend.tensorflow import nn

    from fmnist.recipe import accelerator_present

    if accelerator_present():
        return False
    keras_functions = {name: getattr(nn, name, None) for name in KERAS_PARAMETERS}
    for name, function in keras_functions.items():
        if function is None or list(inspect.signature(function).parameters) != KERAS_PARAMETERS[name]:
            return False
    replaced.update(keras_functions)
    nn.conv, nn.max_pool = conv, max_pool
    return True


def uninstall() -> None:
    if not replaced:
        return
    from keras.src.backend.tensorflow import nn

    for name, function in list(replaced.items()):
        setattr(nn, name, function)
        del replaced[name]


def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
    """Keras' `conv` for TensorFlow, with its arguments; "same" 2-D convolutions of stride 1 go to ours."""
    if not is_same_convolution(inputs, kernel, strides, padding, data_format, dilation_rate):
        return replaced["conv"](inputs, kernel, strides, padding, data_format, dilation_rate)
    import tensorflow as tf

    return same_convolution(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))


def max_pool(inputs, pool_size, strides=None, padding="valid", data_format=None):
    """Keras' `max_pool` for TensorFlow, with its arguments; 2x2 poolings of stride 2 that halve evenly go to ours."""
    if not is_halving_pool(inputs, pool_size, strides, padding, data_format):
        return replaced["max_pool"](inputs, pool_size, strides, padding, data_format)
    import tensorflow as tf

    return halving_max_pool(tf.convert_to_tensor(inputs))


def is_same_convolution(inputs, kernel, strides, padding, data_format, dilation_rate) -> bool:
    """A 2-D channels-last convolution with stride 1, no dilation, "same" padding, an odd kernel and no groups."""
    if len(inputs.shape) != 4 or len(kernel.shape) != 4 or str(padding).lower() != "same":
        return False
    kernel_height, kernel_width, kernel_channels, _ = kernel.shape
    return (channels_last(data_format) and all_equal(strides, 1) and all_equal(dilation_rate, 1)
            and kernel_height % 2 == 1 and kernel_width % 2 == 1 and kernel_channels == inputs.shape[-1])  # fmt: skip


def is_halving_pool(inputs, pool_size, strides, padding, data_format) -> bool:
    """A 2-D channels-last 2x2 pooling of stride 2 without padding, over an even height and width."""
    if len(inputs.shape) != 4 or str(padding).lower() != "valid" or not channels_last(data_format):
        return False
    _, height, width, channels = inputs.shape
    even = all(isinstance(size, int) and size % 2 == 0 for size in (height, width)) and channels is not None
    return even and all_equal(pool_size, 2) and all_equal(pool_size if strides is None else strides, 2)


def channels_last(data_format) -> bool:
    return (data_format or keras.config.image_data_format()) == "channels_last"


def all_equal(values, expected: int) -> bool:
    return all(value == expected for value in (values if isinstance(values, (list, tuple)) else [values]))


def same_convolution(inputs, kernel):
    """tf.nn.conv2d(inputs, kernel, 1, "SAME"), with the input gradient as a forward convolution."""
    import tensorflow as tf

    @tf.custom_gradient
    def convolve(inputs, kernel):  # inputs: (batch, height, width, in), kernel: (kernel height, kernel width, in, out)
        outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding="SAME")

        def gradient(output_gradient):  # (batch, height, width, out)
            turned = tf.transpose(tf.reverse(kernel, axis=[0, 1]), [0, 1, 3, 2])  # (kernel height, kernel width, out, in)
            input_gradient = tf.nn.conv2d(output_gradient, turned, strides=1, padding="SAME")
            kernel_gradient = tf.compat.v1.nn.conv2d_backprop_filter(inputs, tf.shape(kernel), output_gradient,
                                                                     strides=[1, 1, 1, 1], padding="SAME")  # fmt: skip
            return input_gradient, kernel_gradient

        return outputs, gradient

    return convolve(inputs, kernel)


def halving_max_pool(inputs):
    """tf.nn.max_pool2d(inputs, 2, 2, "VALID"), with its gradient compiled by XLA."""
    import tensorflow as tf

    @tf.custom_gradient
    def pool(inputs):  # (batch, height, width, channels)
        outputs = tf.nn.max_pool2d(inputs, 2, 2, "VALID")  # (batch, height / 2, width / 2, channels)
        return outputs, lambda output_gradient: compiled_max_pool_gradient()(inputs, outputs, output_gradient)

    return pool(inputs)


@functools.cache
def compiled_max_pool_gradient():
    import tensorflow as tf

    return tf.function(max_pool_gradient, jit_compile=True)


def max_pool_gradient(inputs, outputs, output_gradient):
    """Each output's gradient to the first pixel of its 2x2 window, in row order, that equals its maximum."""
    import tensorflow as tf

    _, height, width, channels = inputs.shape
    windows = tf.reshape(inputs, (-1, height // 2, 2, width // 2, 2, channels))  # window row and column on axes 2, 4
    zero = tf.zeros((), output_gradient.dtype)
    taken = tf.zeros_like(outputs, dtype=tf.bool)  # whether a window's maximum has had its gradient
    rows = []
    for row in range(2):
        pixels = []
        for column in range(2):
            chosen = tf.logical_and(tf.equal(windows[:, :, row, :, column, :], outputs), tf.logical_not(taken))
            taken = tf.logical_or(taken, chosen)
            pixels.append(tf.where(chosen, output_gradient, zero))
        rows.append(tf.stack(pixels, axis=3))  # (batch, height / 2, width / 2, 2, channels)
    return tf.reshape(tf.stack(rows, axis=2), tf.shape(inputs))  # (batch, height / 2, 2, width / 2, 2, channels)

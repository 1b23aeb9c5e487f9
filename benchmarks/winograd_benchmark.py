"""Would Winograd's F(2x2, 3x3) convolution speed up `compact`'s residual block on this CPU? TensorFlow.

    python benchmarks/winograd_benchmark.py                  # batch 256, 20 calls each
    python benchmarks/winograd_benchmark.py --no-torch       # without PyTorch's matrix product and convolution

`compact`'s residual block (two 3x3 convolutions, 7x7, 128 -> 128 channels) does two thirds of its
multiply-adds. Winograd's F(2x2, 3x3) computes each 2x2 block of outputs from a 4x4 window with 16
multiplies per channel pair where the direct convolution needs 36: at 7x7, padded to 8x8, 1.7 times
fewer multiply-adds, spent as 16 matrix products of (batch x 16 windows, 128) by (128, 128), between
transforms of the windows that are only additions (Lavin and Gray, 2016). Written in `keras.ops`, it
would run on every backend. This times it, forward and with both gradients (by automatic
differentiation), against Keras' convolution (with fmnist.tensorflow_gradients' input gradient),
with and without XLA; then the 16 matrix products alone against the direct convolution's forward
pass, in billions of floating-point operations a second, on TensorFlow and PyTorch. Nothing else
should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys

from kernel_benchmark import time_calls  # this folder's; Python puts a script's folder first on its path

SIZE, CHANNELS = 7, 128
TILES = 4  # 2x2 output blocks per axis: 8 outputs, the last row and column cropped
# Lavin and Gray's F(2x2, 3x3) matrices: filter transform G, input transform B^T (as row combinations), output A^T
FILTER_TRANSFORM = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]]


def winograd_convolution(inputs, kernel):
    """3x3 convolution, stride 1, "same" padding, of (batch, 7, 7, C) inputs: Winograd's F(2x2, 3x3) in keras.ops."""
    from keras import ops

    batch, in_channels, out_channels = ops.shape(inputs)[0], kernel.shape[2], kernel.shape[3]
    padded = ops.pad(inputs, [[0, 0], [1, 2], [1, 2], [0, 0]])  # (batch, 10, 10, C): four overlapping 4x4 windows an axis

    def input_transform(values, axis: int):  # B^T along `axis`: (..., 10, ...) -> (..., 4 windows, 4, ...)
        rows = []
        for offset in range(4):
            index = [slice(None)] * len(values.shape)
            index[axis] = slice(offset, offset + 2 * TILES, 2)
            rows.append(values[tuple(index)])
        return ops.stack([rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3]], axis=axis + 1)

    windows = input_transform(input_transform(padded, 1), 3)  # (batch, 4, 4, 4, 4, C): rows' window and point, columns'
    windows = ops.reshape(ops.transpose(windows, (2, 4, 0, 1, 3, 5)), (16, -1, in_channels))
    transform = ops.convert_to_tensor(FILTER_TRANSFORM, dtype=kernel.dtype)
    filters = ops.reshape(ops.einsum("ia,abcf,jb->ijcf", transform, kernel, transform), (16, in_channels, out_channels))
    products = ops.reshape(ops.matmul(windows, filters), (4, 4, batch, TILES, TILES, out_channels))
    rows = ops.stack([products[0] + products[1] + products[2], products[1] - products[2] - products[3]])  # A^T
    blocks = ops.stack([rows[:, 0] + rows[:, 1] + rows[:, 2], rows[:, 1] - rows[:, 2] - rows[:, 3]], axis=1)
    outputs = ops.reshape(ops.transpose(blocks, (2, 3, 0, 4, 1, 5)), (batch, 2 * TILES, 2 * TILES, out_channels))
    return outputs[:, :SIZE, :SIZE, :]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=20, help="timed calls of each, after one warm-up call")
    parser.add_argument("--no-torch", action="store_true", help="leave out PyTorch's kernels")
    arguments = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "tensorflow"

    import tensorflow as tf
    from keras import ops

    from fmnist import tensorflow_gradients

    tensorflow_gradients.install()
    batch, calls = arguments.batch_size, arguments.calls
    random = tf.random.Generator.from_seed(0)
    inputs, output_gradient = random.normal((batch, SIZE, SIZE, CHANNELS)), random.normal((batch, SIZE, SIZE, CHANNELS))
    kernel = tf.Variable(random.normal((3, 3, CHANNELS, CHANNELS)) * 0.03)

    def direct(values, weights):
        return ops.conv(values, weights, padding="same")

    def with_gradients(convolution):
        def step():
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                outputs = convolution(inputs, kernel)
            gradients = tape.gradient(outputs, [inputs, kernel], output_gradients=output_gradient)
            # one value that needs all three, so that tf.function prunes none of them
            return sum(tf.reduce_sum(each) for each in [outputs, *gradients])

        return step

    difference = float(tf.reduce_max(tf.abs(direct(inputs, kernel) - winograd_convolution(inputs, kernel))))
    print(f"largest difference between the two convolutions: {difference:.1e}")
    for name, convolution, xla in [("Keras' convolution", direct, False), ("Winograd", winograd_convolution, False),
                                   ("Winograd, XLA", winograd_convolution, True)]:  # fmt: skip
        forward = time_calls(tf.function(lambda c=convolution: c(inputs, kernel), jit_compile=xla), calls)
        both = time_calls(tf.function(with_gradients(convolution), jit_compile=xla), calls)
        print(f"{name:22s} forward {forward * 1e3:6.1f} ms, forward and gradients {both * 1e3:6.1f} ms")

    rows = batch * TILES * TILES
    windows, filters = random.normal((16, rows, CHANNELS)), random.normal((16, CHANNELS, CHANNELS))
    direct_flops = 2 * batch * SIZE * SIZE * 9 * CHANNELS * CHANNELS
    winograd_flops = 2 * 16 * rows * CHANNELS * CHANNELS
    timings = {"TensorFlow": (time_calls(tf.function(lambda: tf.matmul(windows, filters)), calls),
                              time_calls(tf.function(lambda: direct(inputs, kernel)), calls))}  # fmt: skip
    if not arguments.no_torch:
        timings["PyTorch"] = torch_timings(batch, rows, calls)
    for backend, (product, convolution) in timings.items():
        print(f"{backend}: Winograd's 16 matrix products {product * 1e3:.1f} ms ({winograd_flops / product / 1e9:.0f} "
              f"GFLOP/s), the direct convolution {convolution * 1e3:.1f} ms ({direct_flops / convolution / 1e9:.0f} GFLOP/s)")
    return 0


def torch_timings(batch: int, rows: int, calls: int) -> tuple[float, float]:
    """Seconds per call of PyTorch's 16 matrix products and its channels-last convolution at the same shapes."""
    import torch

    torch.manual_seed(0)
    windows, filters = torch.randn(16, rows, CHANNELS), torch.randn(16, CHANNELS, CHANNELS)
    inputs = torch.randn(batch, CHANNELS, SIZE, SIZE).to(memory_format=torch.channels_last)
    kernel = torch.randn(CHANNELS, CHANNELS, 3, 3).to(memory_format=torch.channels_last)
    return (time_calls(lambda: torch.bmm(windows, filters), calls),
            time_calls(lambda: torch.nn.functional.conv2d(inputs, kernel, padding=1), calls))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

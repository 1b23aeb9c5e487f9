"""TensorFlow's gradient kernels for convolutions and max-pooling against fmnist.tensorflow_gradients'.

    python benchmarks/gradient_benchmark.py                  # compact's shapes, batch 256, 30 calls each
    python benchmarks/gradient_benchmark.py --batch-size 128 --no-torch

For each convolution of `compact` and the network's 28x28 convolutions ("same" padding, stride 1),
times the gradient for the convolution's input three ways: TensorFlow's kernel (Conv2DBackpropInput,
what Keras' TensorFlow backend runs), the forward convolution fmnist.tensorflow_gradients runs instead,
and PyTorch's (channels-last, as Keras' PyTorch backend runs it with fmnist.torch_layout). Then the
same for `compact`'s two 2x2 max-poolings' gradients (MaxPoolGrad; fmnist's, compiled by XLA;
PyTorch's). Each on one batch of random values held in memory, in a `tf.function` for TensorFlow,
and prints the largest difference from TensorFlow's kernel. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys

from kernel_benchmark import time_calls  # this folder's; Python puts a script's folder first on its path

CONVOLUTIONS = [(28, 32, 32), (14, 32, 64), (7, 64, 128), (7, 128, 128)]  # (height and width, in, out)
POOLINGS = [(28, 32), (14, 64)]  # (height and width, channels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=30, help="timed calls of each kernel, after one warm-up call")
    parser.add_argument("--no-torch", action="store_true", help="leave out PyTorch's kernels")
    arguments = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "tensorflow"

    import tensorflow as tf

    batch, calls = arguments.batch_size, arguments.calls
    torch_kernels = None if arguments.no_torch else TorchKernels(batch)
    random = tf.random.Generator.from_seed(0)
    for size, in_channels, out_channels in CONVOLUTIONS:
        inputs, kernel = random.normal((batch, size, size, in_channels)), random.normal((3, 3, in_channels, out_channels))
        row, difference = convolution_input_gradients(inputs, kernel, random.normal((batch, size, size, out_channels)), calls)
        if torch_kernels:
            row.append(torch_kernels.convolution_input_gradient(size, in_channels, out_channels, calls))
        print_row(f"conv input gradient {size}x{size}, {in_channels} -> {out_channels}", row, difference)
    for size, channels in POOLINGS:
        row, difference = max_pool_gradients(tf.nn.relu(random.normal((batch, size, size, channels))), random, calls)
        if torch_kernels:
            row.append(torch_kernels.max_pool_gradient(size, channels, calls))
        print_row(f"2x2 max-pool gradient {size}x{size}, {channels}", row, difference)
    return 0


def convolution_input_gradients(inputs, kernel, output_gradient, calls: int) -> tuple[list[float], float]:
    """Seconds per call of TensorFlow's input gradient and fmnist's, and their largest difference."""
    import tensorflow as tf

    from fmnist import tensorflow_gradients

    def fmnists():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tensorflow_gradients.same_convolution(inputs, kernel)
        return tape.gradient(outputs, inputs, output_gradients=output_gradient)

    def tensorflows():
        return tf.raw_ops.Conv2DBackpropInput(input_sizes=inputs.shape, filter=kernel, out_backprop=output_gradient,
                                              strides=[1, 1, 1, 1], padding="SAME")  # fmt: skip

    fmnists, tensorflows = tf.function(fmnists), tf.function(tensorflows)
    difference = float(tf.reduce_max(tf.abs(tensorflows() - fmnists())))
    return [time_calls(tensorflows, calls), time_calls(fmnists, calls)], difference


def max_pool_gradients(inputs, random, calls: int) -> tuple[list[float], float]:
    """Seconds per call of TensorFlow's 2x2 max-pool gradient and fmnist's, and their largest difference."""
    import tensorflow as tf

    from fmnist import tensorflow_gradients

    outputs = tf.nn.max_pool2d(inputs, 2, 2, "VALID")
    output_gradient = random.normal(outputs.shape)

    def fmnists():
        return tensorflow_gradients.compiled_max_pool_gradient()(inputs, outputs, output_gradient)

    @tf.function
    def tensorflows():
        return tf.raw_ops.MaxPoolGrad(orig_input=inputs, orig_output=outputs, grad=output_gradient, ksize=[1, 2, 2, 1],
                                      strides=[1, 2, 2, 1], padding="VALID")  # fmt: skip

    difference = float(tf.reduce_max(tf.abs(tensorflows() - fmnists())))
    return [time_calls(tensorflows, calls), time_calls(fmnists, calls)], difference


def print_row(name: str, milliseconds: list[float], difference: float) -> None:
    names = ["TensorFlow's kernel", "fmnist's", "PyTorch's"]
    timings = ", ".join(f"{label} {each * 1e3:.2f} ms" for label, each in zip(names, milliseconds, strict=False))
    print(f"{name:42s} {timings} (largest difference from TensorFlow's: {difference:.1e})")


class TorchKernels:
    """PyTorch's gradient kernels on channels-last tensors, as Keras' PyTorch backend runs them (synchronously on a CPU)."""

    def __init__(self, batch: int):
        import torch

        self.torch, self.batch = torch, batch
        torch.manual_seed(0)

    def convolution_input_gradient(self, size: int, in_channels: int, out_channels: int, calls: int) -> float:
        torch, channels_last = self.torch, self.torch.channels_last
        inputs = torch.randn(self.batch, in_channels, size, size).to(memory_format=channels_last)
        kernel = torch.randn(out_channels, in_channels, 3, 3).to(memory_format=channels_last)
        output_gradient = torch.randn(self.batch, out_channels, size, size).to(memory_format=channels_last)
        input_only = [True, False, False]  # which gradients: input, kernel, bias
        return time_calls(lambda: torch.ops.aten.convolution_backward(
            output_gradient, inputs, kernel, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, input_only)[0], calls)  # fmt: skip

    def max_pool_gradient(self, size: int, channels: int, calls: int) -> float:
        torch = self.torch
        inputs = torch.relu(torch.randn(self.batch, channels, size, size)).to(memory_format=torch.channels_last)
        outputs, indices = torch.nn.functional.max_pool2d(inputs, 2, return_indices=True)
        output_gradient = torch.randn_like(outputs)
        return time_calls(lambda: torch.ops.aten.max_pool2d_with_indices_backward(
            output_gradient, inputs, [2, 2], [2, 2], [0, 0], [1, 1], False, indices), calls)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

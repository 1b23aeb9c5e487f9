"""Where a training step of the `baseline` network spends its time: TensorFlow's kernels one by one.

    python benchmarks/kernel_benchmark.py                  # batch 128, 100 calls each
    python benchmarks/kernel_benchmark.py --batch-size 64

Times each convolution kernel a training step of the spec's CNN runs (forward, and the gradients
for the filters and, for the second convolution, for its input), the first block's ReLU and
max-pool with their gradients, and the whole step (forward, gradients, Adam) in one `tf.function`
on one batch held in memory, so no input pipeline or `fit` overhead is counted. It answers
whether a faster input pipeline or loop could reach a throughput target: it cannot reach more
than the kernels allow. TensorFlow only; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--calls", type=int, default=100, help="timed calls of each kernel, after one warm-up call")
    arguments = parser.parse_args()
    os.environ["KERAS_BACKEND"] = "tensorflow"

    import keras
    import tensorflow as tf

    from fmnist.models import build_model

    batch = arguments.batch_size
    random = tf.random.Generator.from_seed(0)
    stride, valid = [1, 1, 1, 1], "VALID"
    images = random.uniform((batch, 28, 28, 1))
    pooled = random.uniform((batch, 13, 13, 32))  # the second convolution's input
    first_filters, second_filters = random.normal((3, 3, 1, 32)), random.normal((3, 3, 32, 64))
    first_output, second_output = random.normal((batch, 26, 26, 32)), random.normal((batch, 11, 11, 64))

    def relu_pool_both_ways(features):
        with tf.GradientTape() as tape:
            tape.watch(features)
            pooled_output = tf.nn.max_pool2d(tf.nn.relu(features), 2, 2, valid)
        return tape.gradient(pooled_output, features, output_gradients=tf.ones_like(pooled_output))

    model = build_model("baseline")
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    raw_images = tf.cast(random.uniform((batch, 28, 28), maxval=256, dtype=tf.int32), tf.uint8)
    labels = random.uniform((batch,), maxval=10, dtype=tf.int32)

    def train_step():
        with tf.GradientTape() as tape:
            loss = loss_function(labels, model(raw_images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return loss

    kernels = {
        "conv 1 forward (28x28x1 -> 26x26x32)": lambda: tf.nn.conv2d(images, first_filters, stride, valid),
        "conv 1 filter gradient": lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=images, filter_sizes=[3, 3, 1, 32], out_backprop=first_output, strides=stride, padding=valid),
        "conv 2 forward (13x13x32 -> 11x11x64)": lambda: tf.nn.conv2d(pooled, second_filters, stride, valid),
        "conv 2 filter gradient": lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=pooled, filter_sizes=[3, 3, 32, 64], out_backprop=second_output, strides=stride, padding=valid),
        "conv 2 input gradient": lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=[batch, 13, 13, 32], filter=second_filters, out_backprop=second_output, strides=stride,
            padding=valid),
        "ReLU + max-pool 1, forward and gradient": lambda: relu_pool_both_ways(first_output),
        "whole training step (forward, gradients, Adam)": train_step,
    }  # fmt: skip
    convolutions = 0.0
    for name, kernel in kernels.items():
        seconds = time_calls(tf.function(kernel), arguments.calls)
        convolutions += seconds if name.startswith("conv") else 0.0
        print(f"{name:48s} {seconds * 1e3:7.2f} ms  ({batch / seconds:8,.0f} images/s)")
    print(f"{'the five convolution kernels together':48s} {convolutions * 1e3:7.2f} ms  ({batch / convolutions:8,.0f} images/s)")
    return 0


def time_calls(function, calls: int) -> float:
    """Seconds per call, after a first call that traces; waits for the last result before stopping the clock."""
    function().numpy()
    started = time.perf_counter()
    for _ in range(calls):
        result = function()
    result.numpy()
    return (time.perf_counter() - started) / calls


if __name__ == "__main__":
    sys.exit(main())

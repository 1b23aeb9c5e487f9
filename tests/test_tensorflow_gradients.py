"""fmnist.tensorflow_gradients: TensorFlow's outputs and gradients, without its slow gradient kernels."""

import keras
import numpy as np
import pytest

import fmnist.models  # noqa: F401  (importing the models installs fmnist's gradients)
from fmnist import tensorflow_gradients

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow backend module")


def outputs_gradients_and_kernels(layer, inputs):
    """The layer's outputs, the gradients for its input (and kernel), and the kernels the traced step runs."""
    import tensorflow as tf

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = layer(images)
            # a weight per output, so that each output's gradient differs
            weights = tf.reshape(tf.sin(tf.range(tf.size(outputs), dtype=tf.float32)), tf.shape(outputs))
            loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * weights)
        return (outputs, *tape.gradient(loss, [images, *layer.trainable_weights[:1]]))

    inputs = tf.convert_to_tensor(inputs)
    kinds = {operation.type for operation in step.get_concrete_function(inputs).graph.get_operations()}
    return [np.asarray(tf.cast(tensor, tf.float32)) for tensor in step(inputs)], kinds


def with_keras_own(function):
    """function() with Keras' own convolution and pooling, fmnist's again afterwards."""
    tensorflow_gradients.uninstall()
    try:
        return function()
    finally:
        assert tensorflow_gradients.install()


@pytest.mark.parametrize("kernel_size", [3, (5, 3), 1])
def test_same_convolutions_match_tensorflow_without_its_input_gradient_kernel(kernel_size):
    from keras.src.backend.tensorflow import nn

    assert nn.conv is tensorflow_gradients.conv, "not installed"
    inputs = np.random.default_rng(0).normal(size=(4, 9, 7, 6)).astype("float32")
    layer = keras.layers.Conv2D(5, kernel_size, padding="same")
    layer.build(inputs.shape)
    ours, our_kernels = outputs_gradients_and_kernels(layer, inputs)
    theirs, their_kernels = with_keras_own(lambda: outputs_gradients_and_kernels(layer, inputs))
    assert "Conv2DBackpropInput" not in our_kernels and "Conv2DBackpropInput" in their_kernels
    for name, mine, tensorflows in zip(["outputs", "input gradient", "kernel gradient"], ours, theirs, strict=True):
        np.testing.assert_allclose(mine, tensorflows, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_max_pooling_sends_each_gradient_to_the_pixel_tensorflow_does(dtype):
    from keras.src.backend.tensorflow import nn

    assert nn.max_pool is tensorflow_gradients.max_pool, "not installed"
    # after a ReLU and rounded to quarters, so that many windows hold their maximum twice or more
    inputs = np.maximum(np.round(np.random.default_rng(1).normal(size=(3, 8, 6, 4)) * 4) / 4, 0).astype("float32")
    layer = keras.layers.MaxPooling2D(2, dtype=dtype)
    ours, our_kernels = outputs_gradients_and_kernels(layer, inputs)
    theirs, their_kernels = with_keras_own(lambda: outputs_gradients_and_kernels(layer, inputs))
    assert "MaxPoolGrad" not in our_kernels and "MaxPoolGrad" in their_kernels
    assert (inputs.reshape(3, 4, 2, 3, 2, 4) == 0).all(axis=(2, 4)).any(), "no window of ties"
    np.testing.assert_array_equal(ours[1], theirs[1])
    np.testing.assert_array_equal(ours[0], theirs[0])


@pytest.mark.parametrize("options", [{"padding": "valid"}, {"padding": "same", "strides": 2},
                                     {"padding": "same", "dilation_rate": 2}, {"padding": "same", "kernel_size": 2}])  # fmt: skip
def test_other_convolutions_are_left_to_tensorflow(options):
    inputs = np.random.default_rng(2).normal(size=(2, 8, 8, 3)).astype("float32")
    layer = keras.layers.Conv2D(4, **{"kernel_size": 3, **options})
    layer.build(inputs.shape)
    _, kinds = outputs_gradients_and_kernels(layer, inputs)
    assert "Conv2DBackpropInput" in kinds


@pytest.mark.parametrize("shape, options", [((2, 7, 6, 3), {}), ((2, 8, 8, 3), {"pool_size": 3}),
                                            ((2, 8, 8, 3), {"strides": 1}), ((2, 8, 8, 3), {"padding": "same"})])  # fmt: skip
def test_other_poolings_are_left_to_tensorflow(shape, options):
    inputs = np.random.default_rng(3).normal(size=shape).astype("float32")
    _, kinds = outputs_gradients_and_kernels(keras.layers.MaxPooling2D(**{"pool_size": 2, **options}), inputs)
    assert "MaxPoolGrad" in kinds


def test_bfloat16_convolutions_keep_their_dtype():
    inputs = np.random.default_rng(4).normal(size=(2, 8, 8, 3)).astype("float32")
    layer = keras.layers.Conv2D(4, 3, padding="same", dtype="mixed_bfloat16")
    assert keras.backend.standardize_dtype(layer(inputs).dtype) == "bfloat16"
    (_, input_gradient, kernel_gradient), kinds = outputs_gradients_and_kernels(layer, inputs)
    assert "Conv2DBackpropInput" not in kinds
    assert np.isfinite(input_gradient).all() and np.isfinite(kernel_gradient).all() and np.abs(input_gradient).sum() > 0

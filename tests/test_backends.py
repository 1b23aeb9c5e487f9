"""The same code on the JAX and PyTorch backends: train, evaluate and predict through the real CLI."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from conftest import run_cli

pytestmark = pytest.mark.slow


def check_run_and_predict(backend: str, run_dir, tmp_path, dataset):
    """The run says which backend trained it and learned; `predict` on that backend classifies a PNG."""
    assert json.loads((run_dir / "run_info.json").read_text())["versions"]["backend"] == backend
    assert json.loads((run_dir / "metrics.json").read_text())["test_accuracy"] > 0.5  # it learned
    Image.fromarray(dataset.x_test[0]).save(tmp_path / "image.png")
    entries = json.loads(run_cli("--backend", backend, "predict", str(run_dir), str(tmp_path / "image.png"), "--json").stdout)
    assert entries[0]["class_name"] in dataset.class_names


def test_jax_backend_smoke(tmp_path, real_data_dir, dataset):
    import jax  # noqa: F401  (a test dependency: a missing install must fail here, not skip)

    run_dir = tmp_path / "jax-run"
    options = ["--epochs", "1", "--train-subset", "3000", "--translate", "1", "--flip", "--cutmix", "0.3",
               "--label-smoothing", "0.1", "--schedule", "cosine", "--warmup-fraction", "0.1", "--steps-per-execution", "4",
               "--drop-remainder", "--no-report"]  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"}
    environment["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    # JAX keeps only programs that took a second or more to compile, and this small one may take less (JAX 0.4.30 here)
    environment["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    run_cli("--backend", "jax", "train", "--run-dir", str(run_dir), "--data-dir", str(real_data_dir), *options,
            env=environment)  # fmt: skip
    # the training step's compiled program is kept for the next run; it was compiled once, as every batch was full
    # (2,700 images at batch 32 leave 12 over, whose smaller batch a second program would have trained on)
    compiled = [path for path in (tmp_path / "cache" / "fmnist" / "jax").iterdir() if path.name.startswith("jit_train_step")]
    assert len(compiled) == 1, compiled
    check_run_and_predict("jax", run_dir, tmp_path, dataset)


def test_torch_backend_smoke(tmp_path, real_data_dir, dataset):
    import torch  # noqa: F401  (a test dependency, as jax above)

    run_dir = tmp_path / "torch-run"
    options = ["--model", "compact", "--epochs", "1", "--train-subset", "2000", "--optimizer", "muon",
               "--learning-rate", "0.02", "--flip", "--cutmix", "0.3", "--tta", "--no-report"]  # fmt: skip
    run_cli("--backend", "torch", "train", "--run-dir", str(run_dir), "--data-dir", str(real_data_dir), *options)
    check_run_and_predict("torch", run_dir, tmp_path, dataset)


# Runs on the PyTorch backend in its own process: the tests' process has imported Keras on TensorFlow.
LAYOUT_CHECK = textwrap.dedent("""
    import keras, numpy, torch
    from keras.src.backend.torch import nn
    keras_transpose = nn._transpose_spatial_inputs
    from fmnist import models, torch_layout  # importing the models installs fmnist's transpose
    assert nn._transpose_spatial_inputs is torch_layout.transpose_keeping_memory_format, "not installed"

    activations = torch.rand(8, 14, 14, 32)  # channels-last, contiguous, as Keras keeps them
    assert nn._transpose_spatial_inputs(activations).data_ptr() == activations.data_ptr(), "the input was copied"
    layers = [keras.layers.Conv2D(16, 3, padding="same"), keras.layers.MaxPooling2D(2), keras.layers.Conv2D(8, 3)]
    network = keras.Sequential([keras.Input((14, 14, 32)), *layers])

    def outputs_and_gradients():
        inputs = activations.clone().requires_grad_(True)
        outputs = network(inputs)
        outputs.square().sum().backward()
        return [tensor.detach().numpy().copy() for tensor in (outputs, inputs.grad)]

    fmnist_results = outputs_and_gradients()
    torch_layout.uninstall()
    assert nn._transpose_spatial_inputs is keras_transpose
    for ours, keras_own in zip(fmnist_results, outputs_and_gradients()):
        numpy.testing.assert_allclose(ours, keras_own, rtol=1e-5, atol=1e-5)
    print("same results, no copy")
""")


def run_on(backend: str, script: str) -> subprocess.CompletedProcess:
    """Run a Python script in its own process on a backend; fail with the end of its stderr."""
    environment = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_torch_convolutions_take_keras_layout_without_a_copy():
    assert "same results, no copy" in run_on("torch", LAYOUT_CHECK).stdout


# fmnist's BatchNormalization trains with PyTorch's fused kernel there, and computes what Keras' layer computes.
BATCHNORM_CHECK = textwrap.dedent("""
    import keras, numpy, torch
    from fmnist.batchnorm import BatchNormalization
    generator = numpy.random.default_rng(0)

    def autograd_nodes(tensor):
        found, waiting = set(), [tensor.grad_fn]
        while waiting:
            node = waiting.pop()
            if node is not None and node.name() not in found:
                found.add(node.name())
                waiting.extend(next_node for next_node, _ in node.next_functions)
        return found

    def train_step(layer, inputs, upstream, **options):  # outputs, gradients and moving statistics of one call
        inputs = torch.as_tensor(inputs).clone().requires_grad_(True)
        outputs = layer(inputs, training=True, **options)
        (outputs * torch.tensor(upstream)).sum().backward()
        results = [outputs, inputs.grad, layer.gamma.value.grad, layer.beta.value.grad, layer.moving_mean, layer.moving_variance]
        return [keras.ops.convert_to_numpy(value).copy() for value in results], autograd_nodes(outputs)

    # channels-last images with an offset (as a convolution of positive pixels gives), and dense features
    for shape in [(32, 7, 7, 16), (64, 12)]:
        inputs = generator.normal(2.0, 0.5, shape).astype("float32")
        upstream = generator.normal(size=shape).astype("float32")
        ours, keras_own = BatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
        for layer in (ours, keras_own):
            layer.build(shape)
            layer.set_weights([numpy.linspace(0.5, 1.5, shape[-1]), numpy.linspace(-1, 1, shape[-1]),
                               numpy.full(shape[-1], 0.5), numpy.full(shape[-1], 2.0)])
        our_results, our_nodes = train_step(ours, inputs, upstream)
        keras_results, keras_nodes = train_step(keras_own, inputs, upstream)
        assert "NativeBatchNormBackward0" in our_nodes, our_nodes  # PyTorch's kernel, not Keras' composition
        assert "NativeBatchNormBackward0" not in keras_nodes, keras_nodes
        for name, mine, theirs in zip(["outputs", "input gradient", "gamma gradient", "beta gradient", "moving mean",
                                       "moving variance"], our_results, keras_results):
            numpy.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-4, err_msg=name)
        # inference normalises with the moving statistics, as Keras' layer does
        numpy.testing.assert_allclose(keras.ops.convert_to_numpy(ours(inputs, training=False)),
                                      keras.ops.convert_to_numpy(keras_own(inputs, training=False)), rtol=1e-5, atol=1e-5)

    # what the fused kernel lacks goes through Keras' own computation: a mask
    masked = BatchNormalization()
    mask = torch.tensor(generator.random((32, 7, 7)) > 0.3)
    assert "NativeBatchNormBackward0" not in train_step(masked, inputs=generator.normal(size=(32, 7, 7, 16)).astype("float32"),
                                                        upstream=numpy.ones((32, 7, 7, 16), "float32"), mask=mask)[1]

    # mixed precision: the kernel takes the bfloat16 activations without casting them to float32 and back (Keras'
    # layer does, and so did this one), and computes what Keras' layer computes up to bfloat16's rounding
    shape = (32, 7, 7, 16)
    inputs = torch.tensor(generator.normal(2.0, 0.5, shape), dtype=torch.bfloat16)
    upstream = generator.normal(size=shape).astype("float32")
    ours, keras_own = BatchNormalization(dtype="mixed_bfloat16"), keras.layers.BatchNormalization(dtype="mixed_bfloat16")
    for layer in (ours, keras_own):
        layer.build(shape)
        layer.set_weights([numpy.linspace(0.5, 1.5, 16), numpy.linspace(-1, 1, 16), numpy.zeros(16), numpy.ones(16)])
    our_results, our_nodes = train_step(ours, inputs, upstream)
    keras_results, keras_nodes = train_step(keras_own, inputs, upstream)
    assert "NativeBatchNormBackward0" in our_nodes and "ToCopyBackward0" not in our_nodes, our_nodes
    assert "ToCopyBackward0" in keras_nodes, keras_nodes
    assert our_results[0].dtype == keras_results[0].dtype == "bfloat16" and our_results[1].dtype == "bfloat16"
    for name, mine, theirs, tolerance in zip(["outputs", "input gradient", "gamma gradient", "beta gradient",
                                              "moving mean", "moving variance"], our_results, keras_results,
                                             [3e-2, 3e-2, 1e-2, 1e-2, 1e-5, 1e-5]):  # bfloat16 keeps 8 bits
        numpy.testing.assert_allclose(numpy.float32(mine), numpy.float32(theirs), rtol=tolerance, atol=tolerance, err_msg=name)

    # a saved model keeps fmnist's layer, so a resumed run trains as fast as it started
    from fmnist.models import build_model
    import pathlib, tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = pathlib.Path(folder) / "compact.keras"
        build_model("compact").save(path)
        reloaded = keras.saving.load_model(path)
    assert any(isinstance(layer, BatchNormalization) for layer in reloaded.layers)
    print("fused and equal")
""")


def test_batchnorm_trains_with_pytorch_s_fused_kernel_and_computes_what_keras_does():
    assert "fused and equal" in run_on("torch", BATCHNORM_CHECK).stdout


# On TensorFlow it trains images with TensorFlow's fused kernel (FusedBatchNormV3), and computes what Keras' layer does.
TENSORFLOW_BATCHNORM_CHECK = textwrap.dedent("""
    import keras, numpy, tensorflow as tf
    from fmnist.batchnorm import BatchNormalization
    generator = numpy.random.default_rng(0)

    def train_step(layer, inputs, upstream):  # outputs, gradients, moving statistics, and the ops of one traced call
        @tf.function
        def step(inputs):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                outputs = layer(inputs, training=True)
                loss = tf.reduce_sum(tf.cast(outputs, "float32") * upstream)
            return [outputs, *tape.gradient(loss, [inputs, layer.gamma.value, layer.beta.value])]
        results = step(inputs)
        ops = {op.type for op in step.get_concrete_function(inputs).graph.get_operations()}
        values = [*results, layer.moving_mean, layer.moving_variance]
        return [numpy.float32(keras.ops.convert_to_numpy(value)) for value in values], results[0].dtype, ops

    # images in float32 and in bfloat16 (mixed precision: the activations go in and out as they are), dense features
    for shape, policy in [((32, 7, 7, 16), "float32"), ((32, 7, 7, 16), "mixed_bfloat16"), ((64, 12), "float32")]:
        inputs = tf.constant(generator.normal(2.0, 0.5, shape), "bfloat16" if policy != "float32" else "float32")
        upstream = generator.normal(size=shape).astype("float32")
        ours = BatchNormalization(momentum=0.9, dtype=policy)
        keras_own = keras.layers.BatchNormalization(momentum=0.9, dtype=policy)
        for layer in (ours, keras_own):
            layer.build(shape)
            layer.set_weights([numpy.linspace(0.5, 1.5, shape[-1]), numpy.linspace(-1, 1, shape[-1]),
                               numpy.full(shape[-1], 0.5), numpy.full(shape[-1], 2.0)])
        our_results, our_dtype, our_ops = train_step(ours, inputs, upstream)
        keras_results, keras_dtype, keras_ops = train_step(keras_own, inputs, upstream)
        assert ("FusedBatchNormV3" in our_ops) == (len(shape) == 4), our_ops  # images only: the kernel wants 4 axes
        assert "FusedBatchNormV3" not in keras_ops and our_dtype == keras_dtype == inputs.dtype
        tolerance = 1e-4 if policy == "float32" else 3e-2  # bfloat16 keeps 8 bits
        for name, mine, theirs in zip(["outputs", "input gradient", "gamma gradient", "beta gradient", "moving mean",
                                       "moving variance"], our_results, keras_results):
            numpy.testing.assert_allclose(mine, theirs, rtol=tolerance, atol=tolerance, err_msg=f"{name}, {policy}")
    print("fused and equal")
""")


def test_batchnorm_trains_with_tensorflow_s_fused_kernel_and_computes_what_keras_does():
    assert "fused and equal" in run_on("tensorflow", TENSORFLOW_BATCHNORM_CHECK).stdout


# Inference records no operations for a backward pass on PyTorch (it did, and ran 25-45% slower for it).
NO_GRADIENT_CHECK = textwrap.dedent("""
    import keras, numpy, torch
    from fmnist.averaging import recompute_batchnorm_statistics
    from fmnist.evaluate import predict_logits
    recording = []

    class Probe(keras.layers.Layer):
        def call(self, inputs):
            recording.append(torch.is_grad_enabled())
            return inputs

    model = keras.Sequential([keras.Input((28, 28)), Probe(), keras.layers.Flatten(), keras.layers.Dense(10)])
    recording.clear()  # building the model called the layer too
    logits = predict_logits(model, numpy.zeros((3, 28, 28), numpy.float32), tta=True)
    assert logits.shape == (3, 10) and recording and not any(recording), recording
    assert torch.is_grad_enabled()  # and training records again afterwards

    # nor does recomputing BatchNorm's statistics for averaged weights, which runs the model in training mode
    normalizing = keras.Sequential([keras.Input((28, 28)), Probe(), keras.layers.BatchNormalization()])
    recording.clear()
    recompute_batchnorm_statistics(normalizing, numpy.full((3, 28, 28), 5.0, numpy.float32))
    assert recording and not any(recording), recording
    numpy.testing.assert_allclose(keras.ops.convert_to_numpy(normalizing.layers[-1].moving_mean), 5.0)
    print("no gradients recorded")
""")


def test_inference_on_the_torch_backend_records_no_gradients():
    assert "no gradients recorded" in run_on("torch", NO_GRADIENT_CHECK).stdout


# On JAX, batches are padded up to a power of two (XLA compiles a program per batch size) and cut back.
JAX_PADDING_CHECK = textwrap.dedent("""
    import keras, numpy
    from fmnist.evaluate import predict_logits
    compiled_sizes = set()

    class Probe(keras.layers.Layer):  # its Python runs once per program XLA compiles, with that program's batch size
        def call(self, inputs):
            compiled_sizes.add(inputs.shape[0])
            return inputs

    model = keras.Sequential([keras.Input((28, 28)), Probe(), keras.layers.Flatten(), keras.layers.Dense(10)])
    compiled_sizes.clear()
    images = numpy.random.default_rng(0).integers(0, 256, (45, 28, 28), dtype=numpy.uint8)
    one_by_one = numpy.concatenate([predict_logits(model, images[index : index + 1]) for index in range(45)])
    in_batches = predict_logits(model, images, batch_size=20)  # 20, 20 and 5 images: padded to 32, 32 and 8
    assert in_batches.shape == (45, 10)
    # XLA sums in another order for each batch size (on an AVX-512 CPU, up to 7e-4 apart on logits of up to 490,
    # which raw pixels give), so the tolerance follows the logits' scale; another image's logits are off by units
    numpy.testing.assert_allclose(in_batches, one_by_one, rtol=1e-5, atol=1e-4 * numpy.abs(one_by_one).max())
    assert compiled_sizes == {1, 8, 32}, compiled_sizes
    print("padded batches give each image its own logits")
""")


def test_inference_on_the_jax_backend_pads_batches_and_keeps_each_image_s_logits():
    assert "its own logits" in run_on("jax", JAX_PADDING_CHECK).stdout


# torch.compile on Keras' layers: PyTorch 2.13 marked the shapes dynamic and its inductor failed ("cannot determine
# truth value of Relational") on the first fit; fmnist.recipe.jit_compile keeps them static.
JIT_CHECK = textwrap.dedent("""
    import keras, numpy, torch._dynamo
    from fmnist.models import build_model
    from fmnist.recipe import jit_compile
    keras.utils.set_random_seed(0)
    model = build_model("tiny")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), jit_compile=jit_compile("on"),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    generator = numpy.random.default_rng(0)
    images, labels = generator.integers(0, 256, (64, 28, 28, 1), dtype=numpy.uint8), generator.integers(0, 10, 64)
    losses = model.fit(images, labels, batch_size=32, epochs=3, verbose=0).history["loss"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    assert losses[-1] < losses[0], losses
    print("compiled and trained")
""")


def test_jit_compile_on_the_torch_backend_compiles_and_trains():
    assert "compiled and trained" in run_on("torch", JIT_CHECK).stdout


# A time budget's revised plan reaches the training step, which TensorFlow and JAX traced with the first plan's
# schedule: after it ends the schedule where training stands (a rate of 0), plain SGD leaves the weights alone.
# TensorFlow's traced step reads the schedule's length from a variable: it must see the new one without a retrace.
REVISED_SCHEDULE_CHECK = textwrap.dedent("""
    import weakref
    import keras, numpy
    from fmnist import recipe
    from fmnist.config import TrainConfig
    from fmnist.train import build_and_compile
    config = TrainConfig(model="tiny", optimizer="sgd", momentum=0.0, learning_rate=0.1, schedule="onecycle", epochs=10)
    model = build_and_compile(config, num_classes=10, steps_per_epoch=100)  # a one-cycle of 1,000 steps
    generator = numpy.random.default_rng(0)
    images, labels = generator.integers(0, 256, (64, 28, 28), dtype=numpy.uint8), generator.integers(0, 10, 64)

    def weights():
        return [keras.ops.convert_to_numpy(variable).copy() for variable in model.trainable_variables]

    def moved(before):
        return max(float(numpy.abs(old - new).max()) for old, new in zip(before, weights()))

    before = weights()
    model.fit(images, labels, batch_size=32, epochs=1, verbose=0)  # 2 steps, traced with 1,000 steps to go
    assert moved(before) > 0, "the first steps did not train"
    # a weak reference: JAX traces the step again only once the old one is gone (its cache is keyed on the method)
    traced = weakref.ref(model.train_function)
    retrace = recipe.revise_schedule(model.optimizer, total_steps=2)
    assert retrace == (keras.backend.backend() != "tensorflow"), retrace
    assert model.optimizer.get_config()["learning_rate"]["config"]["total_steps"] == 2
    assert not recipe.revise_schedule(model.optimizer, total_steps=2)  # already so
    if retrace:
        model.make_train_function(force=True)
    before = weights()
    model.fit(images, labels, batch_size=32, epochs=1, verbose=0)
    assert moved(before) == 0, f"the weights moved by {moved(before)} after the schedule's end"
    assert retrace or model.train_function is traced(), "the training step was traced again"
    print("the revised schedule ended training")
""")


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_a_revised_schedule_reaches_the_traced_training_step(backend):
    assert "the revised schedule ended training" in run_on(backend, REVISED_SCHEDULE_CHECK).stdout

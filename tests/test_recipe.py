"""The training recipe: schedules, label smoothing, augmentation, early stopping, TTA, EMA, mixed precision."""

import dataclasses

import numpy as np
import pytest

from conftest import as_numpy
from fmnist import inputs
from fmnist.config import TrainConfig
from fmnist.evaluate import predict_logits, softmax
from fmnist.models import augmentation_layers, build_model
from fmnist.recipe import SmoothedSparseCrossentropy, WarmupSchedule, build_loss, build_optimizer


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_warmup_schedule_rises_peaks_and_decays_to_zero(shape):
    schedule = WarmupSchedule(peak=0.1, total_steps=100, warmup_steps=20, shape=shape)
    rates = [float(schedule(step)) for step in range(101)]
    assert rates[0] == pytest.approx(0.01)  # starts at a tenth of the peak
    assert max(rates) == pytest.approx(0.1) and rates.index(max(rates)) == 20
    assert all(a <= b for a, b in zip(rates[:20], rates[1:21], strict=True))
    assert all(a >= b for a, b in zip(rates[20:-1], rates[21:], strict=True))
    assert rates[-1] == pytest.approx(0.0, abs=1e-7)
    assert rates[60] == pytest.approx(0.05, abs=1e-6)  # half-way down, the triangle and the cosine agree


def test_schedule_survives_serialisation():
    import keras

    optimizer = build_optimizer(TrainConfig(optimizer="sgd", schedule="onecycle", warmup_fraction=0.25, epochs=2), 50)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert float(restored.learning_rate) == pytest.approx(float(optimizer.learning_rate))
    assert restored.get_config()["learning_rate"] == optimizer.get_config()["learning_rate"]
    assert isinstance(restored, keras.optimizers.SGD) and restored.nesterov


def test_smoothed_loss_matches_the_formula_and_the_plain_loss_at_zero():
    import keras

    logits = np.random.default_rng(0).normal(size=(6, 10)).astype("float32")
    labels = np.array([0, 3, 9, 2, 2, 7])
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert float(SmoothedSparseCrossentropy(0.0)(labels, logits)) == pytest.approx(float(plain), rel=1e-5)
    log_probabilities = np.log(softmax(logits.astype(np.float64)))
    targets = np.full((6, 10), 0.1 / 10)
    targets[np.arange(6), labels] += 0.9
    expected = -(targets * log_probabilities).sum(axis=1).mean()
    assert float(build_loss(TrainConfig(label_smoothing=0.1))(labels, logits)) == pytest.approx(expected, rel=1e-5)


def test_augmentation_acts_in_training_only():
    images = np.random.default_rng(0).integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    model = build_model("tiny", augmentation=augmentation_layers(translate=3, flip=True, erase=1.0))
    plain = build_model("tiny")
    plain.set_weights(model.get_weights())
    np.testing.assert_allclose(as_numpy(model(images, training=False)), as_numpy(plain(images, training=False)), atol=1e-6)
    assert not np.allclose(as_numpy(model(images, training=True)), as_numpy(plain(images, training=True)), atol=1e-4)


def test_flip_tta_averages_an_image_and_its_mirror():
    model = build_model("tiny")
    images = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    expected = (softmax(predict_logits(model, images)) + softmax(predict_logits(model, images[:, :, ::-1].copy()))) / 2
    np.testing.assert_allclose(softmax(predict_logits(model, images, tta=True)), expected, atol=1e-9)


def test_shift_tta_averages_every_view_that_shifts_of_a_pixel_and_flips_train_on():
    from fmnist.evaluate import tta_views, view_count

    model = build_model("tiny")
    images = np.random.default_rng(4).integers(1, 256, size=(5, 28, 28), dtype=np.uint8)  # no zeros, so fill shows
    views = tta_views(images, 1)
    np.testing.assert_array_equal(views[0], images)
    np.testing.assert_array_equal(views[1], images[:, :, ::-1])
    expected_views = [np.stack([shift_image(image, dy, dx)[:, ::-1] if flip else shift_image(image, dy, dx)
                                for image in images])  # the shifts RandomShift(1) draws from (test below)
                      for dy in (-1, 0, 1) for dx in (-1, 0, 1) for flip in (False, True)]  # fmt: skip
    assert len(views) == 18 and all(any(np.array_equal(view, each) for each in views) for view in expected_views)
    expected = np.mean([softmax(predict_logits(model, view)) for view in expected_views], axis=0)
    np.testing.assert_allclose(softmax(predict_logits(model, images, tta=True, tta_shift=1)), expected, atol=1e-9)
    assert len(tta_views(images, 2)) == 50 and len(tta_views(images)) == 2
    assert [view_count(True, 1), view_count(True, 2), view_count(True), view_count()] == [18, 50, 2, 1]


def test_early_stopping_keeps_the_best_epoch(dataset, tmp_path):
    from fmnist.runs import read_csv
    from fmnist.train import train

    # a learning rate far too high makes validation accuracy stall or fall after the first epochs
    config = TrainConfig(model="tiny", epochs=6, train_subset=1000, learning_rate=0.5, early_stopping_patience=1)
    metrics = train(config, tmp_path, data=dataset, log=lambda *a, **k: None, report=False)
    history = read_csv(tmp_path / "history.csv")
    best = max(range(len(history)), key=lambda i: history[i]["val_accuracy"])
    assert metrics["best_epoch"] == best + 1
    assert metrics["epochs"] == len(history) and len(history) - (best + 1) <= 1
    assert metrics["val_accuracy"] == pytest.approx(history[best]["val_accuracy"], abs=1e-6)


@pytest.mark.parametrize("values, message", [
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ({"schedule": "step"}, "schedule must be one of"),
    ({"translate": 20}, "translate must be 0-14"),
    ({"tta_shift": 1}, "turn on tta"),
    ({"tta": True, "tta_shift": 15}, "tta_shift must be 0-14"),
])  # fmt: skip
def test_bad_recipe_values(values, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**values)


def random_examples(count: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random uint8 images and labels: enough to exercise averaging, not to learn anything."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=count)


def compact_with_ema():
    """`compact` (five BatchNorm layers) compiled with SGD and an EMA of its weights, 4 steps per epoch."""
    model = build_model("compact")
    model.compile(optimizer=build_optimizer(TrainConfig(optimizer="sgd", ema=0.9, learning_rate=0.1), 4),
                  loss=build_loss(TrainConfig()))  # fmt: skip
    return model


def fit_with_ema(fits: int, epochs_per_fit: int):
    import keras

    from fmnist.averaging import validation_callbacks

    keras.utils.set_random_seed(0)
    images, labels = random_examples()
    model = build_model("tiny")
    model.compile(optimizer=build_optimizer(TrainConfig(ema=0.9, learning_rate=1e-2), 8), loss=build_loss(TrainConfig()))
    for _ in range(fits):
        callbacks = validation_callbacks(model, images) if fits > 1 else []
        model.fit(**inputs.fit_arguments((images, labels), 32), epochs=epochs_per_fit, verbose=0, callbacks=callbacks)
    return model


def test_ema_over_one_fit_per_epoch_equals_one_long_fit():
    """Training runs one `fit` per epoch; with EMA that must neither restart epochs from the average nor lose it."""
    from fmnist.averaging import averaged_weights

    long = fit_with_ema(fits=1, epochs_per_fit=3)  # Keras ends the fit by adopting the averaged weights
    per_epoch = fit_with_ema(fits=3, epochs_per_fit=1)
    training_weights = per_epoch.get_weights()
    with averaged_weights(per_epoch, np.zeros((0, 28, 28), np.uint8)):  # tiny has no BatchNorm
        averaged = per_epoch.get_weights()
    for mine, expected in zip(averaged, long.get_weights(), strict=True):
        np.testing.assert_allclose(mine, expected, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(a, b, atol=1e-4) for a, b in zip(averaged, training_weights, strict=True))
    for restored, before in zip(per_epoch.get_weights(), training_weights, strict=True):
        np.testing.assert_array_equal(restored, before)  # the block leaves the training weights as they were


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "muon"])
def test_the_weight_average_warms_its_momentum_up(optimizer):
    """After each step the average moves towards the weights by 1 - min(ema, (1 + t) / (10 + t)) for t steps before
    it (all the way at the first), not by Keras' 1 - ema, which would leave most of the first weights in it."""
    import keras

    kernel = keras.Variable(np.ones((4, 3), "float32"), name="kernel")  # 2-D: Muon's own step, not AdamW's
    step = build_optimizer(TrainConfig(optimizer=optimizer, ema=0.999, learning_rate=0.05), 100)
    rng = np.random.default_rng(0)
    average = np.zeros((4, 3), "float32")
    for t in range(40):
        step.apply([rng.normal(size=(4, 3)).astype("float32")], [kernel])
        momentum = 0.0 if t == 0 else min(0.999, (1 + t) / (10 + t))
        average = momentum * average + (1 - momentum) * as_numpy(kernel)
    np.testing.assert_allclose(as_numpy(step._model_variables_moving_average[0]), average, rtol=1e-5, atol=1e-6)
    # Keras' own average (0.999 from the second step on) would still be 96% the first step's weights
    assert np.abs(average - as_numpy(kernel)).max() < 0.5 * np.abs(as_numpy(kernel) - 1).max()


def test_averaged_weights_come_with_batchnorm_statistics_of_their_own():
    """Keras averages the trainable weights only; BatchNorm's statistics are recomputed for the average."""
    import keras

    from fmnist.averaging import averaged_weights, validation_callbacks

    keras.utils.set_random_seed(0)
    images, labels = random_examples()
    model = compact_with_ema()
    model.fit(**inputs.fit_arguments((images, labels), 64), epochs=2, verbose=0, callbacks=validation_callbacks(model, images))
    first = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    normalised = keras.Model(model.input, first.input)  # what the first BatchNorm sees
    raw_weights, raw_mean = model.get_weights(), as_numpy(first.moving_mean)
    with averaged_weights(model, images):
        batches = [as_numpy(normalised(images[start : start + 128])) for start in (0, 128)]
        np.testing.assert_allclose(as_numpy(first.moving_mean), np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(as_numpy(first.moving_variance), np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0),
                                   rtol=1e-3, atol=1e-5)  # fmt: skip
        assert not np.allclose(as_numpy(first.moving_mean), raw_mean, rtol=1e-3)  # the raw weights' statistics differ
    for restored, before in zip(model.get_weights(), raw_weights, strict=True):
        np.testing.assert_array_equal(restored, before)  # the raw weights and their own statistics again


def test_validating_the_average_leaves_training_its_own_batchnorm_statistics():
    """Each epoch's validation recomputes the statistics for the averaged weights, then puts training's back."""
    import keras

    from fmnist.averaging import batchnorm_statistics, validation_callbacks

    images, labels = random_examples()

    def statistics_after_one_epoch(validate: bool) -> list[np.ndarray]:
        keras.utils.set_random_seed(0)
        model = compact_with_ema()
        validation = (images[:128], labels[:128]) if validate else None
        model.fit(**inputs.fit_arguments((images, labels), 64, validation), epochs=1, verbose=0,
                  callbacks=validation_callbacks(model, images))  # fmt: skip
        return [as_numpy(variable) for variable in batchnorm_statistics(model)]

    validated, not_validated = statistics_after_one_epoch(True), statistics_after_one_epoch(False)
    assert len(validated) == 2 * 5  # compact's five BatchNorm layers, mean and variance each
    for after_validation, without in zip(validated, not_validated, strict=True):
        np.testing.assert_allclose(after_validation, without, rtol=1e-5, atol=1e-6)


def test_batchnorm_statistics_settle_after_the_steps_their_momentum_needs():
    from fmnist.averaging import SETTLED_SHARE, settling_steps

    assert settling_steps(build_model("compact")) == 88  # 0.9 ** 88 is just under 1e-4 of the start left
    assert 0.9**88 < SETTLED_SHARE < 0.9**87
    assert settling_steps(build_model("tiny")) == 0  # no BatchNorm


@pytest.mark.parametrize("momentum", [0.9, 0.05])  # settling_steps: 88, more than the 4 steps trained; 4 (3.07 up)
def test_a_short_run_validates_on_batchnorm_statistics_recomputed_for_it(momentum):
    """After fewer steps than the statistics need to settle, validation recomputes them (and training keeps them, as
    no training step reads them); after as many, they are left as training made them."""
    import keras

    from fmnist.averaging import batchnorm_layers, batchnorm_statistics, recompute_batchnorm_statistics, validation_callbacks

    images, labels = random_examples()

    def fit(validate: bool) -> keras.Model:
        keras.utils.set_random_seed(0)
        model = build_model("compact")
        for layer in batchnorm_layers(model):
            layer.momentum = momentum
        model.compile(optimizer=build_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.1), 4),
                      loss=build_loss(TrainConfig()))  # fmt: skip
        validation = (images[:128], labels[:128]) if validate else None
        model.fit(**inputs.fit_arguments((images, labels), 64, validation), epochs=1, verbose=0,
                  callbacks=validation_callbacks(model, images))  # fmt: skip
        return model

    validated, not_validated = fit(True), fit(False)
    for mine, plain in zip(validated.trainable_weights, not_validated.trainable_weights, strict=True):
        np.testing.assert_array_equal(as_numpy(mine), as_numpy(plain))  # the same training
    statistics = [as_numpy(variable) for variable in batchnorm_statistics(validated)]
    recompute_batchnorm_statistics(not_validated, images)
    recomputed = [as_numpy(variable) for variable in batchnorm_statistics(not_validated)]
    matches = [np.allclose(mine, expected, rtol=1e-4, atol=1e-6) for mine, expected in zip(statistics, recomputed, strict=True)]
    assert all(matches) if momentum == 0.9 else not any(matches)


@pytest.mark.parametrize("validation_fraction", [0.1, 0.0])  # settled by the last validation, or at the end
def test_a_short_run_ends_with_batchnorm_statistics_fit_for_inference(tmp_path, dataset, validation_fraction):
    """22 steps of `best` on 3,000 images: with the moving statistics as they were, it validated 0.11 (chance)."""
    from fmnist.config import preset
    from fmnist.train import train

    config = dataclasses.replace(preset("best"), time_budget=0.0, epochs=2, train_subset=3000, tta=False, tta_shift=0,
                                 validation_fraction=validation_fraction)  # fmt: skip
    lines = []
    metrics = train(config, tmp_path / "run", data=dataset, log=lines.append)
    images = 2700 if validation_fraction else 3000
    assert any(f"are recomputed from {images:,} training images" in line for line in lines)
    assert metrics["test_accuracy"] > 0.6 and (not validation_fraction or metrics["val_accuracy"] > 0.6)


def test_recomputing_batchnorm_statistics_leaves_the_augmentation_random_state_alone():
    from fmnist.averaging import recompute_batchnorm_statistics

    model = build_model("compact", augmentation=augmentation_layers(translate=2, flip=True, erase=0.5))
    seeds = [variable for variable in model.non_trainable_variables if "seed" in variable.path]
    before = [as_numpy(seed) for seed in seeds]
    momenta = [layer.momentum for layer in model.layers if hasattr(layer, "moving_mean")]
    images = np.random.default_rng(0).integers(0, 256, size=(200, 28, 28), dtype=np.uint8)
    recompute_batchnorm_statistics(model, images)
    assert len(seeds) == 3 and all(np.array_equal(as_numpy(seed), old) for seed, old in zip(seeds, before, strict=True))
    assert [layer.momentum for layer in model.layers if hasattr(layer, "moving_mean")] == momenta


def test_bfloat16_instructions_are_read_from_the_cpu_flags():
    from fmnist.recipe import cpu_has_bfloat16

    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma bmi2\nbugs\t\t: sysret_ss_attrs\n"
    zen4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    sapphire_rapids = "flags\t\t: avx512f avx512_fp16 amx_bf16 amx_tile amx_int8\n"
    assert not cpu_has_bfloat16(zen3) and cpu_has_bfloat16(zen4) and cpu_has_bfloat16(sapphire_rapids)
    assert not cpu_has_bfloat16("flags\t\t: avx512f avx512_bf16_disabled\n")  # whole flags, not substrings
    assert not cpu_has_bfloat16("")


def test_mixed_precision_computes_in_16_bits_and_keeps_float32_logits(dataset, tmp_path):
    from fmnist.runs import load_model
    from fmnist.train import train

    # (where the CPU lacks bfloat16 arithmetic, `fmnist train` says why this is slow: cli.precision_note, test_cli.py)
    config = TrainConfig(model="tiny", epochs=2, train_subset=2000, batch_size=64, learning_rate=1e-2)
    quiet = {"data": dataset, "log": lambda *a, **k: None, "report": False}
    full = train(config, tmp_path / "float32", **quiet)
    metrics = train(dataclasses.replace(config, mixed_precision=True), tmp_path, **quiet)
    assert metrics["test_accuracy"] > 0.3 and abs(metrics["test_accuracy"] - full["test_accuracy"]) < 0.05  # learns as well
    import keras

    assert keras.config.dtype_policy().name == "float32"  # the policy applied to that run's layers only
    model = load_model(tmp_path)
    compute_dtypes = {layer.name: layer.dtype_policy.compute_dtype for layer in model.layers if layer.weights}
    assert compute_dtypes.pop("logits") == "float32"
    assert set(compute_dtypes.values()) == {"bfloat16"}  # no GPU here; a GPU gets float16
    assert all(weight.dtype == "float32" for weight in model.weights)
    assert predict_logits(model, dataset.x_test[:4]).dtype == np.float64


def test_random_shift_moves_each_image_by_whole_pixels_within_its_limit():
    from fmnist.models import RandomShift

    images = np.random.default_rng(2).random((64, 28, 28, 1)).astype("float32") + 0.5  # no zeros, so fill shows
    shifted = as_numpy(RandomShift(2, seed=3)(images, training=True))
    seen = set()
    for image, result in zip(images[..., 0], shifted[..., 0], strict=True):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if np.array_equal(result, shift_image(image, dy, dx))]
        assert len(matches) == 1, "each output must be its input shifted by whole pixels, at most 2 each way"
        seen.add(matches[0])
    assert len(seen) > 15  # of the 25 shifts, drawn independently per image
    np.testing.assert_array_equal(as_numpy(RandomShift(2)(images, training=False)), images)


def shift_image(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved dy rows down and dx columns right, black where nothing moved in."""
    padded = np.pad(image, 2)
    return padded[2 - dy : 2 - dy + 28, 2 - dx : 2 - dx + 28]


def test_muon_steps_convolution_kernels_by_an_orthogonalised_matrix_and_the_logits_by_adamw():
    import keras

    kernel = keras.Variable(np.zeros((3, 3, 8, 16), "float32"), name="conv_kernel")
    logits = keras.Variable(np.zeros((16, 10), "float32"), name="logits_kernel")
    optimizer = build_optimizer(TrainConfig(optimizer="muon", learning_rate=0.01), 10)
    # output channels of gradients a hundred times apart: SGD would move the kernel's columns as unequally
    gradient = (np.random.default_rng(0).normal(size=(3, 3, 8, 16)) * np.geomspace(0.1, 10, 16)).astype("float32")
    optimizer.apply_gradients([(gradient, kernel), (np.full((16, 10), 3.0, "float32"), logits)])
    step = -as_numpy(kernel).reshape(72, 16)  # the kernel as the matrix of its dense form
    singular_values = np.linalg.svd(step, compute_uv=False)
    assert np.ptp(np.log(np.linalg.svd(gradient.reshape(72, 16), compute_uv=False))) > np.log(20)
    assert singular_values.max() / singular_values.min() < 2  # Newton-Schulz's 5 steps end within about 0.7-1.2
    assert np.sqrt(np.mean(step**2)) == pytest.approx(0.01 * 0.2, rel=0.3)  # Keras' RMS rate of 0.2 of the rate
    np.testing.assert_allclose(as_numpy(logits), -0.01, rtol=1e-3)  # AdamW's first step: the rate, against the sign
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is type(optimizer) and restored.exclude_layers == ["logits"] and restored.dense_kernels


@pytest.mark.parametrize("muon_dense", [True, False])
def test_muon_leaves_hidden_dense_kernels_to_adamw_only_when_told(muon_dense):
    import keras

    kernel = keras.Variable(np.zeros((32, 16), "float32"), name="dense_kernel")
    config = TrainConfig(optimizer="muon", learning_rate=0.01, muon_dense=muon_dense)
    optimizer = build_optimizer(config, 10)
    gradient = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    optimizer.apply_gradients([(gradient, kernel)])
    step = -as_numpy(kernel)
    if muon_dense:  # an orthogonalised matrix: its singular values close together (a random sign matrix's: 3-6x apart)
        singular_values = np.linalg.svd(step, compute_uv=False)
        assert singular_values.max() / singular_values.min() < 2
    else:  # AdamW's first step: the rate, against the gradient's sign (less by Adam's epsilon for tiny gradients)
        np.testing.assert_allclose(step, 0.01 * np.sign(gradient), rtol=1e-2)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert restored.dense_kernels is muon_dense

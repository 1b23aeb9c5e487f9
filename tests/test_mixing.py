"""CutMix: pasted rectangles, labels mixed by the pixels each image keeps, draws replayed from (seed, epoch)."""

import json

import numpy as np
import pytest

from fmnist.config import TrainConfig
from fmnist.mixing import cutmix, epoch_generator, training_targets
from fmnist.recipe import build_loss
from fmnist.train import train


def numbered_images(count: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Image i filled with the value i + 1 and labelled i, so every pixel tells which image it came from."""
    images = np.repeat(np.arange(1, count + 1, dtype=np.uint8), 28 * 28).reshape(count, 28, 28)
    return images, np.eye(count, dtype=np.float32)


def test_each_mixed_target_weighs_the_two_images_by_the_pixels_they_keep():
    images, targets = numbered_images()
    for seed in range(20):
        mixed_images, mixed_targets = cutmix(images, targets, 1.0, np.random.default_rng(seed))
        assert mixed_images.dtype == images.dtype and mixed_targets.dtype == targets.dtype
        np.testing.assert_allclose(mixed_targets.sum(axis=1), 1.0, rtol=1e-6)
        for index in range(len(images)):
            values, counts = np.unique(mixed_images[index], return_counts=True)
            assert len(values) <= 2  # its own pixels and its partner's
            expected = np.zeros(len(images), dtype=np.float32)
            for value, count in zip(values, counts, strict=True):  # the pixels' sources, as shares of the image
                expected[value - 1] += count / (28 * 28)
            np.testing.assert_allclose(mixed_targets[index], expected, atol=1e-6)


def test_pasted_rectangles_vary_in_size_and_place():
    images, targets = numbered_images()
    images, targets = np.tile(images, (100, 1, 1)), np.tile(targets, (100, 1))
    _, mixed_targets = cutmix(images, targets, 1.0, np.random.default_rng(0))
    kept = mixed_targets[np.arange(len(targets)), np.arange(len(targets)) % 10]
    pasted = 1 - kept[kept < 1]  # partners with the same number paste nothing visible
    assert pasted.min() < 0.05 and pasted.max() > 0.75  # areas uniform in [0, 1], clipped at the borders
    assert 0.2 < pasted.mean() < 0.5


def test_probability_sets_the_share_of_images_mixed_and_zero_changes_nothing():
    images, targets = numbered_images()
    images, targets = np.tile(images, (200, 1, 1)), np.tile(targets, (200, 1))
    unchanged_images, unchanged_targets = cutmix(images, targets, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(unchanged_images, images)
    np.testing.assert_array_equal(unchanged_targets, targets)
    _, mixed_targets = cutmix(images, targets, 0.3, np.random.default_rng(0))
    share = np.mean(mixed_targets.max(axis=1) < 1)
    assert 0.2 < share < 0.3  # 0.3, less the partners of the same number and the rectangles clipped to nothing


def test_draws_depend_on_seed_and_epoch_only():
    images, targets = numbered_images()

    def mixed(epoch, **settings):
        return cutmix(images, targets, 1.0, epoch_generator(TrainConfig(**settings), epoch))[1]

    # a resumed run, or one with other options, draws the same rectangles for the same (seed, epoch)
    np.testing.assert_array_equal(mixed(1, seed=3), mixed(1, seed=3, epochs=20, learning_rate=0.1))
    assert not np.array_equal(mixed(1, seed=3), mixed(2, seed=3)) and not np.array_equal(mixed(1, seed=3), mixed(1, seed=4))


def test_targets_are_one_hot_only_with_cutmix_and_the_loss_reads_them():
    labels = np.array([0, 3, 9], dtype=np.uint8)
    np.testing.assert_array_equal(training_targets(labels, 10, TrainConfig()), labels)
    one_hot = training_targets(labels, 10, TrainConfig(cutmix=0.5))
    assert one_hot.shape == (3, 10) and one_hot.dtype == np.float32
    np.testing.assert_array_equal(one_hot.argmax(axis=1), labels)
    logits = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    smoothing = 0.1
    plain = float(build_loss(TrainConfig(label_smoothing=smoothing))(labels, logits))
    mixed = float(build_loss(TrainConfig(label_smoothing=smoothing, cutmix=0.5))(one_hot, logits))
    assert mixed == pytest.approx(plain, rel=1e-5)  # the same loss on labels that are not mixed


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_cutmix_probability_is_checked(value):
    with pytest.raises(ValueError, match=f"cutmix must be a probability in \\[0, 1\\], got {value}$"):
        TrainConfig(cutmix=value)


def test_a_run_with_cutmix_validates_on_plain_labels(tmp_path, dataset):
    """fit's validation (one-hot labels) and the final evaluation (class indices) judge the same model alike."""
    config = TrainConfig(model="tiny", epochs=1, train_subset=3000, cutmix=1.0, label_smoothing=0.1, seed=1)
    metrics = train(config, tmp_path / "run", data=dataset, report=False)
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    fit_validation = float(history[1].split(",")[history[0].split(",").index("val_accuracy")])
    assert metrics["val_accuracy"] == pytest.approx(fit_validation, abs=1e-4)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cutmix"] == 1.0
    assert metrics["test_accuracy"] > 0.2  # above chance (0.1): it learnt from images that were all mixed

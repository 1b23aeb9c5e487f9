"""The same code on the JAX backend: train, evaluate and predict through the real CLI."""

import json
import os

import pytest
from PIL import Image

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_jax_backend_smoke(tmp_path, real_data_dir, dataset):
    import jax  # noqa: F401  (a test dependency: a missing install must fail here, not skip)

    run_dir = tmp_path / "jax-run"
    options = ["--epochs", "1", "--train-subset", "3000", "--translate", "1", "--flip", "--label-smoothing", "0.1",
               "--schedule", "cosine", "--warmup-fraction", "0.1", "--steps-per-execution", "4", "--no-report"]  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"}
    environment["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    run_cli("--backend", "jax", "train", "--run-dir", str(run_dir), "--data-dir", str(real_data_dir), *options,
            env=environment)  # fmt: skip
    # the training step's compiled program is kept for the next run
    assert any(path.name.startswith("jit_train_step") for path in (tmp_path / "cache" / "fmnist" / "jax").iterdir())
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["versions"]["backend"] == "jax"
    assert json.loads((run_dir / "metrics.json").read_text())["test_accuracy"] > 0.5  # it learned
    Image.fromarray(dataset.x_test[0]).save(tmp_path / "image.png")
    entries = json.loads(run_cli("--backend", "jax", "predict", str(run_dir), str(tmp_path / "image.png"), "--json").stdout)
    assert entries[0]["class_name"] in dataset.class_names

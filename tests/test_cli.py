"""End to end through the real `fmnist` command on slices of the real data."""

import csv
import importlib.metadata
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import Server, cli_command, kserve_body, run_cli
from fmnist.data import FILES

pytestmark = pytest.mark.slow
SMALL = ["--epochs", "1", "--train-subset", "3000"]


def test_data_verifies_and_draws_a_grid(real_data_dir, tmp_path):
    result = run_cli("data", "--data-dir", str(real_data_dir), "--grid", str(tmp_path / "grid.png"))
    assert "all four files verified" in result.stdout
    assert "6 Shirt" in result.stdout and "60000  10000" in result.stdout
    assert Image.open(tmp_path / "grid.png").size[0] > 500


def test_corrupt_data_gives_one_clear_error(real_data_dir, tmp_path):
    for spec in FILES.values():
        shutil.copy(real_data_dir / f"{spec.name}.gz", tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1_000_000])
    result = run_cli("data", "--data-dir", str(tmp_path), check=False)
    assert result.returncode == 1
    assert "train-images-idx3-ubyte.gz: broken gzip data" in result.stderr
    assert "fmnist data --download" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("train", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run"), *SMALL, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "broken gzip" in result.stderr


def test_a_cpu_preset_points_to_the_one_made_for_this_cpu(tmp_path):
    import keras

    from fmnist.cli import precision_note
    from fmnist.recipe import cpu_has_bfloat16

    # (preset, mixed precision as resolved): --preset best_bf16 --no-mixed-precision, then --mixed-precision alone
    asked = [("best", False), ("best_bf16", True), ("fast", False), ("best_bf16", False), (None, True), ("gpu", True)]
    notes = {options: precision_note(*options) for options in asked}
    # the GPU preset without a GPU (the tests run on CPUs): one note, pointing to this CPU's preset, not both
    cpu_preset = "best_bf16" if cpu_has_bfloat16() else "best"
    assert notes["gpu", True].startswith(f"note: --preset gpu is made for a GPU, and the {keras.backend.backend()} backend")
    assert notes["gpu", True].endswith(f"--preset {cpu_preset} is the recipe made for this CPU (15 minutes)")
    if cpu_has_bfloat16():
        assert notes["best", False] == ("note: this CPU has bfloat16 arithmetic (AVX512_BF16 or AMX): --preset best_bf16 "
                                        "is the recipe made for it, in bfloat16, which it runs faster than float32 "
                                        "(README compares the two)")  # fmt: skip
        assert "--preset fast_bf16" in notes["fast", False]
        assert notes["best_bf16", True] is notes[None, True] is None
    else:  # the other way round: the bfloat16 preset points back to the float32 one, unless it is asked for in float32
        assert notes["best", False] is notes["fast", False] is notes["best_bf16", False] is None
        pointer = notes["best_bf16", True]
        assert "which this one lacks" in pointer and "take --preset best, made for such a CPU" in pointer
        assert "many times slower than float32 (--no-mixed-precision turns it off)" in notes[None, True]  # one note, not both
    # `fmnist train` prints it, once; an empty data folder stops the run right after, before any training
    preset = "best" if cpu_has_bfloat16() else "best_bf16"
    result = run_cli("train", "--preset", preset, "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run"), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("note:")] == [notes[preset, preset == "best_bf16"]]


@pytest.fixture(scope="module")
def baseline_run(served_run):
    return served_run  # the baseline, 1 epoch on 3,000 images, trained through the CLI once per session


def test_train_writes_the_interface_other_work_relies_on(baseline_run):
    metrics = json.loads((baseline_run / "metrics.json").read_text())
    assert metrics["num_parameters"] == 121_930
    assert metrics["test_accuracy"] > 0.6  # one epoch on 2,700 images
    with open(baseline_run / "confusion_matrix.csv") as file:
        rows = list(csv.reader(file))[1:]
    assert [sum(int(value) for value in row[1:]) for row in rows] == [1000] * 10
    diagonal = sum(int(row[1 + index]) for index, row in enumerate(rows))
    assert diagonal / 10000 == pytest.approx(metrics["test_accuracy"])


def test_evaluate_rewrites_the_report(baseline_run, real_data_dir, tmp_path):
    (baseline_run / "confusion_matrix.png").unlink()
    assert not (baseline_run / "report.html").exists()  # trained with --no-report
    result = run_cli("evaluate", str(baseline_run), "--data-dir", str(real_data_dir))
    metrics = json.loads((baseline_run / "metrics.json").read_text())
    assert f"accuracy {metrics['test_accuracy']:.4f}" in result.stdout
    assert (baseline_run / "confusion_matrix.png").exists()
    assert f"Test accuracy {metrics['test_accuracy']:.4f}" in (baseline_run / "report.html").read_text()


def test_evaluate_on_given_arrays(baseline_run, dataset, tmp_path):
    np.save(tmp_path / "images.npy", dataset.x_test[:500])
    np.save(tmp_path / "labels.npy", dataset.y_test[:500])
    run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "images.npy"),
            "--labels", str(tmp_path / "labels.npy"), "--output", str(tmp_path / "out"))  # fmt: skip
    with open(tmp_path / "out" / "confusion_matrix.csv") as file:
        assert sum(int(value) for row in list(csv.reader(file))[1:] for value in row[1:]) == 500
    for name, content, message in (("bad.npy", b"not numpy", "not a readable .npy array"),
                                   ("big.npy", None, "labels must be whole numbers from 0 to 9")):  # fmt: skip
        if content is None:
            np.save(tmp_path / name, np.full(500, 12))
        else:
            (tmp_path / name).write_bytes(content)
        result = run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "images.npy"),
                         "--labels", str(tmp_path / name), check=False)  # fmt: skip
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_evaluate_on_a_folder_with_a_subfolder_per_class(baseline_run, dataset, tmp_path):
    """Keras' image_dataset_from_directory layout: the labels are the subfolders' names, in any spelling."""
    folders = {0: "T-shirt_top", 7: "sneaker", 9: "9"}  # "T-shirt/top" cannot be a folder's name
    chosen = np.concatenate([np.flatnonzero(dataset.y_test == label)[:30] for label in folders])
    for index in chosen:
        folder = tmp_path / "photos" / folders[int(dataset.y_test[index])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(dataset.x_test[index]).save(folder / f"{index}.png")
    run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "photos"))
    from fmnist.evaluate import evaluate_run  # the same images as arrays, in the order chosen

    evaluate_run(baseline_run, dataset.x_test[chosen], dataset.y_test[chosen], output_dir=tmp_path / "arrays")
    from_folder = json.loads((baseline_run / "evaluations" / "photos" / "metrics.json").read_text())
    from_arrays = json.loads((tmp_path / "arrays" / "metrics.json").read_text())
    assert from_folder["num_images"] == 90 and from_folder["eval_accuracy"] == pytest.approx(from_arrays["eval_accuracy"])
    assert from_folder["eval_loss"] == pytest.approx(from_arrays["eval_loss"], rel=1e-6)
    with open(baseline_run / "evaluations" / "photos" / "confusion_matrix.csv") as file:
        rows = {row[0]: sum(int(value) for value in row[1:]) for row in list(csv.reader(file))[1:]}
    assert [rows[name] for name in ("T-shirt/top", "Sneaker", "Ankle boot")] == [30, 30, 30] and sum(rows.values()) == 90
    with open(baseline_run / "evaluations" / "photos" / "predictions.csv") as file:  # which photos it got wrong
        by_file = {row["image"]: row for row in csv.DictReader(file)}
    with open(tmp_path / "arrays" / "predictions.csv") as file:
        by_position = list(csv.DictReader(file))
    assert len(by_file) == 90 and [row["image"] for row in by_position] == [str(position) for position in range(90)]
    for position, index in enumerate(chosen):
        row = by_file[f"{folders[int(dataset.y_test[index])]}/{index}.png"]
        assert row["label"] == dataset.class_names[dataset.y_test[index]]
        assert {key: row[key] for key in ("label", "predicted", "correct")} == \
               {key: by_position[position][key] for key in ("label", "predicted", "correct")}  # fmt: skip
    assert sum(int(row["correct"]) for row in by_file.values()) / 90 == pytest.approx(from_folder["eval_accuracy"])
    # told that the images are on a light background, it negates them all
    run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "photos"), "--background", "light",
            "--output", str(tmp_path / "negated"))  # fmt: skip
    evaluate_run(baseline_run, 255 - dataset.x_test[chosen], dataset.y_test[chosen], output_dir=tmp_path / "arrays-negated")
    negated = json.loads((tmp_path / "negated" / "metrics.json").read_text())
    expected = json.loads((tmp_path / "arrays-negated" / "metrics.json").read_text())
    assert negated["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-6)
    assert negated["eval_loss"] != pytest.approx(from_folder["eval_loss"])

    (tmp_path / "photos" / "Hats").mkdir()  # a folder that names no class stops the command with the fix
    result = run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "photos"), check=False)
    assert result.returncode == 1 and "subfolders ['Hats'] name no class" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "photos"), "--labels",
                     str(tmp_path / "photos" / "9" / f"{chosen[-1]}.png"), check=False)  # fmt: skip
    assert result.returncode == 1 and "leave out --labels" in result.stderr
    np.save(tmp_path / "x.npy", dataset.x_test[:3])
    result = run_cli("evaluate", str(baseline_run), "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "x.npy"),
                     "--background", "dark", check=False)  # fmt: skip
    assert result.returncode == 1 and "--background is for image files" in result.stderr


def test_predict_png_files_as_json(baseline_run, dataset, tmp_path):
    paths = []
    for index in range(20):
        path = tmp_path / f"test{index}.png"
        Image.fromarray(dataset.x_test[index]).save(path)
        paths.append(str(path))
    np.save(tmp_path / "same.npy", dataset.x_test[:20])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    result = run_cli("predict", str(baseline_run), *paths, str(tmp_path / "same.npy"),
                     str(tmp_path / "broken.png"), "--json", check=False)  # fmt: skip
    assert result.returncode == 1  # one file failed ...
    entries = json.loads(result.stdout)  # ... and the others were still classified
    from_png, from_array, failed = entries[:20], entries[20:40], entries[40]
    assert failed == {"path": str(tmp_path / "broken.png"), "error": failed["error"]}
    assert "not an image format" in failed["error"]
    assert [entry["class_index"] for entry in from_png] == [entry["class_index"] for entry in from_array]
    correct = sum(entry["class_index"] == label for entry, label in zip(from_png, dataset.y_test[:20], strict=True))
    assert correct >= 12
    top = from_png[0]["top"]
    assert len(top) == 3 and top[0]["class_name"] == from_png[0]["class_name"]
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]

    folder, empty = tmp_path / "folder", tmp_path / "empty"  # a directory stands for the files in it, by name
    empty.mkdir()
    folder.mkdir()
    shutil.copy(paths[1], folder / "b.png")
    shutil.copy(paths[0], folder / "a.png")
    result = run_cli("predict", str(baseline_run), str(folder), str(empty), "--json", "--top", "1", check=False)
    entries = json.loads(result.stdout)
    assert result.returncode == 1
    assert [entry["path"] for entry in entries] == [str(folder / "a.png"), str(folder / "b.png"), str(empty)]
    assert [entry["class_index"] for entry in entries[:2]] == [entry["class_index"] for entry in from_png[:2]]
    assert len(entries[0]["top"]) == 1 and "a directory with no image" in entries[2]["error"]


@pytest.mark.parametrize("arguments, message", [
    (["predict", "RUN", "x.png", "--top", "0"], "argument --top: 0 is out of range; give a whole number of at least 1"),
    (["serve", "RUN", "--workers", "0"], "argument --workers: 0 is out of range"),
    (["serve", "RUN", "--port", "70000"], "argument --port: 70000 is out of range; give a whole number from 1 to 65535"),
    (["serve", "RUN", "--max-delay-ms", "nan"], "argument --max-delay-ms: nan is out of range; give a number of at least 0"),
    (["serve", "RUN", "--max-batch", "-1"], "argument --max-batch: -1 is out of range"),
    (["serve", "RUN", "--max-body-mb", "0"], "argument --max-body-mb: 0 is out of range"),
])  # fmt: skip
def test_numbers_out_of_range_stop_at_the_command_line(arguments, message):
    result = run_cli(*arguments, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, real_data_dir):
    """Another baseline run beside baseline_run (other seed, 3 epochs), for ensembles."""
    run_dir = tmp_path_factory.mktemp("second") / "run"
    run_cli("train", "--run-dir", str(run_dir), "--epochs", "3", "--train-subset", "3000", "--seed", "7", "--no-report",
            "--data-dir", str(real_data_dir))  # fmt: skip
    return run_dir


def saved_test_probabilities(run_dir):
    with np.load(run_dir / "test_predictions.npz") as saved:
        logits = saved["logits"].astype(np.float64)
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def test_ensemble_predict_and_evaluate_average_the_runs(baseline_run, second_run, real_data_dir, dataset, tmp_path):
    runs = [baseline_run, second_run]
    expected = np.mean([saved_test_probabilities(run) for run in runs], axis=0)  # each run's own test evaluation
    np.save(tmp_path / "ten.npy", dataset.x_test[:10])
    entries = json.loads(run_cli("predict", str(runs[0]), str(tmp_path / "ten.npy"), "--ensemble", str(runs[1]),
                                 "--json", "--top", "10").stdout)  # fmt: skip
    names = json.loads((baseline_run / "class_names.json").read_text())
    predicted = np.array([[dict((top["class_name"], top["probability"]) for top in entry["top"])[name] for name in names]
                          for entry in entries])  # fmt: skip
    np.testing.assert_allclose(predicted, expected[:10], atol=1e-5)

    result = run_cli("evaluate", str(runs[0]), "--ensemble", str(runs[1]), "--data-dir", str(real_data_dir))
    metrics = json.loads((runs[0] / "evaluations" / "test-ensemble" / "metrics.json").read_text())
    assert metrics["eval_accuracy"] == pytest.approx(np.mean(expected.argmax(axis=1) == dataset.y_test))
    assert metrics["runs"] == [str(run) for run in runs] and f"accuracy {metrics['eval_accuracy']:.4f}" in result.stdout
    assert json.loads((runs[0] / "metrics.json").read_text())["test_accuracy"] != metrics["eval_accuracy"]  # run untouched


def test_evaluate_on_the_held_out_validation_images(baseline_run, second_run, real_data_dir, dataset, tmp_path):
    from fmnist.config import TrainConfig
    from fmnist.engine import load_engines
    from fmnist.evaluate import ensemble_logits, predict_logits, softmax
    from fmnist.runs import RunError, load_model
    from fmnist.splits import held_out_split, split_indices

    # one run alone gives the validation accuracy its training reported, from the same images
    result = run_cli("evaluate", str(second_run), "--split", "validation", "--data-dir", str(real_data_dir))
    metrics = json.loads((second_run / "evaluations" / "validation" / "metrics.json").read_text())
    assert metrics["num_images"] == 300 and "on 300 images" in result.stdout
    assert metrics["eval_accuracy"] == pytest.approx(json.loads((second_run / "metrics.json").read_text())["val_accuracy"])

    run_cli("evaluate", str(baseline_run), "--ensemble", str(second_run), "--split", "validation", "--tta",
            "--data-dir", str(real_data_dir))  # fmt: skip
    metrics = json.loads((baseline_run / "evaluations" / "validation-ensemble-tta" / "metrics.json").read_text())
    _, validation = split_indices(dataset.y_train, TrainConfig(train_subset=3000))
    logits = ensemble_logits([load_model(baseline_run), load_model(second_run)], dataset.x_train[validation], tta=True)
    assert metrics["eval_accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == dataset.y_train[validation]))

    run_cli("evaluate", str(second_run), "--split", "validation", "--tta", "--tta-shift", "1", "--data-dir", str(real_data_dir))
    metrics = json.loads((second_run / "evaluations" / "validation-tta-shift1" / "metrics.json").read_text())
    logits = predict_logits(load_model(second_run), dataset.x_train[validation], tta=True, tta_shift=1)
    assert metrics["tta_shift"] == 1 and metrics["eval_accuracy"] == pytest.approx(
        np.mean(logits.argmax(axis=1) == dataset.y_train[validation]))  # fmt: skip
    served = load_engines([second_run], "keras", tta=True, tta_shift=1)  # what `predict` and `serve` run
    np.testing.assert_allclose(served.probabilities(dataset.x_train[validation]), softmax(logits), atol=1e-6)
    refused = run_cli("evaluate", str(second_run), "--split", "validation", "--tta-shift", "1", check=False)
    assert refused.returncode == 1 and "turn on tta (--tta) as well" in refused.stderr

    other = tmp_path / "other-split"  # the same model, as if it had held out other images
    shutil.copytree(second_run, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "split_seed": 1}))
    with pytest.raises(RunError, match="split_seed 1 against 0"):
        held_out_split([baseline_run, other], dataset)
    (other / "config.json").write_text(json.dumps(config))
    info = json.loads((other / "run_info.json").read_text())
    info["data_checksums"]["train-labels-idx1-ubyte.gz"] = "0" * 64  # as if trained on other labels
    (other / "run_info.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="trained on other data files"):
        held_out_split([other], dataset)
    refused = run_cli("evaluate", str(baseline_run), "--split", "validation", "--images", "x.npy", "--labels", "y.npy",
                      check=False)  # fmt: skip
    assert refused.returncode == 1 and "--images gives others" in refused.stderr


def test_served_ensemble_with_tta_averages_four_predictions(baseline_run, second_run, dataset):
    from fmnist.evaluate import predict_logits, softmax
    from fmnist.runs import load_model

    images = dataset.x_test[:16]
    expected = np.mean([softmax(predict_logits(load_model(run), view)) for run in (baseline_run, second_run)
                        for view in (images, images[:, :, ::-1].copy())], axis=0)  # fmt: skip
    server = Server(baseline_run, "--ensemble", str(second_run), "--tta")
    try:
        import httpx

        info = httpx.get(f"{server.url}/info").json()
        assert info["tta"] is True and info["tta_shift"] == 0 and info["ensemble"] == [str(baseline_run), str(second_run)]
        body = httpx.post(f"{server.url}/v2/models/shop/infer", json=kserve_body(images)).json()
        served = np.array(body["outputs"][0]["data"]).reshape(16, 10)
        np.testing.assert_allclose(served, expected, atol=1e-5)
    finally:
        server.close()


def test_an_export_of_an_ensemble_with_tta_computes_what_evaluate_does(baseline_run, second_run, real_data_dir, dataset):
    import tensorflow as tf

    from fmnist.evaluate import ensemble_logits, softmax
    from fmnist.export import onnx_session, run_onnx
    from fmnist.runs import load_model

    own_export = baseline_run / "export" / "model.onnx"
    before = own_export.read_bytes() if own_export.exists() else None
    result = run_cli("export", str(baseline_run), "--ensemble", str(second_run), "--tta", "--tta-shift", "1",
                     "--data-dir", str(real_data_dir))  # fmt: skip
    assert "averaging 2 run(s) over 18 view(s) of each image" in result.stdout and "passed" in result.stdout
    parity = json.loads((baseline_run / "export" / "averaged_onnx_parity.json").read_text())
    assert parity["runs"] == [str(baseline_run), str(second_run)] and parity["tta"] and parity["tta_shift"] == 1
    # other images than the parity check's 1,000: one graph gives what evaluate --ensemble --tta --tta-shift 1 gives
    images, models = dataset.x_test[-300:], [load_model(baseline_run), load_model(second_run)]
    exported = run_onnx(onnx_session(baseline_run / "export" / "averaged.onnx"), images)
    np.testing.assert_allclose(exported, softmax(ensemble_logits(models, images, tta=True, tta_shift=1)), atol=1e-5)
    # the run's own export, which `serve` adds the views to, is left as it was
    assert (own_export.read_bytes() if own_export.exists() else None) == before

    # flip TTA alone of one run, for TF Serving: the SavedModel's signature takes the raw images
    run_cli("export", str(second_run), "--format", "saved_model", "--tta", "--data-dir", str(real_data_dir))
    signature = tf.saved_model.load(str(second_run / "export" / "averaged_saved_model" / "1")).signatures["serving_default"]
    served = signature(images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(served, softmax(ensemble_logits(models[1:], images, tta=True)), atol=1e-5)
    assert not (second_run / "export" / "saved_model").exists()

    refused = run_cli("export", str(second_run), "--tta-shift", "1", check=False)
    assert refused.returncode == 1 and "turn on tta (--tta) as well" in refused.stderr
    refused = run_cli("export", str(second_run), "--tta", "--output", str(second_run / "export" / "model.onnx"), check=False)
    assert refused.returncode == 1 and "is the run's own export" in refused.stderr
    assert not (second_run / "export" / "model.onnx").exists()


def test_ensemble_of_runs_with_other_classes_is_refused(baseline_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(baseline_run, other)
    names = json.loads((other / "class_names.json").read_text())
    (other / "class_names.json").write_text(json.dumps(names[::-1]))
    result = run_cli("predict", str(baseline_run), str(other / "confusion_matrix.png"), "--ensemble", str(other), check=False)
    assert result.returncode == 1 and "other classes" in result.stderr and "Traceback" not in result.stderr


def test_a_reader_that_stops_reading_gets_no_error_message(real_data_dir):
    # `fmnist data | head -1`: the reader is gone before fmnist writes; that is no error to print
    process = subprocess.Popen(cli_command("data", "--data-dir", str(real_data_dir)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 1 and stderr == "", stderr


def test_python_dash_m_fmnist_is_the_cli_and_lists_every_model():
    from fmnist.models import MODELS

    result = subprocess.run([sys.executable, "-m", "fmnist", "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines() if line.strip()] == list(MODELS)
    version = subprocess.run([sys.executable, "-m", "fmnist", "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"fmnist {importlib.metadata.version('fmnist')}"

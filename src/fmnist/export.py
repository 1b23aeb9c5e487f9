"""Export a run's model for serving elsewhere, and prove the export computes what Keras computes.

    from fmnist.export import export_run
    report = export_run("runs/baseline", "onnx")          # runs/baseline/export/model.onnx
    report = export_run("runs/baseline", "saved_model")   # runs/baseline/export/saved_model/1/
    report = export_run("runs/baseline", "saved_model", output="/models/fmnist", model_version=2)  # /models/fmnist/2/

Exports take raw uint8 images (batch, 28, 28) and return softmax probabilities (batch, 10), the
same contract as the server. The SavedModel has a `serving_default` signature
(input "images", output "probabilities") and goes into a numbered version directory under a model
base path, the layout TF Serving loads (`--model_base_path` is the folder above the version). After writing, a parity
check runs both models on test images: the largest absolute difference of probabilities must be
at most 1e-5 and every argmax must agree, or the export is removed and an error raised.
A model trained in mixed precision is exported computing in float32 (its weights already are).

    report = export_run("runs/best", "onnx", ensemble=["runs/best-1"], tta=True)   # runs/best/export/averaged.onnx

With `ensemble` or `tta` the export is the classifier `fmnist evaluate` measures with them: one graph that
averages the probabilities of several runs' models and of test-time augmentation's views (each image,
its mirror image and, with `tta_shift`, both shifted), made in the graph from the raw images. It is
written beside the run's own export, as averaged.onnx or averaged_saved_model/, never in its place:
`fmnist serve` and `predict` run RUN/export/model.onnx as one model and add the views themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fmnist import runs
from fmnist.evaluate import ensemble_logits, softmax, tta_offsets

FORMATS = ("onnx", "saved_model")
EXPORT_DIR = "export"
ONNX_FILE = "model.onnx"
SAVED_MODEL_DIR = "saved_model"  # a model base path: the SavedModel is in its version directory, saved_model/1/
AVERAGED = "averaged"  # the name's stem for an export of an ensemble or of TTA's views: averaged.onnx, averaged_saved_model/
SAVED_MODEL_FILE = "saved_model.pb"
PARITY_IMAGES = 1000
PARITY_TOLERANCE = 1e-5


class ExportError(ValueError):
    """The export cannot be written on this backend, or does not compute what the Keras model computes."""


def check_backend_writes(export_format: str) -> None:
    import importlib.util

    import keras

    backend = keras.backend.backend()
    if export_format == "saved_model" and backend == "torch":
        problem = "Keras cannot write a SavedModel on the PyTorch backend"
    elif export_format == "onnx" and backend == "jax" and importlib.util.find_spec("jax2onnx") is None:
        problem = "Keras writes ONNX on the JAX backend through jax2onnx, which is not installed (pip install jax2onnx)"
    else:
        return
    raise ExportError(f"{problem}; a run's model is the same on every backend, so export it on TensorFlow, the "
                      f"default: `fmnist export RUN --format {export_format}` without --backend")  # fmt: skip


def with_softmax(model):
    import keras

    images = keras.Input(shape=model.input.shape[1:], dtype=model.input.dtype, name="images")
    # training=False is kept in the graph: exporters trace without it, which would leave Keras' random
    # augmentation layers on (RandomFlip defaults to training) and put random ops in the export
    logits = model(images, training=False)
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(logits)
    wrapped = keras.Model(images, probabilities, name=f"{model.name}_probabilities")
    wrapped(np.zeros((1, 28, 28), dtype=np.uint8))  # Keras' exporters want a model that has been called once
    return wrapped


def averaging(models: list, tta: bool, tta_shift: int):
    """One model, raw uint8 images to probabilities, that averages `models`' softmax over TTA's views of each image.

    The views are `evaluate.tta_views`' (the same pixels moved, black filling in) stacked along the batch, so each
    model runs once per call on all of them, as the server's averaging engine runs it.
    """
    import keras
    from keras import ops

    images = keras.Input(shape=models[0].input.shape[1:], dtype=models[0].input.dtype, name="images")
    views = graph_views(images, tta_shift) if tta else [images]
    stacked = ops.concatenate(views, axis=0)
    averages = []
    for index, model in enumerate(models):
        model.name = f"member_{index}"  # the runs' models share their network's name, which one graph must not repeat
        probabilities = ops.softmax(ops.cast(model(stacked, training=False), "float32"))  # training=False: as in with_softmax
        averages.append(ops.mean(ops.reshape(probabilities, (len(views), -1, probabilities.shape[-1])), axis=0))
    average = ops.mean(ops.stack(averages), axis=0)
    wrapped = keras.Model(images, keras.layers.Identity(name="probabilities")(average), name=AVERAGED)
    wrapped(np.zeros((1, 28, 28), dtype=np.uint8))
    return wrapped


def graph_views(images, shift: int) -> list:
    """`evaluate.tta_views` as operations on a symbolic batch of images (batch, height, width)."""
    from keras import ops

    padded = ops.pad(images, [[0, 0], [shift, shift], [shift, shift]]) if shift else images  # black fills in, as there
    height, width = images.shape[1:3]
    moved = [padded[:, shift - down : shift - down + height, shift - right : shift - right + width]
             for down, right in tta_offsets(shift)]  # fmt: skip
    return [view for each in moved for view in (each, ops.flip(each, axis=2))]


def computing_in_float32(model):
    """The model itself, or for a mixed-precision one a copy whose layers compute in float32.

    Its weights are float32 already; its 16-bit arithmetic is what the exporters cannot carry: the ONNX
    exporter writes a graph that mixes float16 and bfloat16 tensors, which ONNX Runtime refuses to load,
    and CPUs serve float32 faster anyway.
    """
    import keras

    if all(layer.compute_dtype == "float32" for layer in model.layers):
        return model

    def in_float32(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=in_float32)
    copy.set_weights(model.get_weights())
    return copy


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray) -> np.ndarray:
    input_name = session.get_inputs()[0].name
    return session.run(None, {input_name: images})[0]


def write_onnx(model, destination: Path) -> callable:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Keras' tf2onnx shim probes np.object, which NumPy 2 warns about
        model.export(str(destination), format="onnx", verbose=False)
    session = onnx_session(destination)
    return lambda images: run_onnx(session, images)


def write_saved_model(model, destination: Path) -> callable:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: {"probabilities": model(images, training=False)},
        input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name="images")],
    )
    archive.write_out(str(destination), verbose=False)
    signature = tf.saved_model.load(str(destination)).signatures["serving_default"]
    return lambda images: signature(images=tf.constant(images))["probabilities"].numpy()


def destination(run_dir: Path, export_format: str, output: str | Path | None, model_version: int | None,
                averaged: bool = False) -> Path:  # fmt: skip
    """Where the export goes: the ONNX file, or the SavedModel's version directory under the base path."""
    onnx_file = f"{AVERAGED}.onnx" if averaged else ONNX_FILE
    saved_model_dir = f"{AVERAGED}_{SAVED_MODEL_DIR}" if averaged else SAVED_MODEL_DIR
    if export_format == "onnx":
        if model_version is not None:
            raise ExportError("--model-version numbers a SavedModel's directory for TF Serving (--format saved_model); "
                              "an ONNX export is one file: name it with --output")  # fmt: skip
        if output and Path(output).suffix != ".onnx" and not Path(output).is_dir():
            # the name tells an export apart from other files, so that exporting again replaces it and nothing else
            raise ExportError(f"--output {output}: an ONNX file's name ends in .onnx, e.g. {Path(output).with_suffix('.onnx')}")
        own_export = run_dir / EXPORT_DIR / ONNX_FILE
        if averaged and output and Path(output).resolve() == own_export.resolve():
            raise ExportError(f"--output {output} is the run's own export, which `fmnist serve` and `predict` run as one "
                              f"network and add the views to; write the averaged one elsewhere (by default "
                              f"{run_dir / EXPORT_DIR / onnx_file})")  # fmt: skip
        return Path(output) if output else run_dir / EXPORT_DIR / onnx_file
    if model_version is not None and model_version < 1:
        raise ExportError(f"--model-version {model_version}: TF Serving loads versions numbered 1 and up")
    base = Path(output) if output else run_dir / EXPORT_DIR / saved_model_dir
    return base / str(model_version or 1)


def check_replaceable(final: Path, export_format: str) -> None:
    """Refuse to put an export over anything but an earlier export of the same format."""
    if export_format == "saved_model" and (final.parent / SAVED_MODEL_FILE).is_file():
        raise ExportError(f"{final.parent} is a SavedModel itself, not a model base path (TF Serving's "
                          f"--model_base_path, which holds numbered versions); give the folder above it as --output, "
                          f"or remove it")  # fmt: skip
    if not final.exists() and not final.is_symlink():
        return
    if export_format == "onnx" and final.is_dir():
        raise ExportError(f"{final} is a directory; name the ONNX file itself, e.g. --output {final / ONNX_FILE}")
    if export_format == "onnx":  # destination() has made sure its name ends in .onnx
        earlier_export, what, fix = final.is_file(), "an .onnx file", "choose another --output"
    else:
        earlier_export = (final / SAVED_MODEL_FILE).is_file()
        what, fix = f"a SavedModel (no {SAVED_MODEL_FILE} in it)", "choose another --output or --model-version"
    if final.is_symlink() or not earlier_export:
        raise ExportError(f"{final} exists and is not {what}, so the export will not replace it; {fix}")


def export_run(
    run_dir: str | Path,
    export_format: str,
    data_dir: str | Path | None = None,
    output: str | Path | None = None,
    model_version: int | None = None,
    ensemble: tuple[str | Path, ...] = (),
    tta: bool = False,
    tta_shift: int | None = None,
) -> dict:
    """Write the export (atomically; RUN/export/ unless `output` says), check parity, return the parity figures.

    `output` is the ONNX file, or for a SavedModel the model base path, which gets the version
    directory `model_version` (1 unless given). The parity figures go to RUN/export/FORMAT_parity.json.
    With the runs of `ensemble` or with `tta` (views as RUN was evaluated unless `tta_shift` says), the export
    averages them (`averaging`), goes to RUN/export/averaged.onnx or averaged_saved_model/ by default, and its
    parity figures to RUN/export/averaged_FORMAT_parity.json.
    """
    if export_format not in FORMATS:
        raise ValueError(f"unknown export format {export_format!r}; choose one of {list(FORMATS)}")
    from fmnist.data import load_dataset

    run_dir = runs.require_run(run_dir)
    members = [run_dir, *map(Path, ensemble)]
    runs.ensemble_class_names(members)  # each a finished run, with the same classes
    tta, tta_shift = runs.run_tta(run_dir, tta, tta_shift)
    averaged = len(members) > 1 or tta
    final = destination(run_dir, export_format, output, model_version, averaged)
    check_replaceable(final, export_format)
    check_backend_writes(export_format)
    keras_models = [computing_in_float32(runs.load_model(member)) for member in members]
    model = averaging(keras_models, tta, tta_shift) if averaged else with_softmax(keras_models[0])
    images = load_dataset(data_dir).x_test[:PARITY_IMAGES]
    expected = softmax(ensemble_logits(keras_models, images, tta, tta_shift))
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=".staging-"))  # beside `final`, so a rename moves it there
    try:
        built = staging / final.name
        run_exported = (write_onnx if export_format == "onnx" else write_saved_model)(model, built)
        actual = np.asarray(run_exported(images), dtype=np.float64)
        report = {
            "format": export_format, "path": str(final), "num_images": len(images),
            "max_abs_difference": float(np.max(np.abs(actual - expected))),
            "argmax_agreement": float(np.mean(actual.argmax(axis=1) == expected.argmax(axis=1))),
            "tolerance": PARITY_TOLERANCE,
            **({"runs": [str(member) for member in members], "tta": tta, "tta_shift": tta_shift} if averaged else {}),
        }  # fmt: skip
        report["passed"] = report["max_abs_difference"] <= PARITY_TOLERANCE and report["argmax_agreement"] == 1.0
        if not report["passed"]:
            raise ExportError(
                f"{export_format} export does not match Keras on {len(images)} test images: max |difference| "
                f"{report['max_abs_difference']:.2e} (tolerance {PARITY_TOLERANCE:.0e}), argmax agreement "
                f"{report['argmax_agreement']:.4f}; nothing was written"
            )
        for path in sorted(built.rglob("*"), reverse=True) + [built]:  # files before the folders that list them
            runs.flush_to_disk(path)
        if final.is_dir():  # an earlier SavedModel: moved aside, then deleted with the staging folder
            final.rename(staging / "replaced")
        os.replace(built, final)  # a file replaces the earlier one in one step
        runs.flush_to_disk(final.parent)
        runs.write_json(run_dir / EXPORT_DIR / f"{AVERAGED + '_' if averaged else ''}{export_format}_parity.json", report)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""The `fmnist` command: a thin shell over the package's functions.

    fmnist data [--data-dir DIR] [--download] [--grid samples.png|.svg|.pdf]
    fmnist models
    fmnist train [--model baseline] [--epochs 10] [--seed 0] [--run-dir runs/baseline] ...
    fmnist evaluate RUN [--images FILE --labels FILE | --images FOLDER [--background auto|light|dark]] [--output DIR]
                        [--ensemble RUN2 ...] [--tta]
    fmnist predict RUN FILE... [--json] [--top 3] [--background auto|light|dark] [--ensemble RUN2 ...] [--tta]
                       [--engine auto|onnx|keras]
    fmnist report RUN
    fmnist compare RUN RUN... [--json]
    fmnist export RUN [--format onnx|saved_model] [--output PATH] [--model-version N]
    fmnist serve RUN [--host 127.0.0.1] [--port 8000] [--workers 1] [--ensemble RUN2 ...] [--tta]
                     [--engine auto|onnx|keras] [--model-name NAME] [--model-version 1] [--model-label LABEL ...]

Keras (and its backend) is imported only by the commands that need it, after `--backend`
has been applied, so `--help`, `fmnist data` and `fmnist predict` on a run with an ONNX export
start quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path

from fmnist import __version__
from fmnist.config import PRESETS, TrainConfig, field_types, preset

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def number_in(kind: type, low: float, high: float = float("inf")):
    """An argparse type: a number of `kind` from `low` to `high`, so that a bad value stops at the command line."""

    def parse(text: str):
        value = kind(text)  # a ValueError here becomes argparse's "invalid int value: 'x'"
        if not low <= value <= high:  # written so that NaN fails too
            what = "a whole number" if kind is int else "a number"
            bounds = f"from {low} to {high}" if high < float("inf") else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {what} {bounds}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, defaulting to None so that only given flags override."""
    group = parser.add_argument_group("training config (defaults are the spec's)")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = field_types()[field.name]
        if isinstance(kind, types.UnionType):  # `int | None`: the flag takes the non-None type
            kind = next(option for option in typing.get_args(kind) if option is not type(None))
        help_text = f"{field.metadata['help']} (default: {field.default})"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(flag, type=kind, default=None, metavar=field.name.upper(), help=help_text)


def resolve_config(arguments: argparse.Namespace) -> TrainConfig:
    if arguments.config and arguments.preset:
        raise ValueError("--config and --preset both choose the starting point; give one of them")
    if arguments.config:
        base = TrainConfig.load(Path(arguments.config))
    else:
        base = preset(arguments.preset) if arguments.preset else TrainConfig()
    overrides = {field.name: getattr(arguments, field.name) for field in dataclasses.fields(TrainConfig)}
    return dataclasses.replace(base, **{key: value for key, value in overrides.items() if value is not None})


def command_train(arguments: argparse.Namespace) -> int:
    from fmnist.train import train

    config = resolve_config(arguments)
    run_dir = Path(arguments.run_dir or f"runs/{config.model}")
    print(f"training {config.model} into {run_dir}", flush=True)
    metrics = train(config, run_dir, data_dir=arguments.data_dir, report=arguments.report)
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}, test loss {metrics['test_loss']:.4f}, "
        f"validation accuracy {metrics['val_accuracy']:.4f}, {metrics['train_seconds']:.1f} s of training\n"
        f"run directory: {run_dir}" + (f" (report: {run_dir / 'report.html'})" if arguments.report else "")
    )
    return 0


def variant_name(data: str, arguments: argparse.Namespace) -> str:
    """What was evaluated besides the run as trained, e.g. test-ensemble-tta."""
    return data + ("-ensemble" if arguments.ensemble else "") + {None: "", True: "-tta", False: "-no-tta"}[arguments.tta]


def evaluation_output(arguments: argparse.Namespace, name: str) -> Path:
    return Path(arguments.output or Path(arguments.run) / "evaluations" / name)


def command_evaluate(arguments: argparse.Namespace) -> int:
    import numpy as np

    from fmnist.evaluate import evaluate_run
    from fmnist.images import array_to_images, load_labelled_folder, read_array

    folder = arguments.images is not None and Path(arguments.images).is_dir()  # labelled by its class subfolders
    if folder and arguments.labels is not None:
        raise ValueError(f"--images {arguments.images} is a folder, labelled by its class subfolders; leave out --labels")
    if not folder and (arguments.images is None) != (arguments.labels is None):
        raise ValueError("--images and --labels go together (or give --images a folder with a subfolder per class)")
    if arguments.images and arguments.split != "test":
        raise ValueError("--split chooses between the run's own test and validation images; --images gives others")
    if arguments.background != "auto" and not folder:
        raise ValueError("--background is for image files, in an --images folder with a subfolder per class; "
                         "arrays and the dataset's own images are taken as they are")
    ensemble = tuple(arguments.ensemble or ())
    images = labels = output = image_names = None  # the run's test images, results written into the run itself
    if arguments.split == "validation":
        from fmnist.data import load_dataset
        from fmnist.train import held_out_split

        images, labels = held_out_split([Path(arguments.run), *map(Path, ensemble)], load_dataset(arguments.data_dir))
        output = evaluation_output(arguments, variant_name("validation", arguments))
    elif folder:
        from fmnist import runs  # evaluate_run checks that an ensemble's runs share these classes

        class_names = runs.load_class_names(runs.require_run(Path(arguments.run)))
        images, labels, image_names = load_labelled_folder(arguments.images, class_names, arguments.background)
        output = evaluation_output(arguments, Path(arguments.images).resolve().name)
    elif arguments.images:
        images = array_to_images(read_array(arguments.images), arguments.images)
        labels = read_array(arguments.labels).ravel()
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
            raise ValueError(f"{arguments.labels}: labels must be whole numbers from 0 to 9")
        labels = labels.astype("int64")
        output = evaluation_output(arguments, Path(arguments.images).name.split(".")[0])
    elif ensemble or arguments.tta is not None:
        output = evaluation_output(arguments, variant_name("test", arguments))
    results = evaluate_run(arguments.run, images, labels, output_dir=output, data_dir=arguments.data_dir,
                           ensemble=ensemble, tta=arguments.tta, image_names=image_names)  # fmt: skip
    output = output or Path(arguments.run)
    print(f"accuracy {results.accuracy:.4f}, loss {results.loss:.4f} on {len(results.labels):,} images; written to {output}")
    return 0


def command_predict(arguments: argparse.Namespace) -> int:
    from fmnist.predict import Predictor

    predictor = Predictor.from_runs([arguments.run, *(arguments.ensemble or ())], top_k=arguments.top, tta=arguments.tta,
                                    background=arguments.background, engine=arguments.engine)  # fmt: skip
    entries = predictor.predict_files(arguments.files)
    if arguments.json:
        print(json.dumps(entries, indent=2))
    for entry in entries:
        label = entry["path"] + (f"[{entry['index']}]" if "index" in entry else "")
        if "error" in entry:
            print(f"error: {entry['error']}", file=sys.stderr)
        elif not arguments.json:
            ranked = ", ".join(f"{top['class_name']} {top['probability']:.3f}" for top in entry["top"])
            print(f"{label}: {entry['class_name']}  ({ranked})")
    return EXIT_ERROR if any("error" in entry for entry in entries) else 0


def command_data(arguments: argparse.Namespace) -> int:
    from fmnist import data

    if arguments.download:
        from fmnist.download import download_all

        download_all(Path(arguments.data_dir) if arguments.data_dir else data.cache_dir(), replace_bad=True)
    dataset = data.load_dataset(arguments.data_dir or (data.cache_dir() if arguments.download else None))
    print(f"Fashion-MNIST in {dataset.directory}: all four files verified")
    for name, checksum in dataset.checksums.items():
        print(f"  {name:30s} sha256 {checksum} OK")
    train_counts, test_counts = data.class_counts(dataset.y_train), data.class_counts(dataset.y_test)
    print(f"\n  {'class':13s} {'train':>6s} {'test':>6s}")
    for index, name in enumerate(dataset.class_names):
        print(f"  {f'{index} {name}':13s} {train_counts[index]:6d} {test_counts[index]:6d}")
    print(f"  {'total':13s} {train_counts.sum():6d} {test_counts.sum():6d}")
    if arguments.grid:
        from fmnist import plots, runs

        figure = plots.sample_grid(dataset.x_train, dataset.y_train, list(dataset.class_names))
        runs.save_figure(figure, Path(arguments.grid))
        print(f"\nsample grid written to {arguments.grid}")
    return 0


def command_report(arguments: argparse.Namespace) -> int:
    from fmnist.report import write_report

    path = write_report(arguments.run, data_dir=arguments.data_dir)
    print(f"report written to {path} and {path.with_suffix('.md')}")
    return 0


def command_compare(arguments: argparse.Namespace) -> int:
    from fmnist.compare import compare_runs, format_comparison

    comparison = compare_runs(arguments.runs)
    print(json.dumps(comparison, indent=2) if arguments.json else format_comparison(comparison))
    return 0


def command_export(arguments: argparse.Namespace) -> int:
    from fmnist.export import export_run

    report = export_run(arguments.run, arguments.format, data_dir=arguments.data_dir, output=arguments.output,
                        model_version=arguments.model_version)  # fmt: skip
    print(f"{report['format']} export written to {report['path']}\n"
          f"parity on {report['num_images']:,} test images: max |probability difference| "
          f"{report['max_abs_difference']:.2e} (tolerance {report['tolerance']:.0e}), "
          f"argmax agreement {report['argmax_agreement']:.4f}: {'passed' if report['passed'] else 'FAILED'}")  # fmt: skip
    return 0


def command_serve(arguments: argparse.Namespace) -> int:
    from fmnist.serve import ServeConfig
    from fmnist.server import serve

    config = ServeConfig(run_dir=arguments.run, engine=arguments.engine, max_batch=arguments.max_batch,
                         max_delay_ms=arguments.max_delay_ms, max_body_bytes=arguments.max_body_mb * 1024 * 1024,
                         ensemble=tuple(arguments.ensemble or ()), tta=arguments.tta, model_name=arguments.model_name,
                         model_version=arguments.model_version, model_labels=tuple(arguments.model_label or ()))  # fmt: skip
    serve(config, host=arguments.host, port=arguments.port, workers=arguments.workers)
    return 0


def command_models(arguments: argparse.Namespace) -> int:
    from fmnist.models import DESCRIPTIONS, build_model

    width = max(map(len, DESCRIPTIONS))
    for name, description in DESCRIPTIONS.items():
        print(f"{name:{width}s} {build_model(name).count_params():>10,d} parameters  {description}")
    return 0


def add_ensemble_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ensemble", action="append", metavar="RUN",
                        help="another run whose probabilities are averaged with RUN's (repeat for more)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image's prediction with its mirror image's (default: as RUN was evaluated)")


def add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("auto", "onnx", "keras"), default="auto",
                        help="auto (default): ONNX Runtime for a run with an ONNX export (`fmnist export RUN`), else Keras")


def add_background_option(parser: argparse.ArgumentParser) -> None:
    from fmnist.images import BACKGROUNDS  # numpy and Pillow, no Keras

    parser.add_argument("--background", choices=BACKGROUNDS, default="auto",
                        help="of the image files: auto (default) tells it from each image's border and negates a light "
                             "one, as the dataset's photos were; light or dark says it for all, where a border misleads "
                             "(an item that fills the frame). Arrays are taken as they are")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fmnist", description="Train, evaluate and use Fashion-MNIST classifiers.")
    parser.add_argument("--version", action="version", version=f"fmnist {__version__}")
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"),
                        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_parser = commands.add_parser("data", help="locate, verify and describe the dataset")
    data_parser.add_argument("--data-dir", help="directory with the four IDX files (default: search, then download)")
    data_parser.add_argument("--download", action="store_true",
                             help="download missing or bad files (into --data-dir, else the user cache)")
    data_parser.add_argument("--grid", metavar="FILE", help="write a grid of sample images per class (.png, .svg, .pdf...)")
    data_parser.set_defaults(handler=command_data)

    commands.add_parser("models", help="list the registered architectures").set_defaults(handler=command_models)

    train_parser = commands.add_parser("train", help="train a model, evaluate it and write its run directory")
    train_parser.add_argument("--run-dir", help="where the run goes; an interrupted run there is resumed (default: runs/MODEL)")
    train_parser.add_argument("--config", help="a config.json to start from (flags override it)")
    train_parser.add_argument("--preset", choices=sorted(PRESETS),
                              help="a named set of options to start from (flags override it; see README)")
    train_parser.add_argument("--data-dir", help="directory with the four IDX files")
    train_parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                              help="write the analysis report at the end (default: yes; `fmnist report RUN` does it later)")
    add_config_flags(train_parser)
    train_parser.set_defaults(handler=command_train)

    evaluate_parser = commands.add_parser("evaluate", help="re-evaluate a run on the test set or on given data")
    evaluate_parser.add_argument("run", help="run directory")
    evaluate_parser.add_argument("--images", help="images as .npy or IDX, or a folder with one subfolder of image "
                                                  "files per class, named after it (default: the test set)")
    evaluate_parser.add_argument("--labels", help="labels as .npy or IDX, with --images as an array")
    evaluate_parser.add_argument("--output", help="where results on --images, of an ensemble or with another --tta go "
                                                  "(default: RUN/evaluations/NAME)")
    evaluate_parser.add_argument("--data-dir", help="directory with the four IDX files")
    evaluate_parser.add_argument("--split", choices=("test", "validation"), default="test",
                                 help="the test set (default) or the validation images the run held out, "
                                      "on which to compare runs, ensembles and TTA without touching the test set")  # fmt: skip
    add_background_option(evaluate_parser)
    add_ensemble_options(evaluate_parser)
    evaluate_parser.set_defaults(handler=command_evaluate)

    report_parser = commands.add_parser("report", help="write the run's analysis: report.html and report.md")
    report_parser.add_argument("run", help="run directory")
    report_parser.add_argument("--data-dir", help="directory with the four IDX files")
    report_parser.set_defaults(handler=command_report)

    compare_parser = commands.add_parser("compare", help="compare runs; McNemar's test for each pair")
    compare_parser.add_argument("runs", nargs="+", metavar="RUN")
    compare_parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown tables")
    compare_parser.set_defaults(handler=command_compare)

    from fmnist.export import FORMATS  # numpy only: Keras and ONNX Runtime are imported where used

    export_parser = commands.add_parser("export", help="export the model (ONNX, SavedModel) with a parity check")
    export_parser.add_argument("run", help="run directory")
    export_parser.add_argument("--format", choices=FORMATS, default="onnx",
                               help="onnx (default; ONNX Runtime, and `fmnist serve` uses it) or saved_model (TF Serving)")
    export_parser.add_argument("--output", metavar="PATH",
                               help="the ONNX file (default: RUN/export/model.onnx), or the SavedModel's model base path, "
                                    "which gets a version directory (default: RUN/export/saved_model)")
    export_parser.add_argument("--model-version", type=number_in(int, 1), metavar="N",
                               help="the SavedModel's version directory under the base path, as TF Serving numbers "
                                    "them (default: 1)")
    export_parser.add_argument("--data-dir", help="directory with the four IDX files (for the parity check)")
    export_parser.set_defaults(handler=command_export)

    serve_parser = commands.add_parser("serve", help="serve a run over HTTP: KServe v2, TF Serving REST, web page")
    serve_parser.add_argument("run", help="run directory")
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve_parser.add_argument("--port", type=number_in(int, 1, 65535), default=8000, help="port (default: 8000)")
    serve_parser.add_argument("--workers", type=number_in(int, 1), default=1, help="server processes (default: 1)")
    add_engine_option(serve_parser)
    serve_parser.add_argument("--max-batch", type=number_in(int, 1), default=256, help="most images per model call")
    serve_parser.add_argument("--max-delay-ms", type=number_in(float, 0), default=2.0, help="longest wait to fill a batch")
    serve_parser.add_argument("--max-body-mb", type=number_in(int, 1), default=10, help="largest request body (default: 10)")
    serve_parser.add_argument("--model-name", metavar="NAME", help="the model's name in the API's paths (default: the run "
                              "directory's name), as TF Serving's --model_name")
    serve_parser.add_argument("--model-version", type=number_in(int, 1), default=1, metavar="N",
                              help="the version it is served as (default: 1), e.g. the one `fmnist export --model-version` gave")
    serve_parser.add_argument("--model-label", action="append", metavar="LABEL",
                              help="a TF Serving version label for it: /v1/models/NAME/labels/LABEL:predict (repeat for more)")
    add_ensemble_options(serve_parser)
    serve_parser.set_defaults(handler=command_serve)

    predict_parser = commands.add_parser("predict", help="classify image files (PNG, JPEG, ...), .npy or IDX arrays")
    predict_parser.add_argument("run", help="run directory")
    predict_parser.add_argument("files", nargs="+", metavar="FILE",
                                help="image files (PNG, JPEG, ...), .npy or IDX arrays, or directories of them")
    predict_parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    predict_parser.add_argument("--top", type=number_in(int, 1), default=3, help="how many classes to show (default: 3)")
    add_background_option(predict_parser)
    add_ensemble_options(predict_parser)
    add_engine_option(predict_parser)
    predict_parser.set_defaults(handler=command_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.backend:
        os.environ["KERAS_BACKEND"] = arguments.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ log chatter hides the output; real errors still raise

    from fmnist.data import DataError, cache_dir

    # JAX's persistent compilation cache: a later run of the same shapes (another seed, `predict`) loads the
    # compiled steps instead of compiling them again (only JAX reads this; an empty value turns it off).
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir() / "jax"))
    from fmnist.images import ImageError
    from fmnist.runs import RunError, TrainingInterrupted

    try:
        return arguments.handler(arguments)
    # ExportError is a ValueError; an OSError is the file system's refusal (no space left, ...), with the path
    except (DataError, RunError, ImageError, ValueError, OSError) as error:
        print(f"fmnist: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except TrainingInterrupted as error:
        print(f"\nfmnist: interrupted: {error}. Run the same command again to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\nfmnist: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

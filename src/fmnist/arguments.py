"""The `fmnist` command line: its commands, their options and the checks argparse makes on them.

    from fmnist.arguments import build_parser, resolve_config
    arguments = build_parser().parse_args(["train", "--preset", "best", "--epochs", "2"])
    arguments.command                # "train": fmnist.cli runs the matching command
    config = resolve_config(arguments)   # the preset (or --config), then the flags given

Options of the training config are generated from `TrainConfig`'s fields, so a new field is a new flag.
Only numpy, Pillow and the package's light modules are imported here: `--help` starts quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path

from fmnist import __version__
from fmnist.config import PRESET_PURPOSES, PRESETS, TrainConfig, field_types, preset
from fmnist.recipe_names import JIT_COMPILE, OPTIMIZERS, SCHEDULES


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


CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "jit_compile": tuple(JIT_COMPILE)}  # the fields named


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
        elif field.name in CHOICES:  # listed in --help, and a misspelt one stops at the command line
            group.add_argument(flag, choices=CHOICES[field.name], default=None, help=help_text)
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
    given = {key: value for key, value in overrides.items() if value is not None}
    lengths = [name for name in ("epochs", "max_steps") if name in given]
    if given.get("time_budget") and lengths:
        # the budget would set them (train.py), so what the user asked for would be dropped without a word
        flags = " and ".join("--" + name.replace("_", "-") for name in lengths)
        raise ValueError(f"--time-budget sets the epochs and --max-steps to what fits in it, so {flags} would be "
                         "ignored; give --time-budget alone, or the length alone (--time-budget 0 turns a preset's "
                         "budget off, as the length given alone does)")  # fmt: skip
    if lengths and "time_budget" not in given:
        # --epochs N or --max-steps N given beside a preset or config with a time budget (or a budgeted run's
        # config.json, whose max_steps cut its last epoch short): that length, no budget
        given = {"time_budget": 0.0, "max_steps": None, **given}
    if given.get("tta") is False:  # --no-tta beside a preset's shifted views: none of them, as evaluate and predict do
        given = {"tta_shift": 0, **given}
    return dataclasses.replace(base, **given)


def add_ensemble_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ensemble", action="append", metavar="RUN",
                        help="another run whose probabilities are averaged with RUN's (repeat for more)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image's prediction with its mirror image's (default: as RUN was evaluated)")
    parser.add_argument("--tta-shift", type=int, metavar="N",
                        help="with --tta, also average the views shifted by up to N pixels each way, 2(2N+1)^2 views in "
                             "all (default: as RUN was evaluated, the `tta_shift` of its config.json)")  # fmt: skip


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

    commands.add_parser("models", help="list the registered architectures")

    train_parser = commands.add_parser("train", help="train a model, evaluate it and write its run directory")
    train_parser.add_argument("--run-dir", help="where the run goes; an interrupted run there is resumed (default: runs/MODEL)")
    train_parser.add_argument("--config", help="a config.json to start from (flags override it)")
    purposes = "; ".join(f"{name}: {purpose}" for name, purpose in PRESET_PURPOSES.items())
    train_parser.add_argument("--preset", choices=sorted(PRESETS),
                              help=f"a named set of options to start from, which flags override ({purposes}; README "
                                   "has what each sets and reached)")  # fmt: skip
    train_parser.add_argument("--data-dir", help="directory with the four IDX files")
    train_parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                              help="write the analysis report at the end (default: yes; `fmnist report RUN` does it later)")
    add_config_flags(train_parser)

    evaluate_parser = commands.add_parser("evaluate", help="re-evaluate a run on the test set or on given data")
    evaluate_parser.add_argument("run", help="run directory")
    evaluate_parser.add_argument("--images", help="images as .npy or IDX, or a folder with one subfolder of image "
                                                  "files per class, named after it (default: the test set)")
    evaluate_parser.add_argument("--labels", help="labels as .npy or IDX, with --images as an array")
    evaluate_parser.add_argument("--output", help="where results on --images, of an ensemble or with another --tta or "
                                                  "--tta-shift go (default: RUN/evaluations/NAME)")
    evaluate_parser.add_argument("--data-dir", help="directory with the four IDX files")
    evaluate_parser.add_argument("--split", choices=("test", "validation"), default="test",
                                 help="the test set (default) or the validation images the run held out, "
                                      "on which to compare runs, ensembles and TTA without touching the test set")  # fmt: skip
    evaluate_parser.add_argument("--engine", choices=("keras", "onnx"), default="keras",
                                 help="keras (default): the run's model; onnx: its ONNX export (`fmnist export RUN`) "
                                      "through ONNX Runtime, as predict and serve run it (results in RUN/evaluations/"
                                      "NAME-onnx, the run itself left as it is)")  # fmt: skip
    add_background_option(evaluate_parser)
    add_ensemble_options(evaluate_parser)

    report_parser = commands.add_parser("report", help="write the run's analysis: report.html and report.md")
    report_parser.add_argument("run", help="run directory")
    report_parser.add_argument("--data-dir", help="directory with the four IDX files")

    compare_parser = commands.add_parser("compare", help="compare runs; McNemar's test for each pair")
    compare_parser.add_argument("runs", nargs="+", metavar="RUN")
    compare_parser.add_argument("--json", action="store_true", help="print JSON instead of Markdown tables")

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
    export_parser.add_argument("--ensemble", action="append", metavar="RUN",
                               help="another run whose model the export runs too, averaging the probabilities (repeat "
                                    "for more); written to RUN/export/averaged.onnx or averaged_saved_model/")
    export_parser.add_argument("--tta", action="store_true",
                               help="average each image's views in the export: it and its mirror image, and the shifted "
                                    "views RUN was evaluated with (its config's tta_shift); as --ensemble, to averaged.*")
    export_parser.add_argument("--tta-shift", type=int, metavar="N",
                               help="with --tta, the views shifted by up to N pixels each way instead")

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

    predict_parser = commands.add_parser("predict", help="classify image files (PNG, JPEG, ...), .npy or IDX arrays")
    predict_parser.add_argument("run", help="run directory")
    predict_parser.add_argument("files", nargs="+", metavar="FILE",
                                help="image files (PNG, JPEG, ...), .npy or IDX arrays, or directories of them")
    predict_parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    predict_parser.add_argument("--top", type=number_in(int, 1), default=3, help="how many classes to show (default: 3)")
    add_background_option(predict_parser)
    add_ensemble_options(predict_parser)
    add_engine_option(predict_parser)
    return parser

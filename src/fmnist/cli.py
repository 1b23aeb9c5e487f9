"""The `fmnist` command: a thin shell over the package's functions.

    fmnist data [--data-dir DIR] [--download] [--grid samples.png|.svg|.pdf]
    fmnist models
    fmnist train [--model baseline] [--epochs 10] [--seed 0] [--run-dir runs/baseline] ...
    fmnist evaluate RUN [--images FILE --labels FILE | --images FOLDER [--background auto|light|dark]] [--output DIR]
                        [--ensemble RUN2 ...] [--tta] [--tta-shift N] [--engine keras|onnx]
    fmnist predict RUN FILE... [--json] [--top 3] [--background auto|light|dark] [--ensemble RUN2 ...] [--tta] [--tta-shift N]
                       [--engine auto|onnx|keras]
    fmnist report RUN
    fmnist compare RUN RUN... [--json]
    fmnist export RUN [--format onnx|saved_model] [--output PATH] [--model-version N] [--ensemble RUN2 ...] [--tta]
                      [--tta-shift N]
    fmnist serve RUN [--host 127.0.0.1] [--port 8000] [--workers 1] [--ensemble RUN2 ...] [--tta] [--tta-shift N]
                     [--engine auto|onnx|keras] [--model-name NAME] [--model-version 1] [--model-label LABEL ...]

The commands and their options are defined in `fmnist.arguments`; each command here turns its parsed
options into a call of the package's functions. Keras (and its backend) is imported only by the commands
that need it, after `--backend` has been applied, so `--help`, `fmnist data` and `fmnist predict` on a
run with an ONNX export start quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fmnist.arguments import build_parser, resolve_config
from fmnist.config import PRESETS

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


def precision_note(preset: str | None, mixed_precision: bool) -> str | None:
    """A pointer to the CPU preset made for this CPU, where `preset` is made for the other kind of CPU or for a GPU
    that is not there (README, "--preset"), or a warning that mixed precision will be slow on this CPU; None where
    none applies."""
    import keras

    from fmnist.recipe import accelerator_present, cpu_has_bfloat16

    if accelerator_present():
        return None
    if preset == "gpu":  # 148 epochs of resnet9: an epoch took 150-158 s in bfloat16 on a Xeon with AMX (BENCHMARKS.md)
        cpu_preset = "best_bf16" if cpu_has_bfloat16() else "best"
        return (f"note: --preset gpu is made for a GPU, and the {keras.backend.backend()} backend sees none: on a CPU "
                "its epochs take minutes each (2.5 for resnet9 on a 2-core Xeon with AMX), and the run hours; "
                f"--preset {cpu_preset} is the recipe made for this CPU (15 minutes)")  # fmt: skip
    if preset and f"{preset}_bf16" in PRESETS and cpu_has_bfloat16():
        # not "stronger": on a Xeon with AMX best_bf16 validated the same as best, in more epochs (BENCHMARKS.md)
        return (f"note: this CPU has bfloat16 arithmetic (AVX512_BF16 or AMX): --preset {preset}_bf16 is the recipe "
                "made for it, in bfloat16, which it runs faster than float32 (README compares the two)")  # fmt: skip
    if not mixed_precision or cpu_has_bfloat16():
        return None
    # on an AVX2 CPU compact trained 8 (TensorFlow) to 14 (PyTorch) times slower in bfloat16 (BENCHMARKS.md)
    if preset and preset.endswith("_bf16"):
        return (f"note: --preset {preset} is for CPUs with bfloat16 arithmetic (AVX512_BF16 or AMX), which this one "
                f"lacks, so it trains many times slower here: take --preset {preset.removesuffix('_bf16')}, made for "
                "such a CPU (README)")  # fmt: skip
    return ("note: mixed precision without a GPU computes in bfloat16, which this CPU has no instructions for "
            "(AVX512_BF16 or AMX), so expect it to run many times slower than float32 (--no-mixed-precision turns it "
            "off)")  # fmt: skip


def command_train(arguments: argparse.Namespace) -> int:
    from fmnist.report import validation_phrase
    from fmnist.train import train

    config = resolve_config(arguments)
    if note := precision_note(arguments.preset, config.mixed_precision):
        print(note, flush=True)
    run_dir = Path(arguments.run_dir or f"runs/{config.model}")
    metrics = train(config, run_dir, data_dir=arguments.data_dir, report=arguments.report)
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}, test loss {metrics['test_loss']:.4f}, {validation_phrase(metrics)}, "
        f"{metrics['train_seconds']:.1f} s of training\n"
        f"run directory: {run_dir}" + (f" (report: {run_dir / 'report.html'})" if arguments.report else "")
    )
    return 0


def variant_name(data: str, arguments: argparse.Namespace) -> str:
    """What was evaluated besides the run as trained, e.g. test-ensemble-tta or validation-tta-shift1."""
    shift = "" if arguments.tta_shift is None else f"-shift{arguments.tta_shift}"
    return data + ("-ensemble" if arguments.ensemble else "") + {None: "", True: "-tta", False: "-no-tta"}[arguments.tta] + shift


def evaluation_output(arguments: argparse.Namespace, name: str) -> Path:
    name += "-onnx" if arguments.engine == "onnx" else ""  # beside the Keras model's results, not over them
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
        from fmnist.splits import held_out_split

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
    elif ensemble or arguments.tta is not None or arguments.tta_shift is not None or arguments.engine == "onnx":
        output = evaluation_output(arguments, variant_name("test", arguments))
    results = evaluate_run(arguments.run, images, labels, output_dir=output, data_dir=arguments.data_dir,
                           ensemble=ensemble, tta=arguments.tta, tta_shift=arguments.tta_shift, image_names=image_names,
                           engine=arguments.engine)  # fmt: skip
    output = output or Path(arguments.run)
    print(f"accuracy {results.accuracy:.4f}, loss {results.loss:.4f} on {len(results.labels):,} images; written to {output}")
    return 0


def command_predict(arguments: argparse.Namespace) -> int:
    from fmnist.predict import Predictor

    predictor = Predictor.from_runs([arguments.run, *(arguments.ensemble or ())], top_k=arguments.top, tta=arguments.tta,
                                    background=arguments.background, engine=arguments.engine,
                                    tta_shift=arguments.tta_shift)  # fmt: skip
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
    from fmnist.evaluate import view_count
    from fmnist.export import export_run

    report = export_run(arguments.run, arguments.format, data_dir=arguments.data_dir, output=arguments.output,
                        model_version=arguments.model_version, ensemble=tuple(arguments.ensemble or ()),
                        tta=arguments.tta, tta_shift=arguments.tta_shift)  # fmt: skip
    if "runs" in report:  # an ensemble's or TTA's export
        views = view_count(report["tta"], report["tta_shift"])
        averaged = f" (averaging {len(report['runs'])} run(s) over {views} view(s) of each image)"
    else:
        averaged = ""
    print(f"{report['format']} export{averaged} written to {report['path']}\n"
          f"parity on {report['num_images']:,} test images: max |probability difference| "
          f"{report['max_abs_difference']:.2e} (tolerance {report['tolerance']:.0e}), "
          f"argmax agreement {report['argmax_agreement']:.4f}: {'passed' if report['passed'] else 'FAILED'}")  # fmt: skip
    return 0


def command_serve(arguments: argparse.Namespace) -> int:
    from fmnist.serve import ServeConfig
    from fmnist.server import serve

    config = ServeConfig(run_dir=arguments.run, engine=arguments.engine, max_batch=arguments.max_batch,
                         max_delay_ms=arguments.max_delay_ms, max_body_bytes=arguments.max_body_mb * 1024 * 1024,
                         ensemble=tuple(arguments.ensemble or ()), tta=arguments.tta, tta_shift=arguments.tta_shift,
                         model_name=arguments.model_name,
                         model_version=arguments.model_version, model_labels=tuple(arguments.model_label or ()))  # fmt: skip
    serve(config, host=arguments.host, port=arguments.port, workers=arguments.workers)
    return 0


def command_models(arguments: argparse.Namespace) -> int:
    from fmnist.models import DESCRIPTIONS, build_model

    width = max(map(len, DESCRIPTIONS))
    for name, description in DESCRIPTIONS.items():
        print(f"{name:{width}s} {build_model(name).count_params():>10,d} parameters  {description}")
    return 0


COMMANDS = {"data": command_data, "models": command_models, "train": command_train, "evaluate": command_evaluate,
            "report": command_report, "compare": command_compare, "export": command_export, "serve": command_serve,
            "predict": command_predict}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from fmnist import tensorflow_logs
    from fmnist.allocator import keep_freed_memory

    keep_freed_memory()  # before TensorFlow or PyTorch allocate: each training step's memory stays for the next
    arguments = build_parser().parse_args(argv)
    if arguments.backend:
        os.environ["KERAS_BACKEND"] = arguments.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ log chatter hides the output; real errors still raise
    tensorflow_logs.quiet_import()  # and the lines it writes as it loads, which that setting no longer filters

    from fmnist.data import DataError, cache_dir

    # JAX's persistent compilation cache: a later run of the same shapes (another seed, `predict`) loads the
    # compiled steps instead of compiling them again (only JAX reads this; an empty value turns it off).
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_dir() / "jax"))
    from fmnist.images import ImageError
    from fmnist.runs import RunError, TrainingInterrupted

    try:
        return COMMANDS[arguments.command](arguments)
    except BrokenPipeError:  # the reader of the output went away (`fmnist models | head -3`): nothing to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that Python's exit does not fail on flushing
        return EXIT_ERROR
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

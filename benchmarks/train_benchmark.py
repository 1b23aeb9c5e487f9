"""Train through the real CLI into a fresh run directory and print a BENCHMARKS.md row.

    python benchmarks/train_benchmark.py                         # the spec's baseline, full data
    python benchmarks/train_benchmark.py --seeds 0 1 2 -- --model baseline --epochs 10

    python benchmarks/train_benchmark.py --fit-seconds 150 --seeds 0 1 2 -- --preset gpu
    python benchmarks/train_benchmark.py --seeds 0 1 2 --ensemble -- --preset best   # and the 3 runs as one
    KERAS_BACKEND=jax python benchmarks/train_benchmark.py --seeds 0 1 2 --ensemble --parallel -- --preset gpu --epochs 60

Each seed is one `fmnist train` run (full training set, 10% held out, test set evaluated once
at the end). "train time" sums the epochs' `fit` calls (with their validation passes); "whole
command" is the `fmnist train` process from start to exit. The row gives the machine, the date,
the exact command, and for each figure the mean and standard deviation over the seeds. Results
are also written as JSON next to the runs, after each seed, so a benchmark cut short keeps the
seeds it finished.

--fit-seconds chooses the number of epochs from the speed of the machine, for a time budget:
a probe run of two epochs on a fifth of the data (seed 1000, its own folder) times the first
epoch (which includes compilation) and the second, and the seeds then train for as many epochs
as fit the budget. Only time decides it, never accuracy. (`fmnist train --time-budget` sizes one run
the same way, with its probe counted in the budget; this probe runs once, so every seed trains the
same epochs.)

--ensemble then evaluates the seeds' runs as one ensemble (`fmnist evaluate --ensemble`, each
run's probabilities averaged, with the runs' own TTA): on the validation images they held out,
then once on the test set, with the training time of all the runs together.

--parallel trains the seeds' runs at the same time, one process each, to fill one accelerator that a single
run leaves partly idle (each JAX process then takes an equal share of its memory). Their epochs overlap, so an
ensemble's training time is then that of its longest run, not the sum, and "whole command" is the time from
starting the processes to each one's exit.

--flips-alone also evaluates the test set with flip TTA alone (`fmnist evaluate --tta --tta-shift 0`), each run and
the ensemble: issue 3 allows no more for its best CPU model, and `best` and `best_bf16` average 18 views.

--compile-once lets the seeds' runs share a fresh JAX compilation cache (in the runs folder), as runs
one after another share the CLI's default cache on a user's machine: the first run compiles the
training step, the others load it. Without it every run compiles from scratch, as a first run does.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmnist import runs


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    described = f"{model}, {os.cpu_count()} cores, {platform.system()}"
    if shutil.which("nvidia-smi"):
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        described += "".join(f", {name.strip()}" for name in gpus.stdout.splitlines() if name.strip())
    return described


def spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def start_run(train_arguments: list[str], run_dir: Path, compilation_cache: Path | None = None,
              processes_sharing: int = 1) -> subprocess.Popen:
    """One `fmnist train` in a fresh process (`python -m fmnist`, so it also runs from a source tree)."""
    command = [sys.executable, "-m", "fmnist", "train", *train_arguments, "--run-dir", str(run_dir)]
    print("$", shlex.join(command), flush=True)
    # Without a cache folder the run compiles from scratch, as a first run does: the CLI's JAX
    # compilation cache stays off (an empty value) unless JAX_COMPILATION_CACHE_DIR is set.
    cache = str(compilation_cache) if compilation_cache else os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    environment = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}
    if processes_sharing > 1:  # JAX takes 75% of a GPU's memory at start: the second process would find too little
        environment.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / processes_sharing:.3f}")
    return subprocess.Popen(command, env=environment)


def train_run(train_arguments: list[str], run_dir: Path, compilation_cache: Path | None = None) -> None:
    process = start_run(train_arguments, run_dir, compilation_cache)
    if process.wait():
        raise subprocess.CalledProcessError(process.returncode, process.args)


def train_side_by_side(train_arguments: list[str], run_dirs: dict[int, Path]) -> dict[int, float]:
    """Each seed's `fmnist train` at the same time; the seconds from starting them to each one's exit."""
    started = time.perf_counter()
    processes = {seed: start_run(train_arguments + ["--seed", str(seed)], run_dir, processes_sharing=len(run_dirs))
                 for seed, run_dir in run_dirs.items()}  # fmt: skip
    exited: dict[int, float] = {}
    while len(exited) < len(processes):
        for seed, process in processes.items():
            if seed not in exited and process.poll() is not None:
                exited[seed] = round(time.perf_counter() - started, 1)
        time.sleep(0.1)
    failed = [seed for seed, process in processes.items() if process.returncode]
    if failed:
        raise SystemExit(f"the runs of seeds {failed} failed (their output is above); the others are in {run_dirs}")
    return exited


def epochs_within(seconds: float, train_arguments: list[str], probe_dir: Path) -> int:
    """The epochs of full training that fit `seconds`, from a two-epoch run on a fifth of the data."""
    share = 5
    no_report = [] if "--no-report" in train_arguments else ["--no-report"]
    train_run([*train_arguments, "--epochs", "2", "--train-subset", str(60_000 // share), "--seed", "1000",
               *no_report], probe_dir)  # fmt: skip
    with open(probe_dir / "history.csv") as history:
        first, second = (float(row["seconds"]) for row in csv.DictReader(history))
    overhead, per_epoch = max(first - second, 0.0), second * share  # compilation; a full epoch
    epochs = max(1, int((seconds - overhead) // per_epoch))
    print(f"probe: first epoch {first:.1f} s, then {second:.1f} s on a fifth of the data; "
          f"{epochs} epochs of about {per_epoch:.1f} s fit {seconds:.0f} s", flush=True)  # fmt: skip
    return epochs


def evaluated_accuracy(run_dirs: list[Path], train_arguments: list[str], output: Path, *options: str) -> float:
    """`fmnist evaluate` of the runs (several: as one ensemble) with `options`, into `output`; the accuracy it wrote."""
    data_dir = []  # the runs' data, for the images they held out and the test set
    if "--data-dir" in train_arguments:
        data_dir = ["--data-dir", train_arguments[train_arguments.index("--data-dir") + 1]]
    members = [argument for run_dir in run_dirs[1:] for argument in ("--ensemble", str(run_dir))]
    command = [sys.executable, "-m", "fmnist", "evaluate", str(run_dirs[0]), *members, *options, "--output", str(output),
               *data_dir]  # fmt: skip
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    return runs.read_json(output / runs.METRICS)["eval_accuracy"]


def evaluate_ensemble(run_dirs: list[Path], train_arguments: list[str], runs_dir: Path, held_out: bool) -> dict:
    """The runs as one ensemble: validation accuracy first (if they held images out), then test accuracy, from
    `fmnist evaluate`."""
    accuracies = {split: evaluated_accuracy(run_dirs, train_arguments, runs_dir / f"ensemble-{split}", "--split", split)
                  for split in (("validation", "test") if held_out else ("test",))}  # fmt: skip
    return {"runs": len(run_dirs), "val_accuracy": accuracies.get("validation"), "test_accuracy": accuracies["test"]}


# Issue 3 allows flip TTA alone for its best CPU model; `best` and `best_bf16` average 18 views (BENCHMARKS.md, "Target 3
# under its own rule")
FLIPS_ALONE = ("--tta", "--tta-shift", "0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs-dir", default=None, help="where the runs go (default: a new temporary folder)")
    parser.add_argument("--fit-seconds", type=float, default=None,
                        help="train for as many epochs as fit this many seconds, timed by a probe run")
    parser.add_argument("--ensemble", action="store_true",
                        help="also evaluate the seeds' runs as one ensemble (validation, then test)")
    parser.add_argument("--compile-once", action="store_true",
                        help="the seeds' runs share a fresh JAX compilation cache: the first run compiles, the others load it")
    parser.add_argument("--parallel", action="store_true",
                        help="train the seeds' runs at the same time, one process each (to fill one accelerator)")
    parser.add_argument("--flips-alone", action="store_true",
                        help="also the test accuracy with flip TTA alone (issue 3's rule for target 3), of each run and "
                             "of the ensemble, where the runs' own TTA averages more views")  # fmt: skip
    parser.add_argument("train_arguments", nargs="*", help="arguments for `fmnist train`, after --")
    arguments = parser.parse_args()
    if arguments.ensemble and len(arguments.seeds) < 2:
        parser.error("--ensemble needs at least two --seeds")
    if arguments.parallel and arguments.compile_once:
        parser.error("--compile-once does nothing with --parallel: the runs compile at the same time")
    runs_dir = Path(arguments.runs_dir or tempfile.mkdtemp(prefix="fmnist-benchmark-"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    train_arguments = list(arguments.train_arguments)
    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": shlex.join(["python", "benchmarks/train_benchmark.py", *sys.argv[1:]]),
        "runs": [],
    }
    if arguments.fit_seconds:
        summary["epochs_for_budget"] = epochs_within(arguments.fit_seconds, train_arguments, runs_dir / "probe")
        train_arguments += ["--epochs", str(summary["epochs_for_budget"])]

    # A new folder, so that no earlier benchmark's compiled steps are found (the probe above used none)
    compilation_cache = Path(tempfile.mkdtemp(prefix="jax-cache-", dir=runs_dir)) if arguments.compile_once else None
    run_dirs = {seed: runs_dir / f"seed{seed}" for seed in arguments.seeds}
    side_by_side = train_side_by_side(train_arguments, run_dirs) if arguments.parallel else {}
    for seed, run_dir in run_dirs.items():
        # What the user waits for: start-up, data, checkpoints and the final evaluation besides the epochs.
        if arguments.parallel:
            process_seconds = side_by_side[seed]
        else:
            started = time.perf_counter()
            train_run(train_arguments + ["--seed", str(seed)], run_dir, compilation_cache)
            process_seconds = round(time.perf_counter() - started, 1)
        metrics = runs.read_json(run_dir / runs.METRICS)
        epochs = runs.epochs_trained(metrics, runs.read_json(run_dir / runs.CONFIG))  # 10.46 where a budget cut one short
        summary["runs"].append({**metrics, "epochs_trained": epochs, "process_seconds": process_seconds})
        runs.write_json(runs_dir / "benchmark.json", summary)  # atomic: a benchmark cut off keeps the last whole file

    results = summary["runs"]
    first = results[0]
    held_out = all("val_accuracy" in r for r in results)  # not with --validation-fraction 0
    validation = spread([r["val_accuracy"] for r in results], 4) if held_out else "none held out"
    epochs = [f"{r['epochs_trained']:g}" for r in results]
    epochs = epochs[0] if len(set(epochs)) == 1 else ", ".join(epochs)  # each seed's where a time budget chose them
    print("\n| model | parameters | epochs | seeds | train time (s) | whole command (s) | images/s "
          "| validation accuracy | test accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {first['model']} | {first['num_parameters']:,} | {epochs} | {len(results)} "
        f"| {spread([r['train_seconds'] for r in results], 1)} | {spread([r['process_seconds'] for r in results], 1)} "
        f"| {spread([r['images_per_second'] for r in results], 0)} "
        f"| {validation} | {spread([r['test_accuracy'] for r in results], 4)} |"
    )
    if arguments.flips_alone:
        flips = [evaluated_accuracy([run_dir], train_arguments, runs_dir / "flips-alone" / run_dir.name, *FLIPS_ALONE)
                 for run_dir in run_dirs.values()]  # fmt: skip
        summary["flips_alone"] = {"test_accuracy": flips}
        runs.write_json(runs_dir / "benchmark.json", summary)
        print(f"test accuracy with flip TTA alone: {spread(flips, 4)} ({', '.join(f'{accuracy:.4f}' for accuracy in flips)})")
    if arguments.ensemble:
        ensemble = evaluate_ensemble(list(run_dirs.values()), train_arguments, runs_dir, held_out)
        if arguments.flips_alone:
            ensemble["test_accuracy_flips_alone"] = evaluated_accuracy(
                list(run_dirs.values()), train_arguments, runs_dir / "ensemble-test-flips-alone", *FLIPS_ALONE)
        train_seconds = [r["train_seconds"] for r in results]
        together = max(train_seconds) if arguments.parallel else sum(train_seconds)  # side by side, the epochs overlap
        summary["ensemble"] = ensemble | {"train_seconds": round(together, 1)}
        runs.write_json(runs_dir / "benchmark.json", summary)
        ensemble = summary["ensemble"]
        validation = "none held out" if ensemble["val_accuracy"] is None else f"{ensemble['val_accuracy']:.4f}"
        how = "the longest run's, side by side" if arguments.parallel else "in all"
        print(f"| ensemble of the {ensemble['runs']} runs | | | | {ensemble['train_seconds']} {how} | | "
              f"| {validation} | {ensemble['test_accuracy']:.4f} |")  # fmt: skip
        if "test_accuracy_flips_alone" in ensemble:
            print(f"ensemble test accuracy with flip TTA alone: {ensemble['test_accuracy_flips_alone']:.4f}")
    print(f"\nmachine: {summary['machine']}; date: {summary['date']}\ncommand: {summary['command']}\nruns: {runs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train through the real CLI into a fresh run directory and print a BENCHMARKS.md row.

    python benchmarks/train_benchmark.py                         # the spec's baseline, full data
    python benchmarks/train_benchmark.py --seeds 0 1 2 -- --model baseline --epochs 10

Each seed is one `fmnist train` run (full training set, 10% held out, test set evaluated once
at the end). The row gives the machine, the date, the exact command, and for each figure the
mean and standard deviation over the seeds. Results are also written as JSON next to the runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()}"


def spread(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--runs-dir", default=None, help="where the runs go (default: a new temporary folder)")
    parser.add_argument("train_arguments", nargs="*", help="arguments for `fmnist train`, after --")
    arguments = parser.parse_args()
    runs_dir = Path(arguments.runs_dir or tempfile.mkdtemp(prefix="fmnist-benchmark-"))
    fmnist = Path(sys.executable).parent / "fmnist"

    results = []
    for seed in arguments.seeds:
        run_dir = runs_dir / f"seed{seed}"
        command = [str(fmnist), "train", *arguments.train_arguments, "--seed", str(seed), "--run-dir", str(run_dir)]
        print("$", shlex.join(command), flush=True)
        subprocess.run(command, check=True)
        results.append(json.loads((run_dir / "metrics.json").read_text()))

    first = results[0]
    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "command": f"python benchmarks/train_benchmark.py --seeds {' '.join(map(str, arguments.seeds))} -- "
        + shlex.join(arguments.train_arguments),
        "runs": results,
    }
    (runs_dir / "benchmark.json").write_text(json.dumps(summary, indent=2))
    print("\n| model | parameters | epochs | seeds | train time (s) | images/s | validation accuracy | test accuracy |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {first['model']} | {first['num_parameters']:,} | {first['epochs']} | {len(results)} "
        f"| {spread([r['train_seconds'] for r in results], 1)} | {spread([r['images_per_second'] for r in results], 0)} "
        f"| {spread([r['val_accuracy'] for r in results], 4)} | {spread([r['test_accuracy'] for r in results], 4)} |"
    )
    print(f"\nmachine: {summary['machine']}; date: {summary['date']}\ncommand: {summary['command']}\nruns: {runs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

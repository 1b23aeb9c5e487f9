"""Compare finished runs side by side, and test whether their test accuracies really differ.

    from fmnist.compare import compare_runs, format_comparison
    comparison = compare_runs(["runs/a", "runs/b"])
    print(format_comparison(comparison))

The table comes from each run's metrics and saved test predictions. For each pair of runs,
McNemar's exact test on their paired test predictions says whether the difference in accuracy
could be chance: on 10,000 images the standard error of an accuracy near 0.9 is about
0.3 points, so differences of a few tenths are often noise.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from fmnist import runs
from fmnist.analysis import accuracy_interval, expected_calibration_error, mcnemar
from fmnist.evaluate import load_test_predictions

SIGNIFICANCE_LEVEL = 0.05


def compare_runs(run_dirs: list[str | Path]) -> dict:
    rows, correctness, labels = [], [], None
    for run_dir in map(Path, run_dirs):
        runs.require_run(run_dir)
        metrics = runs.read_json(run_dir / runs.METRICS)
        results = load_test_predictions(run_dir, runs.load_class_names(run_dir))
        if results is None:
            raise runs.RunError(f"{run_dir} has no saved test predictions; run `fmnist evaluate {run_dir}` first")
        if labels is not None and not np.array_equal(labels, results.labels):
            raise runs.RunError(f"{run_dir} was evaluated on other test labels than {run_dirs[0]}; McNemar needs the same images")
        labels = results.labels
        correct = results.predictions == results.labels
        correctness.append((str(run_dir), correct))
        low, high = accuracy_interval(int(correct.sum()), len(correct))
        rows.append({
            "run": str(run_dir), "model": metrics["model"], "num_parameters": metrics["num_parameters"],
            "epochs": runs.epochs_trained(metrics, runs.read_json(run_dir / runs.CONFIG)),  # 10.46: a last epoch cut short
            "train_seconds": metrics["train_seconds"],
            "val_accuracy": metrics.get("val_accuracy"),  # None for a run that held no images out
            "test_accuracy": results.accuracy,
            "test_accuracy_ci": [low, high], "ece": expected_calibration_error(results.probabilities, results.labels),
        })  # fmt: skip
    pairs = []
    for (first, correct_a), (second, correct_b) in itertools.combinations(correctness, 2):
        test = mcnemar(correct_a, correct_b)
        pairs.append({"run_a": first, "run_b": second, **test, "significant": test["p_value"] < SIGNIFICANCE_LEVEL})
    return {"runs": rows, "pairs": pairs, "significance_level": SIGNIFICANCE_LEVEL}


def format_comparison(comparison: dict) -> str:
    lines = ["| run | model | parameters | epochs | train time (s) | val accuracy | test accuracy (95% CI) | ECE |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in comparison["runs"]:
        low, high = row["test_accuracy_ci"]
        validated = "none held out" if row["val_accuracy"] is None else f"{row['val_accuracy']:.4f}"
        lines.append(
            f"| {row['run']} | {row['model']} | {row['num_parameters']:,} | {row['epochs']:g} | {row['train_seconds']:.1f} "
            f"| {validated} | {row['test_accuracy']:.4f} ({low:.4f}-{high:.4f}) | {row['ece']:.4f} |"
        )
    if comparison["pairs"]:
        lines += ["", "McNemar's exact test on paired test predictions "
                  f"(significant if p < {comparison['significance_level']}):", "",
                  "| run A | run B | only A right | only B right | p-value | verdict |", "|---|---|---|---|---|---|"]  # fmt: skip
        for pair in comparison["pairs"]:
            verdict = "differ" if pair["significant"] else "no significant difference"
            lines.append(f"| {pair['run_a']} | {pair['run_b']} | {pair['only_a_correct']} | {pair['only_b_correct']} "
                         f"| {pair['p_value']:.3g} | {verdict} |")  # fmt: skip
    return "\n".join(lines)

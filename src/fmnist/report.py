"""Write a run's analysis as one self-contained HTML file (report.html) and a Markdown summary (report.md).

    from fmnist.report import write_report
    write_report("runs/baseline")        # also done at the end of `fmnist train`

Every figure is embedded as a base64 PNG, so the HTML opens offline and can be mailed as is.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from fmnist import plots, runs
from fmnist.analysis import Interpretation, calibration_bins

TOP_LOSSES = 24
LABEL_ISSUES = 24


def figure_to_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def summary_figures(interpretation: Interpretation) -> dict[str, float]:
    results = interpretation.results
    low, high = interpretation.accuracy_interval()
    return {
        "test_accuracy": results.accuracy, "accuracy_ci_low": low, "accuracy_ci_high": high,
        "test_loss": results.loss, "macro_f1": interpretation.macro_f1,
        "ece": interpretation.expected_calibration_error(),
    }  # fmt: skip


def build_figures(interpretation: Interpretation, history: list[dict]) -> dict[str, object]:
    names = list(interpretation.class_names)
    results = interpretation.results
    top = interpretation.top_losses(TOP_LOSSES)
    top_captions = [
        f"true {names[results.labels[i]]}\npred {names[results.predictions[i]]} {results.probabilities[i].max():.2f}"
        for i in top
    ]
    issues = interpretation.label_issues[:LABEL_ISSUES]
    validation = interpretation.validation
    issue_captions = [
        f"#{interpretation.validation_indices[i]} label {names[validation.labels[i]]}\n"
        f"model {names[validation.predictions[i]]} {validation.probabilities[i].max():.2f}"
        for i in issues
    ]
    figures = {
        "confusion": plots.confusion_matrices(results.confusion_matrix(), names, "test set"),
        "top_losses": plots.image_grid(interpretation.images[top], top_captions),
        "reliability": plots.reliability_diagram(
            *calibration_bins(results.probabilities, results.labels), interpretation.expected_calibration_error()
        ),
        "embedding": plots.embedding_scatter(interpretation.embedding, interpretation.feature_labels, names),
        "label_issues": plots.image_grid(interpretation.validation_images[issues], issue_captions) if len(issues) else None,
    }
    if history:
        figures["curves"] = plots.training_curves(history)
    return figures


def validation_phrase(metrics: dict) -> str:
    """The run's validation accuracy in words, or that it held no images out (validation_fraction 0)."""
    return f"validation accuracy {metrics['val_accuracy']:.4f}" if "val_accuracy" in metrics else "no validation"


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _markdown_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def report_tables(interpretation: Interpretation) -> dict[str, tuple[list[str], list[list]]]:
    report = interpretation.results.classification_report(as_dict=True)
    per_class = [
        [name, *(f"{report[name][key]:.4f}" for key in ("precision", "recall", "f1-score")), int(report[name]["support"])]
        for name in interpretation.class_names
    ]
    confused = [[true, predicted, count] for true, predicted, count in interpretation.most_confused()[:10]]
    return {
        "per_class": (["class", "precision", "recall", "F1", "support"], per_class),
        "confused": (["true class", "predicted class", "count"], confused),
    }


def write_report(run_dir: str | Path, interpretation: Interpretation | None = None, **from_run) -> Path:
    """Write report.html and report.md into the run; return the HTML's path."""
    run_dir = runs.require_run(run_dir)
    interpretation = interpretation or Interpretation.from_run(run_dir, **from_run)
    metrics = runs.read_json(run_dir / runs.METRICS)
    config = runs.read_json(run_dir / runs.CONFIG)
    info = runs.read_json(run_dir / runs.RUN_INFO) if (run_dir / runs.RUN_INFO).exists() else {}
    history = runs.read_csv(run_dir / runs.HISTORY)
    figures = summary_figures(interpretation)
    tables = report_tables(interpretation)
    images = {name: figure_to_data_uri(figure) for name, figure in build_figures(interpretation, history).items() if figure}
    num_issues = len(interpretation.label_issues)
    headline = (
        f"Test accuracy {figures['test_accuracy']:.4f} "
        f"(95% CI {figures['accuracy_ci_low']:.4f}-{figures['accuracy_ci_high']:.4f}, Wilson), "
        f"loss {figures['test_loss']:.4f}, macro F1 {figures['macro_f1']:.4f}, "
        f"ECE {figures['ece']:.4f} (15 bins); {validation_phrase(metrics)}; "
        f"{metrics['num_parameters']:,} parameters, {runs.epochs_trained(metrics, config):g} epochs, "
        f"{metrics['train_seconds']:.1f} s of training."
    )
    if interpretation.validation is None:
        issues_text = ("The run trained on every image of the training file (validation_fraction 0), so the model has "
                       "no out-of-sample probabilities there to find label errors with; a run that holds images out "
                       "(--validation-fraction 0.1, the default) lists them.")  # fmt: skip
    else:
        issues_text = (
            f"{num_issues} of the {len(interpretation.validation.labels):,} validation images (part of the training "
            f"file, never trained on, so the model's probabilities are out-of-sample) are suspected label errors by "
            f"confident learning: another class reaches its per-class confidence threshold. The "
            f"{min(num_issues, LABEL_ISSUES)} least consistent with their label, with their index in the training "
            "file, for a person to review:"
        )
    run_name = html.escape(run_dir.resolve().name)
    sections = [
        f"<h1>Run {run_name}: model {html.escape(metrics['model'])}</h1><p>{html.escape(headline)}</p>",
        "<h2>Per-class precision, recall and F1</h2>" + _table(*tables["per_class"]),
        f"<h2>Confusion matrix</h2><img src='{images['confusion']}' alt='confusion matrix'>",
        "<h2>Most confused pairs</h2>" + _table(*tables["confused"]),
        "<h2>Top losses</h2><p>The test images the model is most wrong about.</p>"
        f"<img src='{images['top_losses']}' alt='top losses'>",
        f"<h2>Calibration</h2><img src='{images['reliability']}' alt='reliability diagram'>",
        f"<h2>Feature map</h2><img src='{images['embedding']}' alt='t-SNE map'>",
        "<h2>Suspected label errors</h2><p>" + html.escape(issues_text) + "</p>"
        + (f"<img src='{images['label_issues']}' alt='suspected label errors'>" if "label_issues" in images else ""),
        (f"<h2>Training curves</h2><img src='{images['curves']}' alt='training curves'>" if "curves" in images else ""),
        "<h2>Configuration and provenance</h2>"
        + _table(["setting", "value"], [[key, value] for key, value in config.items()])
        + _table(["item", "value"], _provenance_rows(info, metrics)),
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}img{max-width:100%}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    )
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fmnist report: {run_name}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")  # fmt: skip
    runs.write_text(run_dir / "report.html", page)
    markdown = [f"# Run `{run_dir.resolve().name}`: model `{metrics['model']}`", "", headline, "",
                "## Per-class", "", *_markdown_table(*tables["per_class"]), "",
                "## Most confused (true, predicted, count)", "", *_markdown_table(*tables["confused"]), "",
                "## Suspected label errors", "", issues_text, "",
                ", ".join(str(interpretation.validation_indices[i]) for i in interpretation.label_issues[:LABEL_ISSUES]), "",
                "Figures, calibration, the feature map and provenance: report.html.", ""]  # fmt: skip
    runs.write_text(run_dir / "report.md", "\n".join(markdown))
    return run_dir / "report.html"


def _provenance_rows(info: dict, metrics: dict) -> list[list]:
    rows = [[f"version: {name}", version] for name, version in info.get("versions", {}).items()]
    rows += [[f"checksum: {name}", checksum] for name, checksum in info.get("data_checksums", {}).items()]
    rows += [[key, info[key]] for key in ("data_directory", "started", "finished", "host", "cpu_count") if key in info]
    rows += [[key, metrics[key]] for key in ("train_seconds", "images_per_second", "evaluation_seconds") if key in metrics]
    return rows

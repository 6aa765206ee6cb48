"""The results table of the ADMIS paper: one row per trained model, five benchmarks + average."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from synface.io import atomic

# Benchmark pack names and the column titles the paper uses, in the paper's order.
COLUMNS = {
    "lfw": "LFW",
    "cfp_fp": "CFP-FP",
    "cplfw": "CPLFW",
    "agedb_30": "AGEDB",
    "calfw": "CALFW",
}


def read_benchmarks(path: Path) -> dict[str, dict]:
    """An evaluation JSON's figures per benchmark, checked to hold all five."""
    figures = json.loads(Path(path).read_text())["benchmarks"]
    missing = [name for name in COLUMNS if name not in figures]
    if missing:
        raise ValueError(f"{path} has no result for {', '.join(missing)}")
    return figures


def table_rows(evaluations: dict[str, Path]) -> list[dict[str, float | str]]:
    """Accuracies in percent per row label, with the average over the five benchmarks."""
    rows = []
    for label, path in evaluations.items():
        figures = read_benchmarks(path)
        row: dict[str, float | str] = {"model": label}
        for name, title in COLUMNS.items():
            row[title] = round(100 * figures[name]["accuracy"], 2)
        row["Average"] = round(sum(float(row[t]) for t in COLUMNS.values()) / len(COLUMNS), 2)
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, float | str]]) -> str:
    header = ["model", *COLUMNS.values(), "Average"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["model"])] + [f"{row[h]:.2f}" for h in header[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_std_rows(evaluations: dict[str, Path]) -> list[dict[str, str]]:
    """The table as the report shows it: "mean ± std" over the 10 folds, in percent."""
    rows = []
    for label, path in evaluations.items():
        figures = read_benchmarks(path)
        row = {"model": label}
        for name, title in COLUMNS.items():
            row[title] = f"{100 * figures[name]['accuracy']:.2f} ± {100 * figures[name]['std']:.2f}"
        average = sum(figures[name]["accuracy"] for name in COLUMNS) / len(COLUMNS)
        row["Average"] = f"{100 * average:.2f}"
        rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic.atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_results_table(
    evaluations: dict[str, Path],
    markdown: Path,
    csv_path: Path,
    json_path: Path,
    mean_std_csv: Path | None = None,
) -> list[dict[str, float | str]]:
    """Write the table as Markdown, CSV and JSON (and, for the report, with the standard
    deviations as ``mean_std_csv``); returns its rows."""
    rows = table_rows(evaluations)
    atomic.write_text(markdown, to_markdown(rows))
    _write_csv(csv_path, rows)
    atomic.write_json(json_path, rows)
    if mean_std_csv is not None:
        _write_csv(mean_std_csv, mean_std_rows(evaluations))
    return rows

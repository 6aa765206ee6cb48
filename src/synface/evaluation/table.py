"""The results table of the ADMIS paper: one row per trained model, five benchmarks + average.

A row trained more than once (``recognition.seeds``) reports each figure as the mean over its
runs, with their standard deviation beside it (``<column> std``, the sample std over the runs,
n − 1 in the denominator: a few seeds estimate the spread of all; Markdown ``mean ± std``); the
average's std is that of the runs' averages. Synthetic rows may carry their identity-consistency
figures (EER and FDR of the set, and the mean and spread of its genuine scores), which do not
depend on the recognition run.
"""

from __future__ import annotations

import csv
import json
import statistics
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
# Identity-consistency figures (keys of ``synface.consistency``'s report) and their titles.
CONSISTENCY = {
    "eer": "EER %",
    "fdr": "FDR",
    "genuine_mean": "genuine mean",
    "genuine_std": "genuine spread",
}

Row = dict[str, float | str | None]


def read_benchmarks(path: Path) -> dict[str, dict]:
    """An evaluation JSON's figures per benchmark, checked to hold all five."""
    figures = json.loads(Path(path).read_text())["benchmarks"]
    missing = [name for name in COLUMNS if name not in figures]
    if missing:
        raise ValueError(f"{path} has no result for {', '.join(missing)}")
    return figures


def _accuracies(path: Path) -> dict[str, float]:
    """One run's accuracies in percent per column title, with the average."""
    figures = read_benchmarks(path)
    row = {title: round(100 * figures[name]["accuracy"], 2) for name, title in COLUMNS.items()}
    row["Average"] = round(sum(row.values()) / len(COLUMNS), 2)
    return row


def _consistency(path: Path) -> Row:
    report = json.loads(Path(path).read_text())
    row: Row = {}
    for key, title in CONSISTENCY.items():
        value = report.get(key)
        scale = 100 if key == "eer" else 1
        row[title] = None if value is None else round(scale * value, 4 if scale == 1 else 2)
    return row


def table_rows(
    evaluations: dict[str, Path | list[Path]], consistency: dict[str, Path] | None = None
) -> list[Row]:
    """Accuracies in percent per row label (mean and std over its runs when it has several),
    with the average over the five benchmarks and, for labels in ``consistency``, the
    identity-consistency columns (``None`` where a row has no such report)."""
    rows = []
    for label, paths in evaluations.items():
        runs = [_accuracies(p) for p in (paths if isinstance(paths, list) else [paths])]
        row: Row = {"model": label}
        for title in [*COLUMNS.values(), "Average"]:
            values = [run[title] for run in runs]
            row[title] = round(statistics.fmean(values), 2) if len(runs) > 1 else values[0]
            if len(runs) > 1:
                row[f"{title} std"] = round(statistics.stdev(values), 2)
        if len(runs) > 1:
            row["runs"] = len(runs)
        if consistency is not None:
            empty = dict.fromkeys(CONSISTENCY.values())
            row.update(_consistency(consistency[label]) if label in consistency else empty)
        rows.append(row)
    return rows


def _cell(row: Row, title: str) -> str:
    value = row.get(title)
    if value is None:
        return "–"
    if f"{title} std" in row:
        return f"{value:.2f} ± {row[f'{title} std']:.2f}"
    return f"{value:.2f}" if title not in CONSISTENCY.values() or "EER" in title else f"{value:.3f}"


def to_markdown(rows: list[Row]) -> str:
    header = ["model", *COLUMNS.values(), "Average"]
    if any(title in row for row in rows for title in CONSISTENCY.values()):
        header += list(CONSISTENCY.values())
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["model"])] + [_cell(row, h) for h in header[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_std_rows(evaluations: dict[str, Path | list[Path]]) -> list[dict[str, str]]:
    """The table as the report shows it, in percent: each cell "mean ± std", over the row's
    runs when it has several (``recognition.seeds``), else over the 10 folds of its one run."""
    titles = [*COLUMNS.values(), "Average"]
    rows = []
    for label, paths in evaluations.items():
        if isinstance(paths, list) and len(paths) > 1:
            (row,) = table_rows({label: paths})
            rows.append({"model": label, **{title: _cell(row, title) for title in titles}})
            continue
        figures = read_benchmarks(paths[0] if isinstance(paths, list) else paths)
        cells = {"model": label}
        for name, title in COLUMNS.items():
            accuracy, std = 100 * figures[name]["accuracy"], 100 * figures[name]["std"]
            cells[title] = f"{accuracy:.2f} ± {std:.2f}"
        average = statistics.fmean(figures[name]["accuracy"] for name in COLUMNS)
        cells["Average"] = f"{100 * average:.2f}"
        rows.append(cells)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic.atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def write_results_table(
    evaluations: dict[str, Path | list[Path]],
    markdown: Path,
    csv_path: Path,
    json_path: Path,
    consistency: dict[str, Path] | None = None,
    mean_std_csv: Path | None = None,
) -> list[Row]:
    """Write the table as Markdown, CSV and JSON (and, for the report, each cell with its
    standard deviation as ``mean_std_csv``); returns its rows."""
    rows = table_rows(evaluations, consistency)
    atomic.write_text(markdown, to_markdown(rows))
    _write_csv(csv_path, rows)
    atomic.write_json(json_path, rows)
    if mean_std_csv is not None:
        _write_csv(mean_std_csv, mean_std_rows(evaluations))
    return rows

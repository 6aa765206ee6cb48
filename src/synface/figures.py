"""The report's figures, drawn with matplotlib from the files a run wrote.

Every figure is made by its own workflow rule from data files (training logs, evaluation JSONs,
manifests, images), so a changed file gives a changed figure. Kept free of torch, so a figure
job starts in about a second.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from synface.evaluation.table import COLUMNS
from synface.io.atomic import write_bytes
from synface.io.manifest import read_manifest

# Columns of a training log that are not curves: the x axis, and bookkeeping.
NOT_CURVES = ("step", "epoch", "images_per_s")
# Panel titles of the logged figures (others are titled by their column name).
TITLES = {
    "loss": "loss",
    "top1": "top-1 accuracy (training batch)",
    "lr": "learning rate",
}
# The false accept rate at which the ROC legends quote the true accept rate.
FAR = 1e-3
DPI = 100


def panels(rows: int, columns: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows`` x ``columns`` panels, each ``width`` x ``height`` inches.

    matplotlib's object interface without pyplot: no GUI backend, no global figure state.
    """
    figure = Figure(figsize=(width * columns, height * rows + 0.6), layout="constrained")
    return figure, figure.subplots(rows, columns, squeeze=False)


def save_png(figure: Figure) -> bytes:
    """``figure`` as PNG bytes, without date or version text: the same data, the same bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def save_figure(figure: Figure, out: Path) -> None:
    """Write ``figure`` as a PNG atomically (a killed job leaves none)."""
    write_bytes(out, save_png(figure))


def read_log(path: Path) -> dict[str, np.ndarray]:
    """A training log (``loss.tsv``: a header row, then one row per logged step) as columns."""
    with Path(path).open(encoding="utf-8", newline="") as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{path} has no logged steps under a header with a 'step' column")
    return {key: np.array([float(row[key]) for row in rows]) for key in rows[0]}


def plot_curves(logs: dict[str, Path], out: Path, title: str) -> None:
    """One panel per logged figure (loss, accuracy, lr, ...) against the step, one line per
    run; the learning rate on a log scale."""
    tables = {label: read_log(path) for label, path in logs.items()}
    names = [n for n in next(iter(tables.values())) if n not in NOT_CURVES]
    figure, axes = panels(1, len(names), 4.2, 3.4)
    for axis, name in zip(axes[0], names, strict=True):
        for label, table in tables.items():
            if name in table:
                axis.plot(table["step"], table[name], label=label, marker=".")
        axis.set(xlabel="step", title=TITLES.get(name, name))
        if name == "lr":
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    figure.suptitle(title)
    save_figure(figure, out)


def roc_curve(distances: Sequence[float], issame: Sequence[bool]) -> tuple[np.ndarray, ...]:
    """False and true accept rates at every threshold on the squared distance (accept when
    below it), from the strictest (nothing accepted) to the loosest (everything)."""
    distance, same = np.asarray(distances, dtype=np.float64), np.asarray(issame, dtype=bool)
    if distance.size == 0 or same.all() or not same.any():
        raise ValueError("a ROC curve needs genuine and impostor pairs")
    order = np.argsort(distance, kind="stable")
    accepted_same = np.concatenate([[0], np.cumsum(same[order])])
    accepted_other = np.concatenate([[0], np.cumsum(~same[order])])
    return accepted_other / (~same).sum(), accepted_same / same.sum()


def tar_at_far(far: np.ndarray, tar: np.ndarray, at: float = FAR) -> float:
    """The best true accept rate whose false accept rate does not exceed ``at``."""
    return float(tar[far <= at].max())


def plot_roc(evaluations: dict[str, Path], out: Path) -> None:
    """One panel per benchmark, every model's ROC on it; the legend quotes TAR at FAR 1e-3."""
    results = {
        label: json.loads(Path(p).read_text())["benchmarks"] for label, p in evaluations.items()
    }
    figure, axes = panels(1, len(COLUMNS), 4.2, 5.4)
    for axis, (pack, title) in zip(axes[0], COLUMNS.items(), strict=True):
        for label, benchmarks in results.items():
            if "distances" not in benchmarks[pack]:
                raise ValueError(
                    f"{evaluations[label]}: {pack} has no per-pair distances; rerun "
                    "`synface evaluate` (this file is from an older synface)"
                )
            far, tar = roc_curve(benchmarks[pack]["distances"], benchmarks[pack]["issame"])
            tar_low = tar_at_far(far, tar)
            axis.plot(far, tar, label=f"{label} (TAR {100 * tar_low:.1f}% @ FAR {FAR:g})")
        axis.set(xscale="log", xlim=(1e-4, 1), ylim=(0, 1.01), title=title)
        axis.set(xlabel="false accept rate", ylabel="true accept rate")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.15))
    save_figure(figure, out)


def _show(axis: Axes, image: Path | None, title: str = "") -> None:
    """One face in one cell (an empty cell when there is none), titled, without axes."""
    if image is not None:
        with Image.open(image) as face:
            axis.imshow(np.asarray(face.convert("RGB")))
    axis.set_title(title, fontsize="small")
    axis.set_axis_off()


def plot_samples(
    manifest: Path, out: Path, faces: Path | None = None, identities: int = 6, samples: int = 7
) -> None:
    """A synthetic set as rows of identities: the context face (when the set has one: uniform
    contexts have none), then the identity's first samples."""
    by_identity: dict[int, list[Path]] = {}
    for entry in read_manifest(manifest):
        by_identity.setdefault(entry.label, []).append(entry.path)
    context_faces = {e.label: e.path for e in read_manifest(faces)} if faces else {}
    shown = sorted(by_identity)[:identities]
    width = 1 + min(samples, max(len(by_identity[i]) for i in shown))
    figure, axes = panels(len(shown), width, 1.3, 1.3)
    for row, identity in zip(axes, shown, strict=True):
        _show(row[0], context_faces.get(identity), f"id {identity}: context")
        for k, axis in enumerate(row[1:]):
            paths = by_identity[identity]
            _show(
                axis, paths[k] if k < len(paths) else None, f"sample {k}" if k < len(paths) else ""
            )
    figure.suptitle(f"{Path(manifest).parent.name}: context face, then samples")
    save_figure(figure, out)


def _read_table(path: Path) -> list[dict[str, str]]:
    with Path(path).open(encoding="utf-8", newline="") as table:
        return list(csv.DictReader(table, delimiter="\t"))


def plot_contexts(
    candidates_manifest: Path, selected: Path, dropped: Path, out: Path, per_row: int = 8
) -> None:
    """The first kept context faces (with their probe agreement) and the first dropped ones
    (with the reason), from the selection's ``selected.tsv`` and ``dropped.tsv``."""
    root = Path(candidates_manifest).parent
    kept, lost = _read_table(selected)[:per_row], _read_table(dropped)[:per_row]
    figure, axes = panels(2, per_row, 1.5, 1.5)
    for axis, row in zip(axes[0], [*kept, *[None] * per_row], strict=False):
        title = f"id {row['identity']}, intra {float(row['intra']):.2f}" if row else ""
        _show(axis, root / row["face"] if row else None, title)
    for axis, row in zip(axes[1], [*lost, *[None] * per_row], strict=False):
        _show(axis, root / row["face"] if row else None, row["reason"] if row else "")
    axes[0][0].text(-0.1, 0.5, "selected", rotation=90, ha="right", va="center",
                    transform=axes[0][0].transAxes)  # fmt: skip
    axes[1][0].text(-0.1, 0.5, "dropped", rotation=90, ha="right", va="center",
                    transform=axes[1][0].transAxes)  # fmt: skip
    figure.suptitle(f"context selection: {len(_read_table(selected))} kept, "
                    f"{len(_read_table(dropped))} dropped (first {per_row} of each)")  # fmt: skip
    save_figure(figure, out)


def plot_previews(run_dir: Path, out: Path, most: int = 6) -> None:
    """The LDM's preview grids over training (``preview_<step>.png`` of its run folder), at
    most ``most`` of them evenly spread, the last one always included."""
    previews = sorted(Path(run_dir).glob("preview_*.png"))
    if not previews:
        raise FileNotFoundError(
            f"{run_dir} holds no preview_*.png: set ldm.train.preview_every to at most "
            "ldm.train.steps, and give the training its first stage"
        )
    picked = [previews[int(i)] for i in np.unique(np.linspace(len(previews) - 1, 0, most).round())]
    figure, axes = panels(1, len(picked), 3.2, 3.6)
    for axis, preview in zip(axes[0], sorted(picked), strict=True):
        _show(axis, preview, f"step {int(preview.stem.removeprefix('preview_'))}")
    figure.suptitle("LDM previews over training")
    save_figure(figure, out)

"""The report's figures: drawn from their data files (changed data, changed figure), and the
ROC arithmetic behind the legends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synface import figures
from synface.evaluation.table import COLUMNS


def _log(path: Path, losses: list[float]) -> Path:
    rows = [f"{step}\t{loss}\t{0.1 / step}" for step, loss in enumerate(losses, start=1)]
    path.write_text("step\tloss\tlr\n" + "\n".join(rows) + "\n")
    return path


def test_a_training_curve_follows_its_log(tmp_path: Path) -> None:
    log = _log(tmp_path / "loss.tsv", [3.0, 2.0, 1.5, 1.2])
    figures.plot_curves({"real": log}, tmp_path / "a.png", "training")
    figures.plot_curves({"real": log}, tmp_path / "b.png", "training")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    _log(log, [3.0, 2.5, 0.5, 0.2])
    figures.plot_curves({"real": log}, tmp_path / "c.png", "training")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    with Image.open(tmp_path / "c.png") as image:
        # Two panels (loss, lr) side by side: wider than high.
        assert image.width > 1.5 * image.height


def test_roc_curve_and_tar_at_far() -> None:
    # Genuine pairs at 0.1, 0.2, 0.9; impostors at 0.5, 1.0, 1.5, 2.0.
    far, tar = figures.roc_curve([0.1, 0.5, 0.2, 1.0, 0.9, 1.5, 2.0], [1, 0, 1, 0, 1, 0, 0])
    np.testing.assert_allclose(tar, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1])
    np.testing.assert_allclose(far, [0, 0, 0, 0.25, 0.25, 0.5, 0.75, 1])
    assert figures.tar_at_far(far, tar, at=1e-3) == pytest.approx(2 / 3)
    assert figures.tar_at_far(far, tar, at=0.3) == 1.0
    with pytest.raises(ValueError, match="genuine and impostor"):
        figures.roc_curve([0.1, 0.2], [1, 1])


def test_the_roc_figure_refuses_an_evaluation_without_distances(tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"benchmarks": {name: {"accuracy": 0.9} for name in COLUMNS}}))
    with pytest.raises(ValueError, match="rerun `synface evaluate`"):
        figures.plot_roc({"model": old}, tmp_path / "roc.png")


def test_a_sample_grid_shows_the_context_face_then_the_samples(tmp_path: Path) -> None:
    colours = {0: (255, 0, 0), 1: (0, 0, 255)}
    lines, faces = [], []
    for identity, colour in colours.items():
        for k in range(3):
            path = tmp_path / "images" / f"{identity}_{k}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (16, 16), colour).save(path)
            lines.append(f"images/{identity}_{k}.png\t{identity}")
        Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / f"face_{identity}.png")
        faces.append(f"face_{identity}.png\t{identity}")
    (tmp_path / "manifest.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "faces.tsv").write_text("\n".join(faces) + "\n")
    out = tmp_path / "grid.png"
    figures.plot_samples(tmp_path / "manifest.tsv", out, faces=tmp_path / "faces.tsv")
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    # Context faces (green) and both identities' samples (red, blue) are all drawn.
    for colour in [(0, 255, 0), *colours.values()]:
        assert (pixels == colour).all(axis=1).sum() > 100, colour

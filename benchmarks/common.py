"""Set-up and reporting shared by the benchmark scripts.

Both benchmarks need a folder of face JPEGs plus a manifest, and both print figures the same way
(a table for reading, one JSON line for copying into notes), so that lives here once. This module
imports no torch: spawned render workers re-import it, and bench_pack never needs torch at all.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
from PIL import Image

from synface.demo_world.render import (
    NuisanceStrength,
    render_face,
    sample_identity,
    sample_nuisance,
)
from synface.packing import JPEG_QUALITY
from synface.settings import from_settings

# The demo world's training nuisances (the schema's demo_world.train_nuisance).
TRAIN_NUISANCE = from_settings(NuisanceStrength, {}, "demo_world.train_nuisance")


def add_common_args(parser: argparse.ArgumentParser, images: int, identities: int) -> None:
    """Options both scripts take; the defaults of the data size differ per script."""
    parser.add_argument("--images", type=int, default=images, help="faces to render")
    parser.add_argument(
        "--identities", type=int, default=identities, help="people the faces are spread over"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="render and pack processes, torch threads",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered faces")


def _render_jpeg(task: tuple[int, int, int, int]) -> bytes:
    """One face as JPEG bytes; a pure function of its task, so any worker split gives the same
    files (the identity's stream depends only on its label)."""
    seed, label, n, size = task
    identity = sample_identity(np.random.default_rng([seed, 0, label]))
    nuisance = sample_nuisance(np.random.default_rng([seed, 1, label, n]), TRAIN_NUISANCE)
    buffer = io.BytesIO()
    # The packers' quality with Pillow's default 4:2:0 chroma, as OpenCV's imencode wrote the real
    # datasets' faces (the demo world itself keeps 4:4:4 for its 32 px images).
    Image.fromarray(render_face(identity, nuisance, size)).save(
        buffer, "JPEG", quality=JPEG_QUALITY
    )
    return buffer.getvalue()


def render_faces(
    folder: Path, images: int, identities: int, size: int, seed: int, workers: int
) -> Path:
    """Write ``images`` demo-world faces as ``images/<label>/<n>.jpg`` plus ``manifest.tsv``.

    Faces are dealt round-robin over the identities, so every class gets images even when
    ``images`` is not a multiple of ``identities``. Returns the manifest's path.
    """
    if images < 1 or not 1 <= identities <= images:
        raise ValueError(f"need 1 <= identities <= images, got {identities} and {images}")
    started = time.perf_counter()
    tasks = [(seed, i % identities, i // identities, size) for i in range(images)]
    if workers <= 1:
        jpegs = list(map(_render_jpeg, tasks))
    else:
        # spawn, as the demo world's pool: forking a parent that runs torch threads can deadlock.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            chunk = max(1, math.ceil(len(tasks) / (4 * workers)))
            jpegs = list(pool.map(_render_jpeg, tasks, chunksize=chunk))
    lines = []
    for (_, label, n, _), jpeg in zip(tasks, jpegs, strict=True):
        relative = Path("images") / f"{label:05d}" / f"{n:04d}.jpg"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(jpeg)
        lines.append(f"{relative.as_posix()}\t{label}\n")
    manifest = folder / "manifest.tsv"
    manifest.write_text("".join(lines), encoding="utf-8")
    print(f"rendered {images} faces of {size} px in {time.perf_counter() - started:.1f} s")
    return manifest


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder that is removed however the benchmark ends."""
    with TemporaryDirectory(prefix="synface-bench-") as name:
        yield Path(name)


def best_of(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """The highest of ``repeats`` rates per measure, the measures taking turns round by round.

    On a shared machine other load only ever slows a run down, so the best run is the least
    disturbed one, and taking turns spreads a burst of load over all measures instead of
    handicapping whichever happened to run during it.
    """
    best = dict.fromkeys(measures, 0.0)
    for _ in range(repeats):
        for name, measure in measures.items():
            best[name] = max(best[name], measure())
    return best


Row = tuple[str, float, float]


def report(tables: list[tuple[str, list[Row]]], figures: dict[str, object]) -> None:
    """Print each table of ``(what, images/s, ratio to its baseline)`` rows, then all figures as
    one JSON line."""
    for title, rows in tables:
        width = max(len(what) for what, _, _ in rows)
        print(f"\n{title}")
        print(f"{'':{width}}  {'images/s':>10}  {'ratio':>7}")
        for what, rate, ratio in rows:
            print(f"{what:{width}}  {rate:10.1f}  {ratio:6.2f}x")
    print(json.dumps(figures, sort_keys=True))

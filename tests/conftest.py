"""Shared test helpers: tiny face-like datasets written on the fly, one torch thread per test,
and the one micro workflow run that every test inspecting a micro run reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_runner import snakemake

torch.set_num_threads(1)


def write_toy_dataset(
    root: Path, identities: int = 6, images_per_identity: int = 12, size: int = 32, seed: int = 0
) -> Path:
    """Identities as distinct colour layouts with per-image noise; returns the manifest path.

    Learnable in a few steps, so a training test can check that the loss really falls.
    """
    rng = np.random.default_rng(seed)
    lines = []
    for identity in range(identities):
        layout = rng.integers(0, 256, size=(4, 4, 3)).repeat(size // 4, 0).repeat(size // 4, 1)
        for k in range(images_per_identity):
            noisy = np.clip(layout + rng.normal(0, 20, layout.shape), 0, 255).astype(np.uint8)
            path = root / "images" / str(identity) / f"{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(noisy).save(path, quality=95)
            lines.append(f"images/{identity}/{k}.jpg\t{identity}")
    manifest = root / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture
def toy_manifest(tmp_path: Path) -> Path:
    return write_toy_dataset(tmp_path / "toy")


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workdir where `snakemake all demo_weights/PROVENANCE.json` ran to completion with
    config/config.yaml + tests/config/micro.yaml: every rule, once per session.

    Read it; a test that changes the config copies it first
    (`shutil.copytree(micro_run, tmp_path / "w", symlinks=True)`).

    Its path holds a space and an apostrophe (and tests/config/micro.yaml a label with both):
    every test of the micro run also checks that the rules quote what they pass to the shell.
    """
    workdir = tmp_path_factory.mktemp("micro_run") / "micro run's dir"
    workdir.mkdir()
    result = snakemake(workdir, "all", "demo_weights/PROVENANCE.json", timeout=2400)
    if result.returncode != 0:
        pytest.fail(f"the micro workflow run failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return workdir

"""Shared test helpers: tiny face-like datasets written on the fly, one torch thread per test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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

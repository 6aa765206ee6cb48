"""The generative stages' training data: per-step random streams and the in-memory image bank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synface.io.rejected import read_rejected
from synface.ldm.data import ImageBank, step_generator, step_seed


def test_step_seeds_are_a_function_of_seed_step_and_rank_alone() -> None:
    seeds = {step_seed(s, t, r) for s in (0, 1) for t in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12, "neighbouring (seed, step, rank) must get distinct streams"
    assert all(0 <= seed < 2**63 for seed in seeds)
    assert step_seed(3, 7, 1) == step_seed(3, 7, 1)
    first = torch.rand(5, generator=step_generator(3, 7, 1))
    again = torch.rand(5, generator=step_generator(3, 7, 1))
    other = torch.rand(5, generator=step_generator(3, 8, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def _asymmetric_faces(root: Path, count: int, size: int = 8) -> Path:
    """Image i is a left-to-right ramp whose level encodes i: a mirror is told apart from it."""
    lines = []
    for i in range(count):
        ramp = np.linspace(0, 200, size, dtype=np.float64)[None, :, None] + 5 * i
        pixels = np.broadcast_to(ramp, (size, size, 3)).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append(f"{i}.png\t{i}")
    (root / "gone.png").write_bytes(b"not a png")
    lines.append("gone.png\t9")
    manifest = root / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_the_bank_holds_the_usable_faces_and_lists_the_rest(tmp_path: Path) -> None:
    manifest = _asymmetric_faces(tmp_path, 4)
    bank = ImageBank.from_manifest(manifest, size=8, threads=1, rejected_dir=tmp_path / "out")
    assert len(bank) == 4 and bank.images.dtype == torch.float16
    assert bank.images.min() >= -1 and bank.images.max() <= 1
    # Row i is image i: its left column is level 5 i, normalised.
    expected_left = torch.tensor([5.0 * i / 127.5 - 1 for i in range(4)])
    assert torch.allclose(bank.images[:, 0, 0, 0].float(), expected_left, atol=1e-3)
    rejected = read_rejected(tmp_path / "out")
    assert [Path(path).name for path in rejected] == ["gone.png"]


def test_batches_draw_bank_rows_and_mirror_about_half(tmp_path: Path) -> None:
    bank = ImageBank.from_manifest(
        _asymmetric_faces(tmp_path, 4), size=8, threads=1, rejected_dir=tmp_path
    )
    rows = bank.images.float()
    plain = bank.batch(64, step_generator(0, 0), flip=False)
    assert all(any(torch.equal(image, row) for row in rows) for image in plain)
    drawn = bank.batch(256, step_generator(0, 1), flip=True)
    mirrored = [any(torch.equal(image, row.flip(-1)) for row in rows) for image in drawn]
    unchanged = [any(torch.equal(image, row) for row in rows) for image in drawn]
    assert all(m != u for m, u in zip(mirrored, unchanged, strict=True))
    assert 0.4 < sum(mirrored) / len(drawn) < 0.6
    again = bank.batch(256, step_generator(0, 1), flip=True)
    assert torch.equal(drawn, again), "a step's batch must depend only on its generator"

"""Synthesis switches beyond ADMIS with the shipped demo weights: the intra-class filter keeps
exactly k faces per identity, replaces only those below τ by the identity's next noise indices,
and gives the same bytes whatever the shard split and batch size; stochastic DDIM (η > 0) and
negative-context guidance keep that invariance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import decode_png, read_file

from synface.ldm.faces import FaceEmbedder
from synface.shards import shard_ranges
from synface.synthesis import (
    SynthesisSettings,
    _Draws,
    _next_draws,
    _write_face,
    context_judge,
    far_contexts,
    synthesize_shard,
)

ROOT = Path(__file__).resolve().parents[1]
LDM = ROOT / "demo_weights" / "ldm" / "ema_averaged_model.ckpt"
FIRST_STAGE = ROOT / "demo_weights" / "first_stage"
EMBEDDING = ROOT / "demo_weights" / "embedding" / "backbone.pth"
IMAGES = 3


def _contexts(n: int = 4) -> np.ndarray:
    rows = np.random.default_rng(1).normal(size=(n, 512)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _synthesize(out: Path, identities: range, images: int = IMAGES, **settings) -> dict:
    chosen = SynthesisSettings.from_settings({"seed": 3, "steps": 4, **settings})
    return synthesize_shard(
        LDM, FIRST_STAGE, _contexts(), identities, images, out, 32, chosen,
        embedding_weights=EMBEDDING,
    )  # fmt: skip


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.png"))}


@pytest.fixture(scope="module")
def draws(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], torch.Tensor]:
    """Every noise index the filter may draw (4 x IMAGES per identity), unfiltered, with each
    face's cosine to its context as the filter judges it."""
    out = tmp_path_factory.mktemp("draws") / "images"
    _synthesize(out, range(4), images=4 * IMAGES, batch_size=48)
    files = _files(out)
    judge = context_judge(
        FaceEmbedder(EMBEDDING, torch.device("cpu")), torch.from_numpy(_contexts())
    )
    faces = torch.stack([decode_png(read_file(str(out / name))) for name in files])
    jobs = [(int(Path(name).parent.name), int(Path(name).stem)) for name in files]
    return files, judge(faces, jobs).view(4, 4 * IMAGES)


def test_the_filter_keeps_the_first_k_draws_above_tau_whatever_the_sharding(
    tmp_path: Path, draws: tuple[dict[str, bytes], torch.Tensor]
) -> None:
    files, cosines = draws
    tau = float(cosines[:, :IMAGES].median())  # about half the first draws fall below
    whole = _synthesize(tmp_path / "whole", range(4), filter_threshold=tau, batch_size=40)
    for shard in shard_ranges(4, 3):
        _synthesize(tmp_path / "split", shard, filter_threshold=tau, batch_size=5)
    kept = _files(tmp_path / "whole")
    assert kept == _files(tmp_path / "split")
    expected, below = {}, 0
    for i in range(4):
        passing = [k for k in range(4 * IMAGES) if cosines[i, k] >= tau][:IMAGES]
        if len(passing) < IMAGES:  # out of draws: the best rejected faces fill the rest
            rejected = sorted((k for k in range(4 * IMAGES) if k not in passing),
                              key=lambda k: (-cosines[i, k], k))  # fmt: skip
            below += IMAGES - len(passing)
            passing += rejected[: IMAGES - len(passing)]
        for slot, k in enumerate(passing):
            expected[f"{i:05d}/{slot:03d}.png"] = files[f"{i:05d}/{k:03d}.png"]
    assert kept == expected  # exactly k per identity, the replaced ones were below τ
    first_below = int((cosines[:, :IMAGES] < tau).sum())
    assert first_below > 0 and whole["filter"]["kept_below"] == below
    assert whole["filter"]["drawn"] - whole["filter"]["replaced"] == 4 * IMAGES - below


@pytest.mark.parametrize("switch", [{"eta": 0.5, "sampler": "ddim"}, {"negative_scale": 0.5}])
def test_stochastic_and_negative_sampling_are_shard_and_batch_invariant(
    tmp_path: Path, switch: dict, draws: tuple[dict[str, bytes], torch.Tensor]
) -> None:
    _synthesize(tmp_path / "whole", range(4), batch_size=12, **switch)
    for shard in shard_ranges(4, 3):
        _synthesize(tmp_path / "split", shard, batch_size=5, **switch)
    files = _files(tmp_path / "whole")
    assert len(files) == 4 * IMAGES and files == _files(tmp_path / "split")
    plain = {name: data for name, data in draws[0].items() if int(Path(name).stem) < IMAGES}
    assert files != plain  # the switch changes the faces
    record = json.loads((tmp_path / "whole" / "settings.json").read_text())
    assert all(record[key] == value for key, value in switch.items())


def test_the_negative_context_is_the_least_similar_row() -> None:
    table = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-0.8, 0.6], [0.6, -0.8]])
    assert far_contexts(table, range(4)) == {0: 2, 1: 3, 2: 3, 3: 2}


def test_switches_that_are_off_leave_the_settings_record_as_before() -> None:
    record = SynthesisSettings.from_settings({}).sampling()
    assert set(record) == {"seed", "steps", "guidance_scale", "sampler", "eta", "antialias"}
    on = SynthesisSettings.from_settings({"filter_threshold": 0.3}).sampling()
    assert on["filter_threshold"] == 0.3 and on["filter_draws_per_image"] == 4


def test_an_identity_out_of_draws_keeps_its_best_rejected_faces(tmp_path: Path) -> None:
    settings = SynthesisSettings.from_settings(
        {"filter_threshold": 0.5, "filter_draws_per_image": 2}
    )
    faces = {k: torch.full((3, 4, 4), k, dtype=torch.uint8) for k in range(4)}
    out_of_draws = _Draws(next_draw=4, accepted=1)  # 4 = 2 x 2 draws: none left
    out_of_draws.rejected = [(0.1, 1, faces[1]), (0.3, 2, faces[2]), (0.3, 3, faces[3])]
    _write_face(tmp_path, 0, 0, faces[0])
    drawing = _Draws(next_draw=2, accepted=0)
    jobs, kept_below = _next_draws({0: out_of_draws, 1: drawing}, settings, 2, tmp_path)
    assert jobs == [(1, 2), (1, 3)] and drawing.next_draw == 4
    assert kept_below == 1 and out_of_draws.accepted == 2
    # Slot 1 takes the best rejected face, the earlier draw first among equal cosines.
    assert decode_png(read_file(str(tmp_path / "00000" / "001.png"))).unique().tolist() == [2]

"""pack_demo_weights: fp16 copies of the three components and a provenance that proves them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from synface.demo_weights import pack_demo_weights
from synface.ldm.first_stage import FirstStageSpec
from synface.models.vq_f4 import DECODER_FILE, ENCODER_FILE

CONFIG = {"first_stage": {"train": {"steps": 4}}, "recognition": {"train": {"epochs": 2}}}


def _save(state: dict, path: Path, spec: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    if spec is not None:
        path.with_suffix(".json").write_text(json.dumps(spec))
    return path


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Path, dict, dict]:
    """Tiny components with float and integer tensors, packed into tmp_path/out."""
    torch.manual_seed(0)
    sources = tmp_path / "src"
    embedding = {"w": torch.randn(3, 4), "bn.num_batches_tracked": torch.tensor(7)}
    ldm = {"eps_model.conv.weight": torch.randn(2, 2), "alphas_cumprod": torch.rand(5).double()}
    first = {"enc": torch.randn(4)}
    _save(embedding, sources / "emb/backbone.pth", {"name": "iresnet", "args": {}})
    _save(first, sources / "first" / ENCODER_FILE)
    _save(first, sources / "first" / DECODER_FILE)
    FirstStageSpec({"ch": 8}, 3, 16).write(sources / "first")
    _save(ldm, sources / "ldm/model.ckpt", {"steps": 6})
    (sources / "check.json").write_text(json.dumps({"retrieval_top1": 0.5}))
    (tmp_path / "bench/train_ldm").mkdir(parents=True)
    (tmp_path / "bench/train_ldm/train_ldm.tsv").write_text("s\th:m:s\n12.5\t0:00:12\n")
    provenance = pack_demo_weights(
        sources / "emb/backbone.pth",
        sources / "first",
        sources / "ldm/model.ckpt",
        sources / "check.json",
        CONFIG,
        tmp_path / "out",
        ["synface train-ldm ..."],
        tmp_path / "bench",
        "a test",
    )
    return tmp_path / "out", provenance, {"embedding": embedding, "ldm": ldm}


def test_every_file_is_listed_with_the_sha256_of_its_bytes(packed) -> None:
    out, provenance, _ = packed
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(provenance["sha256"]) == on_disk - {"PROVENANCE.json"}
    for relative, digest in provenance["sha256"].items():
        assert hashlib.sha256((out / relative).read_bytes()).hexdigest() == digest, relative
    assert json.loads((out / "PROVENANCE.json").read_text()) == provenance


def test_the_provenance_records_steps_times_and_the_check(packed) -> None:
    _, provenance, _ = packed
    assert provenance["steps"] == {"first_stage": 4, "ldm": 6, "recognition_epochs": 2}
    assert provenance["wall_time_s"] == {"train_ldm/train_ldm": 12.5}
    assert provenance["identity_check"] == {"retrieval_top1": 0.5}
    assert provenance["config"] == CONFIG and provenance["made_on"] == "a test"


def test_float_weights_are_halved_and_the_schedule_stays_exact(packed) -> None:
    out, _, sources = packed
    embedding = torch.load(out / "embedding/backbone.pth", weights_only=True)
    assert embedding["w"].dtype == torch.float16
    assert torch.equal(embedding["w"], sources["embedding"]["w"].half())
    assert torch.equal(embedding["bn.num_batches_tracked"], torch.tensor(7))
    ldm = torch.load(out / "ldm/ema_averaged_model.ckpt", weights_only=True)
    assert ldm["eps_model.conv.weight"].dtype == torch.float16
    # The ADMIS schedule buffers are outside the UNet: their check needs full precision.
    assert torch.equal(ldm["alphas_cumprod"], sources["ldm"]["alphas_cumprod"])
    encoder = torch.load(out / "first_stage" / ENCODER_FILE, weights_only=True)
    assert encoder["enc"].dtype == torch.float16
    assert (out / "embedding/backbone.json").exists()
    assert (out / "ldm/ema_averaged_model.json").exists()

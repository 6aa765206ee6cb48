from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from synface.evaluation import benchmark
from synface.evaluation.benchmark import embed_with_flip, evaluate_backbone
from synface.evaluation.table import write_results_table
from synface.io.binpack import write_bin
from synface.models import build_model


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class LeftHalfBrightness(nn.Module):
    """An 'embedding' whose norm differs between an image and its mirror."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([left + 2.0, torch.ones_like(left)], dim=1) * (left[:, None] + 2.0)


def test_flip_tta_sums_raw_embeddings_before_normalising() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 255  # bright right half: the mirror has the bright half on the left
    embeddings, xnorm = embed_with_flip(
        LeftHalfBrightness(), [_jpeg(image)], 8, batch_size=4, device=torch.device("cpu")
    )
    model = LeftHalfBrightness()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    raw, mirrored = model(x), model(torch.flip(x, dims=[3]))
    expected = nn.functional.normalize(raw + mirrored, dim=1)
    normalised_first = nn.functional.normalize(
        nn.functional.normalize(raw, dim=1) + nn.functional.normalize(mirrored, dim=1), dim=1
    )
    assert torch.allclose(embeddings, expected, atol=1e-3)
    assert not torch.allclose(embeddings, normalised_first, atol=1e-3)
    assert xnorm == pytest.approx(
        torch.cat([raw.norm(dim=1), mirrored.norm(dim=1)]).mean().item(), 1e-2
    )


def test_a_backbone_is_evaluated_on_every_pack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = build_model("tface_ir", depth=18, input_size=32, channels=(8, 8, 16, 16)).eval()
    weights = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), weights)
    spec = {"name": "tface_ir", "args": {"depth": 18, "input_size": 32, "channels": [8, 8, 16, 16]}}
    weights.with_suffix(".json").write_text(json.dumps(spec))
    rng = np.random.default_rng(0)
    people = [rng.integers(0, 256, (32, 32, 3)) for _ in range(4)]

    def photo(person: int) -> bytes:
        """A new image of one person: their pixels under fresh noise."""
        noisy = people[person] + rng.normal(0, 12, people[person].shape)
        return _jpeg(np.clip(noisy, 0, 255).astype(np.uint8))

    images, issame = [], []
    for i in range(20):
        same = i % 2 == 0
        images += [photo(i % 4), photo(i % 4 if same else (i + 2) % 4)]
        issame.append(same)
    packs = {}
    for name in ("lfw", "cfp_fp"):
        packs[name] = tmp_path / f"{name}.bin"
        write_bin(packs[name], images, issame)
    results = evaluate_backbone(weights, packs, tmp_path / "eval.json", batch_size=8)
    # evaluation.precision reaches every batch (recorded: this CPU runs fp32 either way, so
    # TFace's fp32 gives the figures of the default bf16).
    used: list[str] = []
    autocast = benchmark.runtime.autocast
    monkeypatch.setattr(
        benchmark.runtime, "autocast", lambda d, p: used.append(p) or autocast(d, p)
    )
    fp32 = evaluate_backbone(weights, packs, tmp_path / "f.json", batch_size=8, precision="fp32")
    assert fp32 == results
    assert used == ["fp32"] * 10  # 2 packs of 40 images in batches of 8
    saved = json.loads((tmp_path / "eval.json").read_text())["benchmarks"]
    assert set(saved) == {"lfw", "cfp_fp"}
    # Two images of one person lie closer than images of two people, even through a random
    # network (0.95 here); mixed-up pairs or flipped flags score about 0.5.
    assert results["lfw"].accuracy > 0.85
    assert saved["lfw"]["pairs"] == 20


def test_a_backbone_without_its_architecture_file_is_explained(tmp_path: Path) -> None:
    weights = tmp_path / "backbone.pth"
    torch.save({}, weights)
    with pytest.raises(FileNotFoundError, match=r"backbone\.json is missing"):
        evaluate_backbone(weights, {}, tmp_path / "eval.json")


def test_the_table_has_the_paper_columns_and_the_average(tmp_path: Path) -> None:
    accuracies = {"lfw": 0.99, "cfp_fp": 0.9, "cplfw": 0.8, "agedb_30": 0.85, "calfw": 0.875}
    evaluation = tmp_path / "real.json"
    evaluation.write_text(
        json.dumps({"benchmarks": {k: {"accuracy": v} for k, v in accuracies.items()}})
    )
    out = tmp_path / "table"
    rows = write_results_table(
        {"CASIA-WebFace": evaluation}, out / "t.md", out / "t.csv", out / "t.json"
    )
    assert rows == [
        {
            "model": "CASIA-WebFace",
            "LFW": 99.0,
            "CFP-FP": 90.0,
            "CPLFW": 80.0,
            "AGEDB": 85.0,
            "CALFW": 87.5,
            "Average": 88.3,
        }
    ]
    assert (out / "t.md").read_text().splitlines()[0] == (
        "| model | LFW | CFP-FP | CPLFW | AGEDB | CALFW | Average |"
    )
    assert (out / "t.csv").read_text().splitlines()[
        1
    ] == "CASIA-WebFace,99.0,90.0,80.0,85.0,87.5,88.3"
    evaluation.write_text(json.dumps({"benchmarks": {"lfw": {"accuracy": 1.0}}}))
    with pytest.raises(ValueError, match="no result for cfp_fp"):
        write_results_table({"x": evaluation}, out / "a.md", out / "a.csv", out / "a.json")

"""Context sources, context selection, and the oversampled set manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from synface.contexts import (
    SelectionConfig,
    database_manifest,
    generate_ldm_faces,
    select_contexts,
    uniform_contexts,
)
from synface.io.embeddings import write_embeddings
from synface.io.manifest import read_manifest
from synface.ldm.faces import embed_faces
from synface.ldm.first_stage import FirstStageSpec
from synface.models.spec import load_backbone
from synface.oversample import write_set_manifests

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "demo_weights"


def _spec() -> FirstStageSpec:
    first_stage = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["first_stage"]
    return FirstStageSpec(first_stage["ddconfig"], first_stage["embed_dim"], first_stage["n_embed"])


def test_uniform_contexts_are_seeded_unit_vectors() -> None:
    contexts = uniform_contexts(5, 512, seed=3)
    assert contexts.shape == (5, 512) and contexts.dtype == np.float32
    assert np.allclose(np.linalg.norm(contexts, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(contexts, uniform_contexts(5, 512, seed=3))
    assert not np.array_equal(contexts, uniform_contexts(5, 512, seed=4))


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Six unconditional faces from the shipped LDM, embedded with the shipped embedding model."""
    folder = tmp_path_factory.mktemp("candidates")
    generate_ldm_faces(
        WEIGHTS / "ldm" / "ema_averaged_model.ckpt", WEIGHTS / "first_stage", _spec(), 6,
        folder / "faces", face_size=32, seed=1, steps=5, batch_size=4,
    )  # fmt: skip
    manifest = folder / "faces" / "manifest.tsv"
    embedder, size = load_backbone(WEIGHTS / "embedding" / "backbone.pth")
    from torchvision.io import read_image

    entries = read_manifest(manifest)
    images = torch.stack([read_image(str(entry.path)) for entry in entries])
    embeddings = embed_faces(embedder, images, size).numpy()
    names = [entry.path.relative_to(manifest.parent).as_posix() for entry in entries]
    write_embeddings(folder / "embeddings", embeddings, names)
    return folder / "embeddings", manifest


def _select(candidates: tuple[Path, Path], out: Path, cfg: SelectionConfig) -> dict[str, int]:
    embeddings, manifest = candidates
    return select_contexts(
        embeddings, manifest, WEIGHTS / "ldm" / "ema_averaged_model.ckpt",
        WEIGHTS / "first_stage", _spec(), WEIGHTS / "embedding" / "backbone.pth", out, cfg,
    )  # fmt: skip


def test_selection_keeps_candidates_in_order_and_writes_their_faces(
    candidates: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg = SelectionConfig(identities=3, probe_samples=2, intra_threshold=-1.0,
                          inter_threshold=1.0, steps=5)  # fmt: skip
    summary = _select(candidates, tmp_path, cfg)
    assert summary == {"candidates_seen": 3, "kept": 3, "dropped": 0}
    kept = np.load(tmp_path / "contexts.npy")
    all_embeddings = np.load(candidates[0] / "embeddings.npy")
    assert np.array_equal(kept, all_embeddings[:3])
    faces = read_manifest(tmp_path / "faces.tsv")
    assert [f.label for f in faces] == [0, 1, 2]
    assert [f.path.name for f in faces] == ["0.png"] * 3


def test_selection_drops_inconsistent_and_duplicate_identities_with_reasons(
    candidates: tuple[Path, Path], tmp_path: Path
) -> None:
    strict_intra = SelectionConfig(identities=1, probe_samples=2, intra_threshold=1.01, steps=5)
    with pytest.raises(ValueError, match=r"dropped\.tsv"):
        _select(candidates, tmp_path / "a", strict_intra)
    reasons = (tmp_path / "a" / "dropped.tsv").read_text().splitlines()[1:]
    assert len(reasons) == 6 and all("intra" in line for line in reasons)
    # Every candidate is "too close" to the first one kept when the threshold is below -1.
    no_two = SelectionConfig(identities=2, probe_samples=2, intra_threshold=-1.0,
                             inter_threshold=-1.01, steps=5)  # fmt: skip
    with pytest.raises(ValueError, match="only 1 of 6"):
        _select(candidates, tmp_path / "b", no_two)
    reasons = (tmp_path / "b" / "dropped.tsv").read_text().splitlines()[1:]
    assert len(reasons) == 5 and all("inter" in line for line in reasons)


def test_a_database_lists_one_identity_per_face(tmp_path: Path) -> None:
    for name in ("b.png", "a.jpg"):
        (tmp_path / "db" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "db" / name).write_bytes(b"x")
    assert database_manifest(tmp_path / "db", tmp_path / "m.tsv") == 2
    assert [(e.path.name, e.label) for e in read_manifest(tmp_path / "m.tsv")] == [
        ("a.jpg", 0),
        ("b.png", 1),
    ]
    with pytest.raises(FileNotFoundError, match="context_database"):
        database_manifest(tmp_path / "empty", tmp_path / "n.tsv")


def test_oversampling_adds_manifest_lines_not_copies(tmp_path: Path) -> None:
    for identity in range(3):
        for k in range(2):
            path = tmp_path / "images" / f"{identity:05d}" / f"{k:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    faces = tmp_path / "faces.tsv"
    faces.write_text("".join(f"ctx/{i}.png\t{i}\n" for i in range(3)))
    count = write_set_manifests(
        tmp_path / "set.tsv", 2, tmp_path / "images", faces, repeats=5,
        synthetic_manifest=tmp_path / "generated.tsv",
    )  # fmt: skip
    entries = read_manifest(tmp_path / "set.tsv")
    assert count == 2 * 2 + 2 * 5
    assert sum(e.path.name == "0.png" and e.label == 0 for e in entries) == 5
    assert len(read_manifest(tmp_path / "generated.tsv")) == 4
    assert len(list(tmp_path.rglob("*.png"))) == 6  # nothing was copied
    control = write_set_manifests(tmp_path / "control.tsv", 3, None, faces, repeats=5)
    assert control == 15
    with pytest.raises(FileNotFoundError, match="identity 3"):
        write_set_manifests(tmp_path / "x.tsv", 4, tmp_path / "images")

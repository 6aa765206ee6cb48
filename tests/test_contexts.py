"""Context sources, context selection, and the oversampled set manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synface import contexts as contexts_module
from synface.contexts import (
    Selection,
    SelectionConfig,
    choose_contexts,
    database_manifest,
    generate_diffusers_faces,
    generate_ldm_faces,
    import_admis_embeddings,
    select_contexts,
    uniform_contexts,
)
from synface.io.embeddings import read_embeddings, write_embeddings
from synface.io.manifest import read_manifest
from synface.ldm.faces import embed_faces
from synface.models.spec import load_backbone
from synface.oversample import write_set_manifests
from synface.probes import ProbeSettings, probe_shard

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "demo_weights"


def _selection(**values: object) -> SelectionConfig:
    return SelectionConfig.from_settings({"probe_samples": 2, **values})


def test_uniform_contexts_are_seeded_unit_vectors() -> None:
    contexts = uniform_contexts(5, 512, seed=3)
    assert contexts.shape == (5, 512) and contexts.dtype == np.float32
    assert np.allclose(np.linalg.norm(contexts, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(contexts, uniform_contexts(5, 512, seed=3))
    assert not np.array_equal(contexts, uniform_contexts(5, 512, seed=4))


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Six unconditional faces from the shipped LDM, embedded with the shipped embedding model,
    and their probe scores (two samples each)."""
    folder = tmp_path_factory.mktemp("candidates")
    manifest = folder / "faces" / "manifest.tsv"
    generate_ldm_faces(
        WEIGHTS / "ldm" / "ema_averaged_model.ckpt", WEIGHTS / "first_stage", range(6),
        folder / "faces", face_size=32, seed=1, steps=5, batch_size=4, done_marker=manifest,
    )  # fmt: skip
    embedder, size = load_backbone(WEIGHTS / "embedding" / "backbone.pth")
    from torchvision.io import read_image

    entries = read_manifest(manifest)
    images = torch.stack([read_image(str(entry.path)) for entry in entries])
    embeddings = embed_faces(embedder, images, size).numpy()
    names = [entry.path.relative_to(manifest.parent).as_posix() for entry in entries]
    write_embeddings(folder / "embeddings", embeddings, names)
    probes = folder / "probes.tsv"
    probe_shard(
        folder / "embeddings", WEIGHTS / "ldm" / "ema_averaged_model.ckpt",
        WEIGHTS / "first_stage", WEIGHTS / "embedding" / "backbone.pth", range(6), probes,
        ProbeSettings.from_settings({"steps": 5, "probe_samples": 2}),
    )  # fmt: skip
    return folder / "embeddings", manifest, probes


def _select(candidates: tuple[Path, Path, Path], out: Path, cfg: SelectionConfig) -> dict[str, int]:
    embeddings, manifest, probes = candidates
    return select_contexts(embeddings, manifest, [probes], out, cfg)


def test_selection_keeps_candidates_in_order_and_writes_their_faces(
    candidates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    cfg = _selection(identities=3, intra_threshold=-1.0, inter_threshold=1.0)
    summary = _select(candidates, tmp_path, cfg)
    assert summary == {"candidates_seen": 3, "kept": 3, "dropped": 0}
    kept = np.load(tmp_path / "contexts.npy")
    all_embeddings = np.load(candidates[0] / "embeddings.npy")
    assert np.array_equal(kept, all_embeddings[:3])
    faces = read_manifest(tmp_path / "faces.tsv")
    assert [f.label for f in faces] == [0, 1, 2]
    assert [f.path.name for f in faces] == ["0.png"] * 3


def test_selection_drops_inconsistent_and_duplicate_identities_with_reasons(
    candidates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    strict_intra = _selection(identities=1, intra_threshold=1.01)
    with pytest.raises(ValueError, match=r"dropped\.tsv"):
        _select(candidates, tmp_path / "a", strict_intra)
    reasons = (tmp_path / "a" / "dropped.tsv").read_text().splitlines()[1:]
    assert len(reasons) == 6 and all("intra" in line for line in reasons)
    # Every candidate is "too close" to the first one kept when the threshold is below -1.
    no_two = _selection(identities=2, intra_threshold=-1.0, inter_threshold=-1.01)
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


def _unit(*pairs: tuple[int, float], dim: int = 8) -> torch.Tensor:
    vector = torch.zeros(dim)
    for axis, value in pairs:
        vector[axis] = value
    return vector / vector.norm()


def test_selection_keeps_and_drops_constructed_candidates_as_computed_by_hand() -> None:
    """Six candidates whose probe cosines are chosen, thresholds intra 0.5 and inter 0.7:
    0 kept (probe cosines 0.6, 0.6), 1 dropped as a near-copy of 0 (cosine 0.9), 2 dropped
    (0.1 and 0.7: mean 0.4, though its best probe passes), 3 kept (0.8, 0.8), 4 kept (0.3 and
    0.9: mean 0.6, though its worst probe fails); three identities wanted, so 5 is never seen.
    The scores are the probes' mean cosines."""
    contexts = torch.stack(
        [_unit((0, 1)), _unit((0, 0.9), (1, 0.19**0.5)), _unit((2, 1)), _unit((3, 1)),
         _unit((4, 1)), _unit((5, 1))]
    )  # fmt: skip
    intra = [0.6, None, 0.4, 0.8, 0.6, None]  # None: never judged (the walk never reads it)
    for batch_size in (4, 100):
        cfg = _selection(identities=3, intra_threshold=0.5, inter_threshold=0.7,
                         batch_size=batch_size)  # fmt: skip
        selection = choose_contexts(contexts, intra, cfg)  # type: ignore[arg-type]
        assert selection.kept == [0, 3, 4]
        assert selection.intra == pytest.approx({0: 0.6, 3: 0.8, 4: 0.6})
        assert selection.dropped == [(1, "inter 0.900 > 0.7"), (2, "intra 0.400 < 0.5")]


def _walk_one_by_one(contexts: torch.Tensor, intra: list[float], cfg: SelectionConfig) -> Selection:
    """The walk as first written, one candidate at a time: the reference for the blocked one."""
    selection, pending = Selection(), []
    kept, per_batch = selection.kept, max(1, cfg.batch_size // cfg.probe_samples)

    def judge() -> None:
        for i in pending:
            if len(kept) >= cfg.identities:
                break
            if intra[i] < cfg.intra_threshold:
                selection.dropped.append((i, f"intra {intra[i]:.3f} < {cfg.intra_threshold}"))
            else:
                kept.append(i)
                selection.intra[i] = intra[i]
        pending.clear()

    for i in range(len(contexts)):
        if len(kept) >= cfg.identities:
            break
        others = kept + pending
        closest = float((contexts[others] @ contexts[i]).max()) if others else -np.inf
        if closest > cfg.inter_threshold:
            selection.dropped.append((i, f"inter {closest:.3f} > {cfg.inter_threshold}"))
            continue
        pending.append(i)
        if len(pending) == per_batch or len(kept) + len(pending) >= cfg.identities:
            judge()
    if pending:
        judge()
    return selection


@pytest.mark.parametrize("block", [1, 5, 64, 2048])
def test_the_blocked_walk_selects_what_the_one_by_one_walk_selects(
    block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """400 candidates in 40 clusters (near-copies fail the inter test), scores around the
    threshold; blocks of any size, and awaiting candidates carried across blocks."""
    monkeypatch.setattr(contexts_module, "WALK_BLOCK", block)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 64))
    rows = centres[rng.integers(0, 40, 400)] + 0.6 * rng.normal(size=(400, 64))
    table = torch.nn.functional.normalize(torch.from_numpy(rows).float(), dim=1)
    intra = [float(x) for x in rng.uniform(0.3, 0.7, 400)]
    for identities, batch_size in ((60, 12), (500, 3), (5, 100)):
        cfg = _selection(identities=identities, intra_threshold=0.45, inter_threshold=0.5,
                         batch_size=batch_size)  # fmt: skip
        expected = _walk_one_by_one(table, intra, cfg)
        assert choose_contexts(table, intra, cfg) == expected
        assert expected.dropped and expected.kept  # both tests are at work


def _tiny_diffusers_model(folder: Path, subfolder: str | None) -> None:
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    unet.save_pretrained(folder / subfolder if subfolder else folder)
    DDIMScheduler(num_train_timesteps=100).save_pretrained(folder / "scheduler")


def _by_hand(folder: Path, seed: int, label: int, steps: int) -> np.ndarray:
    """Face ``label`` sampled with diffusers' own DDIM loop from image_noise(seed, label, 0)."""
    from diffusers import DDIMScheduler, UNet2DModel

    from synface.ldm.sampling import image_noise

    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(steps)
    x = image_noise(seed, label, 0, (3, 8, 8))[None]
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return ((x[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()


def test_diffusers_faces_come_from_a_save_pretrained_folder(tmp_path: Path) -> None:
    from PIL import Image

    _tiny_diffusers_model(tmp_path / "model", "unet")
    count = generate_diffusers_faces(tmp_path / "model", range(3), tmp_path / "a", 8, seed=2,
                                     steps=3, batch_size=2)  # fmt: skip
    entries = read_manifest(tmp_path / "a" / "shards" / "0-3.tsv")
    assert count == 3 and [e.label for e in entries] == [0, 1, 2]
    faces = [np.asarray(Image.open(e.path)).astype(int) for e in entries]
    assert all(face.shape == (8, 8, 3) for face in faces)
    for label, face in enumerate(faces):
        assert np.abs(face - _by_hand(tmp_path / "model", 2, label, 3)).max() <= 1
    # Face i depends on (seed, i) only, not on the batch; the model may sit at the top.
    _tiny_diffusers_model(tmp_path / "top", None)
    generate_diffusers_faces(tmp_path / "top", range(3), tmp_path / "b", 8, seed=2, steps=3,
                             batch_size=3)  # fmt: skip
    assert [e.path.read_bytes() for e in entries] == [
        e.path.read_bytes() for e in read_manifest(tmp_path / "b" / "shards" / "0-3.tsv")
    ]
    with pytest.raises(ValueError, match="not a diffusers unconditional UNet folder"):
        generate_diffusers_faces(tmp_path / "a", range(1), tmp_path / "c", 8, seed=2, steps=1)


def test_admis_embeddings_are_reordered_to_the_database(tmp_path: Path) -> None:
    """ADMIS ships elastic_embed.npy (a numpy array) and image_names.pkl (a pickled list of
    relative names) in its own order; rows follow the database manifest, matched by name."""
    import pickle

    for name in ("b.png", "a.png", "c.png"):
        (tmp_path / "db" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "db" / name).write_bytes(b"x")
    database_manifest(tmp_path / "db", tmp_path / "candidates" / "manifest.tsv")
    released = {"c.png": 3.0, "a.png": 1.0, "b.png": 2.0}
    np.save(tmp_path / "elastic_embed.npy",
            np.stack([np.full(512, v, np.float32) for v in released.values()]))  # fmt: skip
    with (tmp_path / "image_names.pkl").open("wb") as f:
        pickle.dump([f"images/{name}" for name in released], f)
    manifest = tmp_path / "candidates" / "manifest.tsv"
    npy, pkl = tmp_path / "elastic_embed.npy", tmp_path / "image_names.pkl"
    import_admis_embeddings(npy, pkl, manifest, tmp_path / "out")
    embeddings, names = read_embeddings(tmp_path / "out")
    assert [Path(n).name for n in names] == ["a.png", "b.png", "c.png"]
    assert embeddings[:, 0].tolist() == [1.0, 2.0, 3.0]
    with (tmp_path / "image_names.pkl").open("wb") as f:
        pickle.dump(["images/c.png", "images/a.png", "images/x.png"], f)
    with pytest.raises(ValueError, match=r"b\.png.*contexts\.embed_npy"):
        import_admis_embeddings(npy, pkl, manifest, tmp_path / "o2")

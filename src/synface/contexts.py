"""The identities of synthetic people: context candidates, and the selection ADMIS only drew.

Sources (specs/generative.md §1, §13): ``uniform`` unit vectors (IDiff-Face's baseline);
``unconditional`` faces from an unconditional generator, then embedded (ADMIS's
context-enhanced sampling: the trained LDM's unconditional mode, or a diffusers unconditional
UNet folder such as an FFHQ DDPM); ``database`` faces supplied by the user (ADMIS's
``context_database/images``), with or without their embeddings.

Selection goes beyond ADMIS, whose figure shows this step but whose code has none (§20 gap 3):
a candidate is kept only if the LDM's probe samples for it agree with it (mean cosine
≥ τ_intra, with the embedding model) and it is far enough from every identity already kept
(cosine ≤ τ_inter). What was dropped, and why, is written next to what was kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from synface import runtime
from synface.io.embeddings import aligned_entries, read_embeddings
from synface.io.manifest import ManifestEntry, read_manifest, write_manifest
from synface.ldm.faces import FaceGenerator, embed_faces, resize_faces
from synface.ldm.first_stage import FirstStageSpec
from synface.models.spec import load_backbone

log = logging.getLogger(__name__)

CONTEXTS_FILE = "contexts.npy"
FACES_MANIFEST = "faces.tsv"


def uniform_contexts(count: int, dim: int, seed: int) -> np.ndarray:
    """``count`` random unit vectors: IDiff-Face's synthetic-uniform contexts (§1.1)."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return torch.nn.functional.normalize(vectors, dim=1).float().numpy()


def write_uniform_contexts(out_dir: Path, count: int, dim: int, seed: int) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / CONTEXTS_FILE, uniform_contexts(count, dim, seed))


def _save_faces(images: torch.Tensor, first: int, out_dir: Path) -> list[ManifestEntry]:
    entries = []
    for offset, image in enumerate(images):
        label = first + offset
        path = Path(out_dir) / "images" / f"{label:05d}" / "0.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        entries.append(ManifestEntry(path, label))
    return entries


def generate_ldm_faces(
    ldm_checkpoint: Path,
    first_stage_dir: Path,
    spec: FirstStageSpec,
    count: int,
    out_dir: Path,
    face_size: int,
    seed: int,
    steps: int = 50,
    batch_size: int = 100,
    threads: int = 1,
) -> int:
    """Context faces from the LDM's unconditional mode (learnt with whole-context dropout);
    writes ``images/<i>/0.png`` and ``manifest.tsv`` (one identity per face)."""
    runtime.set_threads(threads)
    generator = FaceGenerator(ldm_checkpoint, first_stage_dir, spec, runtime.pick_device())
    entries = []
    for first in range(0, count, batch_size):
        jobs = [(i, 0) for i in range(first, min(first + batch_size, count))]
        faces = resize_faces(generator.faces(None, jobs, seed, steps), face_size)
        entries += _save_faces(faces, first, out_dir)
    return write_manifest(Path(out_dir) / "manifest.tsv", entries)


@torch.inference_mode()
def generate_diffusers_faces(
    model_dir: Path,
    count: int,
    out_dir: Path,
    face_size: int,
    seed: int,
    steps: int = 50,
    batch_size: int = 16,
    threads: int = 1,
) -> int:
    """Context faces from a diffusers unconditional UNet checkpoint folder (``unet/`` or the
    model at the top, with its ``scheduler/``), e.g. an FFHQ DDPM, sampled with DDIM."""
    from diffusers import DDIMScheduler, UNet2DModel

    runtime.set_threads(threads)
    device = runtime.pick_device()
    model_dir = Path(model_dir)
    subfolder = "unet" if (model_dir / "unet").is_dir() else None
    try:
        unet = UNet2DModel.from_pretrained(model_dir, subfolder=subfolder).to(device).eval()
        scheduler = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{model_dir}: not a diffusers unconditional UNet folder (expected unet/ or a "
            f"config.json + weights, and scheduler/): {error}"
        ) from None
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    entries = []
    for first in range(0, count, batch_size):
        labels = range(first, min(first + batch_size, count))
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + i) for i in labels]
        x = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
        scheduler.set_timesteps(steps, device=device)
        for t in scheduler.timesteps:
            with runtime.autocast(device):
                eps = unet(x, t).sample
            x = scheduler.step(eps.float(), t, x).prev_sample
        images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        entries += _save_faces(resize_faces(images, face_size), first, out_dir)
    return write_manifest(Path(out_dir) / "manifest.tsv", entries)


def database_manifest(images: Path, out_manifest: Path) -> int:
    """ADMIS's context database: one face image per identity, in file-name order."""
    files = sorted(
        p for p in Path(images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    if not files:
        raise FileNotFoundError(
            f"context database {images} holds no .jpg/.png faces: put one aligned face per "
            "identity there (ADMIS's context_database/images)"
        )
    return write_manifest(out_manifest, [ManifestEntry(p, i) for i, p in enumerate(files)])


def import_admis_embeddings(
    embed_npy: Path, names_pkl: Path, manifest: Path, out_dir: Path
) -> None:
    """ADMIS's released context embeddings, reordered to the database manifest (matched by
    file name), written like ``extract_embeddings`` output."""
    from synface.io.embeddings import read_admis_embeddings, write_embeddings

    embeddings, names = read_admis_embeddings(embed_npy, names_pkl)
    row_of = {Path(name).name: row for row, name in enumerate(names)}
    entries = read_manifest(manifest)
    missing = [e.path.name for e in entries if e.path.name not in row_of]
    if missing:
        raise ValueError(
            f"{names_pkl} names no embedding for {len(missing)} faces of {manifest} "
            f"(e.g. {missing[0]}): extract them instead by leaving contexts.database.embeddings "
            "empty"
        )
    rows = [row_of[e.path.name] for e in entries]
    relative = [e.path.relative_to(Path(manifest).parent).as_posix() for e in entries]
    write_embeddings(out_dir, embeddings[rows], relative)


@dataclass(frozen=True)
class SelectionConfig:
    """How contexts are filtered; thresholds are cosines under the embedding model."""

    identities: int
    probe_samples: int = 4
    intra_threshold: float = 0.5
    inter_threshold: float = 0.7
    steps: int = 25
    seed: int = 0
    batch_size: int = 100


def select_contexts(
    candidates_dir: Path,
    candidates_manifest: Path,
    ldm_checkpoint: Path,
    first_stage_dir: Path,
    spec: FirstStageSpec,
    embedding_weights: Path,
    out_dir: Path,
    cfg: SelectionConfig,
    threads: int = 1,
) -> dict[str, int]:
    """Keep up to ``cfg.identities`` candidates, in candidate order.

    Writes ``contexts.npy`` (kept embeddings, row = synthetic identity), ``faces.tsv`` (their
    context faces, label = row), ``selected.tsv`` and ``dropped.tsv`` (with the reason).
    """
    runtime.set_threads(threads)
    device = runtime.pick_device()
    embeddings, names = read_embeddings(candidates_dir)
    entries = aligned_entries(candidates_dir, names, candidates_manifest)
    generator = FaceGenerator(ldm_checkpoint, first_stage_dir, spec, device)
    embedder, face_size = load_backbone(embedding_weights)
    embedder.to(device)
    contexts = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    kept: list[int] = []
    intra_of: dict[int, float] = {}
    dropped: list[tuple[int, str]] = []
    per_batch = max(1, cfg.batch_size // cfg.probe_samples)
    pending: list[int] = []

    def nearest(i: int, others: list[int]) -> float:
        return float((contexts[others] @ contexts[i]).max()) if others else -np.inf

    def probe_pending() -> None:
        """Sample and embed probes for the pending candidates; keep those that agree."""
        jobs = [(i, k) for i in pending for k in range(cfg.probe_samples)]
        faces = generator.faces(contexts[[i for i, _ in jobs]], jobs, cfg.seed, cfg.steps)
        probes = embed_faces(embedder, faces, face_size).view(len(pending), cfg.probe_samples, -1)
        for row, i in enumerate(pending):
            intra = (probes[row] @ contexts[i]).mean().item()
            if len(kept) >= cfg.identities:
                break
            if intra < cfg.intra_threshold:
                dropped.append((i, f"intra {intra:.3f} < {cfg.intra_threshold}"))
            else:
                kept.append(i)
                intra_of[i] = intra
        pending.clear()

    # The inter test needs no sampling, so it runs first (against the identities kept or
    # awaiting their probes); only candidates that pass it cost probe samples.
    for i in range(len(entries)):
        if len(kept) >= cfg.identities:
            break
        closest = nearest(i, kept + pending)
        if closest > cfg.inter_threshold:
            dropped.append((i, f"inter {closest:.3f} > {cfg.inter_threshold}"))
            continue
        pending.append(i)
        if len(pending) == per_batch or len(kept) + len(pending) >= cfg.identities:
            probe_pending()
    if pending:
        probe_pending()
    reasons = {kind: sum(r.startswith(kind) for _, r in dropped) for kind in ("intra", "inter")}
    log.info("kept %d contexts; dropped %s", len(kept), reasons)
    _write_selection(out_dir, kept, intra_of, dropped, contexts, entries, names)
    if len(kept) < cfg.identities:
        raise ValueError(
            f"only {len(kept)} of {len(entries)} context candidates pass the selection, "
            f"{cfg.identities} are needed: raise contexts.candidates or relax "
            f"contexts.selection thresholds (reasons in {Path(out_dir) / 'dropped.tsv'})"
        )
    summary = {
        "candidates_seen": len(kept) + len(dropped),
        "kept": len(kept),
        "dropped": len(dropped),
    }
    (Path(out_dir) / "selection.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("context selection: %s", summary)
    return summary


def _write_selection(
    out_dir: Path,
    kept: list[int],
    intra_of: dict[int, float],
    dropped: list[tuple[int, str]],
    contexts: torch.Tensor,
    entries: list[ManifestEntry],
    names: list[str],
) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / CONTEXTS_FILE, contexts[kept].numpy())
    faces = [ManifestEntry(entries[i].path, label) for label, i in enumerate(kept)]
    write_manifest(out_dir / FACES_MANIFEST, faces)
    with (out_dir / "selected.tsv").open("w") as out:
        out.write("identity\tcandidate\tface\tintra\n")
        for label, i in enumerate(kept):
            out.write(f"{label}\t{i}\t{names[i]}\t{intra_of[i]:.4f}\n")
    with (out_dir / "dropped.tsv").open("w") as out:
        out.write("candidate\tface\treason\n")
        for i, reason in dropped:
            out.write(f"{i}\t{names[i]}\t{reason}\n")

"""The identities of synthetic people: context candidates, and the selection ADMIS only drew.

Sources: ``uniform`` unit vectors (IDiff-Face's baseline);
``unconditional`` faces from an unconditional generator, then embedded (ADMIS's
context-enhanced sampling: the trained LDM's unconditional mode, or a diffusers unconditional
UNet folder such as an FFHQ DDPM); ``database`` faces supplied by the user (ADMIS's
``context_database/images``), with or without their embeddings.

Selection goes beyond ADMIS, whose figure shows this step but whose code has none:
a candidate is kept only if the LDM's probe samples for it agree with it (mean cosine
≥ τ_intra, with the embedding model) and it is far enough from every identity already kept
(cosine ≤ τ_inter). What was dropped, and why, is written next to what was kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from synface.io.atomic import atomic_path, write_json, write_text
from synface.io.embeddings import aligned_entries, read_embeddings
from synface.io.images import to_uint8
from synface.io.manifest import ManifestEntry, read_manifest, write_manifest
from synface.ldm.faces import FaceEmbedder, FaceGenerator, resize_faces, stage_device
from synface.ldm.sampling import image_noise, sample_latents
from synface.settings import StageSettings

log = logging.getLogger(__name__)

CONTEXTS_FILE = "contexts.npy"
FACES_MANIFEST = "faces.tsv"


def uniform_contexts(count: int, dim: int, seed: int) -> np.ndarray:
    """``count`` random unit vectors: IDiff-Face's synthetic-uniform contexts."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return torch.nn.functional.normalize(vectors, dim=1).float().numpy()


def write_uniform_contexts(out_dir: Path, count: int, dim: int, seed: int) -> None:
    with atomic_path(Path(out_dir) / CONTEXTS_FILE) as tmp, tmp.open("wb") as f:
        np.save(f, uniform_contexts(count, dim, seed))


def _write_candidate_faces(
    make_faces: Callable[[range], torch.Tensor],
    count: int,
    out_dir: Path,
    face_size: int,
    batch_size: int,
) -> int:
    """``images/<i>/0.png`` for i < ``count`` from ``make_faces(labels)`` (uint8 faces) and
    ``manifest.tsv`` (one identity per face)."""
    entries = []
    for first in range(0, count, batch_size):
        labels = range(first, min(first + batch_size, count))
        for label, image in zip(labels, resize_faces(make_faces(labels), face_size), strict=True):
            path = Path(out_dir) / "images" / f"{label:05d}" / "0.png"
            with atomic_path(path) as tmp:
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
            entries.append(ManifestEntry(path, label))
    return write_manifest(Path(out_dir) / "manifest.tsv", entries)


def generate_ldm_faces(
    ldm_checkpoint: Path,
    first_stage: Path,
    count: int,
    out_dir: Path,
    face_size: int,
    seed: int,
    steps: int = 50,
    batch_size: int = 100,
    threads: int = 1,
) -> int:
    """Context faces from the LDM's unconditional mode (learnt with whole-context dropout);
    face i starts from ``image_noise(seed, i, 0)``."""
    generator = FaceGenerator.for_stage(ldm_checkpoint, first_stage, threads)

    def make_faces(labels: range) -> torch.Tensor:
        return generator.faces(None, [(i, 0) for i in labels], seed, steps)

    return _write_candidate_faces(make_faces, count, out_dir, face_size, batch_size)


class _DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` behind ``sample_latents``' unconditional interface."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


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
    model at the top, with its ``scheduler/``), e.g. an FFHQ DDPM, sampled with DDIM by the
    loop the LDM uses; face i starts from ``image_noise(seed, i, 0)``."""
    from diffusers import DDIMScheduler, UNet2DModel

    device = stage_device(threads)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        # Checked before diffusers sees it: it takes a missing path for a hub repository id.
        raise FileNotFoundError(
            f"{model_dir}: no such folder (contexts.model_dir); put a diffusers unconditional "
            "UNet folder there (unet/ or config.json + weights, and scheduler/), e.g. a DDPM "
            "trained on FFHQ"
        )
    subfolder = "unet" if (model_dir / "unet").is_dir() else None
    offline = {"local_files_only": True}  # a local folder only: never the network
    try:
        unet = UNet2DModel.from_pretrained(model_dir, subfolder=subfolder, **offline)
        unet = unet.to(device).eval()
        scheduler = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler", **offline)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{model_dir}: not a diffusers unconditional UNet folder (expected unet/ or a "
            f"config.json + weights, and scheduler/): {error}"
        ) from None
    model = _DiffusersUNet(unet)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

    def make_faces(labels: range) -> torch.Tensor:
        noise = torch.stack([image_noise(seed, i, 0, shape) for i in labels]).to(device)
        return to_uint8(sample_latents(model, scheduler, noise, None, steps)).cpu()

    return _write_candidate_faces(make_faces, count, out_dir, face_size, batch_size)


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
            f"(e.g. {missing[0]}): extract them instead by setting contexts.embed_npy and "
            "contexts.names_pkl to null"
        )
    rows = [row_of[e.path.name] for e in entries]
    relative = [e.path.relative_to(Path(manifest).parent).as_posix() for e in entries]
    write_embeddings(out_dir, embeddings[rows], relative)


@dataclass(frozen=True)
class SelectionConfig(StageSettings, section="contexts.selection"):
    """How contexts are filtered (config section ``contexts.selection``, defaults in the
    schema; ``identities`` comes from the sets); thresholds are cosines under the embedding
    model."""

    identities: int
    probe_samples: int
    intra_threshold: float
    inter_threshold: float
    steps: int
    seed: int
    batch_size: int


@dataclass
class Selection:
    """Kept candidates (in order) with their intra cosine, and the dropped ones with a reason."""

    kept: list[int] = field(default_factory=list)
    intra: dict[int, float] = field(default_factory=dict)
    dropped: list[tuple[int, str]] = field(default_factory=list)


def choose_contexts(
    contexts: torch.Tensor,
    probe: Callable[[list[int]], torch.Tensor],
    cfg: SelectionConfig,
) -> Selection:
    """Walk the candidates (rows of ``contexts``, unit vectors) in order until ``cfg.identities``
    are kept. ``probe(candidates)`` gives the (len, probe_samples, D) unit embeddings of the
    LDM's probe faces for those candidates.

    The inter test needs no sampling, so it runs first (against the identities kept or awaiting
    their probes); only candidates that pass it cost probe samples.
    """
    selection = Selection()
    kept, pending = selection.kept, []
    per_batch = max(1, cfg.batch_size // cfg.probe_samples)

    def probe_pending() -> None:
        probes = probe(pending)
        for row, i in enumerate(pending):
            if len(kept) >= cfg.identities:
                break
            intra = (probes[row] @ contexts[i]).mean().item()
            if intra < cfg.intra_threshold:
                selection.dropped.append((i, f"intra {intra:.3f} < {cfg.intra_threshold}"))
            else:
                kept.append(i)
                selection.intra[i] = intra
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
            probe_pending()
    if pending:
        probe_pending()
    return selection


def select_contexts(
    candidates_dir: Path,
    candidates_manifest: Path,
    ldm_checkpoint: Path,
    first_stage: Path,
    embedding_weights: Path,
    out_dir: Path,
    cfg: SelectionConfig,
    threads: int = 1,
) -> dict[str, int]:
    """Keep up to ``cfg.identities`` candidates, in candidate order (``choose_contexts``).

    Writes ``contexts.npy`` (kept embeddings, row = synthetic identity), ``faces.tsv`` (their
    context faces, label = row), ``selected.tsv`` and ``dropped.tsv`` (with the reason).
    """
    embeddings, names = read_embeddings(candidates_dir)
    entries = aligned_entries(candidates_dir, names, candidates_manifest)
    generator = FaceGenerator.for_stage(ldm_checkpoint, first_stage, threads)
    embedder = FaceEmbedder(embedding_weights, generator.device)
    contexts = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))

    def probe(candidates: list[int]) -> torch.Tensor:
        jobs = [(i, k) for i in candidates for k in range(cfg.probe_samples)]
        faces = generator.faces(contexts[[i for i, _ in jobs]], jobs, cfg.seed, cfg.steps)
        return embedder(faces).view(len(candidates), cfg.probe_samples, -1)

    selection = choose_contexts(contexts, probe, cfg)
    reasons = {k: sum(r.startswith(k) for _, r in selection.dropped) for k in ("intra", "inter")}
    log.info("kept %d contexts; dropped %s", len(selection.kept), reasons)
    _write_selection(out_dir, selection, contexts, entries, names)
    if len(selection.kept) < cfg.identities:
        raise ValueError(
            f"only {len(selection.kept)} of {len(entries)} context candidates pass the "
            f"selection, {cfg.identities} are needed: raise contexts.candidates or relax "
            f"contexts.selection thresholds (reasons in {Path(out_dir) / 'dropped.tsv'})"
        )
    summary = {
        "candidates_seen": len(selection.kept) + len(selection.dropped),
        "kept": len(selection.kept),
        "dropped": len(selection.dropped),
    }
    write_json(Path(out_dir) / "selection.json", summary)
    log.info("context selection: %s", summary)
    return summary


def _write_selection(
    out_dir: Path,
    selection: Selection,
    contexts: torch.Tensor,
    entries: list[ManifestEntry],
    names: list[str],
) -> None:
    out_dir, kept = Path(out_dir), selection.kept
    with atomic_path(out_dir / CONTEXTS_FILE) as tmp, tmp.open("wb") as f:
        np.save(f, contexts[kept].numpy())
    faces = [ManifestEntry(entries[i].path, label) for label, i in enumerate(kept)]
    write_manifest(out_dir / FACES_MANIFEST, faces)
    selected = [
        f"{label}\t{i}\t{names[i]}\t{selection.intra[i]:.4f}\n" for label, i in enumerate(kept)
    ]
    write_text(out_dir / "selected.tsv", "identity\tcandidate\tface\tintra\n" + "".join(selected))
    dropped = [f"{i}\t{names[i]}\t{reason}\n" for i, reason in selection.dropped]
    write_text(out_dir / "dropped.tsv", "candidate\tface\treason\n" + "".join(dropped))


@dataclass(frozen=True)
class SpreadConfig(StageSettings, section="contexts.spread"):
    """How selected contexts are spread apart (config section ``contexts.spread``, defaults in
    the schema): ``steps`` projected gradient steps of size ``lr`` on a soft-max repulsion at
    ``temperature``, with a pull of weight ``pull`` back to each original embedding."""

    steps: int
    lr: float
    temperature: float
    pull: float


def pairwise_cosines(contexts: torch.Tensor) -> dict[str, float]:
    """The closest pair's cosine (the smallest angle) and the mean cosine over distinct pairs."""
    n = len(contexts)
    if n < 2:
        return {"max_cosine": float("nan"), "mean_cosine": float("nan")}
    gram = contexts.double() @ contexts.double().T
    off = gram[~torch.eye(n, dtype=torch.bool)]
    return {"max_cosine": round(float(off.max()), 6), "mean_cosine": round(float(off.mean()), 6)}


def spread_contexts(contexts: torch.Tensor, cfg: SpreadConfig, chunk: int = 1024) -> torch.Tensor:
    """Unit rows moved apart on the hypersphere (HyperFace's packing idea), near where they
    started, so they stay faces the LDM knows.

    Each step moves every row x_i against its repulsion Σ_j p_ij x_j (p_i = softmax over
    j ≠ i of cos(x_i, x_j) / temperature: mostly its nearest neighbours) and towards its
    original row x⁰_i (weight ``pull``), then projects back onto the sphere. Rows are processed
    in chunks of ``chunk`` (memory O(chunk × n)); float64 throughout."""
    original = torch.nn.functional.normalize(contexts.double(), dim=1)
    x = original.clone()
    n = len(x)
    for _ in range(cfg.steps if n > 1 else 0):
        force = torch.empty_like(x)
        for first in range(0, n, chunk):
            rows = slice(first, min(first + chunk, n))
            logits = x[rows] @ x.T / cfg.temperature
            logits[torch.arange(logits.shape[0]), torch.arange(first, rows.stop)] = -torch.inf
            force[rows] = torch.softmax(logits, dim=1) @ x
        step = force + cfg.pull * (x - original)
        x = torch.nn.functional.normalize(x - cfg.lr * step, dim=1)
    return x.float()


def write_spread_contexts(contexts_npy: Path, out_dir: Path, cfg: SpreadConfig) -> dict:
    """``contexts.npy`` of ``out_dir``: the selected contexts spread apart (``spread_contexts``),
    row for row; ``spread.json`` reports the pairwise cosines before and after, and how far the
    rows moved (mean cosine to their original)."""
    before = torch.from_numpy(np.load(contexts_npy).astype(np.float32))
    after = spread_contexts(before, cfg)
    with atomic_path(Path(out_dir) / CONTEXTS_FILE) as tmp, tmp.open("wb") as f:
        np.save(f, after.numpy())
    moved = (after.double() * before.double()).sum(dim=1).mean()
    summary = {
        "identities": len(before),
        "before": pairwise_cosines(before),
        "after": pairwise_cosines(after),
        "mean_cosine_to_original": round(float(moved), 6),
    }
    write_json(Path(out_dir) / "spread.json", summary)
    log.info("spread contexts: %s", summary)
    return summary

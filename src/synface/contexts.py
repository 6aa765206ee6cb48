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

Both halves scale like synthesis: candidate i is a function of (generator, seed, i), so shards
of candidate indices are separate jobs whose union is the bytes one job would write; the probe
scores are computed per shard of candidates (``synface.probes``), and ``select_contexts`` walks
scores and embeddings alone, on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from synface import runtime
from synface.align import AlignedBatch, AlignSettings, FaceAligner
from synface.checkpoint import content_digest
from synface.io.atomic import atomic_path, write_json, write_text
from synface.io.embeddings import aligned_entries, read_embeddings
from synface.io.images import to_uint8
from synface.io.manifest import ManifestEntry, database_faces, read_manifest, write_manifest
from synface.io.rejected import write_rejected
from synface.ldm.faces import FaceGenerator, ldm_files, resize_faces, stage_device
from synface.ldm.sampling import image_noise, sample_latents
from synface.probes import read_scores
from synface.progress import progress
from synface.settings import StageSettings
from synface.shards import claim_folder, grid_batches, journal_of
from synface.synthesis import pad_jobs

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


def candidate_face(out_dir: Path, index: int) -> Path:
    """Where candidate ``index`` is written: ``images/<index:05d>/0.png``."""
    return Path(out_dir) / "images" / f"{index:05d}" / "0.png"


def fit_faces(faces: torch.Tensor, face_size: int, aligner: FaceAligner | None) -> AlignedBatch:
    """A generator's uint8 frames as ``face_size`` crops: aligned to the ArcFace template by
    ``aligner`` (frames without a usable face dropped, with the reason), or the whole frame
    resized without one."""
    if aligner is None:
        return AlignedBatch(resize_faces(faces, face_size), list(range(len(faces))))
    return aligner(faces)


def _write_candidate_faces(
    make_faces: Callable[[list[tuple[int, int]]], torch.Tensor],
    indices: Sequence[int],
    out_dir: Path,
    face_size: int,
    batch_size: int,
    aligner: FaceAligner | None,
) -> list[tuple[int, str]]:
    """``images/<i>/0.png`` for each candidate i of ``indices`` from ``make_faces(jobs)``
    (uint8 frames, one per ``(i, 0)`` job, fitted by ``fit_faces``), each written atomically;
    returns the candidates alignment dropped, with the reason. Batches are padded to
    ``MIN_ROWS`` (as synthesis pads them), so a face's bytes do not depend on the shard."""
    dropped = []
    bar = progress(len(indices), "make-contexts", batch_size, unit="faces")
    for labels in grid_batches(indices, batch_size):
        frames = make_faces(pad_jobs([(i, 0) for i in labels]))[: len(labels)]
        fitted = fit_faces(frames, face_size, aligner)
        dropped += [(labels[row], reason) for row, reason in fitted.dropped]
        for row, image in zip(fitted.kept, fitted.faces, strict=True):
            with atomic_path(candidate_face(out_dir, labels[row])) as tmp:
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp, format="PNG")
        bar.update(len(labels))
    bar.close()
    return dropped


def _write_candidate_shard(
    make_faces: Callable[[list[tuple[int, int]]], torch.Tensor],
    indices: range,
    out_dir: Path,
    face_size: int,
    batch_size: int,
    record: dict[str, Any],
    done_marker: Path | None,
    align: AlignSettings | None,
) -> int:
    """Candidates ``indices`` of a shard, then its manifest (``done_marker``, default
    ``out_dir/shards/<start>-<stop>.tsv``: one identity per face kept), written last, and the
    candidates alignment dropped in ``out_dir/rejected/<start>-<stop>/rejected.tsv``.

    Resumes like a synthesis shard: with its journal present (an interrupted run) the faces
    already there are kept (a dropped candidate is drawn again, and dropped again); without it
    every face is made anew. ``settings.json`` guards the shared folder against faces of other
    generator or alignment settings."""
    out_dir = Path(out_dir)
    marker = Path(done_marker or out_dir / "shards" / f"{indices.start}-{indices.stop}.tsv")
    finished = lambda: len(list(out_dir.glob("images/*/0.png")))  # noqa: E731 (on a mismatch)
    restore = "the generator, contexts and alignment settings the candidates were made with"
    record = {**record, "align": None if align is None else asdict(align)}
    claim_folder(out_dir, record, finished, "candidate faces", restore)
    journal = journal_of(marker)
    pending: Sequence[int] = indices
    if journal.exists():
        pending = [i for i in indices if not candidate_face(out_dir, i).exists()]
        log.info(
            "resuming: %d of %d candidates were done", len(indices) - len(pending), len(indices)
        )
    else:
        write_json(journal, {"first": indices.start, "stop": indices.stop})
    aligner = None if align is None else FaceAligner(align, face_size, runtime.pick_device())
    dropped = _write_candidate_faces(make_faces, pending, out_dir, face_size, batch_size, aligner)
    if aligner is not None:
        rejected = [(str(candidate_face(Path(), i)), reason) for i, reason in dropped]
        write_rejected(out_dir / "rejected" / marker.stem, rejected)
        log.info("alignment dropped %d of %d candidates", len(rejected), len(pending))
    kept = [i for i in indices if candidate_face(out_dir, i).exists()]
    count = write_manifest(marker, [ManifestEntry(candidate_face(out_dir, i), i) for i in kept])
    journal.unlink()
    return count


def _generator_record(source: str, model: list[Path], **settings: Any) -> dict[str, Any]:
    """What candidate faces are made from, by content: equal records give equal faces."""
    return {"source": source, "model_sha256": content_digest(model), **settings}


def generate_ldm_faces(
    ldm_checkpoint: Path,
    first_stage: Path,
    indices: range,
    out_dir: Path,
    face_size: int,
    seed: int,
    steps: int = 50,
    batch_size: int = 100,
    threads: int = 1,
    done_marker: Path | None = None,
    align: AlignSettings | None = None,
) -> int:
    """Context faces from the LDM's unconditional mode (learnt with whole-context dropout);
    face i starts from ``image_noise(seed, i, 0)``; ``align``: see ``fit_faces``."""
    generator = FaceGenerator.for_stage(ldm_checkpoint, first_stage, threads)
    record = _generator_record(
        "ldm", ldm_files(ldm_checkpoint, first_stage), seed=seed, steps=steps, face_size=face_size
    )

    def make_faces(jobs: list[tuple[int, int]]) -> torch.Tensor:
        return generator.faces(None, jobs, seed, steps)

    return _write_candidate_shard(
        make_faces, indices, out_dir, face_size, batch_size, record, done_marker, align
    )


class _DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` behind ``sample_latents``' unconditional interface."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def _load_diffusers(model_dir: Path, device: torch.device) -> tuple[nn.Module, Any]:
    """The UNet (on ``device``) and DDIM scheduler of a diffusers unconditional UNet folder."""
    from diffusers import DDIMScheduler, UNet2DModel

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
        scheduler = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler", **offline)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{model_dir}: not a diffusers unconditional UNet folder (expected unet/ or a "
            f"config.json + weights, and scheduler/): {error}"
        ) from None
    return unet.to(device).eval(), scheduler


def generate_diffusers_faces(
    model_dir: Path,
    indices: range,
    out_dir: Path,
    face_size: int,
    seed: int,
    steps: int = 50,
    batch_size: int = 16,
    threads: int = 1,
    done_marker: Path | None = None,
    align: AlignSettings | None = None,
) -> int:
    """Context faces from a diffusers unconditional UNet checkpoint folder (``unet/`` or the
    model at the top, with its ``scheduler/``), e.g. an FFHQ DDPM, sampled with DDIM by the
    loop the LDM uses; face i starts from ``image_noise(seed, i, 0)``; ``align``: see
    ``fit_faces``."""
    device = stage_device(threads)
    model_dir = Path(model_dir)
    unet, scheduler = _load_diffusers(model_dir, device)
    model = _DiffusersUNet(unet)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    record = _generator_record("diffusers", files, seed=seed, steps=steps, face_size=face_size)

    def make_faces(jobs: list[tuple[int, int]]) -> torch.Tensor:
        noise = torch.stack([image_noise(seed, i, k, shape) for i, k in jobs]).to(device)
        return to_uint8(sample_latents(model, scheduler, noise, None, steps)).cpu()

    return _write_candidate_shard(
        make_faces, indices, out_dir, face_size, batch_size, record, done_marker, align
    )


def database_manifest(images: Path, out_manifest: Path) -> int:
    """ADMIS's context database: one face image per identity, in file-name order."""
    files = database_faces(images)
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
    model. ``probe_samples`` and ``batch_size`` set how many candidates await their probes at
    once (see ``choose_contexts``)."""

    identities: int
    probe_samples: int
    intra_threshold: float
    inter_threshold: float
    batch_size: int


@dataclass
class Selection:
    """Kept candidates (in order) with their intra cosine, and the dropped ones with a reason."""

    kept: list[int] = field(default_factory=list)
    intra: dict[int, float] = field(default_factory=dict)
    dropped: list[tuple[int, str]] = field(default_factory=list)


# Candidates walked per block: their cosines to the identities kept before the block come from
# one matrix product, those within the block from its Gram matrix (a few MB).
WALK_BLOCK = 2048


def _closest(rows: torch.Tensor, table: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Each row's largest cosine to the rows of ``table`` (-inf when it has none), a chunk of
    ``table`` at a time so that memory stays bounded."""
    closest = torch.full((len(rows),), -np.inf)
    for start in range(0, len(table), chunk):
        products = rows @ table[start : start + chunk].T
        closest = torch.maximum(closest, products.max(dim=1).values)
    return closest


class _Walk:
    """The greedy walk of ``choose_contexts``, a block of candidates at a time."""

    def __init__(self, contexts: torch.Tensor, intra: Sequence[float], cfg: SelectionConfig):
        self.contexts, self.intra, self.cfg = contexts, intra, cfg
        self.selection = Selection()
        self.pending: list[int] = []
        self.per_batch = max(1, cfg.batch_size // cfg.probe_samples)

    def done(self) -> bool:
        return len(self.selection.kept) >= self.cfg.identities

    def judge_pending(self) -> list[int]:
        """Keep or drop the awaiting candidates by their scores; returns those judged."""
        judged, threshold = [], self.cfg.intra_threshold
        for i in self.pending:
            if self.done():
                break
            judged.append(i)
            if self.intra[i] < threshold:
                self.selection.dropped.append((i, f"intra {self.intra[i]:.3f} < {threshold}"))
            else:
                self.selection.kept.append(i)
                self.selection.intra[i] = self.intra[i]
        self.pending.clear()
        return judged

    def block(self, rows: range) -> None:
        """Walk ``rows``. ``others`` marks the block's candidates (and those awaiting from
        before it) that are kept or awaiting, the ones the inter test compares with besides
        the identities kept before the block."""
        contexts, cfg = self.contexts, self.cfg
        block = contexts[rows.start : rows.stop]
        before = _closest(block, contexts[self.selection.kept])
        local = [*self.pending, *rows]
        position = {i: p for p, i in enumerate(local)}
        gram = block @ contexts[local].T
        others = torch.zeros(len(local), dtype=torch.bool)
        others[: len(self.pending)] = True
        for i in rows:
            if self.done():
                return
            inside = gram[i - rows.start][others]
            closest = float(before[i - rows.start])
            if len(inside):
                closest = max(closest, float(inside.max()))
            if closest > cfg.inter_threshold:
                self.selection.dropped.append((i, f"inter {closest:.3f} > {cfg.inter_threshold}"))
                continue
            self.pending.append(i)
            others[position[i]] = True
            waiting = len(self.selection.kept) + len(self.pending)
            if len(self.pending) == self.per_batch or waiting >= cfg.identities:
                for judged in self.judge_pending():
                    others[position[judged]] = judged in self.selection.intra


def choose_contexts(
    contexts: torch.Tensor, intra: Sequence[float], cfg: SelectionConfig
) -> Selection:
    """Walk the candidates (rows of ``contexts``, unit vectors) in order until ``cfg.identities``
    are kept. ``intra[i]`` is candidate i's probe score (``synface.probes``).

    The walk is the one that sampled probes on demand: the inter test runs first, against the
    identities kept and those awaiting their probes (up to ``batch_size // probe_samples``
    candidates, whose scores are read together); only candidates that pass it are judged by
    their score. So the selection does not depend on how the probes were sharded. Blocks of
    ``WALK_BLOCK`` candidates make it matrix products: 600k candidates against 300k identities
    are ~10^14 multiply-adds, minutes on a few cores.
    """
    walk = _Walk(contexts, intra, cfg)
    for start in range(0, len(contexts), WALK_BLOCK):
        if walk.done():
            break
        walk.block(range(start, min(start + WALK_BLOCK, len(contexts))))
    if walk.pending:
        walk.judge_pending()
    return walk.selection


def read_probe_scores(probes: Sequence[Path], count: int) -> list[float]:
    """The scores of candidates 0..count-1 from the probe shards' outputs."""
    scores: dict[int, float] = {}
    for path in probes:
        scores.update(read_scores(path))
    missing = [i for i in range(count) if i not in scores]
    if missing:
        raise ValueError(
            f"the probe scores ({len(probes)} files, e.g. {probes[0] if probes else 'none'}) "
            f"miss {len(missing)} of the {count} candidates (first: {missing[0]}): run "
            "probe-contexts on every shard of the candidates' embedding rows"
        )
    return [scores[i] for i in range(count)]


def select_contexts(
    candidates_dir: Path,
    candidates_manifest: Path,
    probes: Sequence[Path],
    out_dir: Path,
    cfg: SelectionConfig,
    threads: int = 1,
) -> dict[str, int]:
    """Keep up to ``cfg.identities`` candidates, in candidate order (``choose_contexts``), from
    their embeddings and the probe shards' scores; ``threads`` for its matrix products.

    Writes ``contexts.npy`` (kept embeddings, row = synthetic identity), ``faces.tsv`` (their
    context faces, label = row), ``selected.tsv`` and ``dropped.tsv`` (with the reason).
    """
    runtime.set_threads(threads)
    embeddings, names = read_embeddings(candidates_dir)
    entries = aligned_entries(candidates_dir, names, candidates_manifest)
    contexts = torch.from_numpy(np.asarray(embeddings, dtype=np.float32))
    selection = choose_contexts(contexts, read_probe_scores(probes, len(contexts)), cfg)
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

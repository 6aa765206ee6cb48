"""The ``synthesize`` stage: faces for one shard of identities.

A face is a pure function of (settings, context row i, seed, i, k), so a shard
batches (i, k) jobs across identities, and the PNGs are the same bytes whatever the shard split
or batch size. Beyond per-job noise that needs the model to run under inference mode with no
batch smaller than ``MIN_ROWS``: oneDNN and MKL switch to other convolution and GEMM kernels for
small batches, whose sums round differently (torch 2.14 on an AMD EPYC: 1x1 convolutions below
16 rows, linear layers below 4; from 16 rows on, any size and 1 or 2 threads gave equal bits).
The guarantee holds for one machine and library build; GPUs pick kernels by shape too.

An identity's images are written to a temporary folder and renamed into place once all k are
there, so an identity folder that exists is complete. Whether a shard resumes or starts over is
decided by its journal, ``.<start>-<stop>.running`` beside its done marker, created when the
shard starts and removed after the done marker is written:

- journal present: the shard was interrupted; it resumes, keeping its finished identities;
- no journal: a fresh run (first run, or a rerun Snakemake was asked for, e.g. ``-f``); every
  identity of the shard is generated anew, an existing folder being swapped for the new one.

A shard deletes only its own leftover temporary folders (shards share the output folder and may
run at once). ``settings.json`` there records what the images were made with, by content (the
SHA-256 of the LDM checkpoint, of the first-stage decoder and spec, of the contexts table, and
the sampling settings), never by path or time: a copied or moved project continues where it
stopped, while a rerun with other settings stops instead of mixing faces of two models.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import write_png

from synface import __version__
from synface.io.atomic import write_json
from synface.ldm.faces import FaceEmbedder, FaceGenerator, resize_faces
from synface.ldm.first_stage import FirstStageSpec
from synface.ldm.sampling import SAMPLERS, Guidance, SamplingSettings
from synface.models.vq_f4 import DECODER_FILE
from synface.progress import progress
from synface.settings import StageSettings, without_switches_off
from synface.shards import JOURNAL_SUFFIX, claim_folder
from synface.shards import SETTINGS_FILE as SETTINGS_FILE  # where the pool's record is

log = logging.getLogger(__name__)

# Smaller batches are padded up to this many rows (see the module docstring).
MIN_ROWS = 16
# Contexts are unit vectors (the reference re-normalises them); this catches raw embeddings.
NORM_TOLERANCE = 1e-3


# Settings of the switches beyond ADMIS and of torch.compile, at their "off" values (left out
# of settings records, so pools made before they existed keep their record).
SWITCHES_OFF = {
    "negative_scale": 0.0,
    "unconditional_steps": 0,
    "filter_threshold": None,
    "compile": False,
}


@dataclass(frozen=True)
class SynthesisSettings(SamplingSettings, StageSettings, section="synthesis"):
    """How faces are sampled (config section ``synthesis``; defaults in the schema)."""

    sampler: str
    eta: float
    antialias: bool
    negative_scale: float
    unconditional_steps: int
    filter_threshold: float | None
    filter_draws_per_image: int
    # Compiled kernels round differently (a grey level here and there), so a pool records it.
    compile: bool

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS or self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"synthesis.sampler {self.sampler!r} with {self.steps} steps in batches of "
                f"{self.batch_size}: choose one of {', '.join(SAMPLERS)}, steps >= 1 and "
                "batch_size >= 1"
            )
        if self.eta != 0 and self.sampler != "ddim":
            raise ValueError(
                f"synthesis.eta={self.eta} with sampler {self.sampler!r}: stochastic steps "
                "(eta > 0) are implemented for sampler ddim only; set eta to 0 or sampler to ddim"
            )
        if not 0 <= self.unconditional_steps < self.steps:
            raise ValueError(
                f"synthesis.unconditional_steps={self.unconditional_steps}: choose 0 (off) to "
                f"{self.steps - 1} (steps - 1), so that the identity steers the last steps"
            )

    def guidance(self) -> Guidance:
        return Guidance(self.guidance_scale, self.negative_scale, self.unconditional_steps)

    def sampling(self) -> dict[str, Any]:
        """What the pixels depend on (the batch size does not: module docstring). Switches
        that are off are left out, so pools made before they existed keep their record."""
        record = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        return without_switches_off(
            record, SWITCHES_OFF, {"filter_threshold": ["filter_draws_per_image"]}
        )


def pad_jobs(jobs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``jobs`` with the last one repeated up to ``MIN_ROWS`` (see the module docstring)."""
    return jobs + [jobs[-1]] * (MIN_ROWS - len(jobs))


def identity_folder(out_dir: Path, identity: int) -> Path:
    return Path(out_dir) / f"{identity:05d}"


def _temp_folder(out_dir: Path, identity: int, kind: str = "partial") -> Path:
    """Hidden, so that no listing of identity folders mistakes it for a complete one; ``old``
    holds a finished folder for the instant it is being replaced."""
    return Path(out_dir) / f".{identity:05d}.{kind}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def content_record(
    ldm_checkpoint: Path,
    first_stage_dir: Path,
    contexts: torch.Tensor,
    settings: SynthesisSettings,
    images_per_identity: int,
    face_size: int,
) -> dict[str, Any]:
    """What a pool's faces are made from, by content: equal records give equal pixels.

    The first stage enters through its decoder and spec (the encoder plays no part here)."""
    first_stage = Path(first_stage_dir)
    record = {
        **settings.sampling(),
        "images_per_identity": images_per_identity,
        "face_size": face_size,
        "ldm_checkpoint_sha256": _file_sha256(ldm_checkpoint),
        "first_stage_decoder_sha256": _file_sha256(first_stage / DECODER_FILE),
        "first_stage_spec": asdict(FirstStageSpec.read(first_stage)),
        "contexts_sha256": hashlib.sha256(contexts.numpy().tobytes()).hexdigest(),
    }
    return dict(sorted(record.items()))


def _finished_identities(out_dir: Path) -> list[Path]:
    return [p for p in Path(out_dir).iterdir() if p.is_dir() and not p.name.startswith(".")]


def _claim_output(out_dir: Path, record: dict[str, Any]) -> None:
    """Write ``settings.json`` or check that the one there matches ``record`` (``claim_folder``)."""
    count = lambda: len(_finished_identities(out_dir))  # noqa: E731 (called only on a mismatch)
    restore = "the settings, LDM, first stage and contexts the pool was made with"
    claim_folder(out_dir, record, count, "identities", restore)


def _checked_contexts(contexts: np.ndarray, identities: range) -> torch.Tensor:
    contexts = np.asarray(contexts, dtype=np.float32)
    if contexts.ndim != 2:
        raise ValueError(f"contexts must be a 2-D array (identities x 512), got {contexts.shape}")
    if len(identities) and (identities.start < 0 or identities[-1] >= len(contexts)):
        raise ValueError(
            f"identities {identities.start}..{identities.stop - 1} are outside the "
            f"{len(contexts)} context rows: lower --last or select more contexts"
        )
    norms = np.linalg.norm(contexts[identities.start : identities.stop], axis=1)
    if len(norms) and np.abs(norms - 1).max() > NORM_TOLERANCE:
        row = identities.start + int(np.abs(norms - 1).argmax())
        raise ValueError(
            f"context row {row} has norm {norms[row - identities.start]:.4f}, not 1: contexts "
            "must be L2-normalised (select_contexts writes them so)"
        )
    return torch.from_numpy(contexts)


def _start_shard(out_dir: Path, identities: range, journal: Path) -> tuple[list[int], int]:
    """(identities to generate, finished identities kept), by the journal rule of the module
    docstring; clears this shard's leftovers and leaves the journal in place."""
    for identity in identities:
        shutil.rmtree(_temp_folder(out_dir, identity), ignore_errors=True)
        shutil.rmtree(_temp_folder(out_dir, identity, "old"), ignore_errors=True)
    existing = [i for i in identities if identity_folder(out_dir, i).is_dir()]
    if journal.exists():
        pending = [i for i in identities if i not in set(existing)]
        log.info("resuming an interrupted shard: %d identities done before", len(existing))
        return pending, len(existing)
    write_json(journal, {"first": identities.start, "stop": identities.stop})
    if existing:
        log.info("a fresh run of this shard: %d finished identities are made anew", len(existing))
    return list(identities), 0


def _place(out_dir: Path, identity: int) -> None:
    """Move a complete identity into place; a folder already there is swapped out first, so
    the identity folder is always complete or absent."""
    folder = identity_folder(out_dir, identity)
    if folder.exists():
        old = _temp_folder(out_dir, identity, "old")
        os.replace(folder, old)
        os.replace(_temp_folder(out_dir, identity), folder)
        shutil.rmtree(old)
    else:
        os.replace(_temp_folder(out_dir, identity), folder)


@dataclass
class _Draws:
    """One identity's draws under the intra-class filter: slots filled so far, the faces
    rejected (kept for the fallback) and the next noise index to draw."""

    next_draw: int
    accepted: int = 0
    rejected: list[tuple[float, int, torch.Tensor]] = field(default_factory=list)


# (faces, jobs) -> each face's cosine to its identity's context.
Judge = Callable[[torch.Tensor, list[tuple[int, int]]], torch.Tensor]


def far_contexts(contexts: torch.Tensor, identities: Sequence[int]) -> dict[int, int]:
    """The negative context of each identity (NegFaceDiff): the row of the whole contexts
    table least similar to it. One matrix-vector product per identity, so the choice does not
    depend on which identities share a shard."""
    return {i: int((contexts @ contexts[i]).argmin()) for i in identities}


def _sample(
    generator: FaceGenerator,
    contexts: torch.Tensor,
    negatives: dict[int, int] | None,
    chunk: list[tuple[int, int]],
    settings: SynthesisSettings,
    face_size: int,
) -> torch.Tensor:
    """The resized uint8 faces of ``chunk``'s (i, k) jobs, padded to ``MIN_ROWS`` to sample."""
    padded = pad_jobs(chunk)
    far = None if negatives is None else contexts[[negatives[i] for i, _ in padded]]
    faces = generator.faces(
        contexts[[i for i, _ in padded]],
        padded,
        settings.seed,
        steps=settings.steps,
        eta=settings.eta,
        sampler=settings.sampler,
        guidance=settings.guidance(),
        negative_contexts=far,
    )
    return resize_faces(faces[: len(chunk)], face_size, settings.antialias)


def _write_face(out_dir: Path, identity: int, slot: int, face: torch.Tensor) -> None:
    temp = _temp_folder(out_dir, identity)
    temp.mkdir(parents=True, exist_ok=True)
    write_png(face, str(temp / f"{slot:03d}.png"))


def _next_draws(
    states: dict[int, _Draws], settings: SynthesisSettings, images: int, out_dir: Path
) -> tuple[list[tuple[int, int]], int]:
    """(the jobs of the next round, faces kept below τ): each identity short of ``images``
    draws the next noise indices, as many as it lacks; one out of draws
    (``filter_draws_per_image`` × ``images``) is filled with its best rejected faces."""
    jobs, kept_below = [], 0
    limit = images * settings.filter_draws_per_image
    for identity, state in states.items():
        lacking = images - state.accepted
        if not lacking:
            continue
        if state.next_draw >= limit:
            best = sorted(state.rejected, key=lambda r: (-r[0], r[1]))[:lacking]
            for slot, (_, _, face) in enumerate(best, start=state.accepted):
                _write_face(out_dir, identity, slot, face)
            state.accepted = images
            kept_below += len(best)
            _place(out_dir, identity)
            continue
        stop = min(state.next_draw + lacking, limit)
        jobs += [(identity, k) for k in range(state.next_draw, stop)]
        state.next_draw = stop
    return jobs, kept_below


Kept = list[tuple[int, int, torch.Tensor, bool]]


def _write_kept(out_dir: Path, kept: Kept) -> None:
    """Write one batch's kept faces (identity, slot, face, last) in order, moving an identity
    into place after its last slot (the writer thread's work)."""
    for identity, slot, face, last in kept:
        _write_face(out_dir, identity, slot, face)
        if last:
            _place(out_dir, identity)


def _generate(
    generator: FaceGenerator,
    contexts: torch.Tensor,
    pending: list[int],
    settings: SynthesisSettings,
    images_per_identity: int,
    face_size: int,
    out_dir: Path,
    judge: Judge | None = None,
) -> dict[str, int]:
    """Write the faces of ``pending`` identities; returns the counts of faces written, drawn,
    replaced and kept below τ.

    Without a ``judge`` image k is noise index k. With one (the intra-class filter), a face
    whose cosine to its identity's context is below ``filter_threshold`` is replaced by the
    identity's next noise index, so the kept faces are the first ``images_per_identity`` draws
    that pass, in draw order: a function of (settings, seed, i) whatever the batching. A writer
    thread encodes and writes batch n while batch n + 1 is sampled; its errors surface at the
    next batch (or at the end)."""
    negatives = far_contexts(contexts, pending) if settings.negative_scale else None
    states = {i: _Draws(next_draw=images_per_identity) for i in pending}
    jobs = [(i, k) for i in pending for k in range(images_per_identity)]
    drawn = replaced = kept_below = 0
    writing: Future | None = None
    bar = progress(len(jobs), "synthesize", settings.batch_size, unit="faces")
    with ThreadPoolExecutor(1, thread_name_prefix="synface-writer") as writer:
        while jobs:
            for start in range(0, len(jobs), settings.batch_size):
                chunk = jobs[start : start + settings.batch_size]
                faces = _sample(generator, contexts, negatives, chunk, settings, face_size)
                cosines = judge(faces, chunk) if judge else None
                kept: Kept = []
                for row, ((identity, k), face) in enumerate(zip(chunk, faces, strict=True)):
                    state = states[identity]
                    if cosines is not None and cosines[row] < settings.filter_threshold:
                        state.rejected.append((float(cosines[row]), k, face))
                        replaced += 1
                        continue
                    state.accepted += 1
                    kept.append(
                        (identity, state.accepted - 1, face, state.accepted == images_per_identity)
                    )
                if writing is not None:
                    writing.result()
                writing = writer.submit(_write_kept, out_dir, kept)
                bar.update(len(kept))
            if writing is not None:
                writing.result()  # the fallback of _next_draws writes on this thread
            drawn += len(jobs)
            jobs, below = _next_draws(states, settings, images_per_identity, out_dir)
            kept_below += below
            bar.update(below)
    bar.close()
    images = len(pending) * images_per_identity
    return {"images": images, "drawn": drawn, "replaced": replaced, "kept_below": kept_below}


def context_judge(embedder: FaceEmbedder, contexts: torch.Tensor) -> Judge:
    """Cosines of faces to their identity's context under the embedding model, embedded in
    batches of at least ``MIN_ROWS`` (the module docstring's kernel rule) so that a face's
    cosine, and the filter's decision, do not depend on the batching."""

    def judge(faces: torch.Tensor, jobs: list[tuple[int, int]]) -> torch.Tensor:
        pad = faces[-1:].expand(max(0, MIN_ROWS - len(faces)), *faces.shape[1:])
        padded = torch.cat([faces, pad])
        embeddings = embedder(padded)[: len(faces)]
        return (embeddings * contexts[[i for i, _ in jobs]]).sum(dim=1)

    return judge


def _check_request(
    settings: SynthesisSettings,
    embedding_weights: Path | None,
    images_per_identity: int,
    face_size: int,
) -> None:
    """Refuse a shard that could not be made as asked, before any model is loaded."""
    if settings.filter_threshold is not None and embedding_weights is None:
        raise ValueError(
            f"synthesis.filter_threshold={settings.filter_threshold} needs the embedding model "
            "that judges the faces: pass --embedding-weights (the workflow does so)"
        )
    if images_per_identity < 1 or face_size < 1:
        raise ValueError(
            f"images_per_identity and face_size must be >= 1, got {images_per_identity} and "
            f"{face_size}"
        )


def synthesize_shard(
    ldm_checkpoint: Path,
    first_stage: Path,
    contexts: np.ndarray,
    identities: range,
    images_per_identity: int,
    out_dir: Path,
    face_size: int,
    settings: SynthesisSettings,
    threads: int = 1,
    done_marker: Path | None = None,
    embedding_weights: Path | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/<i:05d>/<k:03d>.png`` for every identity i of ``identities`` (a row of
    ``contexts``) and k < ``images_per_identity``; then a JSON summary to ``done_marker``
    (default ``out_dir/../shards/<start>-<stop>.json``), written last and atomically.

    Faces are decoded, clamped, quantised to uint8 and resized to ``face_size`` when the LDM's
    size differs (128 -> 112 px on real runs), antialiased unless ``settings.antialias`` is off.
    The intra-class filter (``settings.filter_threshold``) judges faces with the embedding
    model at ``embedding_weights``.
    """
    _check_request(settings, embedding_weights, images_per_identity, face_size)
    out_dir = Path(out_dir)
    if done_marker is None:
        done_marker = out_dir.parent / "shards" / f"{identities.start}-{identities.stop}.json"
    done_marker = Path(done_marker)
    journal = done_marker.with_name(f".{done_marker.stem}{JOURNAL_SUFFIX}")
    table = _checked_contexts(contexts, identities)
    record = content_record(
        ldm_checkpoint, first_stage, table, settings, images_per_identity, face_size
    )
    _claim_output(out_dir, record)
    pending, kept = _start_shard(out_dir, identities, journal)
    log.info(
        "shard %d..%d: %d identities kept, %d to synthesize",
        identities.start,
        identities.stop - 1,
        kept,
        len(pending),
    )
    generator = FaceGenerator.for_stage(ldm_checkpoint, first_stage, threads)
    if settings.compile:
        generator = generator.compiled()
    judge = None
    if settings.filter_threshold is not None:
        judge = context_judge(FaceEmbedder(embedding_weights, generator.device), table)
    started = time.perf_counter()
    counts = _generate(
        generator, table, pending, settings, images_per_identity, face_size, out_dir, judge
    )
    images = counts["images"]
    seconds = time.perf_counter() - started
    summary = {
        "first": identities.start,
        "stop": identities.stop,
        "identities": len(identities),
        "synthesized": len(pending),
        "skipped_complete": kept,
        "images": images,
        **({"filter": counts} if judge else {}),
        "sampling_seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 3) if images else None,
        "device": str(generator.device),
        "batch_size": settings.batch_size,
        "settings": {
            **settings.sampling(),
            "images_per_identity": images_per_identity,
            "face_size": face_size,
        },
        "out_dir": str(out_dir),
        "version": __version__,
    }
    write_json(done_marker, summary)
    journal.unlink()
    return summary

"""The ``synthesize`` stage: faces for one shard of identities (generative.md §12.2, §14).

A face is a pure function of (settings, context row i, seed, i, k) (DESIGN.md §2), so a shard
batches (i, k) jobs across identities, and the PNGs are the same bytes whatever the shard split
or batch size. Beyond per-job noise that needs the model to run under inference mode with no
batch smaller than ``MIN_ROWS``: oneDNN and MKL switch to other convolution and GEMM kernels for
small batches, whose sums round differently (torch 2.14 on an AMD EPYC: 1x1 convolutions below
16 rows, linear layers below 4; from 16 rows on, any size and 1 or 2 threads gave equal bits).
The guarantee holds for one machine and library build; GPUs pick kernels by shape too.

A shard is resumable at identity granularity: an identity's images are written to a temporary
folder, renamed into place once all k are there, so an identity folder that exists is complete.
A rerun skips those and deletes its own leftover temporary folders (only its own: shards share
the output folder and may run at once). ``settings.json`` there records what the images were
made with, so a rerun with other settings stops instead of mixing faces of two models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import write_png

from synface import __version__, runtime
from synface.ldm.faces import FaceGenerator, resize_faces
from synface.ldm.first_stage import FirstStageSpec
from synface.ldm.sampling import SAMPLERS

log = logging.getLogger(__name__)

# Smaller batches are padded up to this many rows (see the module docstring).
MIN_ROWS = 16
SETTINGS_FILE = "settings.json"
# Contexts are unit vectors (generative.md §12.2 re-normalises them); this catches raw embeddings.
NORM_TOLERANCE = 1e-3


def pad_jobs(jobs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``jobs`` with the last one repeated up to ``MIN_ROWS`` (see the module docstring)."""
    return jobs + [jobs[-1]] * (MIN_ROWS - len(jobs))


def identity_folder(out_dir: Path, identity: int) -> Path:
    return Path(out_dir) / f"{identity:05d}"


def _temp_folder(out_dir: Path, identity: int) -> Path:
    """Hidden, so that no listing of identity folders mistakes it for a complete one."""
    return Path(out_dir) / f".{identity:05d}.partial"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _claim_output(out_dir: Path, record: dict[str, Any]) -> None:
    """Write ``settings.json`` or check that the one there matches ``record``.

    Shards of one run write identical records, so concurrent first writes are harmless. A record
    of a run that finished no identity is replaced: a failed start must not block its fix.
    """
    path = Path(out_dir) / SETTINGS_FILE
    if path.exists():
        existing = json.loads(path.read_text())
        if existing == record:
            return
        if any(p.is_dir() and not p.name.startswith(".") for p in Path(out_dir).iterdir()):
            keys = record.keys() | existing.keys()
            changed = sorted(k for k in keys if existing.get(k) != record.get(k))
            raise ValueError(
                f"{out_dir} holds faces made with other settings ({', '.join(changed)} differ "
                f"from {path}): delete {out_dir} to synthesize anew, or restore the settings"
            )
    _atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


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


def synthesize_shard(
    ldm_checkpoint: Path,
    first_stage_dir: Path,
    spec: FirstStageSpec,
    contexts: np.ndarray,
    identities: range,
    images_per_identity: int,
    out_dir: Path,
    face_size: int,
    seed: int,
    sampler: str = "ddim",
    steps: int = 50,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    batch_size: int = 100,
    threads: int = 1,
    done_marker: Path | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/<i:05d>/<k:03d>.png`` for every identity i of ``identities`` (a row of
    ``contexts``) and k < ``images_per_identity``; then a JSON summary to ``done_marker``
    (default ``out_dir/../shards/<start>-<stop>.json``), written last and atomically.

    Faces are decoded, clamped, quantised to uint8 and, when the LDM's size differs from
    ``face_size``, resized with antialiasing (128 -> 112 px on real runs, §14).
    """
    if images_per_identity < 1 or batch_size < 1 or face_size < 1:
        raise ValueError(
            "images_per_identity, batch_size and face_size must be >= 1, got "
            f"{images_per_identity}, {batch_size} and {face_size}"
        )
    if sampler not in SAMPLERS or steps < 1:
        raise ValueError(
            f"sampler {sampler!r} with {steps} steps: choose one of {', '.join(SAMPLERS)} and "
            "steps >= 1"
        )
    if eta != 0:
        raise ValueError(
            f"eta={eta}: DDIM's per-step noise for eta > 0 comes from torch's global RNG in "
            "sample_latents, so faces would depend on how jobs are batched (DESIGN.md §2); "
            "set eta to 0 (ADMIS, generative.md §12.2)"
        )
    out_dir = Path(out_dir)
    if done_marker is None:
        done_marker = out_dir.parent / "shards" / f"{identities.start}-{identities.stop}.json"
    context_table = _checked_contexts(contexts, identities)
    settings = {
        "seed": seed,
        "sampler": sampler,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "eta": eta,
        "images_per_identity": images_per_identity,
        "face_size": face_size,
    }
    checkpoint_stat = Path(ldm_checkpoint).stat()
    _claim_output(
        out_dir,
        {
            **settings,
            "ldm_checkpoint": str(Path(ldm_checkpoint).resolve()),
            "ldm_checkpoint_bytes": checkpoint_stat.st_size,
            "ldm_checkpoint_mtime_ns": checkpoint_stat.st_mtime_ns,
            "first_stage": str(Path(first_stage_dir).resolve()),
            "contexts_sha256": hashlib.sha256(context_table.numpy().tobytes()).hexdigest(),
        },
    )
    for identity in identities:
        shutil.rmtree(_temp_folder(out_dir, identity), ignore_errors=True)
    pending = [i for i in identities if not identity_folder(out_dir, i).is_dir()]
    log.info(
        "shard %d..%d: %d identities done before, %d to synthesize",
        identities.start,
        identities.stop - 1,
        len(identities) - len(pending),
        len(pending),
    )

    runtime.set_threads(threads)
    device = runtime.pick_device()
    jobs = [(i, k) for i in pending for k in range(images_per_identity)]
    written = dict.fromkeys(pending, 0)
    if jobs:
        generator = FaceGenerator(ldm_checkpoint, first_stage_dir, spec, device, sampler)
    started = time.perf_counter()
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        padded = pad_jobs(chunk)
        faces = generator.faces(
            context_table[[i for i, _ in padded]],
            padded,
            seed,
            steps=steps,
            guidance_scale=guidance_scale,
            eta=eta,
        )
        faces = resize_faces(faces[: len(chunk)], face_size)
        for (identity, k), face in zip(chunk, faces, strict=True):
            temp = _temp_folder(out_dir, identity)
            temp.mkdir(parents=True, exist_ok=True)
            write_png(face, str(temp / f"{k:03d}.png"))
            written[identity] += 1
            if written[identity] == images_per_identity:
                os.replace(temp, identity_folder(out_dir, identity))
        log.info("%d/%d faces", min(start + batch_size, len(jobs)), len(jobs))
    seconds = time.perf_counter() - started

    summary = {
        "first": identities.start,
        "stop": identities.stop,
        "identities": len(identities),
        "synthesized": len(pending),
        "skipped_complete": len(identities) - len(pending),
        "images": len(jobs),
        "sampling_seconds": round(seconds, 3),
        "images_per_s": round(len(jobs) / seconds, 3) if jobs else None,
        "device": str(device),
        "batch_size": batch_size,
        "settings": settings,
        "out_dir": str(out_dir),
        "version": __version__,
    }
    _atomic_write_text(Path(done_marker), json.dumps(summary, indent=2) + "\n")
    return summary

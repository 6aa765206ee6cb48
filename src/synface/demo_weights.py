"""Package the demo-world weights shipped in ``demo_weights/``, with their provenance.

``make demo`` cannot train a generator that knows identities on 2 CPU cores
in the time a demo allows, so the project ships small weights made by its own rules
(``make demo-weights``). Everything needed to judge and remake them is recorded beside them: the
config they were made with, the commands, wall times and step counts, the identity check they
passed, and the SHA-256 of every file. Floating-point weights are stored in fp16 (loading casts
them back into the fp32 modules); the ADMIS schedule buffers stay fp32, as their check needs.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from synface import __version__, checkpoint
from synface.ldm.first_stage import FirstStageSpec
from synface.models.admis_checkpoint import UNET_PREFIX
from synface.models.vq_f4 import DECODER_FILE, ENCODER_FILE

PROVENANCE = "PROVENANCE.json"
LDM_FILE = "ema_averaged_model.ckpt"


def _half(state: dict[str, torch.Tensor], only_prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        key: value.half() if value.is_floating_point() and key.startswith(only_prefix) else value
        for key, value in state.items()
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wall_times(benchmarks_dir: Path) -> dict[str, float]:
    """Seconds per rule from Snakemake's ``benchmark:`` files (column ``s``)."""
    times = {}
    for tsv in sorted(Path(benchmarks_dir).glob("*/*.tsv")):
        with tsv.open() as rows:
            records = list(csv.DictReader(rows, delimiter="\t"))
        if records:
            times[f"{tsv.parent.name}/{tsv.stem}"] = float(records[-1]["s"])
    return times


def pack_demo_weights(
    embedding_weights: Path,
    first_stage_dir: Path,
    ldm_checkpoint: Path,
    identity_check: Path,
    config: dict[str, Any],
    out_dir: Path,
    commands: list[str],
    benchmarks_dir: Path,
    made_on: str,
) -> dict[str, Any]:
    """Write ``out_dir/{embedding,first_stage,ldm}/`` and ``PROVENANCE.json``; returns it."""
    out_dir = Path(out_dir)
    embedding = out_dir / "embedding" / "backbone.pth"
    checkpoint.atomic_save(_half(checkpoint.load(embedding_weights)), embedding)
    shutil.copyfile(Path(embedding_weights).with_suffix(".json"), embedding.with_suffix(".json"))
    for name in (ENCODER_FILE, DECODER_FILE):
        state = checkpoint.load(Path(first_stage_dir) / name)
        checkpoint.atomic_save(_half(state), out_dir / "first_stage" / name)
    FirstStageSpec.read(first_stage_dir).write(out_dir / "first_stage")
    ldm = out_dir / "ldm" / LDM_FILE
    checkpoint.atomic_save(_half(checkpoint.load(ldm_checkpoint), UNET_PREFIX), ldm)
    ldm_spec = json.loads(Path(ldm_checkpoint).with_suffix(".json").read_text())
    shutil.copyfile(Path(ldm_checkpoint).with_suffix(".json"), ldm.with_suffix(".json"))
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != PROVENANCE)
    provenance = {
        "made_by": "make demo-weights (the workflow's own rules, use_demo_weights: false)",
        "made_on": made_on,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "synface_version": __version__,
        "config": config,
        "commands": commands,
        "wall_time_s": _wall_times(benchmarks_dir),
        "steps": {
            "first_stage": config["first_stage"]["train"]["steps"],
            "ldm": ldm_spec["steps"],
            "recognition_epochs": config["recognition"]["train"]["epochs"],
        },
        "identity_check": json.loads(Path(identity_check).read_text()),
        "sha256": {p.relative_to(out_dir).as_posix(): _sha256(p) for p in files},
    }
    (out_dir / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance

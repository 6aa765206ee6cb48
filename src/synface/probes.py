"""Context probes: the LDM's samples of each context candidate, scored against the candidate.

A candidate's score (``intra``) is the mean cosine, under the embedding model, between its
context and ``probe_samples`` LDM faces drawn for it. Probe k of candidate i starts from
``image_noise(seed, i, k)`` and batches are padded as synthesis pads them, so a score is the
same whichever shard computes it. A shard is a range of rows of the candidates' embedding
table, one Snakemake job like a synthesis shard; the greedy pass (``contexts.select_contexts``)
gathers the shards' scores and needs no model.

A shard writes each batch's scores atomically into its journal folder
``.<start>-<stop>.running/`` beside its output, with ``settings.json``: what the scores depend
on, by content. An interrupted shard (journal present, same settings) keeps the batches done; a
fresh run or other settings start over. The output, written last, is ``candidate<TAB>intra``
lines with the score as Python prints a float, so the greedy pass reads back the exact value.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synface.checkpoint import content_digest
from synface.io.atomic import write_json, write_text
from synface.io.embeddings import EMBEDDINGS_FILE
from synface.ldm.faces import FaceEmbedder, FaceGenerator, ldm_files
from synface.progress import progress
from synface.settings import StageSettings
from synface.shards import SETTINGS_FILE, grid_batches, journal_of
from synface.synthesis import pad_jobs

log = logging.getLogger(__name__)

HEADER = "candidate\tintra\n"


@dataclass(frozen=True)
class ProbeSettings(StageSettings, section="contexts.selection"):
    """How probes are sampled (config section ``contexts.selection``; defaults in the schema)."""

    probe_samples: int
    steps: int
    seed: int
    batch_size: int


class Prober:
    """Scores candidates: samples their probe faces with the LDM and embeds them."""

    def __init__(self, generator: FaceGenerator, embedder: FaceEmbedder, settings: ProbeSettings):
        self.generator, self.embedder, self.settings = generator, embedder, settings

    def scores(self, contexts: torch.Tensor, rows: list[int], first: int) -> dict[int, float]:
        """``{candidate: intra}`` for candidates ``rows``; ``contexts[i - first]`` is row i."""
        samples = self.settings.probe_samples
        jobs = pad_jobs([(i, k) for i in rows for k in range(samples)])
        table = contexts[[i - first for i, _ in jobs]]
        faces = self.generator.faces(table, jobs, self.settings.seed, self.settings.steps)
        probes = self.embedder(faces)[: len(rows) * samples].view(len(rows), samples, -1)
        return {i: (probes[row] @ contexts[i - first]).mean().item() for row, i in enumerate(rows)}


def _resume(journal: Path, record: dict[str, Any]) -> dict[int, float]:
    """The scores an interrupted run of this shard left (its journal, same record), else none;
    leaves an empty journal holding ``record``."""
    done: dict[int, float] = {}
    settings = journal / SETTINGS_FILE
    if settings.exists() and json.loads(settings.read_text()) == record:
        for part in sorted(journal.glob("*.tsv")):
            done.update(read_scores(part))
        log.info("resuming an interrupted shard: %d candidates were scored", len(done))
        return done
    shutil.rmtree(journal, ignore_errors=True)
    write_json(settings, record)
    return done


def _format(scores: dict[int, float]) -> str:
    return HEADER + "".join(f"{i}\t{score!r}\n" for i, score in sorted(scores.items()))


def read_scores(path: Path) -> dict[int, float]:
    """``{candidate: intra}`` from a probe shard's output (or a batch of its journal)."""
    lines = Path(path).read_text().splitlines()
    if not lines or lines[0] + "\n" != HEADER:
        raise ValueError(f"{path}: not a probe scores file (expected the header {HEADER!r})")
    return {int(i): float(score) for i, score in (line.split("\t") for line in lines[1:])}


def probe_shard(
    candidates_dir: Path,
    ldm_checkpoint: Path,
    first_stage: Path,
    embedding_weights: Path,
    rows: range,
    out: Path,
    settings: ProbeSettings,
    threads: int = 1,
) -> int:
    """Score the candidates ``rows`` of the embedding table in ``candidates_dir`` (rows past
    its end are none: a shard planned for faces that extraction rejected) into ``out``."""
    table = np.load(Path(candidates_dir) / EMBEDDINGS_FILE, mmap_mode="r")
    rows = range(rows.start, max(rows.start, min(rows.stop, len(table))))
    contexts = torch.from_numpy(np.array(table[rows.start : rows.stop], dtype=np.float32))
    record = {
        **asdict(settings),
        "batch_size": None,  # the scores do not depend on it (module docstring)
        "model_sha256": content_digest(
            [*ldm_files(ldm_checkpoint, first_stage), embedding_weights]
        ),
        "contexts_sha256": content_digest([memoryview(contexts.numpy().tobytes())]),
    }
    journal = journal_of(Path(out))
    done = _resume(journal, record)
    pending = [i for i in rows if i not in done]
    if pending:
        generator = FaceGenerator.for_stage(ldm_checkpoint, first_stage, threads)
        prober = Prober(generator, FaceEmbedder(embedding_weights, generator.device), settings)
        per_batch = max(1, settings.batch_size // settings.probe_samples)
        bar = progress(len(pending), "probe-contexts", per_batch, unit="candidates")
        for batch in grid_batches(pending, per_batch):
            scores = prober.scores(contexts, batch, rows.start)
            write_text(journal / f"{batch[0]}.tsv", _format(scores))
            done.update(scores)
            bar.update(len(batch))
        bar.close()
    write_text(out, _format({i: done[i] for i in rows}))
    shutil.rmtree(journal)
    return len(rows)

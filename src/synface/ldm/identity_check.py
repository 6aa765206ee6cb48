"""Do samples know their identity? Nearest-context retrieval with the embedding model.

For each held-out context, sample k faces; embed every sample; a sample is retrieved correctly
when its nearest context (cosine) is its own. Chance is 1/number of contexts. This is the check
that a weak generator fails while its downstream numbers can still look plausible,
so it runs before any recognition model is trained on samples.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from synface.io.atomic import atomic_path, write_json
from synface.io.embeddings import read_embeddings
from synface.ldm.faces import FaceEmbedder, FaceGenerator
from synface.ldm.sampling import SamplingSettings
from synface.progress import progress
from synface.settings import StageSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityCheck:
    """Retrieval accuracy (top-1) and the cosine of samples to their own vs other contexts."""

    contexts: int
    samples_per_context: int
    retrieval_top1: float
    chance: float
    mean_cos_own: float
    mean_cos_other: float


def retrieval(sample_embeddings: torch.Tensor, contexts: torch.Tensor) -> IdentityCheck:
    """``sample_embeddings`` (n, k, D) of contexts (n, D), both L2-normalised."""
    n, k, _ = sample_embeddings.shape
    cosine = torch.einsum("nkd,md->nkm", sample_embeddings, contexts)
    own = torch.eye(n, dtype=torch.bool)[:, None, :].expand(n, k, n)
    top1 = (cosine.argmax(dim=-1) == torch.arange(n)[:, None]).float().mean().item()
    return IdentityCheck(
        contexts=n,
        samples_per_context=k,
        retrieval_top1=top1,
        chance=1 / n,
        mean_cos_own=cosine[own].mean().item(),
        mean_cos_other=cosine[~own].mean().item() if n > 1 else float("nan"),
    )


@dataclass(frozen=True)
class IdentityCheckSettings(SamplingSettings, StageSettings, section="ldm.identity_check"):
    """How the check samples (config section ``ldm.identity_check``; defaults in the schema)."""

    num_contexts: int
    samples_per_context: int


@torch.inference_mode()
def check_identity(
    ldm_checkpoint: Path,
    first_stage: Path,
    embedding_weights: Path,
    contexts_dir: Path,
    out_json: Path,
    settings: IdentityCheckSettings,
    threads: int = 1,
) -> IdentityCheck:
    """Sample, embed, score; writes ``out_json`` and a grid of samples beside it (``.png``)."""
    n, k = settings.num_contexts, settings.samples_per_context
    all_contexts, _ = read_embeddings(contexts_dir)
    if len(all_contexts) < n:
        raise ValueError(
            f"{contexts_dir} holds {len(all_contexts)} contexts, fewer than the {n} that "
            "ldm.identity_check.num_contexts asks for"
        )
    generator = FaceGenerator.for_stage(ldm_checkpoint, first_stage, threads)
    embedder = FaceEmbedder(embedding_weights, generator.device)
    contexts = torch.from_numpy(np.asarray(all_contexts[:n], dtype=np.float32))
    jobs = [(i, j) for i in range(n) for j in range(k)]
    embeddings, grid = [], []
    bar = progress(len(jobs), "check-identity", settings.batch_size, unit="samples")
    for start in range(0, len(jobs), settings.batch_size):
        chunk = jobs[start : start + settings.batch_size]
        rows = contexts[[i for i, _ in chunk]]
        images = generator.faces(
            rows, chunk, settings.seed, settings.steps, settings.guidance_scale
        )
        if start == 0:
            grid.append(images[: 8 * k])
        embeddings.append(embedder(images))
        bar.update(len(chunk))
    bar.close()
    result = retrieval(torch.cat(embeddings).view(n, k, -1), F.normalize(contexts, dim=1))
    write_json(out_json, asdict(result))
    with atomic_path(Path(out_json).with_suffix(".png")) as tmp:
        save_image(torch.cat(grid).float() / 255, tmp, format="png", nrow=k)
    log.info("identity check: %s", result)
    return result

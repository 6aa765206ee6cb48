"""Do samples know their identity? Nearest-context retrieval with the embedding model.

For each held-out context, sample k faces; embed every sample; a sample is retrieved correctly
when its nearest context (cosine) is its own. Chance is 1/number of contexts. This is the check
that a weak generator fails while its downstream numbers can still look plausible
(specs/demo-world-feasibility.md), so it runs before any recognition model is trained on samples.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from synface import runtime
from synface.io.embeddings import read_embeddings
from synface.ldm.faces import FaceGenerator, embed_faces
from synface.ldm.first_stage import FirstStageSpec
from synface.models.spec import load_backbone

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


@torch.inference_mode()
def check_identity(
    ldm_checkpoint: Path,
    first_stage_dir: Path,
    spec: FirstStageSpec,
    embedding_weights: Path,
    contexts_dir: Path,
    out_json: Path,
    num_contexts: int = 50,
    samples_per_context: int = 10,
    steps: int = 50,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 100,
    threads: int = 1,
) -> IdentityCheck:
    """Sample, embed, score; writes ``out_json`` and a grid of samples beside it (``.png``)."""
    runtime.set_threads(threads)
    device = runtime.pick_device()
    generator = FaceGenerator(ldm_checkpoint, first_stage_dir, spec, device)
    embedder, face_size = load_backbone(embedding_weights)
    embedder.to(device)
    all_contexts, _ = read_embeddings(contexts_dir)
    if len(all_contexts) < num_contexts:
        raise ValueError(
            f"{contexts_dir} holds {len(all_contexts)} contexts, fewer than the {num_contexts} "
            "the check asks for"
        )
    contexts = torch.from_numpy(np.asarray(all_contexts[:num_contexts], dtype=np.float32))
    jobs = [(i, k) for i in range(num_contexts) for k in range(samples_per_context)]
    embeddings, grid = [], []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        images = generator.faces(
            contexts[[i for i, _ in chunk]], chunk, seed, steps, guidance_scale
        )
        if start == 0:
            grid.append(images[: 8 * samples_per_context])
        embeddings.append(embed_faces(embedder, images, face_size))
    samples = torch.cat(embeddings).view(num_contexts, samples_per_context, -1)
    result = retrieval(samples, F.normalize(contexts, dim=1))
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    save_image(
        torch.cat(grid).float() / 255, out_json.with_suffix(".png"), nrow=samples_per_context
    )
    log.info("identity check: %s", result)
    return result

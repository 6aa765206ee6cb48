"""Verification accuracy of a trained backbone on insightface ``.bin`` packs.

The insightface protocol: every image and its mirror are embedded, the two
raw embeddings are summed and only then L2-normalised, and the 10-fold threshold search runs on
the squared distance.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms.v2 import functional as tvf

from synface import runtime
from synface.evaluation.verification import kfold_accuracy
from synface.io.atomic import write_json
from synface.io.binpack import read_bin
from synface.io.images import BadImageError, decode_rgb, normalize
from synface.models.spec import load_backbone
from synface.progress import progress

log = logging.getLogger(__name__)

# Progress lines in a job's log: one every this many batches.
PROGRESS_EVERY_BATCHES = 20


@dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark's figures as insightface reports them, plus the pack's size and, per pair,
    the squared distance and whether it is a genuine pair (for ROC curves)."""

    accuracy: float
    std: float
    threshold: float
    xnorm: float
    pairs: int
    distances: tuple[float, ...]
    issame: tuple[bool, ...]


def decode_pack_images(
    jpegs: list[bytes], first: int, image_size: int, source: str
) -> torch.Tensor:
    """Images ``first``, ``first + 1``, ... of a pack as a uint8 batch at the model's size.

    A bad image stops the evaluation, naming the pack and the index: a benchmark whose pairs
    silently changed would report a number nobody can compare.
    """
    images = []
    for i, jpeg in enumerate(jpegs, start=first):
        try:
            image = decode_rgb(jpeg, f"{source}: image {i}")
        except BadImageError as error:
            raise BadImageError(
                error.where, f"{error.reason}; a benchmark pack must be intact: replace {source}"
            ) from error
        if image.shape[-2:] != (image_size, image_size):
            # insightface resizes packs whose size differs from the model's.
            image = tvf.resize(image, [image_size, image_size], antialias=True)
        images.append(image)
    return torch.stack(images)


@torch.inference_mode()
def embed_with_flip(
    model: nn.Module,
    jpegs: list[bytes],
    image_size: int,
    batch_size: int,
    device: torch.device,
    source: str = "the pack",
    precision: str = "bf16",
) -> tuple[torch.Tensor, float]:
    """L2-normalised (embedding(x) + embedding(flip x)) for every image, and the XNorm;
    ``precision`` as ``runtime.autocast`` (config ``evaluation.precision``)."""
    embeddings, norms = [], []
    every = PROGRESS_EVERY_BATCHES * batch_size
    bar = progress(len(jpegs), f"evaluate {Path(source).stem}", every, unit="images")
    for start in range(0, len(jpegs), batch_size):
        batch = jpegs[start : start + batch_size]
        images = normalize(decode_pack_images(batch, start, image_size, source)).to(device)
        with runtime.autocast(device, precision):
            raw = model(images).float()
            mirrored = model(tvf.horizontal_flip(images)).float()
        norms.append(torch.cat([raw.norm(dim=1), mirrored.norm(dim=1)]).cpu())
        embeddings.append(torch.nn.functional.normalize(raw + mirrored, dim=1).cpu())
        bar.update(len(batch))
    bar.close()
    return torch.cat(embeddings), torch.cat(norms).mean().item()


def evaluate_pack(
    model: nn.Module,
    pack: Path,
    image_size: int,
    batch_size: int,
    device: torch.device,
    precision: str = "bf16",
) -> BenchmarkResult:
    images, issame = read_bin(pack)
    embeddings, xnorm = embed_with_flip(
        model, images, image_size, batch_size, device, str(pack), precision
    )
    emb = embeddings.double().numpy()
    accuracy, std, threshold = kfold_accuracy(emb[0::2], emb[1::2], issame, nfolds=10)
    distances = ((emb[0::2] - emb[1::2]) ** 2).sum(axis=1)
    return BenchmarkResult(
        accuracy,
        std,
        threshold,
        xnorm,
        len(issame),
        tuple(round(float(d), 6) for d in distances),
        tuple(bool(same) for same in issame),
    )


def evaluate_backbone(
    weights: Path,
    packs: dict[str, Path],
    out_json: Path,
    batch_size: int = 64,
    threads: int = 1,
    precision: str = "bf16",
) -> dict[str, BenchmarkResult]:
    """Evaluate ``weights`` on every pack and write ``{benchmark: figures}`` as JSON;
    ``precision`` is config ``evaluation.precision`` (fp32 = TFace's evaluation)."""
    runtime.set_threads(threads)
    device = runtime.pick_device()
    model, image_size = load_backbone(weights)
    model.to(device)
    results = {}
    for name, pack in packs.items():
        results[name] = evaluate_pack(model, Path(pack), image_size, batch_size, device, precision)
        log.info(
            "%s: accuracy %.4f ± %.4f (threshold %.2f, XNorm %.2f, %d pairs)",
            name,
            results[name].accuracy,
            results[name].std,
            results[name].threshold,
            results[name].xnorm,
            results[name].pairs,
        )
    payload = {"weights": str(weights), "benchmarks": {k: asdict(v) for k, v in results.items()}}
    write_json(out_json, payload)
    return results

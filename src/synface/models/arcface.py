"""ArcFace margin head with TFace's maths, on one full classifier.

TFace shards the classifier column-wise across ranks and computes the softmax across shards;
on one process that reduces to this module followed by `torch.nn.functional.cross_entropy`.
The `kernel` name and its (embedding_size, num_classes) shape match TFace's head checkpoints.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ArcFaceOutput(NamedTuple):
    """`logits` feed the loss; `cosine_logits` (no margin) measure accuracy, as TFace logs it."""

    logits: torch.Tensor
    cosine_logits: torch.Tensor


class ArcFaceHead(nn.Module):
    """Additive angular margin: the target logit becomes s·cos(θ + m).

    Unlike insightface's `CombinedMarginLoss`, the gradient flows through the margin,
    and targets with θ + m > π fall back to s·(cos θ − m·sin m) so the logit stays monotonic in θ.
    """

    def __init__(
        self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5
    ) -> None:
        super().__init__()
        if embedding_size <= 0 or num_classes <= 0:
            raise ValueError(
                "embedding_size and num_classes must be positive, "
                f"got {embedding_size} and {num_classes}"
            )
        self.scale = scale
        self.margin = margin
        # normal(std=0.01) as TFace; the scale is irrelevant after column normalisation
        # but it sets the effective learning rate of the directions.
        self.kernel = nn.Parameter(torch.empty(embedding_size, num_classes).normal_(std=0.01))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> ArcFaceOutput:
        """Map raw (N, E) embeddings and (N,) class indices to (N, C) float32 logits."""
        if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(
                "embeddings must be (N, embedding_size) and labels (N,), "
                f"got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
            )
        # The head always runs in fp32, even when the backbone ran under autocast.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cos = F.normalize(embeddings.float(), dim=1) @ F.normalize(self.kernel.float(), dim=0)
            cos = cos.clamp(-1.0, 1.0)
            target = cos.gather(1, labels.view(-1, 1))
            # Guard: sqrt has an infinite slope at 0, which would turn a target with cos θ = ±1
            # into NaN gradients; below 1e-12 the value moves by at most 1e-6·sin m.
            sin = (1.0 - target * target).clamp_min(1e-12).sqrt()
            with_margin = target * math.cos(self.margin) - sin * math.sin(self.margin)
            # TFace's "th/mm" fallback for θ > π − m.
            threshold = math.cos(math.pi - self.margin)
            fallback = target - math.sin(math.pi - self.margin) * self.margin
            target = torch.where(target > threshold, with_margin, fallback)
            logits = cos.scatter(1, labels.view(-1, 1), target)
            return ArcFaceOutput(logits=logits * self.scale, cosine_logits=cos * self.scale)

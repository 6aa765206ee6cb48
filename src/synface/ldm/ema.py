"""An exponential moving average of the UNet that actually averages.

The reference EMA assigns its decay to an attribute of a buffer and so multiplies by 0: its
"averaged" model is a copy of the live weights. This one applies the
intended warm-up decay ``1 − (1 + step/inv_gamma)^(−power)``, clipped to [min, max].
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(
        self,
        model: nn.Module,
        max_decay: float = 0.9999,
        power: float = 0.75,
        inv_gamma: float = 1.0,
        min_decay: float = 0.0,
    ) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.max_decay = max_decay
        self.power = power
        self.inv_gamma = inv_gamma
        self.min_decay = min_decay

    def decay(self, step: int) -> float:
        value = 1 - (1 + step / self.inv_gamma) ** -self.power
        return min(self.max_decay, max(self.min_decay, value))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model``'s weights; buffers are copied (as the reference)."""
        weight = 1 - self.decay(step)
        averaged = list(self.model.parameters())
        live = [p.detach().to(a.dtype) for p, a in zip(model.parameters(), averaged, strict=True)]
        torch._foreach_lerp_(averaged, live, weight)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def to(self, device: torch.device) -> EMA:
        self.model.to(device)
        return self

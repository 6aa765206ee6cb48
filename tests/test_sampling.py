"""Classifier-free guidance in ``sample_latents`` against hand-computed ε and one DDIM step.

The UNet is a stand-in whose conditional and unconditional predictions are known constants,
so the combination ε = ε_u + w·(ε_c − ε_u) (Ho & Salimans 2022, the convention sampling.py
documents) and the use of the empty context (``dropout_mask`` True) are checked exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from synface.ldm.sampling import image_noise, make_sampler, sample_latents
from synface.models.admis_checkpoint import admis_ddpm_scheduler

EPS_UNCONDITIONAL = 0.25


class KnownPredictions(nn.Module):
    """ε_u = 0.25 everywhere for the empty context; ε_c = the context's first value."""

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        dropout_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        unconditional = torch.full_like(x, EPS_UNCONDITIONAL)
        if context is None:
            return unconditional
        conditional = context[:, :1, None, None].expand_as(x)
        if dropout_mask is None:
            return conditional
        return torch.where(dropout_mask[:, None, None, None], unconditional, conditional)


def _recorded_steps(scheduler: Any) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(ε given, x before, x after) of every scheduler step."""
    steps = []
    step = scheduler.step

    def recording(eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor, **kwargs: Any) -> Any:
        out = step(eps, t, x, **kwargs)
        steps.append((eps.clone(), x.clone(), out.prev_sample.clone()))
        return out

    scheduler.step = recording
    return steps


@pytest.mark.parametrize("guidance_scale", [0.0, 1.0, 3.0])
def test_guidance_combines_known_predictions_as_documented(guidance_scale: float) -> None:
    scheduler = make_sampler(dict(admis_ddpm_scheduler().config))
    steps = _recorded_steps(scheduler)
    noise = torch.stack([image_noise(0, i, 0, (3, 4, 4)) for i in range(2)])
    contexts = torch.zeros(2, 8)
    contexts[:, 0] = torch.tensor([0.5, -1.0])  # ε_c per row
    sample_latents(KnownPredictions(), scheduler, noise, contexts, steps=4,
                   guidance_scale=guidance_scale)  # fmt: skip

    eps_c = contexts[:, 0][:, None, None, None].expand_as(noise)
    expected = EPS_UNCONDITIONAL + guidance_scale * (eps_c - EPS_UNCONDITIONAL)
    assert len(steps) == 4
    eps, x, after = steps[0]
    assert torch.allclose(eps, expected, atol=1e-6)
    # DDIM with eta 0 (Song et al. 2021, eq. 12) from t = 750 to 500, by hand.
    assert scheduler.timesteps.tolist() == [750, 500, 250, 0]
    alpha_t, alpha_prev = scheduler.alphas_cumprod[750], scheduler.alphas_cumprod[500]
    x0 = (x - (1 - alpha_t).sqrt() * expected) / alpha_t.sqrt()
    assert torch.allclose(after, alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * expected,
                          atol=1e-5)  # fmt: skip


def test_no_context_samples_the_empty_context() -> None:
    scheduler = make_sampler(dict(admis_ddpm_scheduler().config))
    steps = _recorded_steps(scheduler)
    noise = image_noise(0, 0, 0, (3, 4, 4))[None]
    sample_latents(KnownPredictions(), scheduler, noise, None, steps=2, guidance_scale=3.0)
    assert all(torch.equal(eps, torch.full_like(noise, EPS_UNCONDITIONAL)) for eps, _, _ in steps)

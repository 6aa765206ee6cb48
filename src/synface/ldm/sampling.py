"""Denoising loops over diffusers schedulers (STYLE.md "For synface" 8).

The model knows nothing about noise; the scheduler owns the maths (DDIM: Song et al. 2021,
eq. 12); this module only runs the loop, with optional classifier-free guidance
(ε = ε_u + w·(ε_c − ε_u), Ho & Salimans 2022, §3.2). The unconditional branch is the model's
empty context (``dropout_mask`` True), which it learns through whole-context dropout.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin
from torch import nn

from synface import runtime
from synface.ldm.data import step_generator

SAMPLERS = ("ddim", "dpmsolver++")


def make_sampler(training_config: dict, kind: str = "ddim") -> SchedulerMixin:
    """A sampling scheduler built from the training scheduler's config (diffusers'
    ``from_config``: the same betas, another algorithm)."""
    # No clipping of the predicted clean latent: the reference samplers do none (generative.md
    # §12), and VQ latents are not confined to [-1, 1] (the demo codebook reaches 1.1).
    if kind == "ddim":
        return DDIMScheduler.from_config(training_config, clip_sample=False)
    if kind == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(
            training_config, algorithm_type="dpmsolver++", thresholding=False
        )
    raise ValueError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")


@torch.inference_mode()
def sample_latents(
    unet: nn.Module,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    contexts: torch.Tensor | None,
    steps: int = 50,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
) -> torch.Tensor:
    """Denoise ``noise`` (B, C, h, w) under ``contexts`` (B, D), or unconditionally if None."""
    device = noise.device
    scheduler.set_timesteps(steps, device=device)
    x = noise
    batch = x.shape[0]
    guided = contexts is not None and guidance_scale != 1.0
    for t in scheduler.timesteps:
        with runtime.autocast(device):
            if contexts is None:
                eps = unet(x, t)
            elif guided:
                drop = torch.arange(2 * batch, device=device) >= batch
                both = unet(torch.cat([x, x]), t, torch.cat([contexts, contexts]), drop)
                conditional, unconditional = both.float().chunk(2)
                eps = unconditional + guidance_scale * (conditional - unconditional)
            else:
                eps = unet(x, t, contexts)
        kwargs = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
        x = scheduler.step(eps.float(), t, x, **kwargs).prev_sample
    return x


def image_noise(seed: int, identity: int, k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The starting noise of image ``k`` of identity ``identity``: a function of (seed, i, k)
    alone, so results do not depend on shard size, batch size or device count (DESIGN.md §2)."""
    return torch.randn(shape, generator=step_generator(seed, identity, k))

"""Denoising loops over diffusers schedulers (STYLE.md "For synface" 8).

The model knows nothing about noise; the scheduler owns the maths (DDIM: Song et al. 2021,
eq. 12; ``ddim_admis``: the ADMIS reference's variant of it, ``AdmisDDIMScheduler``); this
module only runs the loop, with optional classifier-free guidance
(ε = ε_u + w·(ε_c − ε_u), Ho & Salimans 2022, §3.2). The unconditional branch is the model's
empty context (``dropout_mask`` True), which it learns through whole-context dropout.

Three further options reach beyond ADMIS, all off by default (``Guidance``):

- negative-context guidance (NegFaceDiff, Caldeira et al.): ε ← ε + w_neg·(ε_c − ε(c_neg)),
  pushing the sample away from a far identity c_neg; with classifier-free guidance on as well,
  the term is added to the guided ε. One more UNet pass per step.
- two-stage sampling (UIFace): the first ``unconditional_steps`` steps run under the empty
  context, so the coarse layout (pose, light) is drawn without the identity; the identity
  (and any guidance) takes over from there.
- DDIM η > 0: the per-step noise is passed in (``step_noise``), a function of (seed, identity,
  image, step), never drawn from torch's global RNG, so faces do not depend on the batching.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from torch import nn

from synface import runtime
from synface.ldm.data import step_generator

SAMPLERS = ("ddim", "ddim_admis", "dpmsolver++")


class AdmisDDIMScheduler(DDIMScheduler):
    """DDIM with the ADMIS reference's arithmetic, to reproduce the images of its released
    checkpoint (``generative_model_training/models/diffusion/ddpm.py``, ``sample_ddim``).

    The reference deviates from textbook DDIM (Song et al. 2021, eq. 12), which ``ddim`` is:

    - ᾱ_prev of the step at t is ᾱ[t − skip − 1], not ᾱ[t − skip], and 1.0 once t − skip ≤ 0:
      the step from t = skip already lands on the predicted x₀ (textbook: on ᾱ[0]), and the
      last step, at t = 0, takes that estimate to x₀ once more (as textbook DDIM does).
    - Timesteps are ``range(0, T, T // steps)`` from the top, whatever the training
      scheduler's spacing says; when T is not a multiple of ``steps`` that is more model calls
      than ``steps`` (T = 1000, 30 steps: skip 33, 31 calls).
    - ᾱ is exp(cumsum(log(1 − β))) in float32, and ε is re-derived from x̂₀ before the
      direction term; both differ from diffusers' arithmetic by float32 rounding only, and are
      kept so that a float32 run follows the reference's own float32 run.

    As in the reference (and ``ddim``), x̂₀ is not clipped. Only η = 0 is implemented: the
    reference's samples use η = 0, and its η > 0 noise comes from a global RNG. Under this
    sampler ``sample_latents`` runs the UNet in fp32 on CUDA too, as the reference does.
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device = None) -> None:
        """The reference's timesteps and ᾱ (class docstring); ``num_inference_steps`` becomes
        the number of model calls."""
        train_steps = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= train_steps:
            raise ValueError(
                f"ddim_admis: {num_inference_steps} steps; choose 1 to {train_steps} (the "
                "number of training timesteps)"
            )
        self.skip = train_steps // num_inference_steps
        self.timesteps = torch.arange(0, train_steps, self.skip).flip(0).to(device)
        self.num_inference_steps = len(self.timesteps)
        self.alphas_cumprod = torch.cumsum(torch.log(self.alphas), dim=0).exp()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple:
        """One reference step from ``timestep`` (η = 0): x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε."""
        if eta != 0:
            raise ValueError(f"ddim_admis implements only eta = 0 (the reference's), got {eta}")
        t = int(timestep)
        alpha = self.alphas_cumprod[t]
        shifted = t - self.skip - 1  # the reference's off-by-one (class docstring)
        alpha_prev = self.alphas_cumprod[shifted] if shifted >= 0 else torch.tensor(1.0)
        x0 = (sample - (1 - alpha) ** 0.5 * model_output) / alpha**0.5
        eps = (sample - alpha**0.5 * x0) / (1 - alpha) ** 0.5
        prev = alpha_prev**0.5 * x0 + (1 - alpha_prev) ** 0.5 * eps
        if not return_dict:
            return (prev, x0)
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)


@dataclass(frozen=True)
class SamplingSettings:
    """What every stage that samples faces chooses: the noise seed, the number of denoising
    steps, the guidance scale and how many images go through the UNet at once. The identity
    check and synthesis extend it with what only they need."""

    seed: int
    steps: int
    guidance_scale: float
    batch_size: int


def make_sampler(training_config: dict, kind: str = "ddim") -> SchedulerMixin:
    """A sampling scheduler built from the training scheduler's config (diffusers'
    ``from_config``: the same betas, another algorithm)."""
    # No clipping of the predicted clean latent: the reference samplers do none (their clip
    # line is commented out), and VQ latents are not confined to [-1, 1] (the demo codebook
    # reaches 1.1).
    if kind == "ddim":
        return DDIMScheduler.from_config(training_config, clip_sample=False)
    if kind == "ddim_admis":
        return AdmisDDIMScheduler.from_config(training_config, clip_sample=False)
    if kind == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(
            training_config, algorithm_type="dpmsolver++", thresholding=False
        )
    raise ValueError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")


@dataclass(frozen=True)
class Guidance:
    """How the identity steers each step (module docstring): classifier-free scale (1 = off),
    negative-context scale (0 = off) and the number of first steps under the empty context
    (0 = off)."""

    scale: float = 1.0
    negative_scale: float = 0.0
    unconditional_steps: int = 0


@torch.inference_mode()
def sample_latents(
    unet: nn.Module,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    contexts: torch.Tensor | None,
    steps: int = 50,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    guidance: Guidance | None = None,
    negative_contexts: torch.Tensor | None = None,
    step_noise: Callable[[int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Denoise ``noise`` (B, C, h, w) under ``contexts`` (B, D), or unconditionally if None.

    ``guidance`` replaces ``guidance_scale`` when given; its negative scale needs
    ``negative_contexts`` (B, D). ``step_noise(step_index)`` gives DDIM's (B, C, h, w) noise of
    that step, required when ``eta`` > 0."""
    guidance = guidance or Guidance(scale=guidance_scale)
    _check_options(scheduler, eta, guidance, negative_contexts, step_noise)
    device = noise.device
    # The schedule stays on the host: the scheduler's arithmetic then reads host scalars only,
    # and no step waits for the GPU (a device timestep made each step sync on it).
    scheduler.set_timesteps(steps)
    x = noise
    for index, step in enumerate(scheduler.timesteps):
        t = step.to(device, non_blocking=True)
        with _unet_precision(scheduler, device):
            if contexts is None:
                eps = unet(x, t)
            elif index < guidance.unconditional_steps:
                eps = unet(x, t, contexts, torch.ones(len(x), dtype=torch.bool, device=device))
            else:
                eps = _guided_eps(unet, x, t, contexts, guidance, negative_contexts)
        kwargs = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
        if eta > 0:
            kwargs["variance_noise"] = step_noise(index).to(device)
        x = scheduler.step(eps.float(), step, x, **kwargs).prev_sample
    return x


def _check_options(
    scheduler: SchedulerMixin,
    eta: float,
    guidance: Guidance,
    negative_contexts: torch.Tensor | None,
    step_noise: Callable[[int], torch.Tensor] | None,
) -> None:
    if eta > 0 and (step_noise is None or not isinstance(scheduler, DDIMScheduler)):
        raise ValueError(
            f"eta={eta} needs the DDIM sampler and per-step noise (step_noise): torch's global "
            "RNG would make faces depend on the batching; set eta to 0 or sampler to ddim"
        )
    if guidance.negative_scale and negative_contexts is None:
        raise ValueError("negative_scale is set but no negative_contexts were given")


def _guided_eps(
    unet: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    contexts: torch.Tensor,
    guidance: Guidance,
    negative_contexts: torch.Tensor | None,
) -> torch.Tensor:
    """ε of one step under the identity, with the guidance terms of the module docstring, all
    branches in one UNet call (conditional, then empty context, then negative context)."""
    branches = [contexts]
    if guidance.scale != 1.0:
        branches.append(contexts)
    if guidance.negative_scale:
        branches.append(negative_contexts)
    if len(branches) == 1:
        return unet(x, t, contexts)
    batch = len(x)
    drop = torch.zeros(batch * len(branches), dtype=torch.bool, device=x.device)
    if guidance.scale != 1.0:
        drop[batch : 2 * batch] = True
    outputs = unet(torch.cat([x] * len(branches)), t, torch.cat(branches), drop).float()
    parts = list(outputs.chunk(len(branches)))
    conditional = parts.pop(0)
    eps = conditional
    if guidance.scale != 1.0:
        unconditional = parts.pop(0)
        eps = unconditional + guidance.scale * (conditional - unconditional)
    if guidance.negative_scale:
        eps = eps + guidance.negative_scale * (conditional - parts.pop(0))
    return eps


def _unet_precision(scheduler: SchedulerMixin, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (``runtime.autocast``), except under ``ddim_admis``: the reference
    samples in fp32, and reproducing its images is that sampler's purpose."""
    if isinstance(scheduler, AdmisDDIMScheduler):
        return nullcontext()
    return runtime.autocast(device)


def image_noise(seed: int, identity: int, k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The starting noise of image ``k`` of identity ``identity``: a function of (seed, i, k)
    alone, so results do not depend on shard size, batch size or device count."""
    return torch.randn(shape, generator=step_generator(seed, identity, k))


# The fifth seed word of ``step_noise``: its streams never coincide with ``image_noise``'s.
STEP_NOISE_STREAM = 1


def step_noise(seed: int, identity: int, k: int, step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """DDIM's η-noise at step index ``step`` of image ``k`` of identity ``identity``: a function
    of (seed, i, k, step) alone, so η > 0 keeps faces independent of shards and batches."""
    words = [seed, identity, k, step, STEP_NOISE_STREAM]
    state = np.random.SeedSequence(words).generate_state(2, np.uint64)[0] >> 1
    return torch.randn(shape, generator=torch.Generator().manual_seed(int(state)))

"""Classifier-free guidance in ``sample_latents`` against hand-computed ε and one DDIM step;
the ``ddim_admis`` sampler against a float64 re-implementation of the ADMIS reference loop.

The guidance UNet is a stand-in whose conditional and unconditional predictions are known
constants, so the combination ε = ε_u + w·(ε_c − ε_u) (Ho & Salimans 2022, the convention
sampling.py documents) and the use of the empty context (``dropout_mask`` True) are checked
exactly.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from reference_weights import fill_state_dict, load_fixture
from torch import nn

from synface.ldm import sampling
from synface.ldm.sampling import image_noise, make_sampler, sample_latents
from synface.models import build_model
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


# ------------------------------------------------------------------ ddim_admis vs the reference


@pytest.fixture(scope="module")
def admis_tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The ``admis_unet_tiny`` conformance model with the fixture's noise and contexts."""
    meta, shapes, arrays = load_fixture("admis_unet_tiny")
    unet = build_model("idiff_unet", **meta["constructor"])
    unet.load_state_dict(fill_state_dict(shapes, meta["seed"], meta["gain"]), strict=True)
    return unet.eval(), torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["context"])


@torch.inference_mode()
def reference_ddim_float64(
    unet: nn.Module, noise: torch.Tensor, contexts: torch.Tensor, steps: int, T: int = 1000
) -> torch.Tensor:
    """ADMIS ``models/diffusion/ddpm.py::sample_ddim`` (η = 0) written out in float64.

    Linear β 1e-4…0.02; its "previous ᾱ" table is [1, ᾱ_0, …, ᾱ_{T−2}] indexed at t − skip,
    and 1 once t − skip < 0. The reference's re-derivation of ε from x̂₀ is the identity in
    exact arithmetic and is left out. The UNet itself runs in float32, as the sampler's does.
    """
    alpha_bars = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), dim=0)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bars[:-1]])
    skip = T // steps
    x = noise.double()
    for t in reversed(range(0, T, skip)):
        eps = unet(x.float(), torch.tensor(t), contexts).double()
        alpha = alpha_bars[t]
        alpha_prev = previous[t - skip] if t - skip >= 0 else torch.tensor(1.0, dtype=x.dtype)
        x0 = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        x = alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps
    return x


# float32 keeps ~7 digits: with ~10 rounded operations per step, over 50 steps and through the
# UNet, the sampler lands within ~6e-7 of the float64 loop's largest value (measured: 5.6e-7 at
# 50 steps, 4.0e-7 at 7); 1e-5 leaves room for other kernels. A textbook ᾱ_prev (ᾱ[t − skip])
# moves the result by 0.2 of that value.
ADMIS_RTOL = 1e-5


@pytest.mark.parametrize("steps", [50, 7])  # the reference's schedule; T // 7 = 142 → 8 calls
def test_ddim_admis_follows_the_reference_loop_in_float64(
    steps: int, admis_tiny: tuple[nn.Module, torch.Tensor, torch.Tensor]
) -> None:
    unet, noise, contexts = admis_tiny
    sampler = make_sampler(dict(admis_ddpm_scheduler().config), "ddim_admis")
    latents = sample_latents(unet, sampler, noise, contexts, steps=steps)
    expected = reference_ddim_float64(unet, noise, contexts, steps)
    assert sampler.timesteps.tolist() == list(reversed(range(0, 1000, 1000 // steps)))
    assert latents.dtype == torch.float32
    error = (latents.double() - expected).abs().max()
    assert error <= ADMIS_RTOL * expected.abs().max(), error


@pytest.mark.parametrize(("kind", "autocast_steps"), [("ddim", 3), ("ddim_admis", 0)])
def test_only_ddim_admis_keeps_the_unet_in_fp32(
    kind: str, autocast_steps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference samples in fp32; the other samplers use bf16 autocast on CUDA, which is
    a no-op on this CPU, so its use is counted instead."""
    entered = []
    autocast = sampling.runtime.autocast
    monkeypatch.setattr(sampling.runtime, "autocast", lambda d: entered.append(d) or autocast(d))
    scheduler = make_sampler(dict(admis_ddpm_scheduler().config), kind)
    noise = image_noise(0, 0, 0, (3, 4, 4))[None]
    sample_latents(KnownPredictions(), scheduler, noise, torch.zeros(1, 8), steps=3)
    assert len(entered) == autocast_steps


# ------------------------------------------------- beyond ADMIS: negative guidance, two stages, η


@pytest.mark.parametrize(("guidance_scale", "negative_scale"), [(1.0, 0.5), (3.0, 0.5)])
def test_negative_guidance_combines_known_predictions_as_documented(
    guidance_scale: float, negative_scale: float
) -> None:
    scheduler = make_sampler(dict(admis_ddpm_scheduler().config))
    steps = _recorded_steps(scheduler)
    noise = torch.stack([image_noise(0, i, 0, (3, 4, 4)) for i in range(2)])
    contexts, negatives = torch.zeros(2, 8), torch.zeros(2, 8)
    contexts[:, 0] = torch.tensor([0.5, -1.0])  # ε_c per row
    negatives[:, 0] = torch.tensor([0.1, 0.3])  # ε(c_neg) per row
    guidance = sampling.Guidance(scale=guidance_scale, negative_scale=negative_scale)
    sample_latents(KnownPredictions(), scheduler, noise, contexts, steps=4, guidance=guidance,
                   negative_contexts=negatives)  # fmt: skip

    eps_c = contexts[:, 0][:, None, None, None].expand_as(noise)
    eps_neg = negatives[:, 0][:, None, None, None].expand_as(noise)
    guided = EPS_UNCONDITIONAL + guidance_scale * (eps_c - EPS_UNCONDITIONAL)
    expected = guided + negative_scale * (eps_c - eps_neg)
    assert all(torch.allclose(eps, expected, atol=1e-6) for eps, _, _ in steps)


def test_two_stage_sampling_starts_under_the_empty_context() -> None:
    scheduler = make_sampler(dict(admis_ddpm_scheduler().config))
    steps = _recorded_steps(scheduler)
    noise = image_noise(0, 0, 0, (3, 4, 4))[None]
    contexts = torch.zeros(1, 8)
    contexts[0, 0] = -0.75
    guidance = sampling.Guidance(unconditional_steps=3)
    sample_latents(KnownPredictions(), scheduler, noise, contexts, steps=5, guidance=guidance)
    values = [eps.unique().tolist() for eps, _, _ in steps]
    assert values == [[EPS_UNCONDITIONAL]] * 3 + [[-0.75]] * 2


def test_stochastic_ddim_adds_the_given_step_noise_and_refuses_the_global_rng() -> None:
    scheduler = make_sampler(dict(admis_ddpm_scheduler().config))
    steps = _recorded_steps(scheduler)
    noise = torch.stack([image_noise(0, i, 0, (3, 4, 4)) for i in range(2)])
    contexts = torch.zeros(2, 8)
    eta, jobs = 0.7, [(0, 0), (1, 0)]

    def noise_of_step(step: int) -> torch.Tensor:
        return torch.stack([sampling.step_noise(5, i, k, step, (3, 4, 4)) for i, k in jobs])

    sample_latents(KnownPredictions(), scheduler, noise, contexts, steps=4, eta=eta,
                   step_noise=noise_of_step)  # fmt: skip
    # DDIM (Song et al. 2021, eq. 12 and 16) from t = 750 to 500 with σ_t and the given z.
    eps, x, after = steps[0]
    alpha_t, alpha_prev = scheduler.alphas_cumprod[750], scheduler.alphas_cumprod[500]
    sigma = eta * ((1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)).sqrt()
    x0 = (x - (1 - alpha_t).sqrt() * eps) / alpha_t.sqrt()
    direction = (1 - alpha_prev - sigma**2).sqrt() * eps
    by_hand = alpha_prev.sqrt() * x0 + direction + sigma * noise_of_step(0)
    assert torch.allclose(after, by_hand, atol=1e-5)
    with pytest.raises(ValueError, match="per-step noise"):
        sample_latents(KnownPredictions(), scheduler, noise, contexts, steps=4, eta=eta)


def test_step_noise_depends_on_seed_identity_image_and_step_only() -> None:
    shape = (3, 4, 4)
    assert torch.equal(
        sampling.step_noise(1, 2, 3, 4, shape), sampling.step_noise(1, 2, 3, 4, shape)
    )
    draws = [sampling.step_noise(*words, shape) for words in
             [(1, 2, 3, 4), (0, 2, 3, 4), (1, 0, 3, 4), (1, 2, 0, 4), (1, 2, 3, 0)]]  # fmt: skip
    draws.append(image_noise(1, 2, 3, shape))
    assert len({d.numpy().tobytes() for d in draws}) == len(draws)

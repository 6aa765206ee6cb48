"""Read and write ADMIS / IDiff-Face `ema_averaged_model_*.ckpt` files.

Such a file is the state dict of the reference's DDPM training wrapper: its eight float32 schedule
buffers (shape (T,)) first, then every UNet entry under the `eps_model.` prefix. The reference
sampler loads it with `strict=False` and ignores the buffers, which hides both a wrong
architecture and a different noise schedule. Here the UNet part loads strictly
and the buffers must agree with the schedule the caller configured, so weights trained under
another schedule are refused rather than sampled with the wrong noise levels.

The schedule itself is diffusers' `DDPMScheduler`; only the eight derived buffers are computed
here, because they are part of the file format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from torch import nn

from synface.checkpoint import atomic_save, load

# The wrapper's registration order, which is also the order in the file (fixture README).
SCHEDULE_BUFFER_NAMES: tuple[str, ...] = (
    "betas",
    "alphas",
    "sigmas",
    "sqrt_alphas_inv",
    "alpha_bars",
    "sqrt_alpha_bars",
    "sqrt_one_minus_alpha_bars",
    "one_minus_alphas_over_sqrt_one_minus_alpha_bars",
)
UNET_PREFIX = "eps_model."

# A stored buffer matches when every entry is within this fraction of the buffer's largest value.
# Recomputing the buffers on another CPU (sqrt, exp and log kernels differ by an ulp) or with
# cumprod instead of exp(cumsum(log)) stays below 1e-6 of it; a purely relative test would be
# fragile because 1 - alpha_bars cancels near t = 0. A real change of schedule moves them far more
# (beta_start 1e-4 → 1.1e-4 already moves betas by 5e-4 and the other buffers by up to 2e-2).
BUFFER_TOLERANCE = 1e-5

RELEASED_WEIGHTS_HINT = (
    "the released ADMIS weights are ckpt/ADMIS_FRCSyn_ckpt/ema_averaged_model_200000.ckpt "
    "(Google Drive link in the ADMIS README); put the file where the config points"
)


def architecture_fix(path: Path) -> str:
    """What makes a checkpoint of another architecture load: its UNet described beside it."""
    return (
        "the weights were trained with another UNet: put the model yaml they were trained with "
        f"beside the checkpoint as {path.with_suffix('.yaml')}, or their ConditionalUNet "
        f"arguments as the 'unet' of {path.with_suffix('.json')}"
    )


def admis_ddpm_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The reference training schedule: linear betas 1e-4 … 0.02, rescaled by 1000/T.

    The reference: `linspace(1e-4·(1000/T), 0.02·(1000/T), T)` in float32, which is exactly what
    `DDPMScheduler`'s "linear" schedule computes, so T=1000 gives the released model's betas.
    """
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    scale = 1000 / num_train_timesteps
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=scale * 0.0001,
        beta_end=scale * 0.02,
        beta_schedule="linear",
    )


def schedule_buffers(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """The eight wrapper buffers, float32, computed the way the reference does.

    `alpha_bars` is exp(cumsum(log(alphas))), not a cumulative product, and `sigmas` is sqrt(β),
    the ancestral sampler's variance, not the posterior one.
    """
    betas = betas.detach().to(device="cpu", dtype=torch.float32)
    alphas = 1 - betas
    alpha_bars = torch.cumsum(torch.log(alphas), dim=0).exp()
    sqrt_one_minus_alpha_bars = (1 - alpha_bars).sqrt()
    buffers = {
        "betas": betas,
        "alphas": alphas,
        "sigmas": betas.sqrt(),
        "sqrt_alphas_inv": 1 / alphas.sqrt(),
        "alpha_bars": alpha_bars,
        "sqrt_alpha_bars": alpha_bars.sqrt(),
        "sqrt_one_minus_alpha_bars": sqrt_one_minus_alpha_bars,
        "one_minus_alphas_over_sqrt_one_minus_alpha_bars": (1 - alphas) / sqrt_one_minus_alpha_bars,
    }
    return {name: buffers[name] for name in SCHEDULE_BUFFER_NAMES}


def save_admis_checkpoint(path: Path, unet: nn.Module, scheduler: DDPMScheduler) -> None:
    """Write `unet` in the `ema_averaged_model_*.ckpt` layout, atomically, on the CPU.

    The file loads with the reference's own sampler as well as with `load_admis_checkpoint`.
    """
    state: dict[str, torch.Tensor] = dict(schedule_buffers(scheduler.betas))
    for key, value in unet.state_dict().items():
        state[UNET_PREFIX + key] = value.detach().cpu()
    atomic_save(state, Path(path))


def load_admis_checkpoint(
    path: Path, unet: nn.Module, scheduler: DDPMScheduler | None = None
) -> None:
    """Load an `ema_averaged_model_*.ckpt` into `unet`, strictly, after checking its schedule.

    `scheduler` is the schedule the caller will sample with (default: `admis_ddpm_scheduler()`,
    the released models' T=1000 linear schedule); each of the eight stored buffers must match the
    one derived from it. The released "EMA" files hold the raw weights (the reference
    trainer never updated its EMA copy): they load the same way.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file; {RELEASED_WEIGHTS_HINT}")
    state = load(path)
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ValueError(
            f"{path}: not an ema_averaged_model checkpoint (expected a flat state dict of "
            "tensors, as written by the reference trainer or save_admis_checkpoint)"
        )
    _check_schedule(path, state, admis_ddpm_scheduler() if scheduler is None else scheduler)
    unet_state = {
        key.removeprefix(UNET_PREFIX): value
        for key, value in state.items()
        if key.startswith(UNET_PREFIX)
    }
    stray = [
        key for key in state if key not in SCHEDULE_BUFFER_NAMES and not key.startswith(UNET_PREFIX)
    ]
    _check_unet_keys(path, unet, unet_state, stray)
    unet.load_state_dict(unet_state, strict=True)


def _check_schedule(
    path: Path, state: Mapping[str, torch.Tensor], scheduler: DDPMScheduler
) -> None:
    """Refuse a file whose schedule buffers differ from the configured schedule's."""
    expected = schedule_buffers(scheduler.betas)
    config = dict(scheduler.config)
    configured = (
        f"the configured schedule (T={config.get('num_train_timesteps')}, "
        f"{config.get('beta_schedule')} betas "
        f"{config.get('beta_start')} … {config.get('beta_end')})"
    )
    for name, want in expected.items():
        if name not in state:
            raise ValueError(
                f"{path}: schedule buffer {name!r} is missing; an ema_averaged_model checkpoint "
                f"starts with the buffers {list(SCHEDULE_BUFFER_NAMES)}"
            )
        got = state[name].to(torch.float32)
        if got.shape != want.shape:
            raise ValueError(
                f"{path}: schedule buffer {name!r} has shape {tuple(got.shape)} but {configured} "
                f"gives {tuple(want.shape)}; configure the scheduler the weights were trained with"
            )
        worst = ((got - want).abs().max() / want.abs().max()).item()
        if not worst <= BUFFER_TOLERANCE:
            raise ValueError(
                f"{path}: schedule buffer {name!r} differs from {configured} (largest difference "
                f"{worst:.3g} of the buffer's largest value, tolerance {BUFFER_TOLERANCE:g}); the "
                "weights were trained with another noise schedule: configure the scheduler the "
                "weights were trained with"
            )


def _check_unet_keys(
    path: Path, unet: nn.Module, unet_state: Mapping[str, torch.Tensor], stray: list[str]
) -> None:
    """Name the keys and shapes that stop a strict load, before torch's generic error would."""
    expected = unet.state_dict()
    missing = [key for key in expected if key not in unet_state]
    unexpected = [key for key in unet_state if key not in expected]
    if missing or unexpected or stray:
        raise ValueError(
            f"{path}: the UNet weights do not fit the model: {len(missing)} missing keys "
            f"{missing[:5]}, {len(unexpected)} unexpected `{UNET_PREFIX}` keys {unexpected[:5]}, "
            f"{len(stray)} keys that are neither schedule buffers nor `{UNET_PREFIX}*` "
            f"{stray[:5]}; {architecture_fix(path)}"
        )
    wrong = [
        f"{key}: file {tuple(unet_state[key].shape)}, model {tuple(value.shape)}"
        for key, value in expected.items()
        if unet_state[key].shape != value.shape
    ]
    if wrong:
        raise ValueError(
            f"{path}: {len(wrong)} UNet entries have the wrong shape ({'; '.join(wrong[:3])}); "
            + architecture_fix(path)
        )

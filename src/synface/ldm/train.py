"""IDiff-Face / ADMIS LDM training: ε-prediction MSE on cached latents, resumable, DDP-ready.

The recipe is the reference's (specs/generative.md §4–§5): DDPM noise from diffusers'
``DDPMScheduler`` (linear 1e-4…0.02, T = 1000), Adam 1e-4, cosine warm restarts stepped every
iteration (T_0, ×T_mult), CPD inside the UNet. Additions: whole-context dropout so the model also
learns an unconditional mode (classifier-free guidance, context generation), a working EMA,
an optional higher learning rate for the context projection (specs/demo-world-feasibility.md),
and a global batch fixed by config and split over the processes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import save_image

from synface import __version__, checkpoint, runtime
from synface.ldm.data import step_generator, step_seed
from synface.ldm.ema import EMA
from synface.ldm.first_stage import FirstStage
from synface.ldm.latents import LatentCache
from synface.ldm.sampling import make_sampler, sample_latents
from synface.models import build_model
from synface.models.admis_checkpoint import admis_ddpm_scheduler, save_admis_checkpoint

log = logging.getLogger(__name__)

RUN_CHECKPOINT = "ldm_{n}.pt"
PREVIEW = "preview_{step:07d}.png"
# Random streams are keyed (seed, step, stream): 0 draws the global batch, 1 + rank the CPD
# dropout of each process, and this one the fixed contexts and noise of every preview.
PREVIEW_STREAM = 1 << 20


@dataclass(frozen=True)
class LDMTrainConfig:
    """Defaults are ADMIS's recipe (specs §5); ``unet`` holds the reference yaml keys."""

    unet: dict[str, Any] = field(default_factory=dict)
    num_train_timesteps: int = 1000
    steps: int = 200_000
    global_batch_size: int = 512
    lr: float = 1e-4
    context_lr_scale: float = 1.0
    restart_period: int = 10_000
    restart_mult: int = 2
    whole_context_dropout: float = 0.0
    ema_max_decay: float = 0.9999
    ema_power: float = 0.75
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 5000
    keep_checkpoints: int = 2
    preview_every: int = 5000
    preview_contexts: int = 4
    preview_samples: int = 4

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> LDMTrainConfig:
        return cls(**settings)


def _optimizer(unet: nn.Module, cfg: LDMTrainConfig) -> torch.optim.Adam:
    """Adam, with the context projection in its own group when it gets a larger LR."""
    context = [p for n, p in unet.named_parameters() if n.startswith("context_emb")]
    others = [p for n, p in unet.named_parameters() if not n.startswith("context_emb")]
    groups = [{"params": others, "lr": cfg.lr}]
    if context:
        groups.append({"params": context, "lr": cfg.lr * cfg.context_lr_scale})
    return torch.optim.Adam(groups, lr=cfg.lr)


def _global_batch(cache: LatentCache, cfg: LDMTrainConfig, step: int) -> tuple[torch.Tensor, ...]:
    """The step's whole batch, a function of (seed, step) only: any world size sees the same."""
    g = step_generator(cfg.seed, step)
    n = cfg.global_batch_size
    indices = torch.randint(len(cache), (n,), generator=g)
    mirrored = torch.rand(n, generator=g) < 0.5
    latents, contexts = cache.batch(indices, mirrored)
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(cfg.num_train_timesteps, (n,), generator=g)
    dropped = torch.rand(n, generator=g) < cfg.whole_context_dropout
    return latents, contexts, noise, timesteps, dropped


def _save_run_checkpoint(
    run_dir: Path,
    step: int,
    unet: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    cfg: LDMTrainConfig,
) -> None:
    state = {
        "step": step,
        "unet": unet.state_dict(),
        "ema": ema.model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "model_args": json.dumps(cfg.unet, sort_keys=True),
        "config": json.dumps(asdict(cfg), sort_keys=True),
        "version": __version__,
    }
    checkpoint.atomic_save(state, run_dir / RUN_CHECKPOINT.format(n=step))
    checkpoint.prune_numbered(run_dir, [RUN_CHECKPOINT], cfg.keep_checkpoints)


def _resume(
    run_dir: Path,
    unet: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    lr_schedule: torch.optim.lr_scheduler.LRScheduler,
    cfg: LDMTrainConfig,
) -> int:
    newest = checkpoint.newest_numbered(run_dir, RUN_CHECKPOINT)
    if newest is None:
        return 0
    step, path = newest
    state = checkpoint.load(path)
    if json.loads(state["model_args"]) != cfg.unet:
        raise ValueError(
            f"{path} holds a UNet built with other arguments ({state['model_args']}): delete "
            f"{run_dir} to start over, or restore the config"
        )
    unet.load_state_dict(state["unet"])
    ema.model.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    lr_schedule.load_state_dict(state["lr_schedule"])
    log.info("resumed %s at step %d", path, step)
    return step


def _preview(
    run_dir: Path,
    step: int,
    ema: EMA,
    decoder: nn.Module,
    cache: LatentCache,
    scheduler_config: dict,
    cfg: LDMTrainConfig,
    device: torch.device,
) -> None:
    """A grid: one row per training context (its real face first), then unconditional samples."""
    rows, per_row = cfg.preview_contexts, cfg.preview_samples
    g = step_generator(cfg.seed, 0, PREVIEW_STREAM)
    indices = torch.randint(len(cache), (rows,), generator=g)
    real, contexts = cache.batch(indices, torch.zeros(rows, dtype=torch.bool))
    shape = real.shape[1:]
    noise = torch.randn((rows * per_row + per_row, *shape), generator=g).to(device)
    sampler = make_sampler(scheduler_config)
    conditional = sample_latents(
        ema.model,
        sampler,
        noise[: rows * per_row],
        contexts.repeat_interleave(per_row, 0).to(device),
        steps=25,
    )
    unconditional = None
    if cfg.whole_context_dropout > 0:
        unconditional = sample_latents(ema.model, sampler, noise[rows * per_row :], None, steps=25)
    decoded = []
    with torch.inference_mode():
        for r in range(rows):
            decoded.append(decoder(real[r : r + 1].to(device)))
            decoded.append(decoder(conditional[r * per_row : (r + 1) * per_row]))
        if unconditional is not None:
            decoded.append(decoder(unconditional))
    grid = torch.cat(decoded).float().clamp(-1, 1) * 0.5 + 0.5
    save_image(grid.cpu(), run_dir / PREVIEW.format(step=step), nrow=per_row + 1)


def train_ldm(
    latents_dir: Path,
    out_checkpoint: Path,
    run_dir: Path,
    cfg: LDMTrainConfig,
    first_stage: Path | None = None,
    threads: int = 1,
) -> list[dict[str, float]]:
    """Train until ``cfg.steps``, resuming from ``run_dir``.

    Writes ``out_checkpoint`` in ADMIS's ``ema_averaged_model_*.ckpt`` format (from the EMA
    weights) and, next to it with suffix ``.json``, the UNet arguments and the training
    scheduler's config, which samplers rebuild their scheduler from.
    """
    dist_info = runtime.init_distributed()
    runtime.set_threads(max(1, threads // dist_info.world_size))
    device = dist_info.device
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = LatentCache.open(latents_dir)
    if cfg.global_batch_size % dist_info.world_size:
        raise ValueError(
            f"ldm.train.global_batch_size {cfg.global_batch_size} is not divisible by the "
            f"{dist_info.world_size} processes"
        )
    local = cfg.global_batch_size // dist_info.world_size
    torch.manual_seed(cfg.seed)
    unet = build_model("idiff_unet", **cfg.unet)
    scheduler = admis_ddpm_scheduler(cfg.num_train_timesteps)
    ema = EMA(unet, cfg.ema_max_decay, cfg.ema_power)
    optimizer = _optimizer(unet, cfg)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=cfg.restart_period, T_mult=cfg.restart_mult
    )
    step = _resume(run_dir, unet, ema, optimizer, lr_schedule, cfg)
    unet.to(device)
    ema.to(device)
    optimizer.load_state_dict(optimizer.state_dict())
    model: nn.Module = unet
    if dist_info.enabled:
        model = DistributedDataParallel(
            unet, device_ids=[dist_info.local_rank] if device.type == "cuda" else None
        )
    decoder = None
    if first_stage is not None and dist_info.is_main:
        decoder = FirstStage.load(first_stage).decoder.to(device)
    if dist_info.is_main:
        log.info(
            "training the LDM (%.2fM parameters) on %d latents %s: global batch %d = %d x %d, "
            "steps %d..%d",
            sum(p.numel() for p in unet.parameters()) / 1e6,
            len(cache),
            tuple(cache.latents.shape[2:]),
            cfg.global_batch_size,
            local,
            dist_info.world_size,
            step + 1,
            cfg.steps,
        )
    history: list[dict[str, float]] = []
    loss_log = run_dir / "loss.tsv"
    started, first_step = time.perf_counter(), step
    mine = slice(dist_info.rank * local, (dist_info.rank + 1) * local)
    model.train()
    while step < cfg.steps:
        latents, contexts, noise, timesteps, dropped = (
            part[mine].to(device, non_blocking=True) for part in _global_batch(cache, cfg, step)
        )
        # CPD's element-wise dropout draws from the global RNG: seed it per (step, rank) too.
        torch.manual_seed(step_seed(cfg.seed, step, dist_info.rank + 1))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with runtime.autocast(device):
            predicted = model(noisy, timesteps, contexts, dropout_mask=dropped)
        loss = F.mse_loss(predicted.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        step += 1
        ema.update(unet, step)
        if step % cfg.log_every == 0 or step == cfg.steps:
            figure = loss.detach().clone()
            if dist_info.enabled:
                torch.distributed.all_reduce(figure)
                figure /= dist_info.world_size
            record = {
                "step": step,
                "loss": figure.item(),
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": (step - first_step)
                * cfg.global_batch_size
                / (time.perf_counter() - started),
            }
            history.append(record)
            if dist_info.is_main:
                log.info(
                    "step %d loss %.5f lr %.3g %.0f img/s",
                    step,
                    record["loss"],
                    record["lr"],
                    record["images_per_s"],
                )
                with loss_log.open("a", encoding="utf-8") as out:
                    out.write("\t".join(f"{k}={v:.6g}" for k, v in record.items()) + "\n")
        if dist_info.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _save_run_checkpoint(run_dir, step, unet, ema, optimizer, lr_schedule, cfg)
        if decoder is not None and (step % cfg.preview_every == 0 or step == cfg.steps):
            _preview(run_dir, step, ema, decoder, cache, dict(scheduler.config), cfg, device)
    if dist_info.is_main:
        save_admis_checkpoint(Path(out_checkpoint), ema.model, scheduler)
        spec = {
            "unet": cfg.unet,
            "scheduler": dict(scheduler.config),
            "latent_shape": list(cache.latents.shape[2:]),
            "steps": cfg.steps,
        }
        Path(out_checkpoint).with_suffix(".json").write_text(json.dumps(spec, indent=2) + "\n")
    if dist_info.enabled:
        torch.distributed.barrier()
    runtime.shutdown_distributed()
    return history

"""IDiff-Face / ADMIS LDM training: ε-prediction MSE on cached latents, resumable, DDP-ready.

The recipe is the reference's: DDPM noise from diffusers'
``DDPMScheduler`` (linear 1e-4…0.02, T = 1000), Adam 1e-4, cosine warm restarts stepped every
iteration (T_0, ×T_mult), CPD inside the UNet. Additions: whole-context dropout so the model also
learns an unconditional mode (classifier-free guidance, context generation), a working EMA,
an optional higher learning rate for the context projection (helps a small LDM learn identity),
and a global batch fixed by config and split over the processes. One step (`LDMTraining.step`)
is shared with ``benchmarks/bench_ldm.py``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import make_grid, save_image

from synface import __version__, checkpoint, runtime
from synface.io.atomic import write_json
from synface.ldm.data import step_generator, step_seed
from synface.ldm.ema import EMA
from synface.ldm.first_stage import FirstStage
from synface.ldm.latents import CONTEXTS_FILE, LATENTS_FILE, DeviceCache, LatentCache
from synface.ldm.sampling import make_sampler, sample_latents
from synface.models import build_model
from synface.models.admis_checkpoint import admis_ddpm_scheduler, save_admis_checkpoint
from synface.progress import progress
from synface.settings import StageSettings

log = logging.getLogger(__name__)

RUN_CHECKPOINT = "ldm_{n}.pt"
PREVIEW = "preview_{step:07d}.png"
# Random streams are keyed (seed, step, stream): 0 draws the global batch, 1 + rank the CPD
# dropout of each process, and this one the fixed contexts and noise of every preview.
PREVIEW_STREAM = 1 << 20


@dataclass(frozen=True)
class LDMTrainConfig(StageSettings, section="ldm.train"):
    """``unet`` holds the reference yaml keys; the rest is config ``ldm.train``, whose schema
    defaults are ADMIS's recipe."""

    unet: dict[str, Any]
    num_train_timesteps: int
    steps: int
    global_batch_size: int
    lr: float
    context_lr_scale: float
    restart_period: int
    restart_mult: int
    whole_context_dropout: float
    ema_max_decay: float
    ema_power: float
    precision: str
    seed: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    preview_every: int
    preview_contexts: int
    preview_samples: int

    def fingerprint(self, data: str) -> dict[str, str]:
        """The run's inputs (see `checkpoint.fingerprint`); the UNet keys are the architecture."""
        settings = {k: v for k, v in asdict(self).items() if k not in RESULT_NEUTRAL | {"unet"}}
        return checkpoint.fingerprint(data, settings, self.unet)


# Settings that do not change the weights a run ends with: how long (the LR restarts and the
# EMA do not depend on the total), how often to log, save or preview, checkpoints kept.
RESULT_NEUTRAL = {
    "steps",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "preview_every",
    "preview_contexts",
    "preview_samples",
}


@dataclass
class LDMTraining:
    """What a training step updates: the UNet (``model`` is it, DDP-wrapped in a distributed
    run), its EMA, Adam and its cosine-restart schedule, and the DDPM noise schedule."""

    unet: nn.Module
    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Adam
    lr_schedule: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
    scheduler: Any
    precision: str  # the forward's ``runtime.autocast`` (config ``ldm.train.precision``)

    @classmethod
    def build(cls, cfg: LDMTrainConfig, dist_info: runtime.Distributed) -> LDMTraining:
        """A fresh run's state from ``cfg.seed``, on ``dist_info.device``."""
        device = dist_info.device
        torch.manual_seed(cfg.seed)
        unet = build_model("idiff_unet", **cfg.unet).to(device)
        ema = EMA(unet, cfg.ema_max_decay, cfg.ema_power)
        # Adam, with the context projection in its own group when it gets a larger LR.
        context = [p for n, p in unet.named_parameters() if n.startswith("context_emb")]
        others = [p for n, p in unet.named_parameters() if not n.startswith("context_emb")]
        groups = [{"params": others, "lr": cfg.lr}]
        if context:
            groups.append({"params": context, "lr": cfg.lr * cfg.context_lr_scale})
        # Fused: one kernel for the whole update on CUDA, instead of several per tensor.
        optimizer = torch.optim.Adam(groups, lr=cfg.lr, fused=device.type == "cuda")
        lr_schedule = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cfg.restart_period, T_mult=cfg.restart_mult
        )
        model: nn.Module = unet
        if dist_info.enabled:
            ids = [dist_info.local_rank] if device.type == "cuda" else None
            model = DistributedDataParallel(unet, device_ids=ids)
        scheduler = admis_ddpm_scheduler(cfg.num_train_timesteps)
        return cls(unet, model, ema, optimizer, lr_schedule, scheduler, cfg.precision)

    def step(self, batch: tuple[torch.Tensor, ...], step: int) -> torch.Tensor:
        """One step on ``batch`` = (latents, contexts, noise, timesteps, context dropped), on
        the model's device; ``step`` counts the steps done before it. Returns the ε-MSE."""
        latents, contexts, noise, timesteps, dropped = batch
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with runtime.autocast(latents.device, self.precision):
            predicted = self.model(noisy, timesteps, contexts, dropout_mask=dropped)
        loss = F.mse_loss(predicted.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.lr_schedule.step()
        self.ema.update(self.unet, step + 1)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {
            "unet": self.unet.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Onto the device the parts already live on (the optimiser casts its state)."""
        self.unet.load_state_dict(state["unet"])
        self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])


def _global_batch(
    cache: LatentCache | DeviceCache, cfg: LDMTrainConfig, step: int
) -> tuple[torch.Tensor, ...]:
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
    run_dir: Path, step: int, training: LDMTraining, cfg: LDMTrainConfig, inputs: dict[str, str]
) -> None:
    state = {
        "step": step,
        **training.state_dict(),
        "config": json.dumps(asdict(cfg), sort_keys=True),
        "version": __version__,
        checkpoint.FINGERPRINT_KEY: inputs,
    }
    checkpoint.atomic_save(state, run_dir / RUN_CHECKPOINT.format(n=step))
    checkpoint.prune_numbered(run_dir, [RUN_CHECKPOINT], cfg.keep_checkpoints)


def _preview(
    run_dir: Path,
    step: int,
    ema: EMA,
    decoder: nn.Module,
    cache: LatentCache | DeviceCache,
    scheduler_config: dict,
    cfg: LDMTrainConfig,
    device: torch.device,
) -> torch.Tensor:
    """A grid: one row per training context (its real face first), then unconditional samples;
    saved in the run folder and returned (for TensorBoard)."""
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
    image = make_grid(grid.cpu(), nrow=per_row + 1)
    save_image(image, run_dir / PREVIEW.format(step=step))
    return image


def _preview_decoder(first_stage: Path | None, dist_info: runtime.Distributed) -> nn.Module | None:
    """The first stage's decoder for the previews (main process only), or None."""
    if first_stage is None or not dist_info.is_main:
        return None
    return FirstStage.load(first_stage).decoder.to(dist_info.device)


def train_ldm(
    latents_dir: Path,
    out_checkpoint: Path,
    run_dir: Path,
    cfg: LDMTrainConfig,
    first_stage: Path | None = None,
    threads: int = 1,
) -> list[dict[str, float]]:
    """Train until ``cfg.steps``, resuming from ``run_dir`` when it holds a run of the same
    inputs (else it is set aside).

    Writes ``out_checkpoint`` in ADMIS's ``ema_averaged_model_*.ckpt`` format (from the EMA
    weights) and, next to it with suffix ``.json``, the UNet arguments and the training
    scheduler's config, which samplers rebuild their scheduler from.
    """
    dist_info = runtime.init_distributed()
    runtime.set_threads(max(1, threads // dist_info.world_size))
    run_dir, latents_dir = Path(run_dir), Path(latents_dir)
    cache = LatentCache.open(latents_dir).on_device(dist_info.device)
    if cfg.global_batch_size % dist_info.world_size:
        raise ValueError(
            f"ldm.train.global_batch_size {cfg.global_batch_size} is not divisible by the "
            f"{dist_info.world_size} processes"
        )
    training = LDMTraining.build(cfg, dist_info)
    inputs: dict[str, str] = {}
    if dist_info.is_main:
        data = checkpoint.content_digest([latents_dir / LATENTS_FILE, latents_dir / CONTEXTS_FILE])
        inputs = cfg.fingerprint(data)
    step = 0
    resumed = checkpoint.resume_state(run_dir, [RUN_CHECKPOINT], inputs, cfg.steps, dist_info)
    if resumed is not None:
        step, (state,) = resumed
        training.load_state_dict(state)
        log.info("resumed %s at step %d", run_dir / RUN_CHECKPOINT.format(n=step), step)
    if dist_info.is_main:
        log.info(
            "training the LDM (%.2fM parameters) on %d latents %s: global batch %d = %d x %d, "
            "steps %d..%d",
            sum(p.numel() for p in training.unet.parameters()) / 1e6,
            len(cache),
            tuple(cache.latents.shape[2:]),
            cfg.global_batch_size,
            cfg.global_batch_size // dist_info.world_size,
            dist_info.world_size,
            step + 1,
            cfg.steps,
        )
    history = _train_steps(training, cache, cfg, step, run_dir, inputs, first_stage, dist_info)
    if dist_info.is_main:
        save_admis_checkpoint(Path(out_checkpoint), training.ema.model, training.scheduler)
        spec = {
            "unet": cfg.unet,
            "scheduler": dict(training.scheduler.config),
            "latent_shape": list(cache.latents.shape[2:]),
            "steps": cfg.steps,
        }
        write_json(Path(out_checkpoint).with_suffix(".json"), spec)
    if dist_info.enabled:
        torch.distributed.barrier()
    runtime.shutdown_distributed()
    return history


def _train_steps(
    training: LDMTraining,
    cache: LatentCache | DeviceCache,
    cfg: LDMTrainConfig,
    step: int,
    run_dir: Path,
    inputs: dict[str, str],
    first_stage: Path | None,
    dist_info: runtime.Distributed,
) -> list[dict[str, float]]:
    """Steps from ``step`` to ``cfg.steps`` with their logging, checkpoints and previews."""
    device, main = dist_info.device, dist_info.is_main
    decoder = _preview_decoder(first_stage, dist_info)
    loss_log = checkpoint.LossLog(run_dir, step) if main else None
    history: list[dict[str, float]] = []
    started, first_step = time.perf_counter(), step
    local = cfg.global_batch_size // dist_info.world_size
    mine = slice(dist_info.rank * local, (dist_info.rank + 1) * local)
    training.model.train()
    bar = progress(
        cfg.steps, "train-ldm", cfg.log_every, unit="steps", initial=step, disable=not main
    )
    while step < cfg.steps:
        batch = [
            part[mine].to(device, non_blocking=True) for part in _global_batch(cache, cfg, step)
        ]
        # CPD's element-wise dropout draws from the global RNG: seed it per (step, rank) too.
        torch.manual_seed(step_seed(cfg.seed, step, dist_info.rank + 1))
        loss = training.step(tuple(batch), step)
        step += 1
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.steps:
            figure = loss.detach().clone()
            if dist_info.enabled:
                torch.distributed.all_reduce(figure)
                figure /= dist_info.world_size
            record = {
                "step": step,
                "loss": figure.item(),
                "lr": training.optimizer.param_groups[0]["lr"],
                "images_per_s": (step - first_step)
                * cfg.global_batch_size
                / (time.perf_counter() - started),
            }
            history.append(record)
            if loss_log is not None:
                log.info("step %d loss %.5f lr %.3g %.0f img/s", *record.values())
                loss_log.append(record)
        if main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _save_run_checkpoint(run_dir, step, training, cfg, inputs)
        if decoder is not None and (step % cfg.preview_every == 0 or step == cfg.steps):
            scheduler_config = dict(training.scheduler.config)
            grid = _preview(
                run_dir, step, training.ema, decoder, cache, scheduler_config, cfg, device
            )
            if loss_log is not None:
                loss_log.add_image("preview", grid, step)
    bar.close()
    return history

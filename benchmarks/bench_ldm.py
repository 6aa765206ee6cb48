"""LDM training throughput and peak memory at the demo and the paper configuration, and the
speed of the UNet's attention path (SDPA) against a plain matmul-softmax attention.

The training step is `synface.ldm.train.LDMTraining.step`, the trainer's own: DDPM noise from
diffusers' scheduler, whole-context dropout, ε-MSE, Adam with the context projection's LR group,
the cosine-restart schedule and the EMA update, with the config's `ldm.train` settings; inputs
are random latents and unit contexts (a synthetic-data mode: no cache needed). On CUDA it runs
under bf16 autocast, on the CPU in fp32 (a few steps at batch 2 for the 216 M-parameter paper
UNet is enough to report).

    python benchmarks/bench_ldm.py [--threads N] [--steps 5] [--demo-batch 64] [--paper-batch 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from synface import runtime
from synface.ldm.train import LDMTrainConfig, LDMTraining
from synface.models import build_model
from synface.models.admis_checkpoint import admis_ddpm_scheduler

CONFIGS = {"demo": "config/config.yaml", "paper": "config/frcsyn.yaml"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(cfg: dict[str, Any], batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    side = cfg["ldm"]["image_size"] // 2 ** (len(cfg["first_stage"]["ddconfig"]["ch_mult"]) - 1)
    latents = torch.randn(batch, cfg["first_stage"]["embed_dim"], side, side, device=device)
    contexts = F.normalize(torch.randn(batch, 512, device=device), dim=1)
    return latents, contexts


def _timed(run_step: Callable[[int], None], steps: int, device: torch.device) -> float:
    """Seconds of ``steps`` calls of ``run_step(step)`` after two untimed warm-up calls; the
    peak memory counter starts with them."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(steps + 2):
        if step == 2:
            _sync(device)
            started = time.perf_counter()
        run_step(step)
    _sync(device)
    return time.perf_counter() - started


def training_rate(
    cfg: dict[str, Any], batch: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Images/s of full training steps after two warm-up steps, and peak memory."""
    settings = LDMTrainConfig.from_settings(
        {"unet": cfg["ldm"]["unet"], **cfg["ldm"]["train"], "global_batch_size": batch}
    )
    training = LDMTraining.build(settings, runtime.Distributed(0, 1, 0, device))
    training.model.train()
    latents, contexts = _inputs(cfg, batch, device)

    def run_step(step: int) -> None:
        noise = torch.randn_like(latents)
        t = torch.randint(settings.num_train_timesteps, (batch,), device=device)
        dropped = torch.rand(batch, device=device) < settings.whole_context_dropout
        training.step((latents, contexts, noise, t, dropped), step)

    elapsed = _timed(run_step, steps, device)
    return {
        "images_per_s": steps * batch / elapsed,
        "peak_memory_mb": _peak_memory_mb(device),
        "parameters_m": sum(p.numel() for p in training.unet.parameters()) / 1e6,
    }


def reference_training_rate(
    cfg: dict[str, Any], batch: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Images/s of IDiff-Face's own step: fp16 AMP with a gradient scaler (fp32 on the CPU),
    eager, plain Adam, the loss read back to the host every step for its logger."""
    unet = build_model("idiff_unet", **cfg["ldm"]["unet"]).to(device).train()
    optimizer = torch.optim.Adam(unet.parameters(), lr=cfg["ldm"]["train"]["lr"])
    on_gpu = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=on_gpu)
    scheduler = admis_ddpm_scheduler()
    latents, contexts = _inputs(cfg, batch, device)

    def run_step(_: int) -> None:
        noise = torch.randn_like(latents)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=on_gpu):
            loss = F.mse_loss(unet(scheduler.add_noise(latents, noise, t), t, contexts), noise)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()

    elapsed = _timed(run_step, steps, device)
    return {"images_per_s": steps * batch / elapsed, "peak_memory_mb": _peak_memory_mb(device)}


@torch.inference_mode()
def attention_ratio(
    cfg: dict[str, Any], batch: int, steps: int, device: torch.device
) -> dict[str, float]:
    """Forward time of the same UNet with SDPA vs matmul-softmax attention."""
    unet = build_model("idiff_unet", **cfg["ldm"]["unet"]).to(device).eval()
    latents, contexts = _inputs(cfg, batch, device)
    t = torch.randint(1000, (batch,), device=device)
    seconds = {}
    for backend in ("matmul", "sdpa"):
        unet.set_attention_backend(backend)
        for step in range(steps + 2):
            if step == 2:
                _sync(device)
                started = time.perf_counter()
            with runtime.autocast(device):
                unet(latents, t, contexts)
        _sync(device)
        seconds[backend] = (time.perf_counter() - started) / steps
    return {
        "sdpa_images_per_s": batch / seconds["sdpa"],
        "matmul_images_per_s": batch / seconds["matmul"],
        "sdpa_over_matmul": seconds["matmul"] / seconds["sdpa"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-ups")
    parser.add_argument("--demo-batch", type=int, default=64)
    parser.add_argument("--paper-batch", type=int, default=2)
    args = parser.parse_args()
    runtime.set_threads(args.threads)
    device = runtime.pick_device()
    figures: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    for name, batch in (("demo", args.demo_batch), ("paper", args.paper_batch)):
        with open(CONFIGS[name]) as file:
            cfg = yaml.safe_load(file)
        figures[name] = {
            "batch": batch,
            **training_rate(cfg, batch, args.steps, device),
            **attention_ratio(cfg, batch, args.steps, device),
        }
        row = figures[name]
        print(
            f"{name:5s} batch {batch:4d}: train {row['images_per_s']:9.1f} img/s, "
            f"peak {row['peak_memory_mb']:8.0f} MB, {row['parameters_m']:.1f} M params; "
            f"forward SDPA {row['sdpa_images_per_s']:9.1f} img/s vs matmul "
            f"{row['matmul_images_per_s']:9.1f} (x{row['sdpa_over_matmul']:.2f})"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

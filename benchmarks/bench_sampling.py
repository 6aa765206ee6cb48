"""Synthesis throughput: synface's synthesize stage against the reference's sampling loop.

Both paths make the same faces (noise of image k of identity i from ``image_noise``, DDIM with
eta 0, the same weights) and write PNGs; model loading is not timed. The reference loop is
ADMIS's ``sample.py`` (generative.md §12.2): one identity per batch, fp32 under
``torch.no_grad``, matmul-softmax attention, decode, bilinear resize, ``save_image`` per face.
synface's ``synthesize_shard`` batches (i, k) jobs across identities, runs under inference mode
with SDPA attention, and under bf16 autocast on CUDA. The pixel comparison at the end checks that
the two compute the same faces (on CUDA, up to bf16 rounding).

    python benchmarks/bench_sampling.py            # the shipped demo weights
    python benchmarks/bench_sampling.py --paper    # a random paper-size UNet + VQ-f4 (128 px)

Counts default small on the CPU and to a realistic load on CUDA; ``--identities``,
``--images-per-identity``, ``--steps`` and ``--batch-size`` override them. ``--paper`` on a CPU
takes minutes: the VQ-f4 decoder alone costs 161 GFLOP per 128 px face.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from common import Row, best_of, report, scratch_dir
from torchvision.io import decode_png, read_file
from torchvision.utils import save_image

from synface import runtime
from synface.ldm.first_stage import FirstStage, FirstStageSpec
from synface.ldm.model import load_ldm
from synface.ldm.sampling import image_noise, make_sampler
from synface.models import build_model
from synface.models.admis_checkpoint import admis_ddpm_scheduler, save_admis_checkpoint
from synface.models.vq_f4 import DECODER_FILE, ENCODER_FILE, VQDecoder, VQEncoder
from synface.synthesis import SynthesisSettings, synthesize_shard

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"demo": ROOT / "config" / "config.yaml", "paper": ROOT / "config" / "frcsyn.yaml"}
DEMO_LDM = ROOT / "demo_weights" / "ldm" / "ema_averaged_model.ckpt"
DEMO_FIRST_STAGE = ROOT / "demo_weights" / "first_stage"
# (identities, images per identity, DDIM steps, batch size) by config and device type. The
# paper CPU batch holds every job, so that no padding (synthesis.MIN_ROWS) inflates its work.
DEFAULT_COUNTS = {
    ("demo", "cpu"): (4, 20, 50, 80),
    ("demo", "cuda"): (20, 50, 50, 1000),
    ("paper", "cpu"): (2, 8, 2, 16),
    ("paper", "cuda"): (10, 50, 50, 250),
}
# FLOPs of the paper architecture (specs/gpu-checks.md): one UNet forward on a 3x32x32 latent,
# one VQ-f4 decode of a 128 px face; MFU is measured against the H200's dense bf16 peak.
PAPER_UNET_FLOPS = 13.8e9
PAPER_DECODE_FLOPS = 161e9
PEAK_BF16_FLOPS = 790e12
SEED = 0


@dataclass(frozen=True)
class Workload:
    checkpoint: Path
    first_stage: Path
    contexts: np.ndarray
    images_per_identity: int
    face_size: int
    steps: int
    batch_size: int


def _first_stage_spec(cfg: dict[str, Any]) -> FirstStageSpec:
    first_stage = cfg["first_stage"]
    return FirstStageSpec(first_stage["ddconfig"], first_stage["embed_dim"], first_stage["n_embed"])


def _paper_weights(cfg: dict[str, Any], spec: FirstStageSpec, folder: Path) -> tuple[Path, Path]:
    """A randomly initialised paper-size LDM and VQ-f4, written in the released formats."""
    unet = build_model("idiff_unet", **cfg["ldm"]["unet"])
    scheduler = admis_ddpm_scheduler()
    checkpoint = folder / "ldm" / "model.ckpt"
    save_admis_checkpoint(checkpoint, unet, scheduler)
    side = cfg["ldm"]["image_size"] // spec.downsampling
    ldm_spec = {
        "unet": cfg["ldm"]["unet"],
        "scheduler": dict(scheduler.config),
        "latent_shape": [spec.embed_dim, side, side],
    }
    checkpoint.with_suffix(".json").write_text(json.dumps(ldm_spec))
    first_stage = folder / "first_stage"
    first_stage.mkdir()
    spec.write(first_stage)
    for module, name in ((VQEncoder, ENCODER_FILE), (VQDecoder, DECODER_FILE)):
        torch.save(
            module(spec.ddconfig, spec.embed_dim, spec.n_embed).state_dict(), first_stage / name
        )
    return checkpoint, first_stage


def _fast_path(work: Workload, out: Path) -> float:
    """Images/s of the synthesize stage itself (its summary times sampling, not loading)."""
    summary = synthesize_shard(
        work.checkpoint,
        work.first_stage,
        work.contexts,
        range(len(work.contexts)),
        work.images_per_identity,
        out,
        work.face_size,
        SynthesisSettings.from_settings(
            {"seed": SEED, "steps": work.steps, "batch_size": work.batch_size}
        ),
        threads=torch.get_num_threads(),
        done_marker=out.parent / f"{out.name}.json",
    )
    return summary["images_per_s"]


def _reference_path(work: Workload, out: Path, device: torch.device) -> float:
    """Images/s of ADMIS's loop: one identity per batch, fp32, no_grad, matmul attention, the
    latents copied to the host every step."""
    unet, ldm_spec = load_ldm(work.checkpoint)
    unet.set_attention_backend("matmul")
    unet.to(device)
    decoder = FirstStage.load(work.first_stage).decoder
    decoder.to(device)
    scheduler = make_sampler(ldm_spec["scheduler"])
    shape = tuple(ldm_spec["latent_shape"])
    k = work.images_per_identity
    _sync(device)
    started = time.perf_counter()
    with torch.no_grad():
        for identity, context in enumerate(work.contexts):
            x = torch.stack([image_noise(SEED, identity, n, shape) for n in range(k)]).to(device)
            contexts = torch.from_numpy(context).to(device).repeat(k, 1)
            scheduler.set_timesteps(work.steps, device=device)
            # ADMIS keeps each step's latents on the host: a host sync per step on CUDA.
            trajectory = []
            for t in scheduler.timesteps:
                x = scheduler.step(unet(x, t, contexts), t, x, eta=0.0).prev_sample
                trajectory.append(x.cpu())
            images = (decoder(x).clamp(-1, 1) + 1) / 2
            if images.shape[-1] != work.face_size:
                images = F.interpolate(images, size=[work.face_size] * 2, mode="bilinear")
            folder = out / f"{identity:05d}"
            folder.mkdir(parents=True)
            for n, image in enumerate(images):
                save_image(image, folder / f"{n:03d}.png")
    _sync(device)
    return len(work.contexts) * k / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pixel_agreement(fast: Path, reference: Path) -> dict[str, float]:
    """Share of equal pixel values and mean |difference| between the two paths' PNGs. The
    reference resizes without antialiasing: compare at the LDM's size (``--face-size``) to see
    the sampling alone."""
    pairs = [(path, reference / path.relative_to(fast)) for path in sorted(fast.glob("*/*.png"))]
    a = torch.stack([decode_png(read_file(str(p))) for p, _ in pairs]).int()
    b = torch.stack([decode_png(read_file(str(p))) for _, p in pairs]).int()
    return {
        "pixels_equal_share": (a == b).float().mean().item(),
        "mean_abs_pixel_diff": (a - b).abs().float().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="random paper-size models")
    parser.add_argument("--identities", type=int)
    parser.add_argument("--images-per-identity", type=int)
    parser.add_argument("--steps", type=int, help="DDIM steps (the paper: 50)")
    parser.add_argument("--batch-size", type=int, help="synthesize_shard's jobs per batch")
    parser.add_argument("--face-size", type=int, help="default: the config's face_size")
    parser.add_argument("--repeats", type=int, help="best of; default 1 on CPU, 2 on CUDA")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    runtime.set_threads(args.threads)
    device = runtime.pick_device()
    name = "paper" if args.paper else "demo"
    cfg = yaml.safe_load(CONFIGS[name].read_text())
    identities, per_identity, steps, batch = DEFAULT_COUNTS[name, device.type]
    identities = args.identities or identities
    per_identity = args.images_per_identity or per_identity
    steps = args.steps or steps
    batch = args.batch_size or batch
    repeats = args.repeats or (2 if device.type == "cuda" else 1)
    load_before = os.getloadavg()[0]

    with scratch_dir() as scratch:
        spec = _first_stage_spec(cfg)
        if args.paper:
            checkpoint, first_stage = _paper_weights(cfg, spec, scratch)
        else:
            checkpoint, first_stage = DEMO_LDM, DEMO_FIRST_STAGE
        rows = np.random.default_rng(SEED).normal(size=(identities, 512)).astype(np.float32)
        work = Workload(
            checkpoint=checkpoint,
            first_stage=first_stage,
            contexts=rows / np.linalg.norm(rows, axis=1, keepdims=True),
            images_per_identity=per_identity,
            face_size=args.face_size or cfg["face_size"],
            steps=steps,
            batch_size=batch,
        )
        runs = count()
        peak_mb: dict[str, float] = {}
        outputs: dict[str, Path] = {}

        def measured(key: str, path: Callable[[Path], float]) -> Callable[[], float]:
            def measure() -> float:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                outputs[key] = scratch / f"{key}{next(runs)}"
                rate = path(outputs[key])
                if device.type == "cuda":
                    peak_mb[key] = torch.cuda.max_memory_allocated(device) / 2**20
                return rate

            return measure

        rates = best_of(
            {
                "reference": measured("reference", lambda out: _reference_path(work, out, device)),
                "synface": measured("synface", lambda out: _fast_path(work, out)),
            },
            repeats,
        )
        agreement = _pixel_agreement(outputs["synface"], outputs["reference"])

    ratio = rates["synface"] / rates["reference"]
    figures: dict[str, Any] = {
        "config": name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_before": round(load_before, 2),
        "identities": identities,
        "images_per_identity": per_identity,
        "steps": steps,
        "batch_size": batch,
        "repeats": repeats,
        "reference_images_per_s": round(rates["reference"], 3),
        "synface_images_per_s": round(rates["synface"], 3),
        "synface_over_reference": round(ratio, 3),
        **{key: round(value, 4) for key, value in agreement.items()},
    }
    if peak_mb:
        figures["peak_memory_mb"] = {key: round(value) for key, value in peak_mb.items()}
    if args.paper and device.type == "cuda":
        flops = PAPER_UNET_FLOPS * steps + PAPER_DECODE_FLOPS
        figures["synface_mfu"] = round(rates["synface"] * flops / PEAK_BF16_FLOPS, 4)
    precision = "bf16" if device.type == "cuda" else "fp32"
    table: list[Row] = [
        ("reference: 1 identity/batch, fp32, no_grad, matmul attn", rates["reference"], 1.0),
        (
            f"synthesize_shard: batch {batch} across ids, inference_mode, SDPA, {precision}",
            rates["synface"],
            ratio,
        ),
    ]
    title = f"DDIM-{steps} synthesis, {name} config, {identities}x{per_identity} faces, {device}"
    report([(title, table)], figures)


if __name__ == "__main__":
    main()

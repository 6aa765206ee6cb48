"""The GPU check: every GPU benchmark in one call, one markdown table for the README.

For synthesis (paper UNet, DDIM-50, 128 px decode -> 112 px), LDM training (paper UNet) and IR-50
training (112 px) it measures synface's path and the reference-style loop side by side on the
same device, in the same run: images/s, MFU, peak memory and the ratio. The reference loops:
ADMIS's sampler (fp32 eager, one identity of 50 per batch, latents copied to the host every
step; ``bench_sampling``), IDiff-Face's training step (fp16 AMP eager, batch 64; ``bench_ldm``)
and TFace's (fp32 eager, batch 64, Pillow loader with one worker; ``bench_train``). Last, the
identity check of the shipped demo weights, sampled the reference way (``ddim_admis``: fp32, one
identity per batch) and synface's way (``ddim``: bf16 on CUDA, all identities in one batch):
the retrieval must agree within a point.

    benchmarks/gpu_check.sh                 # on a GPU: under 8 minutes on one H200
    python benchmarks/gpu_check.py --tiny   # tiny models and counts: runs anywhere in seconds

Models are randomly initialised at the paper's sizes (throughput does not depend on the
weights). The table goes to stdout, all figures as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import bench_ldm
import bench_sampling
import bench_train
import numpy as np
import torch
import yaml
from common import TRAIN_NUISANCE, render_faces, scratch_dir
from torch.profiler import ProfilerActivity

from synface import runtime
from synface.demo_world.render import render_face, sample_identity, sample_nuisance
from synface.ldm.faces import FaceEmbedder, FaceGenerator
from synface.ldm.identity_check import retrieval
from synface.packing import pack_tfrecords
from synface.recognition.data import (
    AugmentConfig,
    DecodeAugmentCollate,
    DeviceDecoded,
    RecordDataset,
)
from synface.settings import from_settings

ROOT = Path(__file__).resolve().parents[1]
DEMO_EMBEDDING = ROOT / "demo_weights" / "embedding" / "backbone.pth"
# Work per item of the paper architectures, measured with torch.utils.flop_counter on the
# reference models (one 3x32x32 UNet forward 13.8 GFLOP, one 128 px VQ-f4 decode 161 GFLOP, one
# IR-50 forward at 112 px 12.6 GFLOP); a training step is counted as 3x its forward.
FLOPS_PER_ITEM = {
    "synthesis": 50 * bench_sampling.PAPER_UNET_FLOPS + bench_sampling.PAPER_DECODE_FLOPS,
    "ldm": 41e9,
    "ir50": 38e9,
}
PEAK_FLOPS = bench_sampling.PEAK_BF16_FLOPS  # one H200, dense bf16


@dataclass(frozen=True)
class Sizes:
    """The counts of one run: ``--tiny`` shrinks every one of them."""

    config: str
    ids: int  # synthesis: synface's identities (50 images each), the reference's a fifth
    per_identity: int
    steps: int  # DDIM steps of synthesis and of the identity check
    synthesis_batch: int
    ldm_batch: int
    ldm_steps: int
    ir_batch: int
    ir_steps: int
    ir_images: int
    reference_batch: int  # the training references' batch (64 in both references)
    check_contexts: int
    check_samples: int
    profile: bool = False  # synface's runs under torch.profiler, top kernels printed


PAPER = Sizes("paper", 20, 50, 50, 500, 256, 20, 256, 30, 4000, 64, 50, 10)
TINY = Sizes("demo", 2, 4, 2, 16, 4, 2, 8, 2, 64, 4, 4, 2)


@dataclass(frozen=True)
class Row:
    """One line of the table: synface and the reference-style loop, images/s and peak MiB."""

    work: str
    synface: float
    reference: float
    synface_mb: float | None
    reference_mb: float | None
    mfu: float | None


def _peak(
    device: torch.device, run: Callable[[], float], profile: str = ""
) -> tuple[float, float | None]:
    """(what ``run`` returns, peak GPU memory in MiB while it ran; None on the CPU). With a
    ``profile`` title, ``run`` goes under torch.profiler and its top kernels are printed."""
    gpu = device.type == "cuda"
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    if profile:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with torch.profiler.profile(activities=activities) as profiler:
            value = run()
        order = "self_cuda_time_total" if gpu else "self_cpu_time_total"
        print(f"\n{profile}: top kernels (the table's figures include the profiler's cost)")
        print(profiler.key_averages().table(sort_by=order, row_limit=12))
    else:
        value = run()
    return value, torch.cuda.max_memory_allocated(device) / 2**20 if gpu else None


def _mfu(device: torch.device, sizes: Sizes, work: str, rate: float) -> float | None:
    """Model FLOPs utilisation; only for the paper models on a GPU (the peak is the H200's)."""
    if device.type != "cuda" or sizes.config != "paper":
        return None
    return rate * FLOPS_PER_ITEM[work] / PEAK_FLOPS


def synthesis_row(sizes: Sizes, cfg: dict[str, Any], device: torch.device, scratch: Path) -> Row:
    """``synthesize_shard`` against ADMIS's sampler, on the same random paper-size weights."""
    spec = bench_sampling._first_stage_spec(cfg)
    checkpoint, first_stage = bench_sampling._paper_weights(cfg, spec, scratch)
    rows = np.random.default_rng(0).normal(size=(sizes.ids, 512)).astype(np.float32)
    work = bench_sampling.Workload(
        checkpoint=checkpoint,
        first_stage=first_stage,
        contexts=rows / np.linalg.norm(rows, axis=1, keepdims=True),
        images_per_identity=sizes.per_identity,
        face_size=cfg["face_size"],
        steps=sizes.steps,
        batch_size=sizes.synthesis_batch,
    )
    reference = replace(work, contexts=work.contexts[: max(1, sizes.ids // 5)])
    warmup = replace(work, contexts=work.contexts[:1], steps=2)
    bench_sampling._fast_path(warmup, scratch / "warmup")  # cuDNN autotuning, first allocations
    fast, fast_mb = _peak(
        device,
        lambda: bench_sampling._fast_path(work, scratch / "fast"),
        "synthesis" if sizes.profile else "",
    )
    ref, ref_mb = _peak(
        device, lambda: bench_sampling._reference_path(reference, scratch / "ref", device)
    )
    title = f"synthesis, DDIM-{sizes.steps}, {cfg['ldm']['image_size']} px -> {cfg['face_size']} px"
    return Row(title, fast, ref, fast_mb, ref_mb, _mfu(device, sizes, "synthesis", fast))


def ldm_row(sizes: Sizes, cfg: dict[str, Any], device: torch.device) -> Row:
    """``LDMTraining.step`` at the per-GPU batch against IDiff-Face's fp16 AMP step at 64."""
    fast, _ = _peak(
        device,
        partial(bench_ldm.training_rate, cfg, sizes.ldm_batch, sizes.ldm_steps, device),
        "LDM training" if sizes.profile else "",
    )
    ref = bench_ldm.reference_training_rate(cfg, sizes.reference_batch, sizes.ldm_steps, device)
    gpu = device.type == "cuda"
    return Row(
        f"LDM training, batch {sizes.ldm_batch} (reference {sizes.reference_batch})",
        fast["images_per_s"],
        ref["images_per_s"],
        fast["peak_memory_mb"] if gpu else None,
        ref["peak_memory_mb"] if gpu else None,
        _mfu(device, sizes, "ldm", fast["images_per_s"]),
    )


def recognition_row(sizes: Sizes, device: torch.device, scratch: Path) -> Row:
    """synface's loader + bf16 step against TFace's: Pillow per image in one worker, fp32."""
    preset = bench_train.load_preset(sizes.config)
    size, workers = preset.image_size, max(1, min(8, (os.cpu_count() or 2) - 1))
    manifest = render_faces(
        scratch / "faces", sizes.ir_images, sizes.ir_images // 10, size, 0, workers
    )
    pack_tfrecords(manifest, scratch / "packed", bench_train.NAME, size, workers=workers)
    records = RecordDataset(scratch / "packed" / f"{bench_train.NAME}.txt", scratch / "packed")
    augment = from_settings(AugmentConfig, {}, "recognition.augment")
    # The trainer's loader: on a GPU, workers read records and the GPU decodes each batch.
    collate = DecodeAugmentCollate(size, augment, device)
    on_gpu = device.type == "cuda"
    plain = bench_train.PillowDataset(records, bench_train.pillow_transform(size, augment))
    rates = {}
    for name, dataset, batch, loader_workers, precision, merge in (
        ("synface", records, sizes.ir_batch, workers, "bf16", list if on_gpu else collate),
        ("reference", plain, sizes.reference_batch, 1, "fp32", None),
    ):
        model, optimizer = bench_train.build_training(preset, records.num_classes, device, 0)
        if on_gpu and name == "synface":  # as recognition.train._build
            model.to(memory_format=torch.channels_last)
        step = bench_train.train_step(model, optimizer, device, precision)
        batches = 2 + sizes.ir_steps
        loader = bench_train.make_loader(dataset, merge, batches, batch, loader_workers, device)
        if merge is list:
            loader = DeviceDecoded(loader, collate)
        profile = "IR training" if sizes.profile and name == "synface" else ""
        run = partial(bench_train.rate, loader, 2, sizes.ir_steps, step, device)
        rates[name] = _peak(device, run, profile)
        del model, optimizer
    records.reader.close()
    (fast, fast_mb), (ref, ref_mb) = rates["synface"], rates["reference"]
    title = (
        f"IR-{preset.depth} training, {size} px, batch {sizes.ir_batch} "
        f"(reference {sizes.reference_batch})"
    )
    return Row(title, fast, ref, fast_mb, ref_mb, _mfu(device, sizes, "ir50", fast))


def _context_faces(count: int, size: int) -> torch.Tensor:
    """uint8 (count, 3, size, size) demo-world faces of ``count`` people unseen in training."""
    faces = []
    for person in range(count):
        identity = sample_identity(np.random.default_rng([7, 0, person]))
        nuisance = sample_nuisance(np.random.default_rng([7, 1, person]), TRAIN_NUISANCE)
        faces.append(torch.from_numpy(render_face(identity, nuisance, size)).permute(2, 0, 1))
    return torch.stack(faces)


def identity_retrieval(sizes: Sizes, device: torch.device) -> dict[str, float]:
    """Top-1 retrieval of the demo weights' samples, sampled the reference way and synface's."""
    generator = FaceGenerator(bench_sampling.DEMO_LDM, bench_sampling.DEMO_FIRST_STAGE, device)
    embedder = FaceEmbedder(DEMO_EMBEDDING, device)
    n, k = sizes.check_contexts, sizes.check_samples
    contexts = embedder(_context_faces(n, embedder.face_size))
    jobs = [(i, j) for i in range(n) for j in range(k)]
    result = {}
    for name, sampler, batch in (("before", "ddim_admis", k), ("after", "ddim", n * k)):
        embeddings = []
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            rows = contexts[[i for i, _ in chunk]]
            images = generator.faces(rows, chunk, 0, steps=sizes.steps, sampler=sampler)
            embeddings.append(embedder(images))
        check = retrieval(torch.cat(embeddings).view(n, k, -1), contexts)
        result[f"retrieval_{name}"] = check.retrieval_top1
    return result


def _versions() -> str:
    packages = ("torch", "torchvision", "diffusers", "numpy")
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in packages)


def _commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or "unknown"


def _figure(value: float | None, form: str) -> str:
    return "–" if value is None else format(value, form)


def markdown(rows: list[Row], check: dict[str, float], device: torch.device, tiny: bool) -> str:
    """The README's table, headed by what it was measured with."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {when} on {name} at commit {_commit()} ({_versions()})"
        + (", tiny models: not the paper's figures" if tiny else "")
        + ". MFU against 790 TFLOP/s dense bf16.",
        "",
        "| work | synface img/s | MFU | peak GiB | reference img/s | reference peak GiB "
        "| synface / reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        gib = [None if mb is None else mb / 1024 for mb in (row.synface_mb, row.reference_mb)]
        mfu = None if row.mfu is None else 100 * row.mfu
        lines.append(
            f"| {row.work} | {row.synface:.1f} | {_figure(mfu, '.1f')}"
            f"{'' if mfu is None else ' %'} | {_figure(gib[0], '.1f')} | {row.reference:.1f} | "
            f"{_figure(gib[1], '.1f')} | {row.synface / row.reference:.2f}x |"
        )
    before, after = 100 * check["retrieval_before"], 100 * check["retrieval_after"]
    lines += [
        "",
        f"Identity check of the demo weights (top-1 retrieval): {before:.1f} % sampled the "
        f"reference way (fp32, one identity per batch), {after:.1f} % synface's way "
        f"(difference {after - before:+.1f} points).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models and counts (any CPU)")
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--profile", action="store_true", help="print synface's top kernels (slows the runs)"
    )
    args = parser.parse_args()
    runtime.set_threads(args.threads)
    device = runtime.pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    sizes = replace(TINY if args.tiny else PAPER, profile=args.profile)
    cfg = yaml.safe_load(bench_sampling.CONFIGS[sizes.config].read_text())
    with scratch_dir() as scratch:
        rows = [
            synthesis_row(sizes, cfg, device, scratch / "synthesis"),
            ldm_row(sizes, cfg, device),
            recognition_row(sizes, device, scratch / "ir"),
        ]
    check = identity_retrieval(sizes, device)
    table = markdown(rows, check, device, args.tiny)
    print(table)
    if args.out:
        figures = {"sizes": asdict(sizes), "rows": [asdict(r) for r in rows], **check}
        args.out.write_text(json.dumps({**figures, "markdown": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Training-input throughput: synface's batched loader against a per-image Pillow loader.

Measures the loaders alone, then IR + ArcFace training steps fed by each, so the ratio shows
what the loader costs end to end, and the same step on one fixed on-device batch as the ceiling
no loader can beat. The plain loader is what ADMIS/TFace run: Pillow decode and torchvision v1
transforms per image in ``__getitem__``, default collate.

    python benchmarks/bench_train.py            # demo: 32 px, narrow IR-18
    python benchmarks/bench_train.py --paper    # 112 px IR-50, a few small steps
    python benchmarks/bench_train.py --paper --batch-size 256 --steps 20 --num-workers 8  # GPU
    python benchmarks/bench_train.py --images 600 --identities 60 --steps 3
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import torch
import yaml
from common import Row, add_common_args, best_of, render_faces, report, scratch_dir
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torchvision import transforms

from synface import runtime
from synface.models import build_model
from synface.models.arcface import ArcFaceHead
from synface.packing import pack_tfrecords
from synface.recognition.data import AugmentConfig, DecodeAugmentCollate, RecordDataset
from synface.recognition.train import RecognitionModel, recognition_train_step
from synface.settings import from_settings

ROOT = Path(__file__).resolve().parents[1]
NAME = "benchTFR"
EMBEDDING_SIZE = 512

Batch = tuple[torch.Tensor, torch.Tensor]


# The config whose recognition backbone and face size each scale times: config/config.yaml's
# narrow IR-18 on 32 px demo faces, config/frcsyn.yaml's TFace IR-50 at 112 px.
CONFIGS = {"demo": ROOT / "config" / "config.yaml", "paper": ROOT / "config" / "frcsyn.yaml"}
# Option defaults by scale: (batch size, warmup, steps, repeats, images, identities). The demo
# batch is config.yaml's; the paper's batch and steps are sized for a 2-core CPU (an IR-50 step
# costs ~38 GFLOP per image): on a GPU raise --batch-size and --steps.
SIZES = {"demo": (128, 2, 10, 3, 3000, 300), "paper": (8, 1, 2, 1, 500, 100)}


@dataclass(frozen=True)
class Preset:
    """Model and sizes of one scale; every size is an option's default."""

    image_size: int
    depth: int
    channels: tuple[int, ...]
    batch_size: int
    warmup: int
    steps: int
    repeats: int
    images: int
    identities: int


def load_preset(scale: str) -> Preset:
    """The scale's backbone as its config file sets it, with the scale's sizes."""
    cfg = yaml.safe_load(CONFIGS[scale].read_text())
    backbone = cfg["recognition"]["backbone"]
    model = (cfg["face_size"], backbone["depth"], tuple(backbone["channels"]))
    return Preset(*model, *SIZES[scale])


class PillowDataset(Dataset):
    """The loader without the fast path: the same record bytes, decoded by Pillow one image at
    a time in ``__getitem__`` and transformed per image, as ADMIS/TFace datasets do."""

    def __init__(self, records: RecordDataset, transform: Callable[[Image.Image], torch.Tensor]):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        jpeg, label, _ = self.records[(i, 0)]
        with Image.open(io.BytesIO(jpeg)) as image:
            return self.transform(image.convert("RGB")), label


def pillow_transform(size: int, augment: AugmentConfig) -> transforms.Compose:
    """ADMIS's torchvision v1 pipeline, with the probabilities synface's collate uses."""
    crop = transforms.RandomResizedCrop(size, scale=augment.crop_scale, ratio=augment.crop_ratio)
    return transforms.Compose(
        [
            transforms.RandomHorizontalFlip(augment.flip_p),
            transforms.RandomApply([crop], p=augment.crop_p),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


def _one_thread(_: int) -> None:
    """Loader workers decode on one thread each, as in training, so they do not oversubscribe."""
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    collate: Callable[[list], Batch] | None,
    batches: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    """A loader yielding exactly ``batches`` shuffled batches, whatever the dataset's size.

    synface's dataset takes ``(index, augmentation seed)`` keys, as its trainer's sampler
    yields them; the plain one takes indices.
    """
    draws = RandomSampler(dataset, replacement=True, num_samples=batches * batch_size)
    sampler = list(draws)
    if isinstance(dataset, RecordDataset):
        sampler = [(i, n) for n, i in enumerate(sampler)]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=_one_thread,
        pin_memory=device.type == "cuda",
    )


def rate(
    batches: Iterable[Batch],
    warmup: int,
    steps: int,
    step: Callable[[Batch], None],
    device: torch.device,
) -> float:
    """Images/s of ``step`` over ``steps`` batches, after ``warmup`` untimed ones (cuDNN tuning,
    worker start-up, first allocations)."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(next(iterator))
    if device.type == "cuda":
        torch.cuda.synchronize()
    started, images = time.perf_counter(), 0
    for _ in range(steps):
        batch = next(iterator)
        step(batch)
        images += len(batch[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - started)


def train_step(
    model: RecognitionModel,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str = "bf16",
) -> Callable[[Batch], None]:
    """One step of synface.recognition.train, its own `recognition_train_step`."""

    def step(batch: Batch) -> None:
        recognition_train_step(model, optimizer, batch[0], batch[1], device, precision)

    return step


def build_training(
    preset: Preset, classes: int, device: torch.device, seed: int
) -> tuple[RecognitionModel, torch.optim.Optimizer]:
    """The preset's IR backbone + ArcFace on ``device`` with the recipe's SGD."""
    torch.manual_seed(seed)
    size = preset.image_size
    backbone = build_model(
        "tface_ir", depth=preset.depth, input_size=size, channels=preset.channels
    )
    model = RecognitionModel(backbone, ArcFaceHead(EMBEDDING_SIZE, classes)).to(device).train()
    # The recipe's optimiser (config/*.yaml recognition.train).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return model, optimizer


def parse_args() -> argparse.Namespace:
    """Options whose defaults follow the preset, so ``--paper --help`` shows the paper sizes."""
    preset_parser = argparse.ArgumentParser(add_help=False)
    preset_parser.add_argument(
        "--paper", action="store_true", help="112 px IR-50 instead of the demo's 32 px IR-18"
    )
    preset = load_preset("paper" if preset_parser.parse_known_args()[0].paper else "demo")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[preset_parser])
    add_common_args(parser, preset.images, preset.identities)
    parser.add_argument("--batch-size", type=int, default=preset.batch_size)
    parser.add_argument("--warmup", type=int, default=preset.warmup, help="untimed batches")
    parser.add_argument("--steps", type=int, default=preset.steps, help="timed training steps")
    parser.add_argument(
        "--loader-batches", type=int, default=20, help="timed batches of the loaders alone"
    )
    parser.add_argument(
        "--repeats", type=int, default=preset.repeats, help="rounds; each figure's best counts"
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.set_defaults(preset=preset)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    preset: Preset = args.preset
    size = preset.image_size
    # As synface.recognition.train: loader workers take their cores out of torch's pool, since
    # oversubscribed pools run many times slower.
    threads = max(1, args.threads - args.num_workers)
    runtime.set_threads(threads)
    device = runtime.pick_device()
    augment = from_settings(AugmentConfig, {}, "recognition.augment")  # the recipe's

    with scratch_dir() as scratch:
        manifest = render_faces(
            scratch / "faces", args.images, args.identities, size, args.seed, args.threads
        )
        pack_tfrecords(manifest, scratch / "packed", NAME, size, workers=args.threads)
        records = RecordDataset(scratch / "packed" / f"{NAME}.txt", scratch / "packed")

        model, optimizer = build_training(preset, records.num_classes, device, args.seed)
        step = train_step(model, optimizer, device)
        fixed = (
            torch.rand(args.batch_size, 3, size, size, device=device) * 2 - 1,
            torch.randint(records.num_classes, (args.batch_size,), device=device),
        )

        def plain(timed: int) -> DataLoader:
            dataset = PillowDataset(records, pillow_transform(size, augment))
            batches = args.warmup + timed
            return make_loader(dataset, None, batches, args.batch_size, args.num_workers, device)

        def synface(timed: int) -> DataLoader:
            collate = DecodeAugmentCollate(size, augment)
            batches = args.warmup + timed
            return make_loader(records, collate, batches, args.batch_size, args.num_workers, device)

        def consume(batch: Batch) -> None:
            """The loaders' own step: nothing, so only producing the batches is timed."""

        loads, steps, warmup = args.loader_batches, args.steps, args.warmup
        rates = best_of(
            {
                "load_plain": lambda: rate(plain(loads), warmup, loads, consume, device),
                "load_synface": lambda: rate(synface(loads), warmup, loads, consume, device),
                "ceiling": lambda: rate(repeat(fixed), warmup, steps, step, device),
                "train_plain": lambda: rate(plain(steps), warmup, steps, step, device),
                "train_synface": lambda: rate(synface(steps), warmup, steps, step, device),
            },
            args.repeats,
        )
        records.reader.close()

    print_figures(args, threads, device, records.num_classes, rates)


def print_figures(
    args: argparse.Namespace,
    threads: int,
    device: torch.device,
    classes: int,
    rates: dict[str, float],
) -> None:
    """The loader table, the training table (both against the plain loader) and the JSON line."""
    preset: Preset = args.preset
    precision = "bf16" if device.type == "cuda" else "fp32"
    model_name = f"IR-{preset.depth} {list(preset.channels)} at {preset.image_size} px"
    setting = (
        f"batch {args.batch_size}, {args.num_workers} loader workers, {threads} torch threads, "
        f"{device.type} {precision}, best of {args.repeats}"
    )
    load_plain, train_plain = rates["load_plain"], rates["train_plain"]
    loader_rows: list[Row] = [
        ("plain Pillow loader", load_plain, 1.0),
        ("synface loader", rates["load_synface"], rates["load_synface"] / load_plain),
    ]
    train_rows: list[Row] = [
        ("plain Pillow loader", train_plain, 1.0),
        ("synface loader", rates["train_synface"], rates["train_synface"] / train_plain),
        ("fixed batch (ceiling)", rates["ceiling"], rates["ceiling"] / train_plain),
    ]
    figures: dict[str, object] = {
        "bench": "train",
        "model": model_name,
        "images": args.images,
        "classes": classes,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "threads": args.threads,
        "torch_threads": threads,
        "cpus": os.cpu_count(),
        "device": device.type,
        "precision": precision,
        "warmup": args.warmup,
        "steps": args.steps,
        "loader_batches": args.loader_batches,
        "repeats": args.repeats,
        **{f"{name}_images_per_s": round(value, 1) for name, value in rates.items()},
        "loader_ratio": round(rates["load_synface"] / load_plain, 2),
        "train_ratio": round(rates["train_synface"] / train_plain, 2),
        "synface_share_of_ceiling": round(rates["train_synface"] / rates["ceiling"], 2),
    }
    if device.type == "cuda":
        figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report(
        [
            (f"data loader ({setting}, {args.loader_batches} batches)", loader_rows),
            (f"training, {model_name} + ArcFace ({setting}, {args.steps} steps)", train_rows),
        ],
        figures,
    )


if __name__ == "__main__":
    main()

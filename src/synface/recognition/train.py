"""IR + ArcFace recognition training with TFace's optimiser, step LR and checkpoint names.

A function with a loop, not a class with hooks; the step itself,
`recognition_train_step`, is shared with ``benchmarks/bench_train.py``. It runs alone or under
``torchrun --nproc-per-node N``; the global batch is fixed by config and split over the
processes, so the recipe (and the data order) does not change with the GPU count.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from synface import __version__, checkpoint, runtime
from synface.io.atomic import write_json
from synface.ldm.data import step_seed
from synface.models import build_model
from synface.models.arcface import ArcFaceHead, ArcFaceOutput
from synface.progress import Progress, progress
from synface.recognition.data import (
    AugmentConfig,
    DecodeAugmentCollate,
    DeviceDecoded,
    GlobalBatchSampler,
    RecordDataset,
)
from synface.recognition.switches import augment_record
from synface.settings import SettingsError, from_settings, schema_defaults

log = logging.getLogger(__name__)

# TFace checkpoint names. The head is trained data-parallel here, so its
# whole classifier is one split, the file a one-process TFace run would read.
BACKBONE_FILE = "Backbone_Epoch_{n}_checkpoint.pth"
HEAD_FILE = "HEAD_Epoch_{n}_Split_0_checkpoint.pth"
META_FILE = "META_Epoch_{n}_checkpoint.pth"


@dataclass(frozen=True)
class HeadConfig:
    """The ArcFace head (config ``recognition.head``)."""

    scale: float
    margin: float


@dataclass(frozen=True)
class RecipeConfig:
    """The optimisation recipe (config ``recognition.train``); the schema's defaults are
    ADMIS's."""

    global_batch_size: int
    epochs: int
    lrs: list[float]
    stages: list[int]
    momentum: float
    weight_decay: float
    warmup_steps: int
    precision: str
    seed: int
    num_workers: int
    keep_checkpoints: int
    log_every: int

    def __post_init__(self) -> None:
        if len(self.lrs) != len(self.stages) + 1:
            raise ValueError(
                f"recognition.train.lrs has {len(self.lrs)} values but stages has "
                f"{len(self.stages)}: give one more learning rate than stage boundaries"
            )


# Settings of recognition.train that do not change the weights a run ends with: how long (a
# longer run continues a shorter one: the step LR depends on the epoch alone), how often to
# log, how many checkpoints to keep, loader workers (augmentation is seeded per sample).
RESULT_NEUTRAL = {"epochs", "num_workers", "keep_checkpoints", "log_every"}
SECTIONS = {"head": HeadConfig, "train": RecipeConfig, "augment": AugmentConfig}


@dataclass(frozen=True)
class RecognitionTrainConfig:
    """One recognition run: the config's ``recognition`` sections plus the face size."""

    image_size: int
    backbone: dict[str, Any]
    head: HeadConfig
    train: RecipeConfig
    augment: AugmentConfig

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> RecognitionTrainConfig:
        """Build from the rule's params: ``image_size`` and the config's ``recognition``
        sections ``backbone``, ``head``, ``train`` and ``augment`` (config/README.md); what a
        section leaves out comes from the schema."""
        known = ["image_size", "backbone", *SECTIONS]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise SettingsError(
                f"unknown recognition setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        if "image_size" not in settings:
            raise SettingsError(
                "recognition setting image_size missing and without a schema default: the face "
                "size in pixels (config face_size)"
            )
        sections = {
            name: from_settings(kind, settings.get(name, {}), f"recognition.{name}")
            for name, kind in SECTIONS.items()
        }
        backbone = {**schema_defaults("recognition.backbone"), **settings.get("backbone", {})}
        return cls(image_size=settings["image_size"], backbone=backbone, **sections)

    def model_args(self) -> dict[str, Any]:
        return {**self.backbone, "input_size": self.image_size}

    def fingerprint(self, data: str, classes: int) -> dict[str, str]:
        """The run's inputs (see `checkpoint.fingerprint`), settings by dotted key."""
        sections = {name: asdict(getattr(self, name)) for name in SECTIONS}
        sections["augment"] = augment_record(sections["augment"])
        settings = {
            f"{name}.{key}": value
            for name, section in sections.items()
            for key, value in section.items()
            if not (name == "train" and key in RESULT_NEUTRAL)
        }
        architecture = {"backbone": self.model_args(), "classes": classes}
        return checkpoint.fingerprint(data, settings, architecture)


def learning_rate(recipe: RecipeConfig, epoch: int, global_step: int) -> float:
    """TFace's schedule: a step LR by 0-based epoch, overridden by a linear warm-up."""
    if recipe.warmup_steps > 0 and global_step <= recipe.warmup_steps:
        return global_step * recipe.lrs[0] / recipe.warmup_steps
    return recipe.lrs[bisect.bisect_right(recipe.stages, epoch)]


class RecognitionModel(nn.Module):
    """Backbone and margin head as one module, so one DDP wrapper syncs both."""

    def __init__(self, backbone: nn.Module, head: ArcFaceHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> ArcFaceOutput:
        return self.head(self.backbone(images), labels)


def recognition_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    precision: str,
) -> tuple[torch.Tensor, ArcFaceOutput]:
    """One SGD step on a batch: forward under ``precision`` (``runtime.autocast``; the head
    computes in fp32), cross-entropy of the margined logits. Returns the loss and the head's
    output."""
    # NHWC on a GPU, the layout of its convolution kernels (``_build`` converts the model).
    layout = torch.channels_last if device.type == "cuda" else torch.preserve_format
    images = images.to(device, non_blocking=True, memory_format=layout)
    labels = labels.to(device, non_blocking=True)
    with runtime.autocast(device, precision):
        output = model(images, labels)
    loss = F.cross_entropy(output.logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, output


@dataclass
class _Run:
    """What the epochs of one run share."""

    cfg: RecognitionTrainConfig
    model: RecognitionModel
    trained: nn.Module  # the model, DDP-wrapped in a distributed run
    optimizer: torch.optim.Optimizer
    dist_info: runtime.Distributed
    history: list[dict[str, float]] = field(default_factory=list)


def _save_checkpoint(
    run: _Run, run_dir: Path, epoch: int, step: int, inputs: dict[str, str]
) -> None:
    model, cfg = run.model, run.cfg
    checkpoint.atomic_save(model.backbone.state_dict(), run_dir / BACKBONE_FILE.format(n=epoch))
    checkpoint.atomic_save({"TFR": model.head.state_dict()}, run_dir / HEAD_FILE.format(n=epoch))
    meta = {
        "EPOCH": epoch,
        "BACKBONE_OPT": run.optimizer.state_dict(),
        "GLOBAL_STEP": step,
        "MODEL_ARGS": json.dumps(cfg.model_args(), sort_keys=True),
        "CONFIG": json.dumps(asdict(cfg), sort_keys=True),
        "VERSION": __version__,
        checkpoint.FINGERPRINT_KEY: inputs,
    }
    # META last: a checkpoint counts once its META is there.
    checkpoint.atomic_save(meta, run_dir / META_FILE.format(n=epoch))
    files = [META_FILE, BACKBONE_FILE, HEAD_FILE]
    checkpoint.prune_numbered(run_dir, files, cfg.train.keep_checkpoints)


def _resume(run: _Run, run_dir: Path, inputs: dict[str, str]) -> tuple[int, int]:
    """Load the newest checkpoint made from ``inputs``; returns (epochs done, global step)."""
    files = [META_FILE, BACKBONE_FILE, HEAD_FILE]
    resumed = checkpoint.resume_state(run_dir, files, inputs, run.cfg.train.epochs, run.dist_info)
    if resumed is None:
        return 0, 0
    epoch, (meta, backbone, head) = resumed
    run.model.backbone.load_state_dict(backbone)
    run.model.head.load_state_dict(head["TFR"])
    # The model is on its device already: the optimiser casts its state to the parameters'.
    run.optimizer.load_state_dict(meta["BACKBONE_OPT"])
    log.info("resumed %s at epoch %d, step %d", run_dir, epoch, meta["GLOBAL_STEP"])
    return epoch, int(meta["GLOBAL_STEP"])


def _limit_worker_threads(_: int) -> None:
    torch.set_num_threads(1)


def _loader(
    dataset: RecordDataset, cfg: RecognitionTrainConfig, dist_info: runtime.Distributed
) -> DataLoader | DeviceDecoded:
    """Workers decode and augment on the CPU; on a GPU they only read, and the GPU decodes."""
    on_gpu = dist_info.device.type == "cuda"
    collate = DecodeAugmentCollate(cfg.image_size, cfg.augment, dist_info.device)
    sampler = GlobalBatchSampler(
        len(dataset),
        cfg.train.global_batch_size,
        dist_info.rank,
        dist_info.world_size,
        cfg.train.seed,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=list if on_gpu else collate,
        num_workers=cfg.train.num_workers,
        worker_init_fn=_limit_worker_threads,
        persistent_workers=cfg.train.num_workers > 0,
    )
    return DeviceDecoded(loader, collate) if on_gpu else loader


def _build(
    cfg: RecognitionTrainConfig, classes: int, dist_info: runtime.Distributed
) -> tuple[RecognitionModel, nn.Module, torch.optim.Optimizer]:
    """The model on its device, its (maybe DDP-wrapped) training view, and SGD."""
    torch.manual_seed(cfg.train.seed)
    embedding = cfg.backbone.get("embedding_size", 512)
    model = RecognitionModel(
        build_model("tface_ir", **cfg.model_args()),
        ArcFaceHead(embedding, classes, cfg.head.scale, cfg.head.margin),
    ).to(dist_info.device)
    # Weight decay on every parameter, BN and PReLU included, as TFace really trains IR.
    recipe = cfg.train
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lrs[0],
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
    )
    if dist_info.device.type == "cuda":
        # Fixed input shapes: cuDNN's autotuner picks each convolution's fastest kernel once.
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    trained: nn.Module = model
    if dist_info.enabled:
        on_gpu = dist_info.device.type == "cuda"
        trained = DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if on_gpu else None
        )
    return model, trained, optimizer


def train_recognition(
    index_path: Path,
    data_root: Path,
    backbone_out: Path,
    run_dir: Path,
    cfg: RecognitionTrainConfig,
    threads: int = 1,
) -> list[dict[str, float]]:
    """Train until ``cfg.train.epochs``, resuming from ``run_dir`` when it holds a run of the
    same inputs (else it is set aside); write the final backbone.

    Writes ``backbone_out`` (a plain TFace-style state dict) and ``backbone_out`` with suffix
    ``.json`` (the ``build_model`` arguments that rebuild it). Returns the logged history.
    """
    dist_info = runtime.init_distributed()
    per_process = max(1, threads // dist_info.world_size)
    runtime.set_threads(max(1, per_process - cfg.train.num_workers))
    run_dir = Path(run_dir)
    dataset = RecordDataset(index_path, data_root)
    loader = _loader(dataset, cfg, dist_info)
    model, trained, optimizer = _build(cfg, dataset.num_classes, dist_info)
    inputs: dict[str, str] = {}
    if dist_info.is_main:
        data = checkpoint.content_digest([Path(index_path), *dataset.shard_files()])
        inputs = cfg.fingerprint(data, dataset.num_classes)
    run = _Run(cfg, model, trained, optimizer, dist_info)
    start_epoch, global_step = _resume(run, run_dir, inputs)
    loss_log = checkpoint.LossLog(run_dir, global_step) if dist_info.is_main else None
    if dist_info.is_main:
        log.info(
            "training %s on %d images, %d classes: global batch %d = %d x %d processes, "
            "%d steps/epoch, epochs %d..%d, %.1fM parameters",
            cfg.model_args(),
            len(dataset),
            dataset.num_classes,
            cfg.train.global_batch_size,
            loader.batch_sampler.local_batch,
            dist_info.world_size,
            len(loader),
            start_epoch + 1,
            cfg.train.epochs,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
    bar = progress(
        cfg.train.epochs * len(loader),
        "train-recognition",
        cfg.train.log_every,
        unit="steps",
        initial=global_step,
        disable=not dist_info.is_main,
    )
    for epoch in range(start_epoch, cfg.train.epochs):
        global_step = _train_epoch(run, loader, epoch, global_step, loss_log, bar)
        if dist_info.is_main:
            _save_checkpoint(run, run_dir, epoch + 1, global_step, inputs)
        if dist_info.enabled:
            dist.barrier()
    if dist_info.is_main:
        checkpoint.atomic_save(model.backbone.cpu().state_dict(), Path(backbone_out))
        spec = {"name": "tface_ir", "args": cfg.model_args(), "epochs": cfg.train.epochs}
        write_json(Path(backbone_out).with_suffix(".json"), spec)
    bar.close()
    runtime.shutdown_distributed()
    return run.history


def _train_epoch(
    run: _Run,
    loader: DataLoader | DeviceDecoded,
    epoch: int,
    global_step: int,
    loss_log: checkpoint.LossLog | None,
    bar: Progress,
) -> int:
    """One epoch of steps; returns the global step reached."""
    recipe, dist_info = run.cfg.train, run.dist_info
    loader.batch_sampler.set_epoch(epoch)
    run.trained.train()
    started, seen = time.perf_counter(), 0
    for images, labels in loader:
        lr = learning_rate(recipe, epoch, global_step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        # Dropout draws from the global RNG (CUDA's on a GPU): seed it per (step, rank), so a
        # resumed run continues exactly as an uninterrupted one.
        torch.manual_seed(step_seed(recipe.seed, global_step, dist_info.rank + 1))
        loss, output = recognition_train_step(
            run.trained, run.optimizer, images, labels, dist_info.device, recipe.precision
        )
        global_step += 1
        bar.update()
        seen += images.shape[0]
        if global_step % recipe.log_every == 0 or seen == images.shape[0] * len(loader):
            record = _log_step(loss, output, labels, lr, epoch, global_step, dist_info)
            record["images_per_s"] = seen * dist_info.world_size / (time.perf_counter() - started)
            run.history.append(record)
            if loss_log is not None:
                loss_log.append(record)
    return global_step


def _log_step(
    loss: torch.Tensor,
    output: ArcFaceOutput,
    labels: torch.Tensor,
    lr: float,
    epoch: int,
    step: int,
    dist_info: runtime.Distributed,
) -> dict[str, float]:
    """Loss and top-1 of the un-margined logits, averaged over all processes."""
    labels = labels.to(output.cosine_logits.device)
    accuracy = (output.cosine_logits.argmax(dim=1) == labels).float().mean()
    figures = torch.stack([loss.detach().float(), accuracy])
    if dist_info.enabled:
        dist.all_reduce(figures)
        figures /= dist_info.world_size
    record = {
        "epoch": epoch + 1,
        "step": step,
        "loss": figures[0].item(),
        "top1": figures[1].item(),
        "lr": lr,
    }
    if dist_info.is_main:
        log.info(
            "epoch %d step %d loss %.4f top1 %.3f lr %.3g",
            epoch + 1,
            step,
            record["loss"],
            record["top1"],
            lr,
        )
    return record

"""IR + ArcFace recognition training with TFace's optimiser, step LR and checkpoint names.

One function, one loop (STYLE.md "For synface" 11). It runs alone or under
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
from synface.models import build_model
from synface.models.arcface import ArcFaceHead, ArcFaceOutput
from synface.recognition.data import (
    AugmentConfig,
    DecodeAugmentCollate,
    GlobalBatchSampler,
    RecordDataset,
)

log = logging.getLogger(__name__)

# TFace checkpoint names (recognition.md §9). The head is trained data-parallel here, so its
# whole classifier is one split, the file a one-process TFace run would read.
BACKBONE_FILE = "Backbone_Epoch_{n}_checkpoint.pth"
HEAD_FILE = "HEAD_Epoch_{n}_Split_0_checkpoint.pth"
META_FILE = "META_Epoch_{n}_checkpoint.pth"


@dataclass(frozen=True)
class RecognitionTrainConfig:
    """Hyper-parameters of one recognition run; defaults are the ADMIS recipe (§7.4)."""

    image_size: int = 112
    backbone: dict[str, Any] = field(default_factory=lambda: {"depth": 50})
    scale: float = 64.0
    margin: float = 0.5
    global_batch_size: int = 512
    epochs: int = 40
    lrs: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001)
    stages: tuple[int, ...] = (22, 28, 32)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    seed: int = 1336
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0
    keep_checkpoints: int = 2
    log_every: int = 50

    def __post_init__(self) -> None:
        if len(self.lrs) != len(self.stages) + 1:
            raise ValueError(
                f"recognition.train.lrs has {len(self.lrs)} values but stages has "
                f"{len(self.stages)}: give one more learning rate than stage boundaries"
            )

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> RecognitionTrainConfig:
        """Build from the rule's params: ``image_size`` and the config's ``recognition``
        sections ``backbone``, ``head``, ``train`` and ``augment`` (config/README.md)."""
        train = dict(settings.get("train", {}))
        for key in ("lrs", "stages"):
            if key in train:
                train[key] = tuple(train[key])
        augment = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in settings.get("augment", {}).items()
        }
        head = settings.get("head", {})
        return cls(
            image_size=settings["image_size"],
            backbone=dict(settings.get("backbone", {})),
            scale=head.get("scale", cls.scale),
            margin=head.get("margin", cls.margin),
            augment=AugmentConfig(**augment),
            **train,
        )

    def model_args(self) -> dict[str, Any]:
        return {**self.backbone, "input_size": self.image_size}


def learning_rate(cfg: RecognitionTrainConfig, epoch: int, global_step: int) -> float:
    """TFace's schedule: a step LR by 0-based epoch, overridden by a linear warm-up (§7.2)."""
    if cfg.warmup_steps > 0 and global_step <= cfg.warmup_steps:
        return global_step * cfg.lrs[0] / cfg.warmup_steps
    return cfg.lrs[bisect.bisect_right(cfg.stages, epoch)]


class RecognitionModel(nn.Module):
    """Backbone and margin head as one module, so one DDP wrapper syncs both."""

    def __init__(self, backbone: nn.Module, head: ArcFaceHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> ArcFaceOutput:
        return self.head(self.backbone(images), labels)


def _newest_checkpoint(run_dir: Path) -> int | None:
    """The last epoch whose three files are all there (META is written last)."""
    metas = checkpoint.numbered_files(run_dir, META_FILE)
    complete = [
        n
        for n in metas
        if (run_dir / BACKBONE_FILE.format(n=n)).exists()
        and (run_dir / HEAD_FILE.format(n=n)).exists()
    ]
    return max(complete, default=None)


def _save_checkpoint(
    run_dir: Path,
    epoch: int,
    model: RecognitionModel,
    optimizer: torch.optim.Optimizer,
    global_step: int,
    cfg: RecognitionTrainConfig,
) -> None:
    checkpoint.atomic_save(model.backbone.state_dict(), run_dir / BACKBONE_FILE.format(n=epoch))
    checkpoint.atomic_save({"TFR": model.head.state_dict()}, run_dir / HEAD_FILE.format(n=epoch))
    meta = {
        "EPOCH": epoch,
        "BACKBONE_OPT": optimizer.state_dict(),
        "GLOBAL_STEP": global_step,
        "RNG": torch.get_rng_state(),
        "MODEL_ARGS": json.dumps(cfg.model_args(), sort_keys=True),
        "CONFIG": json.dumps(asdict(cfg), sort_keys=True),
        "VERSION": __version__,
    }
    checkpoint.atomic_save(meta, run_dir / META_FILE.format(n=epoch))
    checkpoint.prune_numbered(run_dir, [META_FILE, BACKBONE_FILE, HEAD_FILE], cfg.keep_checkpoints)


def _resume(
    run_dir: Path, model: RecognitionModel, optimizer: torch.optim.Optimizer, cfg
) -> tuple[int, int]:
    """Load the newest checkpoint; returns (epochs done, global step)."""
    epoch = _newest_checkpoint(run_dir)
    if epoch is None:
        return 0, 0
    meta = checkpoint.load(run_dir / META_FILE.format(n=epoch))
    saved_args = json.loads(meta["MODEL_ARGS"])
    if saved_args != cfg.model_args():
        raise ValueError(
            f"{run_dir} holds a run of a different model ({saved_args}, now "
            f"{cfg.model_args()}): delete the folder to start over, or restore the config"
        )
    model.backbone.load_state_dict(checkpoint.load(run_dir / BACKBONE_FILE.format(n=epoch)))
    model.head.load_state_dict(checkpoint.load(run_dir / HEAD_FILE.format(n=epoch))["TFR"])
    optimizer.load_state_dict(meta["BACKBONE_OPT"])
    torch.set_rng_state(meta["RNG"])
    log.info("resumed %s at epoch %d, step %d", run_dir, epoch, meta["GLOBAL_STEP"])
    return epoch, int(meta["GLOBAL_STEP"])


def _limit_worker_threads(_: int) -> None:
    torch.set_num_threads(1)


def train_recognition(
    index_path: Path,
    data_root: Path,
    backbone_out: Path,
    run_dir: Path,
    cfg: RecognitionTrainConfig,
    threads: int = 1,
) -> list[dict[str, float]]:
    """Train until ``cfg.epochs``, resuming from ``run_dir``; write the final backbone.

    Writes ``backbone_out`` (a plain TFace-style state dict) and ``backbone_out`` with suffix
    ``.json`` (the ``build_model`` arguments that rebuild it). Returns the logged history.
    """
    dist_info = runtime.init_distributed()
    per_process = max(1, threads // dist_info.world_size)
    runtime.set_threads(max(1, per_process - cfg.num_workers))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    dataset = RecordDataset(index_path, data_root)
    sampler = GlobalBatchSampler(
        len(dataset), cfg.global_batch_size, dist_info.rank, dist_info.world_size, cfg.seed
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=DecodeAugmentCollate(cfg.image_size, cfg.augment),
        num_workers=cfg.num_workers,
        worker_init_fn=_limit_worker_threads,
        pin_memory=dist_info.device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    model = RecognitionModel(
        build_model("tface_ir", **cfg.model_args()),
        ArcFaceHead(
            cfg.backbone.get("embedding_size", 512), dataset.num_classes, cfg.scale, cfg.margin
        ),
    )
    # Weight decay on every parameter, BN and PReLU included, as TFace really trains IR (§4).
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lrs[0], momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    start_epoch, global_step = _resume(run_dir, model, optimizer, cfg)
    model.to(dist_info.device)
    # Optimiser state was loaded on the CPU; move it where the parameters now are.
    optimizer.load_state_dict(optimizer.state_dict())
    trained: nn.Module = model
    if dist_info.enabled:
        on_gpu = dist_info.device.type == "cuda"
        trained = DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if on_gpu else None
        )
    if dist_info.is_main:
        log.info(
            "training %s on %d images, %d classes: global batch %d = %d x %d processes, "
            "%d steps/epoch, epochs %d..%d, %.1fM parameters",
            cfg.model_args(),
            len(dataset),
            dataset.num_classes,
            cfg.global_batch_size,
            sampler.local_batch,
            dist_info.world_size,
            len(sampler),
            start_epoch + 1,
            cfg.epochs,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
    history: list[dict[str, float]] = []
    loss_log = run_dir / "loss.tsv"
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        trained.train()
        started, seen = time.perf_counter(), 0
        for images, labels in loader:
            lr = learning_rate(cfg, epoch, global_step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(dist_info.device, non_blocking=True)
            labels = labels.to(dist_info.device, non_blocking=True)
            with runtime.autocast(dist_info.device):
                output = trained(images, labels)
            loss = F.cross_entropy(output.logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step += 1
            seen += images.shape[0]
            if global_step % cfg.log_every == 0 or seen == images.shape[0] * len(sampler):
                record = _log_step(loss, output, labels, lr, epoch, global_step, dist_info)
                record["images_per_s"] = (
                    seen * dist_info.world_size / (time.perf_counter() - started)
                )
                history.append(record)
                if dist_info.is_main:
                    with loss_log.open("a", encoding="utf-8") as out:
                        out.write("\t".join(f"{k}={v:.6g}" for k, v in record.items()) + "\n")
        if dist_info.is_main:
            _save_checkpoint(run_dir, epoch + 1, model, optimizer, global_step, cfg)
        if dist_info.enabled:
            dist.barrier()
    if dist_info.is_main:
        checkpoint.atomic_save(model.backbone.cpu().state_dict(), Path(backbone_out))
        spec = {"name": "tface_ir", "args": cfg.model_args(), "epochs": cfg.epochs}
        Path(backbone_out).with_suffix(".json").write_text(json.dumps(spec, indent=2) + "\n")
    runtime.shutdown_distributed()
    return history


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

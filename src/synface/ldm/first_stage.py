"""The VQ-f4 first stage as the LDM stages use it, and its training for the demo world.

Real runs load the released CompVis VQ-f4 (specs/generative.md §2) and never train it. The demo
world has no released autoencoder, so `train_autoencoder` fits a narrow one to the demo faces with
the VQ-VAE objective: the decode path quantises (§2.1), so the codebook must be learned too.
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

from synface import __version__, checkpoint, runtime
from synface.ldm.data import ImageBank, step_generator
from synface.models.vq_f4 import DECODER_FILE, ENCODER_FILE, VQDecoder, VQEncoder, load_first_stage

log = logging.getLogger(__name__)

RUN_CHECKPOINT = "autoencoder_{n}.pt"


@dataclass(frozen=True)
class FirstStageSpec:
    """What builds both halves: the reference `first_stage_config.yaml` values (§2.1)."""

    ddconfig: dict[str, Any]
    embed_dim: int = 3
    n_embed: int = 8192

    def load(self, folder: Path) -> tuple[VQEncoder, VQDecoder]:
        """Both halves from ``folder``'s released-format files, frozen, on the CPU."""
        folder = Path(folder)
        return load_first_stage(
            folder / ENCODER_FILE,
            folder / DECODER_FILE,
            self.ddconfig,
            self.embed_dim,
            self.n_embed,
        )

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    """Demo-world first-stage training; the loss is the VQ-VAE objective with beta = 0.25
    (the reference quantiser's `beta`, §2.2)."""

    spec: FirstStageSpec
    image_size: int = 32
    batch_size: int = 64
    steps: int = 3000
    lr: float = 2e-4
    beta: float = 0.25
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 500
    keep_checkpoints: int = 2

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> AutoencoderTrainConfig:
        spec = FirstStageSpec(**settings["spec"])
        return cls(spec=spec, **{k: v for k, v in settings.items() if k != "spec"})


def _vq_loss(
    encoder: VQEncoder, decoder: VQDecoder, images: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, reconstruction MSE) of one batch."""
    z = encoder(images)
    quantized, indices = decoder.quantize(z)
    codes = (
        decoder.quantize.embedding(indices)
        .view(z.shape[0], z.shape[2], z.shape[3], z.shape[1])
        .permute(0, 3, 1, 2)
    )
    reconstruction = decoder.decoder(decoder.post_quant_conv(quantized))
    mse = F.mse_loss(reconstruction, images)
    codebook = F.mse_loss(codes, z.detach())
    commitment = F.mse_loss(z, codes.detach())
    return mse + codebook + beta * commitment, mse


def train_autoencoder(
    manifest: Path, out_dir: Path, run_dir: Path, cfg: AutoencoderTrainConfig, threads: int = 1
) -> list[dict[str, float]]:
    """Train until ``cfg.steps``, resuming from ``run_dir``; write the two released-format files."""
    runtime.set_threads(threads)
    device = runtime.pick_device()
    bank = ImageBank.from_manifest(manifest, cfg.image_size, threads, Path(out_dir))
    torch.manual_seed(cfg.seed)
    encoder = VQEncoder(cfg.spec.ddconfig, cfg.spec.embed_dim, cfg.spec.n_embed)
    decoder = VQDecoder(cfg.spec.ddconfig, cfg.spec.embed_dim, cfg.spec.n_embed)
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    run_dir = Path(run_dir)
    step = 0
    newest = checkpoint.newest_numbered(run_dir, RUN_CHECKPOINT)
    if newest is not None:
        state = checkpoint.load(newest[1])
        if state["spec"] != json.dumps(asdict(cfg.spec), sort_keys=True):
            raise ValueError(
                f"{newest[1]} was trained with another first-stage spec: delete {run_dir} to "
                "start over, or restore the config"
            )
        encoder.load_state_dict(state["encoder"])
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        log.info("resumed %s at step %d", newest[1], step)
    encoder.to(device).train()
    decoder.to(device).train()
    optimizer.load_state_dict(optimizer.state_dict())
    history: list[dict[str, float]] = []
    started, first_step = time.perf_counter(), step
    while step < cfg.steps:
        generator = step_generator(cfg.seed, step)
        images = bank.batch(cfg.batch_size, generator, flip=True).to(device)
        with runtime.autocast(device):
            loss, mse = _vq_loss(encoder, decoder, images, cfg.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {
                "step": step,
                "loss": loss.item(),
                "mse": mse.item(),
                "images_per_s": (step - first_step)
                * cfg.batch_size
                / (time.perf_counter() - started),
            }
            history.append(record)
            log.info("step %d loss %.5f mse %.5f", step, record["loss"], record["mse"])
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            state = {
                "step": step,
                "encoder": encoder.state_dict(),
                "decoder": decoder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "spec": json.dumps(asdict(cfg.spec), sort_keys=True),
                "version": __version__,
            }
            checkpoint.atomic_save(state, run_dir / RUN_CHECKPOINT.format(n=step))
            checkpoint.prune_numbered(run_dir, [RUN_CHECKPOINT], cfg.keep_checkpoints)
    out_dir = Path(out_dir)
    checkpoint.atomic_save(encoder.cpu().state_dict(), out_dir / ENCODER_FILE)
    checkpoint.atomic_save(decoder.cpu().state_dict(), out_dir / DECODER_FILE)
    return history

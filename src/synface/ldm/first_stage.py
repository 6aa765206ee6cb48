"""The VQ-f4 first stage as the LDM stages use it, and its training for the demo world.

Real runs load the released CompVis VQ-f4 and never train it. The demo
world has no released autoencoder, so `train_autoencoder` fits a narrow one to the demo faces with
the VQ-VAE objective: the decode path quantises, so the codebook must be learned too.
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
from synface.io.atomic import write_json
from synface.ldm.data import ImageBank, step_generator
from synface.models.vq_f4 import DECODER_FILE, ENCODER_FILE, VQDecoder, VQEncoder, load_first_stage
from synface.progress import progress
from synface.settings import StageSettings

log = logging.getLogger(__name__)

RUN_CHECKPOINT = "autoencoder_{n}.pt"


FIRST_STAGE_JSON = "first_stage.json"
# What the released CompVis VQ-f4 (first_stage_config.yaml) needs in first_stage.json.
_COMPVIS_HINT = (
    '{"ddconfig": {"double_z": false, "z_channels": 3, "resolution": 256, "in_channels": 3, '
    '"out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], '
    '"dropout": 0.0}, "embed_dim": 3, "n_embed": 8192} (the first_stage section of '
    "config/frcsyn.yaml)"
)


@dataclass(frozen=True)
class FirstStageSpec:
    """What builds both halves: the reference `first_stage_config.yaml` values."""

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

    def write(self, folder: Path) -> None:
        """``folder/first_stage.json``, the spec that travels with the two weight files."""
        write_json(Path(folder) / FIRST_STAGE_JSON, asdict(self))

    @classmethod
    def read(cls, folder: Path) -> FirstStageSpec:
        """The spec in ``folder/first_stage.json``, or an error that says what to write there."""
        path = Path(folder) / FIRST_STAGE_JSON
        fix = f"write {path} beside the two first_stage_*_state_dict.pt files; for the released "
        fix += f"CompVis VQ-f4 it is {_COMPVIS_HINT}"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {fix}")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
            return cls(values["ddconfig"], int(values["embed_dim"]), int(values["n_embed"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: not a first-stage spec ({error!r}): {fix}") from None


@dataclass(frozen=True)
class FirstStage:
    """The frozen VQ-f4 of a folder: its two released-format files and ``first_stage.json``.

    Every stage takes the folder alone, as the embedding model and the LDM carry their spec
    beside their weights."""

    spec: FirstStageSpec
    encoder: VQEncoder
    decoder: VQDecoder

    @classmethod
    def load(cls, folder: Path) -> FirstStage:
        spec = FirstStageSpec.read(folder)
        return cls(spec, *spec.load(folder))


@dataclass(frozen=True)
class AutoencoderTrainConfig(StageSettings, section="first_stage.train"):
    """Demo-world first-stage training (config ``first_stage.train`` plus the spec and the LDM's
    image size); the loss is the VQ-VAE objective with the reference quantiser's commitment
    weight ``beta`` (0.25)."""

    spec: FirstStageSpec
    image_size: int
    batch_size: int
    steps: int
    lr: float
    beta: float
    seed: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> AutoencoderTrainConfig:
        values = dict(settings)
        if "spec" in values:
            values["spec"] = FirstStageSpec(**values["spec"])
        return super().from_settings(values)

    def fingerprint(self, data: str) -> dict[str, str]:
        """The run's inputs (see `checkpoint.fingerprint`); the spec is the architecture.
        Left out: how long, how often to log and save, checkpoints kept."""
        neutral = {"spec", "steps", "log_every", "checkpoint_every", "keep_checkpoints"}
        settings = {k: v for k, v in asdict(self).items() if k not in neutral}
        return checkpoint.fingerprint(data, settings, asdict(self.spec))


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
    """Train until ``cfg.steps``, resuming from ``run_dir`` when it holds a run of the same
    faces and settings (else it is set aside); write the two released-format files."""
    runtime.set_threads(threads)
    device = runtime.pick_device()
    bank = ImageBank.from_manifest(manifest, cfg.image_size, threads, Path(out_dir))
    torch.manual_seed(cfg.seed)
    encoder = VQEncoder(cfg.spec.ddconfig, cfg.spec.embed_dim, cfg.spec.n_embed).to(device)
    decoder = VQDecoder(cfg.spec.ddconfig, cfg.spec.embed_dim, cfg.spec.n_embed).to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=cfg.lr)
    # The faces as trained on (decoded, resized): their bytes are the data's fingerprint.
    inputs = cfg.fingerprint(checkpoint.content_digest([memoryview(bank.images.numpy()).cast("B")]))
    run_dir, step = Path(run_dir), 0
    resumed = checkpoint.resume_state(run_dir, [RUN_CHECKPOINT], inputs, cfg.steps)
    if resumed is not None:
        step, (state,) = resumed
        encoder.load_state_dict(state["encoder"])
        decoder.load_state_dict(state["decoder"])
        # The halves are on their device already: the optimiser casts its state to theirs.
        optimizer.load_state_dict(state["optimizer"])
        log.info("resumed %s at step %d", run_dir / RUN_CHECKPOINT.format(n=step), step)
    encoder.train()
    decoder.train()
    history: list[dict[str, float]] = []
    loss_log = checkpoint.LossLog(run_dir, step)
    started, first_step = time.perf_counter(), step
    bar = progress(cfg.steps, "train-autoencoder", cfg.log_every, unit="steps", initial=step)
    while step < cfg.steps:
        generator = step_generator(cfg.seed, step)
        images = bank.batch(cfg.batch_size, generator, flip=True).to(device)
        with runtime.autocast(device):
            loss, mse = _vq_loss(encoder, decoder, images, cfg.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.steps:
            rate = (step - first_step) * cfg.batch_size / (time.perf_counter() - started)
            record = {"step": step, "loss": loss.item(), "mse": mse.item(), "images_per_s": rate}
            history.append(record)
            loss_log.append(record)
            log.info("step %d loss %.5f mse %.5f", step, record["loss"], record["mse"])
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            state = {
                "step": step,
                "encoder": encoder.state_dict(),
                "decoder": decoder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "version": __version__,
                checkpoint.FINGERPRINT_KEY: inputs,
            }
            checkpoint.atomic_save(state, run_dir / RUN_CHECKPOINT.format(n=step))
            checkpoint.prune_numbered(run_dir, [RUN_CHECKPOINT], cfg.keep_checkpoints)
    bar.close()
    out_dir = Path(out_dir)
    checkpoint.atomic_save(encoder.cpu().state_dict(), out_dir / ENCODER_FILE)
    checkpoint.atomic_save(decoder.cpu().state_dict(), out_dir / DECODER_FILE)
    cfg.spec.write(out_dir)
    return history

"""Faces from the LDM and their embeddings: the loop that identity checks, context selection and
synthesis share.

A face is a pure function of (context, seed, identity index i, image index k): its starting
noise is ``image_noise(seed, i, k)``, so any batching of (i, k) jobs gives the same pixels.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as tvf

from synface import runtime
from synface.io.images import normalize, to_uint8
from synface.ldm.first_stage import FIRST_STAGE_JSON, FirstStage
from synface.ldm.model import latent_shape, load_ldm
from synface.ldm.sampling import Guidance, image_noise, make_sampler, sample_latents, step_noise
from synface.models.spec import load_backbone
from synface.models.vq_f4 import DECODER_FILE


def stage_device(threads: int) -> torch.device:
    """The prelude of every sampling stage: pin torch's threads, then pick the device."""
    runtime.set_threads(threads)
    return runtime.pick_device()


class FaceGenerator:
    """A trained LDM with the first-stage decoder of a folder (weights + ``first_stage.json``),
    on one device."""

    def __init__(self, ldm_checkpoint: Path, first_stage_dir: Path, device: torch.device) -> None:
        self.unet, ldm_spec = load_ldm(ldm_checkpoint)
        first_stage = FirstStage.load(first_stage_dir)
        self.decoder = first_stage.decoder
        self.unet.to(device)
        self.decoder.to(device)
        if device.type == "cuda":
            # NHWC, the layout of the GPU's convolution kernels; the CPU keeps NCHW, whose
            # kernels the byte-identity of synthesis is established for.
            self.unet.to(memory_format=torch.channels_last)
            self.decoder.to(memory_format=torch.channels_last)
        self.latent_shape = latent_shape(ldm_spec, first_stage.spec)
        self.scheduler_config = ldm_spec["scheduler"]
        self.device = device

    @classmethod
    def for_stage(cls, ldm_checkpoint: Path, first_stage_dir: Path, threads: int) -> FaceGenerator:
        """The generator a stage samples with, after the shared prelude (``stage_device``)."""
        return cls(ldm_checkpoint, first_stage_dir, stage_device(threads))

    def compiled(self) -> FaceGenerator:
        """This generator with its UNet and decoder under ``torch.compile`` (this one is left
        eager). Shapes are static within a shard, so each compiles once per batch size; on a
        2-core CPU the demo UNet took 6 minutes to compile, and its faces differed from eager
        ones in one value of 49k by one grey level."""
        compiled = copy.copy(self)
        compiled.unet = torch.compile(self.unet, dynamic=False)
        compiled.decoder = torch.compile(self.decoder, dynamic=False)
        return compiled

    @torch.inference_mode()
    def faces(
        self,
        contexts: torch.Tensor | None,
        jobs: Sequence[tuple[int, int]],
        seed: int,
        steps: int = 50,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        sampler: str = "ddim",
        guidance: Guidance | None = None,
        negative_contexts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """uint8 (len(jobs), 3, H, W) faces; ``contexts`` holds one row per job, or None for
        the unconditional mode (the empty context). ``guidance`` (with ``negative_contexts``,
        one row per job) replaces ``guidance_scale`` when given; η > 0 draws each step's noise
        from (seed, i, k, step)."""
        noise = torch.stack([image_noise(seed, i, k, self.latent_shape) for i, k in jobs])

        def noise_of_step(step: int) -> torch.Tensor:
            return torch.stack([step_noise(seed, i, k, step, self.latent_shape) for i, k in jobs])

        latents = sample_latents(
            self.unet,
            make_sampler(self.scheduler_config, sampler),
            noise.to(self.device),
            _to(contexts, self.device),
            steps=steps,
            guidance_scale=guidance_scale,
            eta=eta,
            guidance=guidance,
            negative_contexts=None
            if negative_contexts is None
            else negative_contexts.to(self.device),
            step_noise=noise_of_step if eta > 0 else None,
        )
        # fp32 even on CUDA: the codebook lookup must pick the codes fp32 distances pick.
        return to_uint8(self.decoder(latents.float())).cpu()


def _to(rows: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if rows is None else rows.to(device)


class FaceEmbedder:
    """The embedding model that judges identities (context selection, the identity check)."""

    def __init__(self, weights: Path, device: torch.device) -> None:
        self.model, self.face_size = load_backbone(weights)
        self.model.to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return embed_faces(self.model, images, self.face_size)


def resize_faces(images: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """uint8 faces at ``size`` pixels, e.g. the LDM's 128 px to the 112 px crop: bilinear,
    antialiased unless ``antialias`` is false (ADMIS's plain ``F.interpolate``)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = tvf.resize(images.float(), [size, size], antialias=antialias)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


@torch.inference_mode()
def embed_faces(embedder: nn.Module, images: torch.Tensor, face_size: int) -> torch.Tensor:
    """L2-normalised single-view embeddings of uint8 faces (as ADMIS embeds contexts)."""
    device = next(embedder.parameters()).device
    faces = normalize(resize_faces(images, face_size)).to(device)
    with runtime.autocast(device):
        return F.normalize(embedder(faces).float(), dim=1).cpu()


def ldm_files(ldm_checkpoint: Path, first_stage: Path) -> list[Path]:
    """The files an LDM's faces depend on: its checkpoint, the first stage's decoder and spec."""
    return [
        Path(ldm_checkpoint),
        Path(first_stage) / DECODER_FILE,
        Path(first_stage) / FIRST_STAGE_JSON,
    ]

"""The latent cache: every training face encoded once (and its mirror), next to its context.

The first stage is frozen, so encoding on every training step, as the
reference does, repeats the same work each epoch. Here each image and its horizontal
flip are encoded once; training then reads (latent, context) pairs from two ``.npy`` files that
can be memory-mapped, and the reference's flip augmentation becomes picking one of the two.
As in the reference, the mirror keeps the context of the original image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synface import runtime
from synface.io.atomic import atomic_path, write_json
from synface.io.embeddings import aligned_entries, read_embeddings
from synface.io.images import DatasetImages
from synface.io.npy import write_rows
from synface.ldm.first_stage import FirstStage
from synface.progress import progress

log = logging.getLogger(__name__)

# Progress lines in a job's log: one every this many batches.
PROGRESS_EVERY_BATCHES = 50

LATENTS_FILE = "latents.npy"
CONTEXTS_FILE = "contexts.npy"
INFO_FILE = "latents.json"


@dataclass(frozen=True)
class LatentCache:
    """(N, 2, C, h, w) latents (original, mirror) and their (N, D) unit contexts."""

    latents: np.ndarray
    contexts: np.ndarray

    @classmethod
    def open(cls, folder: Path) -> LatentCache:
        folder = Path(folder)
        latents = np.load(folder / LATENTS_FILE, mmap_mode="r")
        contexts = np.load(folder / CONTEXTS_FILE, mmap_mode="r")
        if latents.shape[0] != contexts.shape[0]:
            raise ValueError(
                f"{folder}: {latents.shape[0]} latents but {contexts.shape[0]} contexts; "
                "rerun encode_latents"
            )
        return cls(latents, contexts)

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(
        self, indices: torch.Tensor, mirrored: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (mirrored where asked) and contexts of ``indices``, as float32 tensors."""
        rows = indices.numpy()
        views = mirrored.long().numpy()
        latents = torch.from_numpy(np.asarray(self.latents[rows, views], dtype=np.float32))
        contexts = torch.from_numpy(np.asarray(self.contexts[rows], dtype=np.float32))
        return latents, contexts

    def on_device(self, device: torch.device, share: float = 0.5) -> LatentCache | DeviceCache:
        """The cache in a GPU's memory when it takes at most ``share`` of what is free there
        (a paper-scale cache, 0.5 M faces x 2 views x 3x32x32 fp16, is 6 GB); else itself."""
        if device.type != "cuda":
            return self
        size = self.latents.nbytes + self.contexts.nbytes
        free, _ = torch.cuda.mem_get_info(device)
        if size > share * free:
            log.info("latent cache (%.1f GB) read from disk: %s has %.1f GB free", size / 1e9,
                     device, free / 1e9)  # fmt: skip
            return self
        return DeviceCache.load(self, device)


@dataclass(frozen=True)
class DeviceCache:
    """A ``LatentCache`` held as tensors on one device, so a training step gathers its batch
    there instead of reading the memory map and copying the batch over."""

    latents: torch.Tensor
    contexts: torch.Tensor

    @classmethod
    def load(cls, cache: LatentCache, device: torch.device) -> DeviceCache:
        """All of ``cache`` on ``device``, in the file's precision."""
        # Read into host memory first: the memory map is read-only, and read once.
        arrays = (np.array(a) for a in (cache.latents, cache.contexts))
        return cls(*(torch.from_numpy(a).to(device) for a in arrays))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(
        self, indices: torch.Tensor, mirrored: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``LatentCache.batch``, on the cache's device."""
        rows = indices.to(self.latents.device)
        views = mirrored.long().to(self.latents.device)
        return self.latents[rows, views].float(), self.contexts[rows].float()


@torch.inference_mode()
def encode_latents(
    manifest: Path,
    embeddings_dir: Path,
    first_stage_dir: Path,
    image_size: int,
    out_dir: Path,
    batch_size: int = 64,
    threads: int = 1,
) -> dict[str, object]:
    """Write ``latents.npy``, ``contexts.npy``, ``latents.json`` and ``rejected.tsv``, encoding
    with the first stage in ``first_stage_dir`` (weights and ``first_stage.json``).

    The images are those the embeddings cover (``synface.io.embeddings.aligned_entries``); one
    that can no longer be read is skipped with its context and listed in ``rejected.tsv``.
    """
    runtime.set_threads(threads)
    device = runtime.pick_device()
    embeddings, names = read_embeddings(embeddings_dir)
    entries = aligned_entries(embeddings_dir, names, manifest)
    first_stage = FirstStage.load(first_stage_dir)
    spec = first_stage.spec
    encoder = first_stage.encoder.to(device)
    latent_side = image_size // spec.downsampling
    out_dir = Path(out_dir)
    shape = (len(entries), 2, spec.embed_dim, latent_side, latent_side)
    images = DatasetImages([entry.path for entry in entries], names, image_size, threads)
    kept: list[int] = []
    every = PROGRESS_EVERY_BATCHES * batch_size
    with (
        write_rows(out_dir / LATENTS_FILE, shape, np.float16) as latents,
        progress(len(entries), "encode-latents", every, unit="images") as bar,
    ):
        for indices, batch in images.batches(batch_size):
            both = torch.cat([batch, batch.flip(-1)]).to(device)
            with runtime.autocast(device):
                encoded = encoder(both).float().cpu()
            n = len(indices)
            latents.append(torch.stack([encoded[:n], encoded[n:]], dim=1).numpy())
            kept += indices
            bar.update(indices[-1] + 1 - bar.n)
        images.finish(out_dir, manifest)
    with atomic_path(out_dir / CONTEXTS_FILE) as tmp, tmp.open("wb") as f:
        np.save(f, embeddings[kept].astype(np.float32))
    info = {"images": len(kept), "latent_shape": list(shape[2:]), "image_size": image_size}
    write_json(out_dir / INFO_FILE, info)
    log.info("encoded %d images (and mirrors) to latents %s", len(kept), shape[2:])
    return info

"""The latent cache: every training face encoded once (and its mirror), next to its context.

The first stage is frozen (specs/generative.md §2), so encoding on every training step, as the
reference does (§8 step 3), repeats the same work each epoch. Here each image and its horizontal
flip are encoded once; training then reads (latent, context) pairs from two ``.npy`` files that
can be memory-mapped, and the reference's flip augmentation becomes picking one of the two.
As in the reference, the mirror keeps the context of the original image (§5).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synface import runtime
from synface.embeddings import read_embeddings
from synface.io.images import ImageLoader
from synface.io.manifest import read_manifest
from synface.ldm.first_stage import FirstStage

log = logging.getLogger(__name__)

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


def _check_alignment(manifest: Path, names: list[str], count: int) -> None:
    if len(names) != count:
        raise ValueError(
            f"the embeddings cover {len(names)} images but {manifest} lists {count}: rerun "
            "extract_embeddings on this manifest"
        )


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
    """Write ``latents.npy``, ``contexts.npy`` and ``latents.json`` into ``out_dir``, encoding
    with the first stage in ``first_stage_dir`` (weights and ``first_stage.json``)."""
    runtime.set_threads(threads)
    device = runtime.pick_device()
    entries = read_manifest(manifest)
    embeddings, names = read_embeddings(embeddings_dir)
    _check_alignment(manifest, names, len(entries))
    first_stage = FirstStage.load(first_stage_dir)
    spec = first_stage.spec
    encoder = first_stage.encoder.to(device)
    latent_side = image_size // spec.downsampling
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = (len(entries), 2, spec.embed_dim, latent_side, latent_side)
    tmp = out_dir / f".{LATENTS_FILE}.tmp"
    latents = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    load = ImageLoader(image_size)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(entries), batch_size):
            paths = [entry.path for entry in entries[start : start + batch_size]]
            images = torch.stack(list(pool.map(load, paths))).to(device)
            both = torch.cat([images, images.flip(-1)])
            with runtime.autocast(device):
                encoded = encoder(both).float().cpu()
            n = len(paths)
            latents[start : start + n, 0] = encoded[:n].numpy()
            latents[start : start + n, 1] = encoded[n:].numpy()
    latents.flush()
    del latents
    tmp.replace(out_dir / LATENTS_FILE)
    np.save(out_dir / CONTEXTS_FILE, embeddings.astype(np.float32))
    info = {"images": len(entries), "latent_shape": list(shape[2:]), "image_size": image_size}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log.info("encoded %d images (and mirrors) to latents %s", len(entries), shape[2:])
    return info

"""Training data of the generative stages, and randomness that depends only on (seed, step).

Every random draw of a training step (which images, flips, noise, timesteps, context dropout)
comes from a generator seeded by (seed, step, rank). A run resumed from a checkpoint therefore
continues exactly as if it had never stopped, without saving loader or RNG state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synface.io.images import DatasetImages
from synface.io.manifest import read_manifest, relative_name

# Images decoded per batch while filling an ImageBank.
BANK_LOAD_BATCH = 256


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 63-bit seed mixing (seed, step, rank), so nearby steps get unrelated streams."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint64)[0] >> 1)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, rank))


@dataclass
class ImageBank:
    """A whole (small) image set in memory as float16 in [-1, 1]: the demo first stage trains
    on 32-px faces, where decoding every step would cost more than the step."""

    images: torch.Tensor

    @classmethod
    def from_manifest(
        cls, manifest: Path, size: int, threads: int, rejected_dir: Path
    ) -> ImageBank:
        """The manifest's usable images; those skipped are listed in ``rejected_dir``'s
        ``rejected.tsv`` (``synface.io.images``' rule for dataset stages)."""
        entries = read_manifest(manifest)
        names = [relative_name(entry.path, manifest) for entry in entries]
        images = DatasetImages([entry.path for entry in entries], names, size, threads)
        batches = [batch.half() for _, batch in images.batches(BANK_LOAD_BATCH)]
        images.finish(rejected_dir, manifest)
        return cls(torch.cat(batches))

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, size: int, generator: torch.Generator, flip: bool) -> torch.Tensor:
        """``size`` images drawn with replacement, each mirrored with probability 0.5."""
        chosen = torch.randint(len(self), (size,), generator=generator)
        images = self.images[chosen].float()
        if flip:
            mirrored = torch.rand(size, generator=generator) < 0.5
            images[mirrored] = images[mirrored].flip(-1)
        return images

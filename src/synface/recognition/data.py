"""Training data for recognition: records read by index offset, decoded and augmented in batches.

Decoder choice (``synface.io.images.decode_batch``): ``torchvision.io.decode_jpeg`` on a whole
batch. It is libjpeg-turbo like Pillow,
but returns uint8 CHW tensors directly (no PIL image, no numpy round trip, no per-image
``ToTensor``), takes the list of a batch in one call, and on a GPU the same call decodes with
nvJPEG. Augmentation then works on uint8 tensors and normalisation is one fused op per batch.
``benchmarks/bench_train.py`` measures it against a per-image Pillow loader.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import RandAugment, RandomResizedCrop
from torchvision.transforms.v2 import functional as tvf

from synface.io.images import decode_batch, normalize
from synface.io.tfrecord import IndexEntry, RecordReader, read_training_index, shard_path
from synface.ldm.data import step_seed


class RecordDataset(Dataset):
    """(JPEG bytes, label, augmentation seed) of a TFace training index, read by byte offset
    with CRC check; a key is ``(index, augmentation seed)``, as `GlobalBatchSampler` yields.

    Only the index lives in memory (the index is the dataset); each DataLoader
    worker opens every shard once, lazily.
    """

    def __init__(self, index_path: Path, data_root: Path) -> None:
        self.entries: list[IndexEntry] = read_training_index(Path(index_path))
        self.data_root = Path(data_root)
        self.reader = RecordReader()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_classes(self) -> int:
        return max(entry.label for entry in self.entries) + 1

    def __getitem__(self, key: tuple[int, int]) -> tuple[bytes, int, int]:
        i, seed = key
        entry = self.entries[i]
        path = shard_path(self.data_root, entry.tfr_name, entry.shard)
        return self.reader.read_image(path, entry.offset), entry.label, seed

    def shard_files(self) -> list[Path]:
        """Every shard file the index reads from, sorted: with the index, the training data."""
        shards = {(entry.tfr_name, entry.shard) for entry in self.entries}
        return [shard_path(self.data_root, name, shard) for name, shard in sorted(shards)]


@dataclass(frozen=True)
class AugmentConfig:
    """ADMIS training augmentation: flip, then an AdaFace-style crop; then, a switch beyond
    ADMIS, RandAugment as IDiff-Face trains on synthetic faces (``randaugment_ops`` random
    operations of strength ``randaugment_magnitude`` of 30; 0 operations = off). Config
    ``recognition.augment`` or a dataset's own ``augment``; the schema holds the defaults."""

    flip_p: float
    crop_p: float
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    randaugment_ops: int
    randaugment_magnitude: int


class DecodeAugmentCollate:
    """DataLoader ``collate_fn``: decode a batch, augment each image, normalise the stack.

    Each image's augmentation draws from the CPU generator seeded with its own seed, in this
    order: the flip coin, the crop coin, torchvision's ``RandomResizedCrop.get_params`` on the
    (maybe flipped) image, then RandAugment's operations and signs. The draws are then a
    function of the sample's seed alone, not of the worker count or of where a run was
    resumed, and the caller's RNG is untouched.
    """

    def __init__(
        self, image_size: int, augment: AugmentConfig, device: torch.device | str = "cpu"
    ) -> None:
        self.image_size = image_size
        self.augment = augment
        self.randaugment = RandAugment(augment.randaugment_ops, augment.randaugment_magnitude)
        # Where images are decoded and augmented: a GPU only in the main process
        # (``DeviceDecoded``); the random draws stay on the CPU generator either way.
        self.device = torch.device(device)

    def __call__(self, batch: list[tuple[bytes, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        jpegs, labels, seeds = zip(*batch, strict=True)
        images = []
        # One save and restore of the caller's RNG state per batch, not per image.
        with torch.random.fork_rng(devices=[]):
            for image, seed in zip(decode_batch(jpegs, self.device), seeds, strict=True):
                if image.shape[-1] != self.image_size or image.shape[-2] != self.image_size:
                    raise ValueError(
                        f"a record decodes to {tuple(image.shape[-2:])} but the model expects "
                        f"{self.image_size}x{self.image_size}: repack with the configured face size"
                    )
                images.append(self._augment(image, seed))
        return normalize(torch.stack(images)), torch.tensor(labels, dtype=torch.long)

    def augmented(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """One uint8 CHW image as the collate augments it with ``seed``."""
        with torch.random.fork_rng(devices=[]):
            return self._augment(image, seed)

    def _augment(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """Flip, then the AdaFace-style random resized crop back to the input size, then
        RandAugment when on; draws from (and reseeds) the global CPU generator."""
        augment = self.augment
        torch.default_generator.manual_seed(seed)
        if torch.rand(()) < augment.flip_p:
            image = tvf.horizontal_flip(image)
        if torch.rand(()) < augment.crop_p:
            box = RandomResizedCrop.get_params(
                image, list(augment.crop_scale), list(augment.crop_ratio)
            )
            image = tvf.resized_crop(image, *box, [self.image_size] * 2, antialias=True)
        if augment.randaugment_ops:
            image = self.randaugment(image)
        return image


class DeviceDecoded:
    """A loader whose workers only read records, its batches decoded and augmented by
    ``collate`` on the GPU in the main process: nvJPEG decodes a whole batch in one call, where
    CPU workers rarely keep up with an IR-50 on a GPU (≈ 8,000 images/s at 40 % MFU).

    ``loader`` must hand its batches over undecoded (``collate_fn=list``). Iterates, sizes and
    exposes ``batch_sampler`` as a DataLoader does, so the training loop takes either.
    """

    def __init__(self, loader: DataLoader, collate: DecodeAugmentCollate) -> None:
        self.loader = loader
        self.collate = collate

    @property
    def batch_sampler(self) -> Sampler:
        return self.loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.collate(batch) for batch in self.loader)


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches cut from one permutation of the whole dataset, each rank taking its slice.

    Unlike TFace's per-rank shuffles, step s sees the same global batch for any world size, so a
    run on N GPUs follows the same data order as on one (and the DDP equivalence test can hold).
    The last incomplete global batch is dropped, so every rank has equal batch shapes. Each
    index comes with its augmentation seed, a function of (seed, epoch, index): a resumed run
    augments exactly as an uninterrupted one.
    """

    def __init__(
        self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"global batch size {global_batch} is not divisible by the {world_size} "
                "processes: change recognition.train.global_batch_size or the GPU count"
            )
        if num_samples < global_batch:
            raise ValueError(
                f"the dataset has {num_samples} images, fewer than one global batch of "
                f"{global_batch}: lower recognition.train.global_batch_size"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        # One mixed seed per epoch; consecutive integers from it seed unrelated MT19937 streams.
        epoch_seed = step_seed(self.seed, self.epoch) >> 1
        start = self.rank * self.local_batch
        for step in range(len(self)):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            indices = batch[start : start + self.local_batch].tolist()
            yield [(i, epoch_seed + i) for i in indices]

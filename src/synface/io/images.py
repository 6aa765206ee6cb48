"""Image files → normalised tensors, the one place stages read face images from disk."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as tvf


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1], i.e. (x − 127.5)/127.5: how TFace, insightface,
    ElasticFace and the LDM's first stage all expect faces (generative.md §4.2, §11)."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255], the inverse of `normalize` with clamping."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


class ImageLoader:
    """Path → normalised (3, s, s) float32 tensor, resized to ``size`` when it differs.

    Normalises first, then resizes the float tensor, as ADMIS's ElasticFace extraction does
    (generative.md §11 step 2). A picklable callable, so DataLoader workers and thread pools
    can share it.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, path: Path) -> torch.Tensor:
        try:
            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{path}: cannot read the image ({error})") from error
        x = normalize(image)
        if x.shape[-2:] != (self.size, self.size):
            x = tvf.resize(x, [self.size, self.size], antialias=True)
        return x

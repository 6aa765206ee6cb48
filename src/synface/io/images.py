"""Face images from files and bytes: the one reader every stage uses, and the rule for bad ones.

Every image goes through the same checks, in this order, before its pixels are trusted:

1. Read: a missing or unreadable file is ``unreadable: <why>``.
2. Header only: Pillow opens the image lazily, which parses the header (PNG ``IHDR``, JPEG
   frame header) and decodes no pixel. Formats other than JPEG, PNG and WebP are refused, and
   so is any image above ``MAX_PIXELS`` (4096², ``too large: W×H ...``), before a byte of pixel
   memory is allocated: a 1.5 KB JPEG can claim 16000² (768 MB decoded), a 300 KB PNG 9000².
3. Full decode with Pillow: a truncated JPEG is ``undecodable: image file is truncated``. Pillow
   fills a PNG whose compressed pixel data ends early with black rows without complaint, so PNG
   pixel data is first inflated and counted against what the header needs.
4. Modes: L, LA, P, PA, RGBA, CMYK, YCbCr and 1-bit become 8-bit RGB (alpha dropped, as
   torchvision's RGB mode does); 16-bit images keep their high byte; anything else is refused.

Pillow, not torchvision's decoder, reads untrusted bytes: torchvision's libpng path dies with
SIGSEGV on a PNG whose data is shorter than its header says, taking the stage down without
naming the file. Pillow's JPEG and PNG decoders give the same pixels as torchvision's for good
images (both use libjpeg-turbo with its default IDCT and upsampling, and PNG is lossless).

What a stage does with a bad image (docs/reliability.md):

- Stages that read a dataset (packing, embedding extraction, latent encoding, autoencoder
  training) skip it and list it in ``rejected.tsv`` beside their output (``path<TAB>reason``,
  the path as the manifest lists it), and stop with an error naming the files when no image
  is left.
- Evaluation stops at the first bad image of a benchmark pack with an error naming the pack and
  the image index: a benchmark must not silently change.

``decode_batch`` is the exception: the fast batch path for TFRecord records, which packing
already checked with this module.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as tvf

from synface.io.rejected import no_usable_images, write_rejected

log = logging.getLogger(__name__)

# 4096²: sixteen times a 1024² FFHQ face, far above any aligned crop, and 48 MB decoded as RGB.
MAX_PIXELS = 4096 * 4096
FORMATS = ("JPEG", "PNG", "WEBP")
# Modes Pillow converts to RGB as torchvision's RGB read mode does (alpha dropped).
_TO_RGB = {"L", "LA", "P", "PA", "RGBA", "RGBX", "CMYK", "YCbCr", "1"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}
# PNG: channels per colour type, and the Adam7 passes as (x0, y0, dx, dy).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = (
    (0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)
)  # fmt: skip
_INFLATE_STEP = 1 << 20


class BadImageError(ValueError):
    """An image that cannot be used; ``reason`` is the short form ``rejected.tsv`` lists."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1], i.e. (x − 127.5)/127.5: how TFace, insightface,
    ElasticFace and the LDM's first stage all expect faces."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255], the inverse of `normalize` with clamping."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def read_bytes(path: Path) -> bytes:
    """A file's bytes, or ``BadImageError`` (``unreadable: ...``) naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise BadImageError(str(path), f"unreadable: {error.strerror or error}") from error


@contextlib.contextmanager
def open_image(data: bytes, where: str) -> Iterator[Image.Image]:
    """The image of ``data`` with its header parsed and size checked, no pixel decoded yet."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own bomb limit; MAX_PIXELS below refuses far earlier.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as error:
        # Pillow's own refusal, at open, of headers past twice its limit (179 M pixels).
        reason = f"too large: over the limit of {MAX_PIXELS} pixels (Pillow: {error})"
        raise BadImageError(where, reason) from error
    except Image.UnidentifiedImageError as error:
        formats = ", ".join(FORMATS)
        raise BadImageError(where, f"undecodable: not a {formats} image") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(where, f"undecodable: {error}") from error
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise BadImageError(
                where, f"too large: {width}x{height} is over the limit of {MAX_PIXELS} pixels"
            )
        yield image


def to_rgb(image: Image.Image, data: bytes, where: str) -> Image.Image:
    """Decode an image from `open_image` fully and return it as 8-bit RGB."""
    if image.format == "PNG":
        _check_png_data(data, where)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(where, f"undecodable: {error}") from error
    if image.mode == "RGB":
        return image
    if image.mode in _TO_RGB:
        return image.convert("RGB")
    if image.mode in _SIXTEEN_BIT:
        high = (np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(high).convert("RGB")
    raise BadImageError(where, f"undecodable: unsupported pixel mode {image.mode}")


def decode_rgb(data: bytes, where: str) -> torch.Tensor:
    """Checked bytes → RGB uint8 (3, H, W) tensor; ``BadImageError`` naming ``where``."""
    with open_image(data, where) as image:
        pixels = np.array(to_rgb(image, data, where))
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def read_rgb(path: Path) -> torch.Tensor:
    """Checked file → RGB uint8 (3, H, W) tensor."""
    return decode_rgb(read_bytes(path), str(path))


def decode_batch(jpegs: Sequence[bytes], device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Decode JPEGs to RGB uint8 CHW tensors on ``device`` in one call (nvJPEG on a GPU).

    Only for records that packing checked with this module: training decodes millions of them.
    """
    data = [torch.frombuffer(bytearray(jpeg), dtype=torch.uint8) for jpeg in jpegs]
    return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _png_needed_bytes(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines a PNG header promises: one filter byte per row and pass."""
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-columns * bits // 8))
    return total


def _png_idat(data: bytes) -> tuple[bytes, int]:
    """Concatenated IDAT payloads, and the bytes the header's size needs."""
    position, needed, parts = 8, 0, []
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR" and len(body) >= 13:
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            needed = _png_needed_bytes(width, height, body[8], body[9], body[12] == 1)
        elif kind == b"IDAT":
            parts.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    return b"".join(parts), needed


def _check_png_data(data: bytes, where: str) -> None:
    """Refuse PNG pixel data that inflates to fewer bytes than the header's size needs."""
    compressed, needed = _png_idat(data)
    inflater, produced = zlib.decompressobj(), 0
    try:
        while compressed and produced < needed:
            produced += len(inflater.decompress(compressed, _INFLATE_STEP))
            compressed = inflater.unconsumed_tail
    except zlib.error as error:
        raise BadImageError(where, f"undecodable: PNG pixel data is corrupt ({error})") from error
    if produced < needed:
        raise BadImageError(
            where, f"undecodable: PNG pixel data ends after {produced} of {needed} bytes"
        )


class ImageLoader:
    """Path → normalised (3, s, s) float32 tensor, resized to ``size`` when it differs.

    Normalises first, then resizes the float tensor, as ADMIS's ElasticFace extraction does.
    A picklable callable, so DataLoader workers and thread pools
    can share it. Raises ``BadImageError``.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, path: Path) -> torch.Tensor:
        x = normalize(read_rgb(path))
        if x.shape[-2:] != (self.size, self.size):
            x = tvf.resize(x, [self.size, self.size], antialias=True)
        return x


class DatasetImages:
    """A dataset's images as normalised batches, bad ones skipped and recorded with the reason.

    ``names`` are what ``rejected.tsv`` lists (the paths as the manifest gives them).
    """

    def __init__(
        self, paths: Sequence[Path], names: Sequence[str], size: int, threads: int = 1
    ) -> None:
        self.paths, self.names = list(paths), list(names)
        self.load = ImageLoader(size)
        self.threads = max(1, threads)
        self.rejected: dict[int, str] = {}
        self.kept = 0

    def _try(self, i: int) -> torch.Tensor | None:
        try:
            return self.load(self.paths[i])
        except BadImageError as error:
            self.rejected[i] = error.reason
            return None

    def batches(self, batch_size: int) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(kept indices, their stacked images) per ``batch_size`` paths, in order."""
        with ThreadPoolExecutor(self.threads) as pool:
            for start in range(0, len(self.paths), batch_size):
                indices = range(start, min(start + batch_size, len(self.paths)))
                loaded = list(pool.map(self._try, indices))
                kept = [(i, x) for i, x in zip(indices, loaded, strict=True) if x is not None]
                if kept:
                    self.kept += len(kept)
                    yield [i for i, _ in kept], torch.stack([x for _, x in kept])

    def finish(self, out_dir: Path, source: Path) -> None:
        """Write ``rejected.tsv`` into ``out_dir``; raise naming the files if none was usable."""
        listed = [(self.names[i], self.rejected[i]) for i in sorted(self.rejected)]
        write_rejected(Path(out_dir), listed)
        for name, reason in listed:
            log.warning("skipped %s: %s", name, reason)
        if not self.kept:
            raise no_usable_images(source, listed, Path(out_dir))

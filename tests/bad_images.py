"""Damaged and hostile image files, built byte by byte in a few kilobytes.

Each builder returns the bytes of one fault that issue 8 reproduced against synface's stages:
a PNG whose pixel data is shorter than its header says, a PNG header claiming 20000² with almost
no data, a 1.5 KB JPEG whose frame header claims 16000², a JPEG cut in half, and a real 9000² PNG
that compresses to a few hundred kilobytes but decodes to 243 MB.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# JPEG start-of-frame markers (baseline, extended, progressive): their segment holds the size.
_SOF_MARKERS = (0xC0, 0xC1, 0xC2)


def face(size: int = 32, seed: int = 0) -> np.ndarray:
    """A smooth, face-sized RGB array: decodes the same under every JPEG implementation."""
    rng = np.random.default_rng(seed)
    layout = rng.integers(0, 256, size=(4, 4, 3)).repeat(size // 4, 0).repeat(size // 4, 1)
    return np.clip(layout + rng.normal(0, 10, layout.shape), 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, rows: bytes, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose IHDR says ``width``×``height`` and whose IDAT holds ``rows`` (filtered
    scanlines), CRCs correct: only the header and the data can disagree."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows, 9)),
            _chunk(b"IEND", b""),
        )
    )


def short_png(size: int = 32) -> bytes:
    """``size``² RGB in the header, pixel data for a quarter of the rows: libpng's "Not enough
    image data", which crashed torchvision's decoder."""
    row = b"\x00" + bytes(3 * size)
    return png(size, size, row * (size // 4))


def header_only_huge_png(side: int = 20000) -> bytes:
    """A header claiming ``side``² RGB pixels (1.2 GB decoded at 20000) over one row of data."""
    return png(side, side, b"\x00" + bytes(3 * side))


def huge_png(side: int = 9000) -> bytes:
    """A complete, valid ``side``² RGB PNG (243 MB decoded at 9000) of black pixels."""
    row = b"\x00" + bytes(3 * side)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", data),
            _chunk(b"IEND", b""),
        )
    )


def huge_header_jpeg(side: int = 16000) -> bytes:
    """A small valid JPEG whose frame header is patched to claim ``side``²: the scan data still
    covers 32², so a decoder that trusts the header allocates ``3·side²`` bytes for nothing."""
    data = bytearray(jpeg(face(32)))
    position = 2
    while data[position + 1] not in _SOF_MARKERS:
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    # FFCn, length (2), precision (1), then height and width (2 each).
    data[position + 5 : position + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def truncated_jpeg() -> bytes:
    """A valid 32² JPEG cut in the middle of its scan data."""
    whole = jpeg(face(32, seed=1))
    return whole[: len(whole) // 2]


def write_bad_faces(folder: Path) -> dict[str, Path]:
    """One file per fault in ``folder``, plus the path of a missing one; keyed by fault."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "short_png": short_png(),
        "header_only_huge_png": header_only_huge_png(),
        "huge_header_jpeg": huge_header_jpeg(),
        "truncated_jpeg": truncated_jpeg(),
    }
    paths = {}
    for fault, content in files.items():
        suffix = ".png" if fault.endswith("png") else ".jpg"
        paths[fault] = folder / f"{fault}{suffix}"
        paths[fault].write_bytes(content)
    paths["missing_file"] = folder / "missing_file.jpg"
    return paths

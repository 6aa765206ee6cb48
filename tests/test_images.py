"""The one image reader: each bad kind gets its documented outcome, good images are unchanged."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_images import (
    face,
    header_only_huge_png,
    huge_header_jpeg,
    huge_png,
    jpeg,
    png,
    short_png,
    truncated_jpeg,
)
from PIL import Image, ImageFile
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as tvf

from synface.evaluation.benchmark import decode_pack_images
from synface.io import images
from synface.io.images import BadImageError, DatasetImages, ImageLoader, decode_rgb, read_rgb
from synface.io.rejected import read_rejected


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _torchvision(data: bytes) -> torch.Tensor:
    """How every stage decoded before synface.io.images (good images only: it can crash)."""
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel is decoded or any PNG data inflated."""

    def refuse(*args: object) -> None:
        raise AssertionError("pixels were decoded before the size was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(images, "_check_png_data", refuse)


@pytest.mark.parametrize(
    ("data", "size"),
    [(huge_header_jpeg(), 16000), (header_only_huge_png(), 20000), (huge_png(), 9000)],
    ids=["jpeg_header_16000", "png_header_only_20000", "png_9000"],
)
def test_huge_images_are_refused_from_the_header_alone(
    data: bytes, size: int, no_decoding: None
) -> None:
    assert len(data) < 400_000
    # Above twice its own bomb limit Pillow refuses at open already; its message is quoted.
    stated = f"{size}x{size} is over" if size < 10000 else rf"over .* \({size * size} pixels\)"
    with pytest.raises(BadImageError, match=rf"^face\.x: too large: {stated}"):
        decode_rgb(data, "face.x")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (short_png(), r"undecodable: PNG pixel data ends after 776 of 3104 bytes"),
        (truncated_jpeg(), r"undecodable: image file is truncated"),
        (b"GIF89a not a face", r"undecodable: not a JPEG, PNG, WEBP image"),
        (_encoded(Image.new("RGB", (8, 8)), "TIFF"), r"undecodable: not a JPEG, PNG, WEBP image"),
        (png(8, 8, bytes(100)), r"undecodable: PNG pixel data ends after 100 of 200 bytes"),
    ],
    ids=["short_png", "truncated_jpeg", "gif", "tiff", "short_png_2"],
)
def test_damaged_or_foreign_bytes_are_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImageError, match=rf"^x\.img: {reason}") as error:
        decode_rgb(data, "x.img")
    assert error.value.reason.startswith(reason.split(":")[0])


def test_corrupt_png_data_is_refused() -> None:
    data = bytearray(png(8, 8, bytes(8 * 25)))
    start = data.index(b"IDAT") + 6
    data[start : start + 4] = b"\xff\xff\xff\xff"  # deflate garbage; the CRC is not what fails
    with pytest.raises(BadImageError, match=r"undecodable: PNG pixel data is corrupt|undecodable"):
        decode_rgb(bytes(data), "c.png")


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match=rf"^{tmp_path}/gone\.jpg: unreadable: No such file"):
        read_rgb(tmp_path / "gone.jpg")
    with pytest.raises(BadImageError, match=r"unreadable: Is a directory"):
        read_rgb(tmp_path)


def test_good_images_decode_exactly_as_torchvision_did() -> None:
    pixels = face(112, seed=4)
    for data in (
        jpeg(pixels),
        jpeg(pixels, quality=75),
        _encoded(Image.fromarray(pixels), "JPEG", quality=90, subsampling=0),
        _encoded(Image.fromarray(pixels), "PNG"),
        _encoded(Image.fromarray(pixels).convert("L"), "PNG"),
        _encoded(Image.fromarray(pixels).convert("L"), "JPEG"),
        _encoded(Image.fromarray(pixels).convert("P"), "PNG"),
        _encoded(Image.fromarray(pixels).convert("RGBA"), "PNG"),
    ):
        assert torch.equal(decode_rgb(data, "good"), _torchvision(data))


def test_the_loader_gives_the_tensors_it_gave_before(tmp_path: Path) -> None:
    for size, side in ((32, 32), (32, 48)):
        path = tmp_path / f"{side}.jpg"
        path.write_bytes(jpeg(face(side, seed=side)))
        before = _torchvision(path.read_bytes()).float().div_(127.5).sub_(1.0)
        if side != size:
            before = tvf.resize(before, [size, size], antialias=True)
        assert torch.equal(ImageLoader(size)(path), before)


def test_odd_modes_become_8_bit_rgb() -> None:
    rgb = Image.fromarray(face(16, seed=5))
    grey = np.asarray(rgb.convert("L"))
    cases = {
        "LA": (_encoded(rgb.convert("LA"), "PNG"), np.repeat(grey[..., None], 3, axis=2)),
        "RGBA": (_encoded(rgb.convert("RGBA"), "PNG"), np.asarray(rgb)),
        "1": (_encoded(rgb.convert("1"), "PNG"), np.asarray(rgb.convert("1").convert("RGB"))),
        "CMYK": (_encoded(rgb.convert("CMYK"), "JPEG"), None),
    }
    for mode, (data, expected) in cases.items():
        decoded = decode_rgb(data, mode)
        assert decoded.dtype == torch.uint8 and decoded.shape == (3, 16, 16), mode
        if expected is not None:
            assert np.array_equal(decoded.permute(1, 2, 0).numpy(), expected), mode


def test_sixteen_bit_pngs_keep_their_high_byte() -> None:
    values = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1021
    grey_rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    decoded = decode_rgb(png(8, 8, grey_rows, bit_depth=16, colour_type=0), "g16")
    assert torch.equal(decoded[0], torch.from_numpy((values >> 8).astype(np.uint8)))
    assert torch.equal(decoded[0], decoded[2])
    colour = np.stack([values, values[::-1], values.T], axis=-1)
    rgb_rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in colour)
    decoded = decode_rgb(png(8, 8, rgb_rows, bit_depth=16, colour_type=2), "rgb16")
    assert torch.equal(decoded.permute(1, 2, 0), torch.from_numpy((colour >> 8).astype(np.uint8)))


# Adam7 passes as the PNG specification tabulates them: (x0, y0, dx, dy).
PASSES = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2)]
PASSES += [(0, 1, 1, 2)]


def _interlaced_png(pixels: np.ndarray, cut: int = 0) -> bytes:
    """An Adam7 RGB PNG of ``pixels``, its scanlines shortened by ``cut`` bytes."""
    rows = b"".join(
        b"\x00" + row.tobytes()
        for x0, y0, dx, dy in PASSES
        if pixels[y0::dy, x0::dx].size
        for row in pixels[y0::dy, x0::dx]
    )
    data = bytearray(png(*pixels.shape[1::-1], rows[: len(rows) - cut]))
    data[data.index(b"IHDR") + 16] = 1  # interlace method: Adam7
    body_at = data.index(b"IHDR")
    crc = zlib.crc32(bytes(data[body_at : body_at + 17]))
    data[body_at + 17 : body_at + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize("shape", [(13, 11), (1, 1), (3, 8), (9, 2)])
def test_complete_interlaced_and_low_depth_pngs_pass_the_length_check(
    shape: tuple[int, int],
) -> None:
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    decoded = decode_rgb(_interlaced_png(pixels), "adam7")
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), pixels)  # Pillow agrees on layout
    with pytest.raises(BadImageError, match="PNG pixel data ends after"):
        decode_rgb(_interlaced_png(pixels, cut=1), "adam7")
    rgb = Image.fromarray(pixels)
    for image, options in ((rgb.convert("1"), {}), (rgb.convert("P"), {"bits": 4})):
        data = _encoded(image, "PNG", **options)
        assert torch.equal(decode_rgb(data, "low"), _torchvision(data))


def test_a_dataset_skips_bad_files_and_stops_when_none_is_left(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg(face(32)))
    (tmp_path / "short.png").write_bytes(short_png())
    paths = [tmp_path / "short.png", good, tmp_path / "gone.jpg"]
    dataset = DatasetImages(paths, ["short.png", "good.jpg", "gone.jpg"], size=32)
    batches = list(dataset.batches(batch_size=2))
    assert [indices for indices, _ in batches] == [[1]]
    dataset.finish(tmp_path / "out", tmp_path / "m.tsv")
    assert set(read_rejected(tmp_path / "out")) == {"short.png", "gone.jpg"}

    none_left = DatasetImages(paths[::2], ["short.png", "gone.jpg"], size=32)
    assert list(none_left.batches(batch_size=4)) == []
    with pytest.raises(ValueError, match=r"m\.tsv: none of its 2 images is usable \(short\.png"):
        none_left.finish(tmp_path / "out2", tmp_path / "m.tsv")
    assert (tmp_path / "out2" / "rejected.tsv").exists()


@pytest.mark.parametrize(
    "bad",
    [short_png(), header_only_huge_png(), huge_header_jpeg(), truncated_jpeg()],
    ids=["short_png", "header_only_huge_png", "huge_header_jpeg", "truncated_jpeg"],
)
def test_a_bad_pack_image_is_an_error_naming_pack_and_index(bad: bytes) -> None:
    batch = [jpeg(face(32, seed=i)) for i in range(4)]
    batch[2] = bad
    with pytest.raises(BadImageError, match=r"^lfw\.bin: image 7: .*must be intact: replace"):
        decode_pack_images(batch, 5, 32, "lfw.bin")

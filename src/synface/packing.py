"""Pack a dataset manifest into TFace TFRecord shards plus their index files.

Every image is checked and decoded exactly once here, by ``synface.io.images``, so a broken file
is caught at packing time (and listed in ``rejected.tsv``, path as the manifest lists it) instead
of crashing a multi-GPU training run hours later. Valid RGB JPEGs at
the target size are stored byte for byte: re-encoding would cost time and add a second round of
JPEG loss to every face.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from synface.io import atomic
from synface.io.images import BadImageError, open_image, read_bytes, to_rgb
from synface.io.manifest import ManifestEntry, read_manifest, relative_name
from synface.io.rejected import no_usable_images, write_rejected
from synface.io.tfrecord import IndexEntry, ShardWriter, write_training_index
from synface.progress import progress

log = logging.getLogger(__name__)

# Progress lines in a job's log: one every this many images.
PROGRESS_EVERY = 10_000

# Quality OpenCV's imencode uses, which TFace and ADMIS packers rely on.
JPEG_QUALITY = 95
# Images handed to a worker at a time: large enough to amortise IPC, small enough to stream.
CHUNK = 64


@dataclass(frozen=True)
class PackSummary:
    """What a packing run produced; written next to the shards as ``pack.json``."""

    name: str
    records: int
    classes: int
    rejected: int
    reencoded: int
    shards: int


@dataclass(frozen=True)
class PreparedImage:
    """The bytes to store for one image, or why it was rejected."""

    jpeg: bytes | None
    reencoded: bool
    reason: str


def prepare_image(path: Path, image_size: int) -> PreparedImage:
    """The JPEG bytes to store for ``path``, or a rejection reason (``synface.io.images``' checks).

    The size comes from the header, so a wrongly sized image is refused before it is decoded.
    """
    where = str(path)
    try:
        raw = read_bytes(path)
        with open_image(raw, where) as image:
            if image.size != (image_size, image_size):
                width, height = image.size
                return PreparedImage(
                    None, False, f"wrong size: {width}x{height}, expected {image_size}x{image_size}"
                )
            stored_as_is = image.format == "JPEG" and image.mode == "RGB"
            rgb = to_rgb(image, raw, where)  # the full decode: truncated files raise here
            if stored_as_is:
                return PreparedImage(raw, False, "")
            buffer = io.BytesIO()
            rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            return PreparedImage(buffer.getvalue(), True, "")
    except BadImageError as error:
        return PreparedImage(None, False, error.reason)


def _prepare(args: tuple[Path, int]) -> PreparedImage:
    return prepare_image(*args)


def _prepared_stream(
    entries: list[ManifestEntry], image_size: int, workers: int
) -> Iterator[PreparedImage]:
    """Prepared images in manifest order, decoded by ``workers`` processes."""
    jobs = [(entry.path, image_size) for entry in entries]
    if workers <= 1:
        yield from map(_prepare, jobs)
        return
    # forkserver: workers start clean, without the parent's threads or torch state.
    context = multiprocessing.get_context("forkserver")
    with context.Pool(workers) as pool:
        yield from pool.imap(_prepare, jobs, chunksize=CHUNK)


def pack_tfrecords(
    manifest: Path,
    out_dir: Path,
    name: str,
    image_size: int,
    records_per_shard: int = 500_000,
    workers: int = 1,
) -> PackSummary:
    """Write ``out_dir/<name>/`` shards, ``<name>/<name>.index``, ``<name>.txt``, ``rejected.tsv``.

    Labels in the training index are renumbered 0..C-1 over the identities that kept at least
    one image, because TFace sizes the classifier as max(label) + 1.

    Raises:
        ValueError: when no image of the manifest is valid.
    """
    if "TFR" not in name:
        # TFace picks its TFRecord parser only for dataset names containing "TFR".
        raise ValueError(f"dataset name {name!r} must contain 'TFR' for TFace to read it")
    entries = read_manifest(manifest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dense_label: dict[int, int] = {}
    index: list[IndexEntry] = []
    rejected: list[tuple[str, str]] = []
    reencoded = 0
    with ShardWriter(out_dir, name, records_per_shard) as writer:
        prepared_images = _prepared_stream(entries, image_size, workers)
        pairs = zip(entries, prepared_images, strict=True)
        bar = progress(pairs, "pack-tfrecords", PROGRESS_EVERY, len(entries), "images")
        for entry, prepared in bar:
            if prepared.jpeg is None:
                rejected.append((relative_name(entry.path, manifest), prepared.reason))
                continue
            location = writer.write(prepared.jpeg, str(entry.path))
            label = dense_label.setdefault(entry.label, len(dense_label))
            index.append(IndexEntry(name, location.shard, location.offset, label))
            reencoded += prepared.reencoded
    write_rejected(out_dir, rejected)
    if not index:
        raise no_usable_images(manifest, rejected, out_dir)
    write_training_index(out_dir / f"{name}.txt", index)
    summary = PackSummary(
        name=name,
        records=len(index),
        classes=len(dense_label),
        rejected=len(rejected),
        reencoded=reencoded,
        shards=index[-1].shard + 1,
    )
    atomic.write_json(out_dir / "pack.json", asdict(summary))
    for path, reason in rejected:
        log.warning("rejected %s: %s", path, reason)
    log.info("packed %s", summary)
    return summary

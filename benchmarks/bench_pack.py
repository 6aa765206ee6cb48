"""Packing throughput: synface.packing against a plain re-encoding Pillow packer.

ADMIS's and TFace's packers decode every image and re-encode it; synface stores valid RGB JPEGs
byte for byte and spreads the decode check over processes. The workers=1 run separates what the
byte copy saves from what the parallelism adds.

    python benchmarks/bench_pack.py    # 3000 faces at 112 px, all cores
    python benchmarks/bench_pack.py --images 300 --repeats 1
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from common import add_common_args, best_of, render_faces, report, scratch_dir
from PIL import Image

from synface.io.manifest import read_manifest
from synface.io.tfrecord import IndexEntry, ShardWriter, write_training_index
from synface.packing import JPEG_QUALITY, pack_tfrecords

# The real face size: aligned 112x112 crops (config/frcsyn.yaml face_size).
FACE_SIZE = 112
# "TFR" in the name makes TFace pick its TFRecord parser (pack_tfrecords checks it).
NAME = "benchTFR"


def pack_plain(manifest: Path, out_dir: Path) -> int:
    """The baseline: decode and re-encode every image in one process, as ADMIS/TFace do.

    Writes the same shards, shard index and training index as pack_tfrecords (labels are
    already dense here); returns the record count.
    """
    index = []
    with ShardWriter(out_dir, NAME) as writer:
        for entry in read_manifest(manifest):
            buffer = io.BytesIO()
            with Image.open(entry.path) as image:
                image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
            location = writer.write(buffer.getvalue(), str(entry.path))
            index.append(IndexEntry(NAME, location.shard, location.offset, entry.label))
    write_training_index(out_dir / f"{NAME}.txt", index)
    return len(index)


def pack_synface(manifest: Path, workers: int, out_dir: Path) -> int:
    """synface's packer; fails if an image was re-encoded, as then the byte copy went untimed."""
    summary = pack_tfrecords(manifest, out_dir, NAME, FACE_SIZE, workers=workers)
    if summary.reencoded:
        raise RuntimeError(f"{summary.reencoded} images left the byte-copy path")
    return summary.records


def pack_rate(pack: Callable[[Path], int], out_dir: Path, images: int) -> float:
    """Images/s of one packing run into a fresh ``out_dir``, which is removed afterwards."""
    started = time.perf_counter()
    records = pack(out_dir)
    elapsed = time.perf_counter() - started
    shutil.rmtree(out_dir)
    if records != images:
        raise RuntimeError(f"packed {records} records out of {images} images")
    return images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, images=3000, identities=300)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each packer's best counts")
    args = parser.parse_args()

    with scratch_dir() as scratch:
        manifest = render_faces(
            scratch / "faces", args.images, args.identities, FACE_SIZE, args.seed, args.threads
        )
        packers = {
            "plain": partial(pack_plain, manifest),
            "single": partial(pack_synface, manifest, 1),
            "parallel": partial(pack_synface, manifest, args.threads),
        }
        rates = best_of(
            {
                name: partial(pack_rate, pack, scratch / "packed", args.images)
                for name, pack in packers.items()
            },
            args.repeats,
        )
    plain, single, parallel = rates["plain"], rates["single"], rates["parallel"]

    title = (
        f"packing {args.images} JPEG faces of {FACE_SIZE} px ({args.threads} threads, "
        f"{os.cpu_count()} CPUs, best of {args.repeats})"
    )
    rows = [
        ("plain Pillow re-encode", plain, 1.0),
        ("synface workers=1", single, single / plain),
        (f"synface workers={args.threads}", parallel, parallel / plain),
    ]
    figures = {
        "bench": "pack",
        "images": args.images,
        "size": FACE_SIZE,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "plain_images_per_s": round(plain, 1),
        "synface_w1_images_per_s": round(single, 1),
        "synface_images_per_s": round(parallel, 1),
        "ratio_w1": round(single / plain, 2),
        "ratio": round(parallel / plain, 2),
    }
    report([(title, rows)], figures)


if __name__ == "__main__":
    main()

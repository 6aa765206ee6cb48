"""Dataset manifests: the one description of a dataset every stage shares.

A manifest is a text file of ``path<TAB>label`` lines. Paths are relative to the manifest's own
folder (or absolute), so a dataset can be re-labelled, cleaned or oversampled by writing a new
manifest without touching image bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from synface.io import atomic


@dataclass(frozen=True)
class ManifestEntry:
    """One image of a dataset: where it is and which identity it shows."""

    path: Path
    label: int


def read_manifest(manifest: Path) -> list[ManifestEntry]:
    """Read a manifest, resolving relative paths against its folder.

    Raises:
        ValueError: naming the file and line when a line is not ``path<TAB>integer label``.
    """
    manifest = Path(manifest)
    root = manifest.parent
    entries = []
    with manifest.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(
                    f"{manifest}:{number}: expected 'path<TAB>label', got {len(fields)} "
                    f"tab-separated fields: {line!r}"
                )
            path, label = fields
            try:
                label_int = int(label)
            except ValueError:
                raise ValueError(
                    f"{manifest}:{number}: label {label!r} is not an integer"
                ) from None
            entries.append(ManifestEntry(root / path, label_int))
    return entries


def relative_name(path: Path, manifest: Path) -> str:
    """``path`` as a manifest line names it: relative to the manifest's folder, with ``/``."""
    return Path(os.path.relpath(path, Path(manifest).parent)).as_posix()


def write_manifest(manifest: Path, entries: Iterable[ManifestEntry]) -> int:
    """Write entries with paths relative to the manifest's folder; atomic; returns the count.

    Raises:
        ValueError: naming the file when its path holds a tab or a line break, which would
            split the line into columns or lines no reader could parse back.
    """
    manifest = Path(manifest)
    root = manifest.parent.resolve()
    lines = []
    for entry in entries:
        path = Path(os.path.relpath(Path(entry.path).resolve(), root)).as_posix()
        if any(ch in path for ch in "\t\r\n"):
            raise ValueError(
                f"{entry.path!r}: a tab or line break in a file name cannot be written to the "
                f"manifest {manifest} (tab-separated, one image per line): rename the file"
            )
        lines.append(f"{path}\t{entry.label}\n")
    atomic.write_text(manifest, "".join(lines))
    return len(lines)


def join_manifests(manifests: Iterable[Path], out_manifest: Path) -> int:
    """One manifest holding the entries of ``manifests`` in the order given (a set's shards)."""
    entries = [entry for manifest in manifests for entry in read_manifest(manifest)]
    return write_manifest(out_manifest, entries)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def database_faces(images: Path) -> list[Path]:
    """The faces of a context database, one identity each, in file-name order."""
    return sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def scan_image_folder(images: Path) -> list[ManifestEntry]:
    """List an ``images/<identity>/<file>`` tree (CASIA-WebFace layout) as manifest entries.

    Identity folders are sorted by name and numbered 0..C-1, so labels are dense as the
    classifier needs whatever the folder names are.
    """
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(
            f"dataset folder {images} does not exist: put one sub-folder of face images per "
            "identity there (images/<identity>/<n>.jpg, aligned 112x112 crops)"
        )
    entries = []
    identities = sorted(p for p in images.iterdir() if p.is_dir())
    for label, identity in enumerate(identities):
        files = sorted(p for p in identity.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        entries.extend(ManifestEntry(path, label) for path in files)
    if not entries:
        raise ValueError(f"dataset folder {images} holds no .jpg/.png images in sub-folders")
    return entries


def mix_manifests(parts: list[Path], out_manifest: Path) -> int:
    """One dataset uniting ``parts`` (e.g. the real set and a synthetic one, FRCSyn's mixed
    sub-task): every image of every part, each part's labels shifted past the largest label
    of the parts before it, so that no identity of one part merges with one of another.
    Returns the number of images."""
    if len(parts) < 2:
        raise ValueError(f"{out_manifest}: a mixed dataset needs two or more parts, got {parts}")
    entries: list[ManifestEntry] = []
    offset = 0
    for part in parts:
        own = read_manifest(part)
        if not own:
            raise ValueError(f"{part}: an empty manifest cannot be a part of {out_manifest}")
        entries += [ManifestEntry(e.path, e.label + offset) for e in own]
        offset += max(e.label for e in own) + 1
    return write_manifest(out_manifest, entries)

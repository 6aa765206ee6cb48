"""Embedding files: ours (``embeddings.npy``, ``names.txt``) and ADMIS's (``elastic_embed.npy``,
``image_names.pkl``).

``names.txt`` line i names the image of row i, as the manifest lists it (relative to the
manifest's folder): the one link between an image and its embedding.
Extraction skips images it cannot read and lists them in ``rejected.tsv`` beside the two files,
so the rows are the manifest's images in manifest order, minus those rejected; `aligned_entries`
is how every consumer joins rows back to the manifest, and it refuses anything else.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synface.io.atomic import atomic_path, write_text
from synface.io.manifest import ManifestEntry, read_manifest, relative_name
from synface.io.pickles import load_restricted
from synface.io.rejected import REJECTED_FILE, read_rejected

EMBEDDINGS_FILE = "embeddings.npy"
NAMES_FILE = "names.txt"
# ADMIS's image_names.pkl is a plain list of str ; protocol 4 is readable
# by every Python 3 the reference runs on.
ADMIS_PICKLE_PROTOCOL = 4
_ADMIS_NAMES_REFUSAL = (
    "an ADMIS image_names.pkl is a plain list of str and needs none, so this file is not one. "
    "Re-create it from trusted names with synface.io.embeddings.write_admis_embeddings"
)


def read_embeddings(out_dir: Path) -> tuple[np.ndarray, list[str]]:
    """Read what `extract_embeddings` wrote: (N × D float32, N manifest-relative names)."""
    out_dir = Path(out_dir)
    embeddings = np.load(out_dir / EMBEDDINGS_FILE, allow_pickle=False)
    names = (out_dir / NAMES_FILE).read_text(encoding="utf-8").splitlines()
    _check_rows(embeddings, names, out_dir / EMBEDDINGS_FILE, out_dir / NAMES_FILE)
    return embeddings, names


def aligned_entries(out_dir: Path, names: Sequence[str], manifest: Path) -> list[ManifestEntry]:
    """The manifest entry of each embedding row, in row order.

    The rows must be the manifest's images in order, less those listed in ``rejected.tsv``:
    embeddings made from another manifest, reordered or cut short raise, naming both files,
    instead of pairing an image with another image's embedding.
    """
    out_dir, manifest = Path(out_dir), Path(manifest)
    names_file, fix = out_dir / NAMES_FILE, f"re-run extract-embeddings on {manifest}"
    rejected = read_rejected(out_dir)
    entries = read_manifest(manifest)
    kept = [(relative_name(e.path, manifest), e) for e in entries]
    kept = [(name, e) for name, e in kept if name not in rejected]
    if len(names) != len(kept):
        skipped = f" ({len(rejected)} rejected in {out_dir / REJECTED_FILE})" if rejected else ""
        raise ValueError(
            f"{names_file} lists {len(names)} images but {manifest} lists {len(entries)}"
            f"{skipped}; {fix}"
        )
    for row, (name, (path, _)) in enumerate(zip(names, kept, strict=True), start=1):
        if name != path:
            raise ValueError(
                f"{names_file} row {row} is {name!r} but image {row} of {manifest} is {path!r}; "
                f"embeddings and manifest are not index-aligned: {fix}"
            )
    return [entry for _, entry in kept]


def write_names(out_dir: Path, names: Sequence[str]) -> None:
    write_text(Path(out_dir) / NAMES_FILE, "".join(f"{name}\n" for name in names))


def write_embeddings(out_dir: Path, embeddings: np.ndarray, names: Sequence[str]) -> None:
    """Write embeddings in `extract_embeddings`' layout (for embeddings made elsewhere)."""
    out_dir = Path(out_dir)
    _check_rows(embeddings, list(names), out_dir / EMBEDDINGS_FILE, out_dir / NAMES_FILE)
    with atomic_path(out_dir / EMBEDDINGS_FILE) as tmp, tmp.open("wb") as f:
        np.save(f, np.asarray(embeddings, dtype=np.float32))
    write_names(out_dir, names)


def read_admis_embeddings(embed_npy: Path, names_pkl: Path) -> tuple[np.ndarray, list[str]]:
    """ADMIS's `elastic_embed.npy` (N × 512) and `image_names.pkl` (N relative paths).

    The names pickle comes with a third-party download and unpickling can run code, so it goes
    through an unpickler that resolves no globals.
    """
    embed_npy, names_pkl = Path(embed_npy), Path(names_pkl)
    try:
        embeddings = np.load(embed_npy, allow_pickle=False)
    except ValueError as error:
        raise ValueError(
            f"{embed_npy}: not a plain numpy array file ({error}); IDiff-Face's torch-pickled "
            "'.npy' files (a torch.save'd tensor) are a different format: load one with "
            "torch.load and write it with numpy.save"
        ) from error
    names = load_restricted(names_pkl, {}, _ADMIS_NAMES_REFUSAL)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{names_pkl}: expected a pickled list of str (relative image paths)")
    _check_rows(embeddings, names, embed_npy, names_pkl)
    return embeddings.astype(np.float32, copy=False), names


def write_admis_embeddings(
    embeddings: np.ndarray, names: Sequence[str], embed_npy: Path, names_pkl: Path
) -> None:
    """Write the ADMIS pair so the reference's `CASIA_file` dataset reads our embeddings."""
    embed_npy, names_pkl = Path(embed_npy), Path(names_pkl)
    names = [str(name) for name in names]
    _check_rows(embeddings, names, embed_npy, names_pkl)
    with atomic_path(embed_npy) as tmp, tmp.open("wb") as f:
        # A file object: given a path without ".npy", np.save would append one.
        np.save(f, np.asarray(embeddings, dtype=np.float32))
    with atomic_path(names_pkl) as tmp, tmp.open("wb") as f:
        pickle.dump(names, f, protocol=ADMIS_PICKLE_PROTOCOL)


def _check_rows(
    embeddings: np.ndarray, names: Sequence[str], embed: Path, names_file: Path
) -> None:
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(
            f"{embed}: expected a 2-D float array (N, D), got {embeddings.dtype} {embeddings.shape}"
        )
    if embeddings.shape[0] != len(names):
        raise ValueError(
            f"{embed} has {embeddings.shape[0]} rows but {names_file} lists {len(names)} names; "
            f"they must be index-aligned: re-extract both together"
        )

"""Manifests of synthetic training sets, with DCFace's oversampling of the context faces.

ADMIS copies each identity's context face 5 times into its folder;
here the copies are manifest lines, so no image bytes are duplicated and the same synthetic
images serve every variant (with or without oversampling, and the context-faces-only control).
The ADMIS packer's skip of each folder's first image is a quirk of its layout and is not
reproduced.
"""

from __future__ import annotations

from pathlib import Path

from synface.io.manifest import ManifestEntry, read_manifest, write_manifest


def synthetic_entries(images_dir: Path, identities: int) -> list[ManifestEntry]:
    """The generated images of identities 0..identities-1 (``<id:05d>/<k>.png``), label = id."""
    entries = []
    for label in range(identities):
        folder = Path(images_dir) / f"{label:05d}"
        files = sorted(folder.glob("*.png"))
        if not files:
            raise FileNotFoundError(
                f"{folder} holds no images: synthesis of identity {label} has not finished "
                "(rerun the synthesize rule)"
            )
        entries += [ManifestEntry(path, label) for path in files]
    return entries


def context_face_entries(
    faces_manifest: Path, identities: int, repeats: int
) -> list[ManifestEntry]:
    """Each identity's context face, ``repeats`` times (DCFace: 5)."""
    faces = read_manifest(faces_manifest)
    if len(faces) < identities:
        raise ValueError(
            f"{faces_manifest} has {len(faces)} context faces, fewer than the {identities} "
            "identities of the set"
        )
    return [
        ManifestEntry(face.path, face.label) for face in faces[:identities] for _ in range(repeats)
    ]


def write_set_manifests(
    out_manifest: Path,
    identities: int,
    images_dir: Path | None = None,
    faces_manifest: Path | None = None,
    repeats: int = 0,
    synthetic_manifest: Path | None = None,
) -> int:
    """Write a training set's manifest (generated images + oversampled context faces) and,
    optionally, a manifest of the generated images alone (for consistency reports)."""
    generated = synthetic_entries(images_dir, identities) if images_dir else []
    if synthetic_manifest is not None:
        write_manifest(synthetic_manifest, generated)
    copies = context_face_entries(faces_manifest, identities, repeats) if repeats else []
    if not generated and not copies:
        raise ValueError(f"{out_manifest}: a set needs generated images or context faces")
    return write_manifest(out_manifest, [*generated, *copies])

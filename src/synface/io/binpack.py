"""insightface verification packs (`lfw.bin`, `cfp_fp.bin`, ...), read safely and written portably.

A pack is a pickle of `(images, issame)`. Packs are downloaded from
third-party mirrors, and unpickling can run arbitrary code, so reading goes through
`synface.io.pickles.load_restricted`, resolving only the numpy globals that rebuild uint8 arrays.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy._core.multiarray import _reconstruct

from synface.io.atomic import atomic_path
from synface.io.pickles import load_restricted

# Protocol 4 is readable by every Python 3 loader TFace, insightface and ElasticFace use.
WRITE_PROTOCOL = 4


class BinPackError(ValueError):
    """A file is not a well-formed verification pack."""


# The only globals an ndarray pickle needs (CFP-FP/AgeDB-30 packs store cv2.imencode output).
# Packs name numpy.core or numpy._core, depending on the NumPy that wrote them; NumPy >= 1.26
# (the pinned minimum) has numpy._core.
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_REFUSAL = (
    "a verification pack only needs numpy array reconstruction, so this file is not a plain "
    "pack. Re-create it from trusted images with synface.io.binpack.write_bin"
)


def read_bin(path: Path | str) -> tuple[list[bytes], list[bool]]:
    """Load a pack as (JPEG bytes per image, one bool per pair); pair i is images 2i and 2i+1."""
    path = Path(path)
    # encoding="bytes": Python-2 packs store JPEGs as py2 `str`; latin1 would turn them into
    # Python 3 text that np.frombuffer rejects.
    content = load_restricted(path, _ALLOWED_GLOBALS, _REFUSAL, "bytes", BinPackError)
    if not isinstance(content, tuple | list) or len(content) != 2:
        raise BinPackError(
            f"{path}: expected a pickled 2-tuple (images, issame), got {_describe(content)}"
        )
    raw_images, raw_issame = content
    issame = _to_bools(raw_issame, path)
    if not isinstance(raw_images, list | tuple):
        raise BinPackError(f"{path}: images must be a list, got {_describe(raw_images)}")
    if len(raw_images) != 2 * len(issame):
        raise BinPackError(
            f"{path}: {len(raw_images)} images for {len(issame)} pairs; a pack holds exactly "
            f"two images per issame flag"
        )
    images = [_to_bytes(image, i, path) for i, image in enumerate(raw_images)]
    return images, issame


def _to_bytes(image: object, i: int, path: Path) -> bytes:
    """Accept both element forms: raw bytes, or cv2.imencode's uint8 array of shape (n, 1)."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, np.ndarray):
        column = image.ndim == 2 and image.shape[1] == 1
        if image.dtype == np.uint8 and (image.ndim == 1 or column):
            return image.tobytes()
        raise BinPackError(
            f"{path}: image {i} is an array of dtype {image.dtype} and shape {image.shape}; "
            f"expected encoded JPEG bytes as uint8 of shape (n,) or (n, 1)"
        )
    hint = " (was the pack re-saved after loading with encoding='latin1'?)"
    raise BinPackError(
        f"{path}: image {i} is {_describe(image)}, expected encoded JPEG bytes"
        + (hint if isinstance(image, str) else "")
    )


def _to_bools(raw: object, path: Path) -> list[bool]:
    values = raw.tolist() if isinstance(raw, np.ndarray) and raw.dtype == np.bool_ else raw
    if not isinstance(values, list | tuple) or not all(isinstance(v, bool) for v in values):
        raise BinPackError(f"{path}: issame must be a list of bools, got {_describe(raw)}")
    return list(values)


def _describe(value: object) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"


def write_bin(path: Path | str, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a pack that TFace, insightface and ElasticFace all load.

    Written to a temporary file and renamed, so an interrupted run never leaves a truncated pack
    that a later evaluation would fail on (or, worse, partly read).
    """
    path = Path(path)
    if len(images) != 2 * len(issame):
        raise ValueError(
            f"{path}: {len(images)} images for {len(issame)} pairs; need two images per flag"
        )
    image_list = []
    for i, image in enumerate(images):
        if not isinstance(image, bytes | bytearray):
            raise TypeError(f"{path}: image {i} is {_describe(image)}, expected JPEG bytes")
        image_list.append(bytes(image))
    flags = [bool(flag) for flag in issame]
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        pickle.dump((image_list, flags), f, protocol=WRITE_PROTOCOL)

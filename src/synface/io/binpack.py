"""insightface verification packs (`lfw.bin`, `cfp_fp.bin`, ...), read safely and written portably.

A pack is a pickle of `(images, issame)` (specs/evaluation.md §1). Packs are downloaded from
third-party mirrors, and unpickling can run arbitrary code, so reading goes through an unpickler
that resolves only the numpy globals needed to rebuild uint8 arrays.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Protocol 4 is readable by every Python 3 loader TFace, insightface and ElasticFace use (§1).
WRITE_PROTOCOL = 4


class BinPackError(ValueError):
    """A file is not a well-formed verification pack."""


class UnsafePickleError(BinPackError):
    """A pack's pickle names a global outside the allow-list; it was refused, not executed."""


def _numpy_reconstruct() -> Callable[..., np.ndarray]:
    # NumPy 2 renamed numpy.core to numpy._core and warns on the old path; NumPy 1.26 ships a
    # numpy._core alias, older releases only have numpy.core.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_RECONSTRUCT = _numpy_reconstruct()

# The only globals an ndarray pickle needs (§1: CFP-FP/AgeDB-30 packs store cv2.imencode output).
# Both numpy.core and numpy._core spellings occur, depending on the NumPy that wrote the pack.
_ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose global lookup is an allow-list; everything else is refused unexecuted."""

    def __init__(self, file: BinaryIO, path: Path):
        # encoding="bytes": Python-2 packs store JPEGs as py2 `str`; latin1 would turn them into
        # Python 3 text that np.frombuffer rejects (§1, "Python-2 pickle quirk").
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> object:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self._path}: refused to load global '{module}.{name}'; a verification pack "
                f"only needs numpy array reconstruction, so this file is not a plain pack. "
                f"Re-create it from trusted images with synface.io.binpack.write_bin"
            )
        return allowed


def read_bin(path: Path | str) -> tuple[list[bytes], list[bool]]:
    """Load a pack as (JPEG bytes per image, one bool per pair); pair i is images 2i and 2i+1."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            content = _RestrictedUnpickler(f, path).load()
        except (EOFError, pickle.UnpicklingError, UnicodeDecodeError) as exc:
            raise BinPackError(f"{path}: not a readable pickle ({exc})") from exc
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
    """Accept both element forms of §1: raw bytes, or cv2.imencode's uint8 array of shape (n, 1)."""
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
    """Write a pack that TFace, insightface and ElasticFace all load (§1, "Writing ...").

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump((image_list, flags), f, protocol=WRITE_PROTOCOL)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

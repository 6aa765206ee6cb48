"""Atomic, durable file writes: the one way synface puts a file in place.

A temporary name in the target's folder, fsync, ``os.replace``, then fsync of the folder: a job
killed or a machine that loses power mid-write leaves the old file or none, never a truncated
one, and a rename that returned has reached the disk. A full disk is reported as such, with the
path, whatever library was writing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DiskFullError(OSError):
    """No space left while writing a file; the message names the file."""


def _fsync_folder(folder: Path) -> None:
    """Persist a rename: the folder's entry table is what records it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(error: BaseException) -> bool:
    """ENOSPC or EDQUOT. Libraries that write by path can hide the errno (``torch.save(obj,
    "path")`` raises an ``inline_container.cc`` RuntimeError): write through a Python file
    object, as ``synface.checkpoint.atomic_save`` does, so the OSError reaches this check."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, made durable and renamed onto ``path`` on success.

    The caller writes the temporary path any way it likes (``torch.save``, ``np.save``, PIL);
    on failure it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; a plain open honours the umask.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        if _is_disk_full(error):
            raise DiskFullError(
                errno.ENOSPC, f"disk full while writing {path}: free space and rerun"
            ) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path | str, text: str) -> None:
    """UTF-8 text, whatever the locale, so manifests with non-ASCII names read back."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, value: Any) -> None:
    """Indented JSON with a final newline: the reports users read and diff."""
    write_text(path, json.dumps(value, indent=2) + "\n")

"""Atomic file writes and the newest-complete-checkpoint lookup shared by every trainer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from synface.io.atomic import atomic_path


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``.

    A job killed mid-write then leaves either the old file or none, never a truncated one that
    a resume would choke on.
    """
    # Through a Python file object: a full disk then raises OSError(ENOSPC), which atomic_path
    # reports with the path, instead of torch's errno-less "inline_container.cc" message.
    with atomic_path(Path(path)) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)


def load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: a checkpoint never runs code (DESIGN.md §6)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def numbered_files(folder: Path, pattern: str) -> dict[int, Path]:
    """Files of ``folder`` whose name matches ``pattern`` (one ``{n}`` placeholder), by number."""
    regex = re.compile(re.escape(pattern).replace(r"\{n\}", r"(\d+)") + "$")
    found = {}
    if Path(folder).is_dir():
        for path in Path(folder).iterdir():
            match = regex.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return found


def prune_numbered(folder: Path, patterns: list[str], keep: int) -> None:
    """Delete all but the ``keep`` highest-numbered files of each pattern.

    The set kept is decided by the first pattern, so multi-file checkpoints go together.
    """
    kept = sorted(numbered_files(folder, patterns[0]))[-keep:]
    for pattern in patterns:
        for n, path in numbered_files(folder, pattern).items():
            if n not in kept:
                path.unlink()


def newest_numbered(folder: Path, pattern: str) -> tuple[int, Path] | None:
    """The highest-numbered file of ``pattern`` in ``folder``, or None."""
    found = numbered_files(folder, pattern)
    if not found:
        return None
    n = max(found)
    return n, found[n]

"""``rejected.tsv``: the images a dataset stage skipped, and why (``synface.io.images``' rule).

One line per skipped image, ``path<TAB>reason`` under a header, the path as the manifest lists
it (relative to the manifest's folder). Stages write it beside their output even when empty, so
a rerun never leaves an older list behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from synface.io import atomic

REJECTED_FILE = "rejected.tsv"


def no_usable_images(source: Path, listed: Sequence[tuple[str, str]], out_dir: Path) -> ValueError:
    """The error of a dataset stage left with nothing: names the files and the full list."""
    shown = "; ".join(f"{name}: {reason}" for name, reason in listed[:3])
    more = f" and {len(listed) - 3} more" if len(listed) > 3 else ""
    return ValueError(
        f"{source}: none of its {len(listed)} images is usable ({shown}{more}); every reason is "
        f"listed in {out_dir / REJECTED_FILE}. Fix or remove those files and rerun"
    )


def write_rejected(out_dir: Path, rejected: Sequence[tuple[str, str]]) -> None:
    """``rejected.tsv``: a header, then ``path<TAB>reason`` per skipped image."""
    lines = ["path\treason\n"]
    lines += [f"{path}\t{' '.join(reason.split())}\n" for path, reason in rejected]
    atomic.write_text(Path(out_dir) / REJECTED_FILE, "".join(lines))


def read_rejected(out_dir: Path) -> dict[str, str]:
    """``{path: reason}`` from a stage's ``rejected.tsv``; empty when there is none."""
    path = Path(out_dir) / REJECTED_FILE
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return dict(line.split("\t", 1) for line in lines if line)

"""Checkpoints and run folders, shared by every trainer.

A trainer keeps numbered checkpoints in a run folder outside its declared outputs, so that a
rerun resumes instead of starting over. A run folder is bound to what it was trained from: each
checkpoint stores a *fingerprint* of the run's inputs (the training data's content, the settings
that change the result, the architecture), and `resume_state` continues only from a checkpoint
whose fingerprint matches. Otherwise the folder is set aside and the run starts from scratch,
and the log says which input differs. A damaged checkpoint is named in the log and the previous
one is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from synface import runtime
from synface.io.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

FINGERPRINT_KEY = "fingerprint"
_CHUNK = 1 << 20


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
    """``torch.load`` with ``weights_only=True``: a checkpoint never runs code."""
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


def content_digest(parts: Iterable[Path | memoryview]) -> str:
    """SHA-256 of the bytes of ``parts`` (files, streamed in 1 MiB chunks, or in-memory buffers).

    Whole files, not a sample of blocks: a re-encoded subset of the data (one identity's
    latents) must change the digest. Reading the data once per (re)start costs seconds per GB
    (about 0.5 GB/s on one core), against hours of training on it.
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, memoryview):
            digest.update(part)
            continue
        with Path(part).open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def fingerprint(
    data: str, settings: Mapping[str, Any], architecture: Mapping[str, Any]
) -> dict[str, str]:
    """What a run was trained from, as strings (a ``weights_only`` checkpoint can hold them).

    ``settings`` are those that change the weights a run ends with: the trainers leave out how
    long to train (a longer run continues a shorter one), how often to log, save or preview,
    how many checkpoints to keep and loader workers.
    """
    return {
        "data": data,
        "settings": json.dumps(settings, sort_keys=True),
        "architecture": json.dumps(architecture, sort_keys=True),
    }


def _differences(stored: Any, current: Mapping[str, str]) -> str:
    """Which parts of ``current`` the fingerprint ``stored`` differs in, in words ('' if none)."""
    if not isinstance(stored, Mapping):
        return "its checkpoint records no inputs (made by an older synface)"
    found = []
    for part in ("data", "settings", "architecture"):
        if stored.get(part) == current[part]:
            continue
        if part == "data":
            found.append("the training data changed")
            continue
        before, now = json.loads(stored.get(part) or "{}"), json.loads(current[part])
        keys = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        found.append(f"{part} differ in {', '.join(keys)}")
    return "; ".join(found)


def _load_all(run_dir: Path, patterns: Sequence[str], n: int) -> list[Any] | None:
    """The files of checkpoint ``n``; None (after naming the damaged file) if one cannot be read.

    A damaged file is renamed ``*.damaged``: kept for inspection, out of the numbering.
    """
    states = []
    for pattern in patterns:
        path = run_dir / pattern.format(n=n)
        try:
            states.append(load(path))
        except Exception as error:  # any unreadable file (EOF, bad zip, pickle) is damaged
            aside = path.with_name(path.name + ".damaged")
            path.replace(aside)
            log.warning(
                "checkpoint %s is damaged (%s: %s); set aside as %s, trying the previous one",
                path,
                type(error).__name__,
                str(error)[:200],
                aside.name,
            )
            return None
    return states


def _set_aside(run_dir: Path, reason: str) -> None:
    """Move ``run_dir`` to ``<run_dir>.previous`` (replacing an older one) and start it anew."""
    previous = run_dir.with_name(run_dir.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous)
    run_dir.rename(previous)
    run_dir.mkdir(parents=True)
    log.warning(
        "%s is not resumed: %s. Moved it to %s; training starts from scratch",
        run_dir,
        reason,
        previous,
    )


def resume_state(
    run_dir: Path,
    patterns: Sequence[str],
    current: Mapping[str, str],
    at_most: int,
    dist_info: runtime.Distributed | None = None,
) -> tuple[int, list[Any]] | None:
    """The newest usable checkpoint of ``run_dir`` for a run of fingerprint ``current``.

    A checkpoint ``n`` is the files ``patterns`` (each with ``{n}``); the first is written last
    and holds the fingerprint under ``"fingerprint"``. Returns ``(n, [state of each file])``,
    or None when the run starts from scratch: the folder held no checkpoint, or (logged, and the
    folder moved aside) its newest readable checkpoint has another fingerprint, none could be
    read, or one is past ``at_most`` (the configured length).

    In a distributed run the main process checks (``current`` is only read there) while the
    others wait; they then load the checkpoint it kept, which is the newest one left.
    """
    run_dir = Path(run_dir)
    if dist_info is None or not dist_info.enabled:
        return _checked_resume(run_dir, patterns, current, at_most)
    resumed = _checked_resume(run_dir, patterns, current, at_most) if dist_info.is_main else None
    torch.distributed.barrier()
    if not dist_info.is_main:
        complete = _complete(run_dir, patterns)
        if complete:
            resumed = complete[-1], [load(run_dir / p.format(n=complete[-1])) for p in patterns]
    return resumed


def _complete(run_dir: Path, patterns: Sequence[str]) -> list[int]:
    """Numbers of the checkpoints whose files are all there, ascending."""
    return sorted(
        n
        for n in numbered_files(run_dir, patterns[0])
        if all((run_dir / p.format(n=n)).exists() for p in patterns[1:])
    )


def _checked_resume(
    run_dir: Path, patterns: Sequence[str], current: Mapping[str, str], at_most: int
) -> tuple[int, list[Any]] | None:
    run_dir.mkdir(parents=True, exist_ok=True)
    complete = _complete(run_dir, patterns)
    if not complete:
        return None
    reason = "none of its checkpoints could be read"
    if complete[-1] > at_most:
        reason = f"it holds checkpoint {complete[-1]}, past the {at_most} now configured"
    else:
        for n in reversed(complete):
            states = _load_all(run_dir, patterns, n)
            if states is None:
                continue
            differences = _differences(states[0].get(FINGERPRINT_KEY), current)
            if not differences:
                return n, states
            reason = f"it was trained from other inputs: {differences}"
            break
    _set_aside(run_dir, reason)
    return None


class LossLog:
    """A run folder's training log, written by the main process only, in two forms.

    ``loss.tsv``: a header row, then one row per logged step (``step``, ``loss``, ``lr``, ...),
    so ``pandas.read_csv(path, sep="\\t")`` or a spreadsheet reads it as it is; and TensorBoard
    event files under ``tensorboard/`` (every column but ``step`` as a scalar, plus the images
    the trainer adds), for ``tensorboard --logdir``.

    Opening it for a run resumed at ``step_done`` drops the rows of later steps (the work a
    killed run did after its last checkpoint, which the resumed run redoes and logs again), and
    TensorBoard is told to discard its events of those steps too.
    """

    def __init__(self, run_dir: Path, step_done: int) -> None:
        self.path = Path(run_dir) / "loss.tsv"
        self.board_dir = Path(run_dir) / "tensorboard"
        self.columns: list[str] | None = None
        self._step_done = step_done
        self._board: Any = None
        if self.path.exists():
            self._keep_rows_up_to(step_done)

    def _keep_rows_up_to(self, step_done: int) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        header = lines[0].rstrip("\n").split("\t") if lines else []
        if "step" not in header:
            aside = self.path.with_name(self.path.name + ".previous")
            log.warning("%s has no header row with a step column: moved to %s", self.path, aside)
            self.path.replace(aside)
            return
        self.columns = header
        column = header.index("step")
        kept = [lines[0]] + [
            line for line in lines[1:] if float(line.split("\t")[column]) <= step_done
        ]
        if len(kept) != len(lines):
            write_text(self.path, "".join(kept))

    def append(self, record: Mapping[str, float]) -> None:
        """One row (its keys are the columns; the first record's keys write the header)."""
        if self.columns is None:
            self.columns = list(record)
            write_text(self.path, "\t".join(self.columns) + "\n")
        elif list(record) != self.columns:
            raise ValueError(
                f"{self.path} has the columns {self.columns}, this run logs {list(record)}: "
                "move the file aside to start a new log"
            )
        with self.path.open("a", encoding="utf-8") as out:
            out.write("\t".join(f"{v:.6g}" for v in record.values()) + "\n")
        board = self._tensorboard()
        for key, value in record.items():
            if key != "step":
                board.add_scalar(key, value, int(record["step"]))
        board.flush()

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A (3, H, W) image in [0, 1] (a preview grid) in TensorBoard's images tab."""
        board = self._tensorboard()
        board.add_image(tag, image, step)
        board.flush()

    def _tensorboard(self) -> Any:
        """The event writer, made on first use (importing TensorBoard takes seconds)."""
        if self._board is None:
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(self.board_dir, purge_step=self._step_done + 1)
        return self._board

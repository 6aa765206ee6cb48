"""GPU slots: which of a workstation's GPUs a job may use, so that concurrent jobs never share one.

Snakemake counts GPUs (``--resources gpu=N``) but assigns no device ids, so without this every
single-GPU job of a workstation would run on the first GPU. A job holds a device by holding an
exclusive ``flock`` on that device's lock file in a folder shared by every job of the machine;
the kernel drops the lock when the last descriptor of it closes, so a job releases its devices
however it ends (exit, exception, SIGKILL) and no stale file ever needs deleting.

- Devices are chosen among those visible to the job: ``CUDA_VISIBLE_DEVICES`` when SLURM or the
  user set it, else every GPU torch sees. ``SYNFACE_GPU_DEVICES`` (comma-separated ids) overrides
  both: tests use it to simulate GPUs on a machine without any.
- Locks live in ``SYNFACE_GPU_LOCK_DIR``, by default ``<tmp>/synface-gpu-slots`` (world-writable
  and sticky, so the jobs of all users of a machine see each other's locks: ``flock`` needs only
  read access). Under SLURM the folder gets a ``slurm-<job id>`` subfolder: cgroup-confined jobs
  all see their own GPU as id 0, and only jobs inside one allocation compete for its GPUs.
- A process that holds slots passes them to its children through ``CUDA_VISIBLE_DEVICES`` and
  ``SYNFACE_GPU_SLOTS_HELD``; a child that finds the latter set uses its visible devices as they
  are (``synface gpu-slots --count k -- torchrun ...`` wraps multi-GPU jobs this way).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

DEVICES_ENV = "SYNFACE_GPU_DEVICES"
LOCK_DIR_ENV = "SYNFACE_GPU_LOCK_DIR"
HELD_ENV = "SYNFACE_GPU_SLOTS_HELD"
# How long a job that found too few free devices waits before trying again (seconds).
RETRY_SECONDS = 0.5

# The lock files of this process's slots: open for the process's lifetime, so the locks last
# exactly as long as the process.
_held: list[IO[bytes]] = []
# The torch index of the one GPU ``device_index`` took for this process, once taken.
_own: list[int] = []


class SlotError(RuntimeError):
    """A job asked for more GPUs than it can see."""


def visible_devices() -> list[str]:
    """The ids of the GPUs this job may use (module docstring); empty without a GPU."""
    for name in (DEVICES_ENV, "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(name)
        if value is not None:
            return [d.strip() for d in value.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def lock_dir() -> Path:
    """The folder of the per-device lock files shared by the jobs that compete for GPUs."""
    configured = os.environ.get(LOCK_DIR_ENV)
    folder = Path(configured) if configured else Path(tempfile.gettempdir()) / "synface-gpu-slots"
    if not configured and not folder.is_dir():
        folder.mkdir(exist_ok=True)
        # Every user's jobs take locks here; sticky, so none can delete another's files. (Only
        # the owner may chmod: another user's job that raced to create it leaves it be.)
        with contextlib.suppress(PermissionError):
            os.chmod(folder, 0o1777)
    if os.environ.get("SLURM_JOB_ID"):
        folder = folder / f"slurm-{os.environ['SLURM_JOB_ID']}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _try_lock(folder: Path, device: str) -> IO[bytes] | None:
    """The open, exclusively locked lock file of ``device``, or None if another job holds it."""
    path = folder / f"gpu-{device.replace('/', '_')}.lock"
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    file = os.fdopen(fd, "rb")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        file.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    return file


def _take(folder: Path, devices: Sequence[str], count: int) -> list[tuple[str, IO[bytes]]]:
    """``count`` free devices locked, or none (all-or-nothing, so two jobs waiting for two
    devices each can never hold one apiece and wait for each other forever)."""
    taken: list[tuple[str, IO[bytes]]] = []
    for device in devices:
        file = _try_lock(folder, device)
        if file is not None:
            taken.append((device, file))
            if len(taken) == count:
                return taken
    for _, file in taken:
        file.close()
    return []


def acquire(count: int) -> list[str]:
    """Hold ``count`` visible GPUs no other running job holds, waiting until that many are free;
    returns their ids. Held until the process ends (or ``release``). No GPU: returns []."""
    devices = visible_devices()
    if count < 1 or not devices:
        return []
    if count > len(devices):
        raise SlotError(
            f"this job asks for {count} GPUs but only {len(devices)} are visible to it "
            f"({','.join(devices)}): lower the job's gpus setting in the config to {len(devices)} "
            "or less, or make more GPUs visible (CUDA_VISIBLE_DEVICES, the SLURM allocation)"
        )
    folder = lock_dir()
    waited = False
    while not (taken := _take(folder, devices, count)):
        if not waited:
            log.info("waiting for %d free GPU(s) of %s (locks in %s)", count, devices, folder)
            waited = True
        time.sleep(RETRY_SECONDS * (1 + random.random()))
    _held.extend(file for _, file in taken)
    chosen = [device for device, _ in taken]
    log.info("GPU slot(s) %s of %s (locks in %s)", chosen, devices, folder)
    return chosen


def device_index() -> int:
    """Torch's index of this process's GPU: the one its parent handed it (index 0 of its
    visible devices), else one slot, taken the first time and kept for later calls."""
    if os.environ.get(HELD_ENV):
        return 0
    if not _own:
        devices = visible_devices()
        _own.append(devices.index(acquire(1)[0]))
    return _own[0]


def release() -> None:
    """Drop every slot this process holds (the process's end does the same)."""
    _own.clear()
    while _held:
        _held.pop().close()


def slot_environment(devices: Sequence[str]) -> dict[str, str]:
    """The environment that hands ``devices`` to a child process (module docstring)."""
    env = dict(os.environ)
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        env[HELD_ENV] = "1"
        env.pop(DEVICES_ENV, None)
    return env


def run_with_slots(count: int, command: Sequence[str]) -> None:
    """Hold ``count`` GPUs, then replace this process by ``command`` on exactly those GPUs.

    The lock descriptors survive the ``exec``, so the command itself holds the slots and drops
    them when it ends, however it ends. Without a GPU the command runs unchanged.
    """
    if not command:
        raise SlotError("synface gpu-slots: give the command to run after --")
    devices = [] if os.environ.get(HELD_ENV) else acquire(count)
    for file in _held:
        os.set_inheritable(file.fileno(), True)
    os.execvpe(command[0], list(command), slot_environment(devices))

"""GPU slots on simulated GPUs (``SYNFACE_GPU_DEVICES``): concurrent jobs never share a device,
a killed holder frees its device, and a job asking for too many fails naming the count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from synface import gpu_slots, runtime

# A job that holds its devices for a moment: it marks each device it was given as busy with an
# exclusive create, so a second holder of the same device at the same time leaves a clash file.
JOB = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    board = Path(sys.argv[1])
    devices = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
    marks = []
    for device in devices:
        mark = board / f"busy-{device}"
        try:
            mark.touch(exist_ok=False)
            marks.append(mark)
        except FileExistsError:
            (board / f"clash-{device}-{os.getpid()}").touch()
    time.sleep(0.3)
    for mark in marks:
        mark.unlink()
    with open(board / "log", "a") as log:
        log.write(",".join(devices) + "\\n")
    """
)
SLOTS = [sys.executable, "-m", "synface.cli", "gpu-slots"]


@pytest.fixture
def slots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two simulated GPUs with their locks under ``tmp_path``; this process holds none after."""
    monkeypatch.setenv(gpu_slots.DEVICES_ENV, "0,1")
    monkeypatch.setenv(gpu_slots.LOCK_DIR_ENV, str(tmp_path / "locks"))
    for name in ("SLURM_JOB_ID", gpu_slots.HELD_ENV, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    gpu_slots.release()


def _wrapped_job(board: Path, count: int) -> subprocess.Popen:
    command = [*SLOTS, "--count", str(count), "--", sys.executable, "-c", JOB, str(board)]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(("jobs", "count", "devices"), [(5, 1, "0,1"), (3, 2, "0,1,2")])
def test_concurrent_jobs_never_share_a_gpu(
    slots: Path, monkeypatch: pytest.MonkeyPatch, jobs: int, count: int, devices: str
) -> None:
    """More jobs than free devices at once: each waits for a free one instead of sharing."""
    monkeypatch.setenv(gpu_slots.DEVICES_ENV, devices)
    board = slots / "board"
    board.mkdir()
    running = [_wrapped_job(board, count) for _ in range(jobs)]
    errors = [process.communicate()[1] for process in running]
    assert [process.returncode for process in running] == [0] * jobs, errors
    assert not list(board.glob("clash-*"))
    held = [line.split(",") for line in (board / "log").read_text().splitlines()]
    assert len(held) == jobs
    assert all(len(set(got)) == count and set(got) <= set(devices.split(",")) for got in held)


def test_a_killed_holder_frees_its_gpu(slots: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from synface import gpu_slots; print(gpu_slots.acquire(2), flush=True);"
            " time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "['0', '1']"
        assert gpu_slots._take(gpu_slots.lock_dir(), ["0", "1"], 1) == []
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # No file was deleted: the kernel dropped the dead process's locks.
    freed = gpu_slots._take(gpu_slots.lock_dir(), ["0", "1"], 2)
    assert [device for device, _ in freed] == ["0", "1"]
    for _, file in freed:
        file.close()


def test_asking_for_more_gpus_than_exist_names_the_count(slots: Path) -> None:
    with pytest.raises(gpu_slots.SlotError, match="asks for 3 GPUs but only 2 are visible"):
        gpu_slots.acquire(3)
    result = subprocess.run(
        [*SLOTS, "--count", "3", "--", "true"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "asks for 3 GPUs but only 2 are visible to it (0,1)" in result.stderr


def test_without_a_gpu_the_command_runs_unchanged(slots: Path, monkeypatch) -> None:
    monkeypatch.setenv(gpu_slots.DEVICES_ENV, "")
    show = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES')); raise SystemExit(7)"
    result = subprocess.run(
        [*SLOTS, "--count", "2", "--", sys.executable, "-c", show],
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stdout.strip()) == (7, "None")


def test_pick_device_takes_a_gpu_no_other_job_holds(slots: Path, monkeypatch) -> None:
    """The in-process path of single-GPU stages: device 0 is held elsewhere, so this job gets
    cuda:1, and keeps it for later calls instead of taking a second slot."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    other = gpu_slots._try_lock(gpu_slots.lock_dir(), "0")
    try:
        assert runtime.pick_device() == torch.device("cuda", 1)
        assert runtime.pick_device() == torch.device("cuda", 1)
        assert gpu_slots._take(gpu_slots.lock_dir(), ["1"], 1) == []
    finally:
        other.close()


def test_a_child_of_a_slot_holder_uses_what_it_was_given(slots: Path, monkeypatch) -> None:
    """Under ``synface gpu-slots`` the parent already holds the slots: no second lock, and a
    torchrun worker (or a plain stage) indexes the devices it was handed."""
    monkeypatch.setenv(gpu_slots.HELD_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    assert runtime.pick_device() == torch.device("cuda", 0)
    assert gpu_slots.acquire(2) == ["0", "1"]

"""Where and how a stage runs: threads, device, mixed precision and the DDP process group.

Every stage goes through these helpers so that one code path serves a 2-core laptop, one GPU and
``torchrun --nproc-per-node N`` alike (``env://`` rendezvous, ``LOCAL_RANK``
from the environment, never a ``--local-rank`` argument).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from synface import gpu_slots

log = logging.getLogger(__name__)


def set_threads(threads: int) -> None:
    """Pin torch's intra-op pool to the job's Snakemake ``threads``.

    Oversubscription is the main CPU trap here: two busy pools on two cores run 10-18x slower.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    # The inter-op pool can only be sized before any parallel work has started.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly one-process) job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> Distributed:
    """Join the process group torchrun set up, or run alone when launched plainly.

    NCCL on CUDA, gloo on CPU, so the DDP path is testable without a GPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size == 1 or not torch.cuda.is_available():
        device = pick_device()
    else:
        # torchrun's processes share the GPUs their launcher was given (``synface gpu-slots``).
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        log.info("rank %d/%d joined the %s process group", rank, world_size, backend)
    return Distributed(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def pick_device() -> torch.device:
    """The device of a single-process stage: a GPU that no other running job holds
    (``synface.gpu_slots``), so concurrent jobs of a workstation spread over its GPUs; the CPU
    when there is no GPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", gpu_slots.device_index())
    torch.cuda.set_device(device)
    return device


PRECISIONS = ("bf16", "fp32")


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "bf16") -> Iterator[None]:
    """bf16 autocast on CUDA; plain fp32 on CPU, where bf16 made training slower here
    (+20 % per step, measured on the demo), and wherever ``precision`` is ``"fp32"`` (the
    config's switch for reproducing a reference that ran in fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda" and precision == "bf16":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield

"""synface.runtime on a CPU machine: threads, the one-process default, no autocast, the device."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist

from synface import runtime


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_set_threads_pins_torchs_pool(restore_threads) -> None:
    runtime.set_threads(2)
    assert torch.get_num_threads() == 2
    runtime.set_threads(1)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("threads", [0, -1])
def test_set_threads_refuses_no_threads(threads: int, restore_threads) -> None:
    with pytest.raises(ValueError, match=f"threads must be >= 1, got {threads}"):
        runtime.set_threads(threads)


def test_without_torchrun_the_process_runs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = runtime.init_distributed()
    assert info == runtime.Distributed(0, 1, 0, torch.device("cpu"))
    assert info.is_main and not info.enabled
    # One process joins no process group: nothing to rendezvous with.
    assert not dist.is_initialized()
    runtime.shutdown_distributed()


def test_torchruns_rank_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank > 0 of a one-process 'world' (WORLD_SIZE=1): the ranks come from the environment
    without a process group being started."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = runtime.init_distributed()
    assert (info.rank, info.local_rank, info.is_main) == (3, 1, False)
    assert not dist.is_initialized()


def test_pick_device_is_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.pick_device() == torch.device("cpu")


def test_autocast_on_the_cpu_keeps_float32() -> None:
    """bf16 autocast only on CUDA: on the CPU a matmul stays float32, bit for bit."""
    torch.manual_seed(0)
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with runtime.autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        product = a @ b
    assert product.dtype == torch.float32
    assert torch.equal(product, a @ b)


@pytest.mark.parametrize(("precision", "entered"), [("bf16", [torch.bfloat16]), ("fp32", [])])
def test_fp32_precision_keeps_cuda_out_of_autocast(
    precision: str, entered: list[torch.dtype], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a CUDA device gets, recorded (no GPU here): bf16 autocast, or none at all under
    fp32 (TFace trains with `AMP: false` and evaluates in fp32)."""
    calls: list[torch.dtype] = []

    def record(device_type: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
        calls.append(dtype)
        return contextlib.nullcontext()

    monkeypatch.setattr(torch, "autocast", record)
    with runtime.autocast(torch.device("cuda"), precision):
        pass
    assert calls == entered


def test_an_unknown_precision_is_refused() -> None:
    with (
        pytest.raises(ValueError, match="bf16, fp32"),
        runtime.autocast(torch.device("cpu"), "fp16"),
    ):
        pass

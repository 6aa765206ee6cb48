"""Two DDP processes train what one process trains (CPU, gloo, launched through torchrun).

Both trainers fix the global batch by config and split it over the ranks, so that a job on N
GPUs keeps the recipe of a job on one (the rules launch `torchrun --module synface.cli` when
gpus > 1). Here `synface train-*` runs in 2 processes with half of each batch, against the
trainer run in this process with the whole batch, from the same seed; the loss curves
(`loss.tsv`, logged every step) and the final weights are compared.

- LDM (GroupNorm, which normalises each sample on its own): 2 processes compute what 1 does,
  up to float summation order. Measured: losses equal to the 6 digits `loss.tsv` keeps,
  weights within 4e-6.
- Recognition (IR + ArcFace, BatchNorm): each process normalises with the statistics of its
  half of the batch. With 12 faces per half that changes the first step's gradient by about
  70 % of its norm (27 % with 64 per half, measured), and this fast-moving toy run amplifies
  it: the curves agree at step 1 (loss within 1.1 %: the same weights, other statistics) and
  drift apart after it, so no honest tolerance covers the whole curve. The exact check is
  against one process with BatchNorm computed per half, as the two processes compute it
  (running statistics from the first half: DDP keeps rank 0's buffers). Measured: losses
  within 5e-6 relative, weights and running statistics within 4e-5 (2e-6 relative).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from synface.checkpoint import load
from synface.ldm.train import LDMTrainConfig, train_ldm
from synface.packing import pack_tfrecords
from synface.recognition.train import RecognitionTrainConfig, train_recognition

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
BATCH_NORM_FORWARD = _BatchNorm.forward
# loss.tsv keeps 6 significant digits: equal losses can differ by one unit in the last one.
LOSS_RTOL = 2e-5
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5

# Dropout 0 and no augmentation: both draw from each process's own RNG, which one process
# cannot reproduce. Two epochs of three steps cross the LR stage boundary.
RECOGNITION = {
    "image_size": 32,
    "backbone": {"depth": 18, "channels": [8, 16, 32, 64], "embedding_size": 64, "dropout": 0.0},
    "head": {"scale": 16.0, "margin": 0.2},
    "train": {
        "global_batch_size": 24,
        "epochs": 2,
        "lrs": [0.05, 0.005],
        "stages": [1],
        "log_every": 1,
        "seed": 7,
        "num_workers": 0,
    },
    "augment": {"flip_p": 0.0, "crop_p": 0.0},
}

# A tiny AdaGN UNet on 3x8x8 latents (a 32 px face through VQ-f4). No CPD: its element-wise
# dropout is seeded per rank. Whole-context dropout stays on: its mask is part of the global
# batch, a function of (seed, step), so every world size draws the same one. 64 channels,
# not 32: with one channel per GroupNorm group, the biases of the last block feed only the
# final GroupNorm, which cancels them, so their gradient is round-off that Adam scales up to
# learning-rate-sized steps, different in every run.
LDM = {
    "unet": {
        "input_channels": 3,
        "initial_channels": 64,
        "channel_multipliers": [1, 2],
        "is_attention": [False, False],
        "n_blocks_per_resolution": 1,
        "condition_type": "AdaGN",
        "context_input_channels": 512,
        "context_channels": 32,
        "context_dropout_probability": 0.0,
    },
    "steps": 6,
    "global_batch_size": 8,
    "lr": 1e-3,
    "restart_period": 100,
    "whole_context_dropout": 0.25,
    "seed": 3,
    "log_every": 1,
    "checkpoint_every": 6,
}


def torchrun(*args: str) -> None:
    """`synface <args>` in 2 gloo processes, as the rules launch multi-GPU jobs."""
    command = [
        "timeout", "-k", "5", "120",
        TORCHRUN, "--standalone", "--nproc-per-node", "2", "--module", "synface.cli", *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def read_losses(run_dir: Path) -> tuple[list[int], np.ndarray]:
    """Steps and losses of `loss.tsv` (a header row, then one row per logged step)."""
    with (run_dir / "loss.tsv").open() as table:
        rows = list(csv.DictReader(table, delimiter="\t"))
    return [int(float(row["step"])) for row in rows], np.array([float(r["loss"]) for r in rows])


def assert_same_weights(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(
            got[key].double().numpy(),
            value.double().numpy(),
            rtol=WEIGHT_RTOL,
            atol=WEIGHT_ATOL,
            err_msg=key,
        )


def normalise_each_half(self: _BatchNorm, input: torch.Tensor) -> torch.Tensor:
    """BatchNorm as two DDP processes compute it on the two halves of a batch: each half
    with its own statistics, running statistics from the first half (DDP broadcasts rank 0's
    buffers before every forward pass, and rank 0 writes the checkpoint)."""
    if not self.training:
        return BATCH_NORM_FORWARD(self, input)
    first, second = input.chunk(2)
    rest = F.batch_norm(second, None, None, self.weight, self.bias, True, 0.0, self.eps)
    return torch.cat([BATCH_NORM_FORWARD(self, first), rest])


def test_recognition_on_two_processes_follows_one_process(
    toy_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed = tmp_path / "packed"
    pack_tfrecords(toy_manifest, packed, "TFR-toy", image_size=32)
    index = packed / "TFR-toy.txt"
    cfg = RecognitionTrainConfig.from_settings(RECOGNITION)
    whole, halves, ddp = tmp_path / "whole", tmp_path / "halves", tmp_path / "ddp"
    train_recognition(index, packed, whole / "backbone.pth", whole, cfg, threads=1)
    with monkeypatch.context() as patch:
        patch.setattr(_BatchNorm, "forward", normalise_each_half)
        train_recognition(index, packed, halves / "backbone.pth", halves, cfg, threads=1)
    torchrun(
        "train-recognition", "--index", str(index), "--data-root", str(packed),
        "--out", str(ddp / "backbone.pth"), "--run-dir", str(ddp),
        "--settings", json.dumps(RECOGNITION), "--threads", "2",
    )  # fmt: skip

    steps, losses = read_losses(ddp)
    assert steps == list(range(1, 7))
    assert read_losses(halves)[0] == steps
    np.testing.assert_allclose(losses, read_losses(halves)[1], rtol=LOSS_RTOL)
    assert_same_weights(load(halves / "backbone.pth"), load(ddp / "backbone.pth"))
    # Against the whole-batch BatchNorm only the first step is comparable (module docstring).
    np.testing.assert_allclose(losses[0], read_losses(whole)[1][0], rtol=0.02)


def write_latent_cache(folder: Path, count: int = 16, seed: int = 0) -> Path:
    """What encode_latents writes, with random latents: (N, 2, C, h, w) float16 latents
    (original and mirror), (N, 512) unit float32 contexts, and latents.json."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    np.save(folder / "latents.npy", rng.normal(size=(count, 2, 3, 8, 8)).astype(np.float16))
    contexts = rng.normal(size=(count, 512)).astype(np.float32)
    np.save(folder / "contexts.npy", contexts / np.linalg.norm(contexts, axis=1, keepdims=True))
    info = {"images": count, "latent_shape": [3, 8, 8], "image_size": 32}
    (folder / "latents.json").write_text(json.dumps(info))
    return folder


def test_ldm_on_two_processes_follows_one_process(tmp_path: Path) -> None:
    latents = write_latent_cache(tmp_path / "latents")
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train_ldm(latents, single / "ldm.ckpt", single, LDMTrainConfig.from_settings(LDM), threads=1)
    torchrun(
        "train-ldm", "--latents", str(latents), "--out", str(ddp / "ldm.ckpt"),
        "--run-dir", str(ddp), "--settings", json.dumps(LDM), "--threads", "2",
    )  # fmt: skip

    steps, losses = read_losses(ddp)
    assert steps == read_losses(single)[0] == list(range(1, 7))
    np.testing.assert_allclose(losses, read_losses(single)[1], rtol=LOSS_RTOL)
    expected, got = load(single / "ldm_6.pt"), load(ddp / "ldm_6.pt")
    assert_same_weights(expected["unet"], got["unet"])
    assert_same_weights(expected["ema"], got["ema"])

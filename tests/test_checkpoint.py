"""Run folders: fingerprints, damaged checkpoints, the loss log, and a full disk while saving."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from synface import checkpoint
from synface.io.atomic import DiskFullError
from synface.ldm.train import LDMTrainConfig, train_ldm

FILES = ["meta_{n}.pt", "weights_{n}.pt"]
INPUTS = checkpoint.fingerprint("sha256:aa", {"lr": 0.1, "seed": 1}, {"depth": 18})


def _save(run_dir: Path, n: int, inputs: dict[str, str] = INPUTS) -> None:
    checkpoint.atomic_save({"weights": torch.full((2,), float(n))}, run_dir / f"weights_{n}.pt")
    checkpoint.atomic_save({"n": n, "fingerprint": inputs}, run_dir / f"meta_{n}.pt")


def test_the_newest_checkpoint_of_the_same_inputs_is_resumed(tmp_path: Path) -> None:
    for n in (1, 2):
        _save(tmp_path, n)
    (tmp_path / "meta_3.pt").write_bytes(b"")  # an incomplete checkpoint: no weights_3
    n, (meta, weights) = checkpoint.resume_state(tmp_path, FILES, INPUTS, at_most=10)
    assert n == 2 and meta["n"] == 2 and weights["weights"][0] == 2.0


@pytest.mark.parametrize("damage", [b"", b"garbage, not a zip file"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: bytes
) -> None:
    for n in (1, 2):
        _save(tmp_path, n)
    (tmp_path / "weights_2.pt").write_bytes(damage)
    n, _ = checkpoint.resume_state(tmp_path, FILES, INPUTS, at_most=10)
    assert n == 1
    assert f"{tmp_path / 'weights_2.pt'} is damaged" in caplog.text
    assert (tmp_path / "weights_2.pt.damaged").exists() and not (tmp_path / "weights_2.pt").exists()


def test_no_readable_checkpoint_starts_afresh_saying_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _save(run_dir, 1)
    (run_dir / "meta_1.pt").write_bytes(b"\0" * 10)
    assert checkpoint.resume_state(run_dir, FILES, INPUTS, at_most=10) is None
    assert "none of its checkpoints could be read" in caplog.text
    assert "starts from scratch" in caplog.text
    assert list(run_dir.iterdir()) == [] and (tmp_path / "run.previous").is_dir()


@pytest.mark.parametrize(
    ("other", "reason"),
    [
        (checkpoint.fingerprint("sha256:bb", {"lr": 0.1, "seed": 1}, {"depth": 18}), "data"),
        (checkpoint.fingerprint("sha256:aa", {"lr": 0.2, "seed": 1}, {"depth": 18}), "in lr"),
        (checkpoint.fingerprint("sha256:aa", {"lr": 0.1, "seed": 1}, {"depth": 50}), "in depth"),
    ],
)
def test_other_inputs_set_the_run_folder_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, other: dict[str, str], reason: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _save(run_dir, 1)
    (tmp_path / "run.previous").mkdir()  # an older previous run is replaced
    assert checkpoint.resume_state(run_dir, FILES, other, at_most=10) is None
    assert reason in caplog.text and "trained from other inputs" in caplog.text
    assert (tmp_path / "run.previous" / "meta_1.pt").exists()
    assert run_dir.is_dir() and not any(run_dir.iterdir())


def test_a_run_past_the_configured_length_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _save(run_dir, 5)
    assert checkpoint.resume_state(run_dir, FILES, INPUTS, at_most=3) is None
    assert "past the 3 now configured" in caplog.text


def test_the_loss_log_is_a_table_that_a_resumed_run_continues(tmp_path: Path) -> None:
    """A header row once, then rows; resuming at step 1 drops the row of step 2 (logged after
    the last checkpoint), and pandas reads the file as it is."""
    log = checkpoint.LossLog(tmp_path, step_done=0)
    log.append({"epoch": 1, "step": 1, "loss": 2.0, "lr": 0.1})
    log.append({"epoch": 1, "step": 2, "loss": 1.0, "lr": 0.1})
    resumed = checkpoint.LossLog(tmp_path, step_done=1)
    resumed.append({"epoch": 1, "step": 2, "loss": 0.5, "lr": 0.1})
    text = (tmp_path / "loss.tsv").read_text()
    assert text == "epoch\tstep\tloss\tlr\n1\t1\t2\t0.1\n1\t2\t0.5\t0.1\n"
    pandas = pytest.importorskip("pandas")
    table = pandas.read_csv(tmp_path / "loss.tsv", sep="\t")
    assert list(table.columns) == ["epoch", "step", "loss", "lr"]
    assert table["loss"].tolist() == [2.0, 0.5]
    with pytest.raises(ValueError, match="has the columns"):
        resumed.append({"step": 3, "loss": 0.1})
    checkpoint.LossLog(tmp_path, step_done=0)
    assert (tmp_path / "loss.tsv").read_text() == "epoch\tstep\tloss\tlr\n"


def test_the_loss_log_writes_tensorboard_events(tmp_path: Path) -> None:
    log = checkpoint.LossLog(tmp_path, step_done=0)
    for step in (1, 2):
        log.append({"step": step, "loss": 3.0 - step, "lr": 0.1})
    log.add_image("preview", torch.rand(3, 8, 12), 2)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 2.0), (2, 1.0)]
    assert set(events.Tags()["scalars"]) == {"loss", "lr"}
    assert [e.step for e in events.Images("preview")] == [2]


def test_an_old_loss_log_without_a_header_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "loss.tsv").write_text("step=1\tloss=2\n")
    checkpoint.LossLog(tmp_path, step_done=1).append({"step": 2, "loss": 1.0})
    assert (tmp_path / "loss.tsv").read_text() == "step\tloss\n2\t1\n"
    assert (tmp_path / "loss.tsv.previous").read_text() == "step=1\tloss=2\n"


def test_content_digest_follows_the_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (3 << 20))
    b.write_bytes(b"x" * ((3 << 20) - 1) + b"y")  # the last byte of the last chunk
    assert checkpoint.content_digest([a]) != checkpoint.content_digest([b])
    assert checkpoint.content_digest([a]) == checkpoint.content_digest([memoryview(a.read_bytes())])


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path: Path) -> None:
    """The trainer's own save path, with the temporary file of its first checkpoint on
    /dev/full (every write fails with ENOSPC)."""
    rng = torch.Generator().manual_seed(0)
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(cache / "latents.npy", torch.randn(8, 2, 3, 8, 8, generator=rng).half().numpy())
    contexts = torch.nn.functional.normalize(torch.randn(8, 512, generator=rng), dim=1)
    np.save(cache / "contexts.npy", contexts.numpy())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f".ldm_2.pt.tmp{os.getpid()}").symlink_to("/dev/full")
    unet = {
        "input_channels": 3, "initial_channels": 32, "channel_multipliers": [1, 2],
        "is_attention": [False, False], "n_blocks_per_resolution": 1,
        "condition_type": "AdaGN", "context_channels": 64,
    }  # fmt: skip
    cfg = LDMTrainConfig.from_settings(
        {"unet": unet, "steps": 2, "global_batch_size": 4, "checkpoint_every": 2}
    )
    with pytest.raises(DiskFullError, match=f"disk full while writing {run_dir / 'ldm_2.pt'}"):
        train_ldm(cache, tmp_path / "out.ckpt", run_dir, cfg)
    assert not (run_dir / "ldm_2.pt").exists()

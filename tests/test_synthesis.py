"""The synthesize stage with the shipped demo weights: byte-identical faces whatever the shard
split and batch size, resume after SIGKILL, leftover temporary folders, resizing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torchvision.io import decode_png, read_file

from synface.ldm.faces import resize_faces
from synface.ldm.first_stage import FirstStageSpec
from synface.ldm.model import load_ldm
from synface.ldm.sampling import SAMPLERS, image_noise, make_sampler, sample_latents
from synface.shards import shard_ranges
from synface.synthesis import SETTINGS_FILE, pad_jobs, synthesize_shard

ROOT = Path(__file__).resolve().parents[1]
LDM = ROOT / "demo_weights" / "ldm" / "ema_averaged_model.ckpt"
FIRST_STAGE = ROOT / "demo_weights" / "first_stage"
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["first_stage"]
SPEC = FirstStageSpec(CONFIG["ddconfig"], CONFIG["embed_dim"], CONFIG["n_embed"])


def _contexts(n: int = 6) -> np.ndarray:
    rows = np.random.default_rng(0).normal(size=(n, 512)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _synthesize(out: Path, identities: range, **kwargs) -> dict:
    settings = {"images_per_identity": 3, "face_size": 32, "seed": 7, "steps": 5, **kwargs}
    return synthesize_shard(
        LDM, FIRST_STAGE, SPEC, _contexts(), identities, out_dir=out, **settings
    )


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/*.png"))}


def _stats(folder: Path) -> list[tuple[str, int, int]]:
    return [(p.name, p.stat().st_ino, p.stat().st_mtime_ns) for p in [folder, *folder.iterdir()]]


def test_shard_ranges_cover_every_identity_once() -> None:
    assert shard_ranges(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert shard_ranges(0, 3) == []


def test_faces_are_the_same_bytes_whatever_the_shard_split_and_batch_size(tmp_path: Path) -> None:
    # 20 jobs in one batch of 20 vs batches of 3 (padded to 16 rows) spanning identities.
    whole = _synthesize(tmp_path / "whole", range(4), images_per_identity=5, batch_size=20)
    for shard in shard_ranges(4, 2):
        _synthesize(tmp_path / "split", shard, images_per_identity=5, batch_size=3)
    files = _files(tmp_path / "whole")
    assert len(files) == 20 and files == _files(tmp_path / "split")
    assert whole["images"] == 20 and (tmp_path / "shards" / "0-4.json").exists()
    assert json.loads((tmp_path / "shards" / "2-4.json").read_text())["synthesized"] == 2
    # Different identities and images really differ.
    assert len(set(files.values())) == 20


@pytest.mark.parametrize("kind", SAMPLERS)
def test_padded_batches_give_bitwise_equal_latents(kind: str) -> None:
    """The PNG comparison above rarely sees float noise (the decoder snaps latents to its
    codebook), so the padding that keeps small batches on the large-batch kernels is checked
    on the latents."""
    unet, spec = load_ldm(LDM)
    contexts = torch.from_numpy(_contexts())
    jobs = [(i, k) for i in range(4) for k in range(5)]

    def latents(chunk: list[tuple[int, int]]) -> torch.Tensor:
        padded = pad_jobs(chunk)
        noise = torch.stack([image_noise(7, i, k, tuple(spec["latent_shape"])) for i, k in padded])
        sampler = make_sampler(spec["scheduler"], kind)
        rows = contexts[[i for i, _ in padded]]
        return sample_latents(unet, sampler, noise, rows, steps=3)[: len(chunk)]

    split = torch.cat([latents(jobs[start : start + 3]) for start in range(0, len(jobs), 3)])
    assert torch.equal(latents(jobs), split)


def test_a_killed_shard_resumes_without_redoing_finished_identities(tmp_path: Path) -> None:
    out, marker = tmp_path / "faces", tmp_path / "shards" / "0-5.json"
    settings = {"seed": 3, "steps": 8, "batch_size": 2}  # one identity per batch
    command = [
        sys.executable, "-m", "synface.cli", "synthesize", "--ldm", str(LDM),
        "--first-stage", str(FIRST_STAGE), "--first-stage-spec", json.dumps(asdict(SPEC)),
        "--contexts", str(tmp_path / "contexts.npy"), "--first", "0", "--last", "5",
        "--images-per-identity", "2", "--out-dir", str(out), "--done-marker", str(marker),
        "--face-size", "32", "--settings", json.dumps(settings), "--threads", "1",
    ]  # fmt: skip
    np.save(tmp_path / "contexts.npy", _contexts())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(command, env=env, stderr=stderr)
        deadline = time.monotonic() + 120
        while not (out / "00000").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "no identity finished within 2 minutes"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-2000:]
    done = sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert 1 <= len(done) < 5 and not marker.exists()
    before = {p.name: _stats(p) for p in done}
    # A leftover of this shard goes; one of another shard (maybe running now) stays.
    (out / ".00004.partial").mkdir(exist_ok=True)
    (out / ".00004.partial" / "000.png").write_bytes(b"truncated")
    (out / ".00005.partial").mkdir()

    summary = synthesize_shard(
        LDM, FIRST_STAGE, SPEC, _contexts(), range(5), 2, out, 32, done_marker=marker, **settings
    )
    assert summary["skipped_complete"] == len(done)
    assert json.loads(marker.read_text()) == summary
    assert {p.name: _stats(p) for p in done} == before
    assert not (out / ".00004.partial").exists() and (out / ".00005.partial").exists()
    assert sorted(_files(out)) == [f"{i:05d}/{k:03d}.png" for i in range(5) for k in range(2)]
    # The resumed shard holds what an uninterrupted one does.
    straight = {**settings, "batch_size": 10}
    _synthesize(tmp_path / "straight", range(5), images_per_identity=2, **straight)
    assert _files(out) == _files(tmp_path / "straight")


def test_a_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        _synthesize(tmp_path / "faces", range(1), sampler="ddpm")
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / SETTINGS_FILE).write_text("{}")  # a failed start's record is replaced
    _synthesize(tmp_path / "faces", range(1), images_per_identity=1)
    with pytest.raises(ValueError, match="steps differ"):
        _synthesize(tmp_path / "faces", range(1, 2), images_per_identity=1, steps=6)
    with pytest.raises(ValueError, match="global RNG"):
        _synthesize(tmp_path / "other", range(1), eta=0.5)
    with pytest.raises(ValueError, match="not 1"):
        synthesize_shard(
            LDM, FIRST_STAGE, SPEC, 2 * _contexts(), range(1), 1, tmp_path / "x", 32, seed=0
        )


def test_faces_are_resized_to_the_face_size_with_antialiasing(tmp_path: Path) -> None:
    _synthesize(tmp_path / "32", range(1), images_per_identity=2)
    _synthesize(tmp_path / "24", range(1), images_per_identity=2, face_size=24)
    for name in ("000.png", "001.png"):
        full = decode_png(read_file(str(tmp_path / "32" / "00000" / name)))
        small = decode_png(read_file(str(tmp_path / "24" / "00000" / name)))
        assert small.shape == (3, 24, 24)
        assert torch.equal(small, resize_faces(full[None], 24)[0])

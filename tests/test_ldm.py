"""The LDM stack: cache, training (resume after SIGKILL), EMA, sampling, identity check, and the
shipped demo-world weights."""

from __future__ import annotations

import csv
import json
import logging
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
import torch.nn.functional as F
import yaml
from PIL import Image

from synface.demo_world.render import Nuisance, render_face
from synface.demo_world.world import DemoWorldConfig, heldout_identity
from synface.embeddings import export_onnx, extract_embeddings
from synface.ldm.ema import EMA
from synface.ldm.first_stage import AutoencoderTrainConfig, FirstStageSpec, train_autoencoder
from synface.ldm.identity_check import IdentityCheckSettings, check_identity, retrieval
from synface.ldm.latents import CONTEXTS_FILE, LATENTS_FILE, DeviceCache, LatentCache
from synface.ldm.sampling import image_noise, make_sampler, sample_latents
from synface.ldm.train import LDMTrainConfig, train_ldm
from synface.models import build_model
from synface.models.admis_checkpoint import admis_ddpm_scheduler

ROOT = Path(__file__).resolve().parents[1]
DEMO_WEIGHTS = ROOT / "demo_weights"
TINY_UNET = {
    "input_channels": 3,
    "initial_channels": 32,
    "channel_multipliers": [1, 2],
    "is_attention": [False, True],
    "n_blocks_per_resolution": 1,
    "condition_type": "AdaGN",
    "context_channels": 64,
}


def _tiny_cache(folder: Path, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / LATENTS_FILE, rng.normal(size=(n, 2, 3, 8, 8)).astype(np.float16))
    contexts = rng.normal(size=(n, 512)).astype(np.float32)
    np.save(folder / CONTEXTS_FILE, contexts / np.linalg.norm(contexts, axis=1, keepdims=True))
    return folder


def _tiny_settings(steps: int) -> dict[str, object]:
    return {
        "unet": TINY_UNET,
        "steps": steps,
        "global_batch_size": 8,
        "checkpoint_every": 5,
        "log_every": 1,
        "whole_context_dropout": 0.2,
    }


def _train_command(cache: Path, run_dir: Path, out: Path, steps: int) -> list[str]:
    settings = _tiny_settings(steps)
    return [
        sys.executable, "-m", "synface.cli", "train-ldm",
        "--latents", str(cache), "--out", str(out), "--run-dir", str(run_dir),
        "--settings", json.dumps(settings), "--threads", "1",
    ]  # fmt: skip


def test_sigkilled_training_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    cache = _tiny_cache(tmp_path / "cache")
    run_dir, out = tmp_path / "run", tmp_path / "ldm" / "model.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        _train_command(cache, run_dir, out, steps=400), env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (run_dir / "ldm_10.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.stem.split("_")[1]) for p in run_dir.glob("ldm_*.pt"))
    assert 10 <= killed_at < 400
    assert not out.exists()
    # The rerun (same command, fewer total steps to keep the test short) continues, not restarts.
    steps = killed_at + 7
    rerun = subprocess.run(
        _train_command(cache, run_dir, out, steps), env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"at step {killed_at}" in rerun.stderr
    # The steps the killed run logged after its last checkpoint are logged once, not twice.
    assert _logged_steps(run_dir) == list(range(1, steps + 1))
    assert json.loads(out.with_suffix(".json").read_text())["steps"] == steps
    # Every draw depends on (seed, step) only: the resumed run equals an uninterrupted one.
    straight = tmp_path / "straight" / "model.ckpt"
    subprocess.run(
        _train_command(cache, tmp_path / "run2", straight, steps), env=env, check=True,
        capture_output=True,
    )  # fmt: skip
    resumed, uninterrupted = torch.load(out), torch.load(straight)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def _logged_steps(run_dir: Path) -> list[int]:
    with (run_dir / "loss.tsv").open() as table:
        return [int(row["step"]) for row in csv.DictReader(table, delimiter="\t")]


def _train_ldm(cache: Path, tmp_path: Path, run: str, steps: int) -> Path:
    out = tmp_path / run / "model.ckpt"
    cfg = LDMTrainConfig.from_settings(_tiny_settings(steps))
    train_ldm(cache, out, tmp_path / run / "run", cfg)
    return out


def test_changed_latents_restart_the_ldm_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same settings, other latents: the run starts over (as a fresh run on them would), the
    log names the data, and the old run folder is kept aside."""
    cache = _tiny_cache(tmp_path / "cache")
    first = torch.load(_train_ldm(cache, tmp_path, "a", steps=6))
    latents = np.load(cache / LATENTS_FILE)
    np.save(cache / LATENTS_FILE, latents[::-1].copy())
    second = torch.load(_train_ldm(cache, tmp_path, "a", steps=6))
    fresh = torch.load(_train_ldm(cache, tmp_path, "b", steps=6))
    assert "the training data changed" in caplog.text
    assert all(torch.equal(second[k], fresh[k]) for k in fresh)
    assert not all(torch.equal(second[k], first[k]) for k in first)
    assert (tmp_path / "a" / "run.previous" / "ldm_6.pt").exists()
    assert _logged_steps(tmp_path / "a" / "run") == list(range(1, 7))


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cache = _tiny_cache(tmp_path / "cache")
    _train_ldm(cache, tmp_path, "a", steps=10)
    (tmp_path / "a" / "run" / "ldm_10.pt").write_bytes(b"")
    resumed = torch.load(_train_ldm(cache, tmp_path, "a", steps=10))
    assert "ldm_10.pt is damaged" in caplog.text and "resumed" in caplog.text
    assert "ldm_5.pt at step 5" in caplog.text
    straight = torch.load(_train_ldm(cache, tmp_path, "b", steps=10))
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_ema_follows_the_intended_warmup_decay_and_really_averages() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, max_decay=0.9999, power=0.75, inv_gamma=1.0)
    assert ema.decay(0) == 0.0
    assert ema.decay(10) == pytest.approx(1 - 11**-0.75)
    assert ema.decay(10**9) == 0.9999
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model, 10)
    # The reference's EMA would now equal the live weights (specs §6); this one lags behind.
    assert ema.model.weight[0, 0].item() == pytest.approx(11**-0.75)


def test_guided_sampling_mixes_conditional_and_unconditional_predictions() -> None:
    torch.manual_seed(0)
    unet = build_model("idiff_unet", **TINY_UNET).eval()
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.02)
    sampler = make_sampler(dict(admis_ddpm_scheduler().config))
    noise = image_noise(0, 3, 1, (3, 8, 8))[None]
    assert torch.equal(noise[0], image_noise(0, 3, 1, (3, 8, 8)))
    contexts = F.normalize(torch.randn(1, 512), dim=1)
    plain = sample_latents(unet, sampler, noise, contexts, steps=3)
    unguided = sample_latents(unet, sampler, noise, contexts, steps=3, guidance_scale=1.0)
    guided = sample_latents(unet, sampler, noise, contexts, steps=3, guidance_scale=3.0)
    unconditional = sample_latents(unet, sampler, noise, None, steps=3)
    assert torch.equal(plain, unguided)
    assert not torch.allclose(guided, plain)
    assert not torch.allclose(unconditional, plain)


def test_retrieval_counts_the_own_context_as_the_nearest() -> None:
    contexts = torch.eye(3)
    samples = torch.stack([contexts[0], contexts[1], contexts[1]])[:, None, :]
    result = retrieval(samples, contexts)
    assert result.retrieval_top1 == pytest.approx(2 / 3)
    assert result.chance == pytest.approx(1 / 3)
    assert result.mean_cos_own == pytest.approx(2 / 3)


def test_the_demo_first_stage_learns_to_reconstruct(
    toy_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = FirstStageSpec(
        ddconfig={
            "double_z": False, "z_channels": 3, "resolution": 32, "in_channels": 3,
            "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 2], "num_res_blocks": 1,
            "attn_resolutions": [], "dropout": 0.0,
        },
        n_embed=64,
    )  # fmt: skip
    settings = {"spec": asdict(spec), "image_size": 32, "batch_size": 8, "lr": 1e-3}
    cfg = AutoencoderTrainConfig.from_settings({**settings, "steps": 30, "log_every": 10})
    history = train_autoencoder(toy_manifest, tmp_path / "fs", tmp_path / "run", cfg)
    assert history[-1]["mse"] < history[0]["mse"]
    logged = (tmp_path / "run" / "loss.tsv").read_text().splitlines()
    assert logged[0] == "step\tloss\tmse\timages_per_s" and len(logged) == 1 + 3
    assert [float(line.split("\t")[2]) for line in logged[1:]] == pytest.approx(
        [record["mse"] for record in history], rel=1e-5
    )
    encoder, decoder = spec.load(tmp_path / "fs")
    assert not encoder.training and not decoder.training
    # Other faces (one image rewritten): the run restarts from step 1 instead of re-emitting.
    image = toy_manifest.parent / "images" / "0" / "0.jpg"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(image)
    cfg = AutoencoderTrainConfig.from_settings({**settings, "steps": 30, "log_every": 1})
    again = train_autoencoder(toy_manifest, tmp_path / "fs", tmp_path / "run", cfg)
    assert again[0]["step"] == 1 and "the training data changed" in caplog.text


def test_a_latent_cache_with_mismatched_files_is_refused(tmp_path: Path) -> None:
    cache = _tiny_cache(tmp_path / "cache", n=4)
    np.save(cache / CONTEXTS_FILE, np.zeros((3, 512), np.float32))
    with pytest.raises(ValueError, match="rerun encode_latents"):
        LatentCache.open(cache)


def test_the_cache_held_on_a_device_gives_the_same_batches(tmp_path: Path) -> None:
    """On a GPU the trainer gathers batches from the cache in device memory: the same values
    as from the memory map (checked on the CPU device; the CPU itself keeps the map)."""
    cache = LatentCache.open(_tiny_cache(tmp_path / "cache", n=6))
    assert cache.on_device(torch.device("cpu")) is cache
    held = DeviceCache.load(cache, torch.device("cpu"))
    indices, mirrored = torch.tensor([5, 0, 5, 2]), torch.tensor([True, False, False, True])
    pairs = zip(held.batch(indices, mirrored), cache.batch(indices, mirrored), strict=True)
    for got, expected in pairs:
        assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert len(held) == len(cache) == 6


def test_the_shipped_demo_weights_know_their_identity(tmp_path: Path) -> None:
    """A smaller draw of the acceptance check (50 contexts x 10 samples in the closing note),
    on held-out faces given as a manifest (``ldm.identity_check.faces: <manifest>``): the
    workflow embeds them with the exported model, and the check reads those embeddings."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    world = DemoWorldConfig.from_settings(
        {**config["demo_world"], "image_size": config["face_size"]}
    )
    lines = []
    for i in range(12):
        face = render_face(heldout_identity(world, i), Nuisance(), config["face_size"])
        Image.fromarray(face).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png\t{i}\n")
    (tmp_path / "heldout.tsv").write_text("".join(lines))
    export_onnx(DEMO_WEIGHTS / "embedding" / "backbone.pth", tmp_path / "model.onnx")
    extract_embeddings(tmp_path / "model.onnx", tmp_path / "heldout.tsv", tmp_path / "ctx", 12, 1)
    settings = IdentityCheckSettings.from_settings(
        {"num_contexts": 12, "samples_per_context": 3, "steps": 20}
    )
    result = check_identity(
        DEMO_WEIGHTS / "ldm" / "ema_averaged_model.ckpt",
        DEMO_WEIGHTS / "first_stage",
        DEMO_WEIGHTS / "embedding" / "backbone.pth",
        tmp_path / "ctx",
        tmp_path / "check.json",
        settings,
    )
    assert result.retrieval_top1 >= 0.5, result
    assert result.mean_cos_own > result.mean_cos_other + 0.3, result
    assert json.loads((tmp_path / "check.json").read_text())["contexts"] == 12


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_ldm_train_precision_reaches_the_training_autocast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """``ldm.train.precision`` is the precision every training step's forward runs under."""
    import synface.ldm.train as ldm_train

    seen: list[str] = []
    real = ldm_train.runtime.autocast

    def recording(device: torch.device, precision: str = "bf16"):
        seen.append(precision)
        return real(device, precision)

    monkeypatch.setattr(ldm_train.runtime, "autocast", recording)
    cfg = LDMTrainConfig.from_settings({**_tiny_settings(2), "precision": precision})
    train_ldm(_tiny_cache(tmp_path / "cache"), tmp_path / "m.ckpt", tmp_path / "run", cfg)
    assert seen and set(seen) == {precision}

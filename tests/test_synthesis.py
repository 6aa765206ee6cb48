"""The synthesize stage with the shipped demo weights: byte-identical faces whatever the shard
split and batch size, resume after SIGKILL, forced reruns, copied projects, leftover temporary
folders, resizing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import decode_png, read_file

from synface import synthesis
from synface.ldm.faces import FaceGenerator, resize_faces
from synface.ldm.model import load_ldm
from synface.ldm.sampling import SAMPLERS, image_noise, make_sampler, sample_latents
from synface.shards import shard_ranges
from synface.synthesis import SETTINGS_FILE, SynthesisSettings, pad_jobs, synthesize_shard

ROOT = Path(__file__).resolve().parents[1]
LDM = ROOT / "demo_weights" / "ldm" / "ema_averaged_model.ckpt"
FIRST_STAGE = ROOT / "demo_weights" / "first_stage"


def _contexts(n: int = 6) -> np.ndarray:
    rows = np.random.default_rng(0).normal(size=(n, 512)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module", autouse=True)
def _one_generator_per_model() -> Iterator[None]:
    """Load each LDM once for this module, not once per synthesize_shard call."""
    loaded: dict[tuple[Path, Path], FaceGenerator] = {}
    load = FaceGenerator.for_stage

    def cached(ldm: Path, first_stage: Path, threads: int) -> FaceGenerator:
        key = (Path(ldm).resolve(), Path(first_stage).resolve())
        if key not in loaded:
            loaded[key] = load(ldm, first_stage, threads)
        return loaded[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FaceGenerator, "for_stage", staticmethod(cached))
        yield


def _synthesize(
    out: Path,
    identities: range,
    images_per_identity: int = 3,
    face_size: int = 32,
    ldm: Path = LDM,
    first_stage: Path = FIRST_STAGE,
    contexts: np.ndarray | None = None,
    done_marker: Path | None = None,
    **settings,
) -> dict:
    chosen = SynthesisSettings.from_settings({"seed": 7, "steps": 5, **settings})
    contexts = _contexts() if contexts is None else contexts
    return synthesize_shard(
        ldm, first_stage, contexts, identities, images_per_identity, out, face_size, chosen,
        done_marker=done_marker,
    )  # fmt: skip


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


@pytest.fixture(scope="module")
def demo_ldm() -> tuple[torch.nn.Module, dict]:
    return load_ldm(LDM)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_padded_batches_give_bitwise_equal_latents(
    kind: str, demo_ldm: tuple[torch.nn.Module, dict]
) -> None:
    """The PNG comparison above rarely sees float noise (the decoder snaps latents to its
    codebook), so the padding that keeps small batches on the large-batch kernels is checked
    on the latents."""
    unet, spec = demo_ldm
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


def test_a_shard_samples_with_the_reference_ddim(tmp_path: Path) -> None:
    """``synthesis.sampler: ddim_admis`` reaches the sampler: the faces differ from ``ddim``'s
    (same seed, steps and timesteps; only the reference's ᾱ_prev differs)."""
    _synthesize(tmp_path / "admis", range(2), images_per_identity=2, sampler="ddim_admis")
    _synthesize(tmp_path / "ddim", range(2), images_per_identity=2)
    admis, ddim = _files(tmp_path / "admis"), _files(tmp_path / "ddim")
    assert len(admis) == 4 and admis.keys() == ddim.keys()
    assert all(admis[name] != ddim[name] for name in admis)
    recorded = json.loads((tmp_path / "admis" / SETTINGS_FILE).read_text())
    assert recorded["sampler"] == "ddim_admis"


# The synthesize stage as its own process, so that SIGKILL hits it mid-shard.
KILLABLE = """
import sys, numpy as np
from pathlib import Path
from synface.synthesis import SynthesisSettings, synthesize_shard
ldm, first_stage, contexts, out, marker = sys.argv[1:]
settings = SynthesisSettings.from_settings({"seed": 3, "steps": 8, "batch_size": 2})
synthesize_shard(ldm, first_stage, np.load(contexts), range(5), 2, Path(out), 32, settings,
                 done_marker=Path(marker))
"""


def test_a_killed_shard_resumes_without_redoing_finished_identities(tmp_path: Path) -> None:
    out, marker = tmp_path / "faces", tmp_path / "shards" / "0-5.json"
    settings = {"seed": 3, "steps": 8, "batch_size": 2}  # one identity per batch
    command = [
        sys.executable, "-c", KILLABLE, str(LDM), str(FIRST_STAGE),
        str(tmp_path / "contexts.npy"), str(out), str(marker),
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

    summary = _synthesize(out, range(5), 2, done_marker=marker, **settings)
    assert summary["skipped_complete"] == len(done)
    assert json.loads(marker.read_text()) == summary
    assert {p.name: _stats(p) for p in done} == before
    assert not (out / ".00004.partial").exists() and (out / ".00005.partial").exists()
    assert sorted(_files(out)) == [f"{i:05d}/{k:03d}.png" for i in range(5) for k in range(2)]
    # The resumed shard holds what an uninterrupted one does.
    straight = {**settings, "batch_size": 10}
    _synthesize(tmp_path / "straight", range(5), images_per_identity=2, **straight)
    assert _files(out) == _files(tmp_path / "straight")


def _interrupt_after_first_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next shard stop (as a kill would) once its first identity is in place."""
    place = synthesis._place

    def place_then_stop(out_dir: Path, identity: int) -> None:
        place(out_dir, identity)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthesis, "_place", place_then_stop)


def test_an_interrupted_shard_resumes_and_a_forced_rerun_regenerates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, marker = tmp_path / "faces", tmp_path / "shards" / "0-3.json"
    settings = {"images_per_identity": 1, "steps": 2, "batch_size": 1, "done_marker": marker}
    with monkeypatch.context() as patch:
        _interrupt_after_first_identity(patch)
        with pytest.raises(KeyboardInterrupt):
            _synthesize(out, range(3), **settings)
    first = _stats(out / "00000")
    resumed = _synthesize(out, range(3), **settings)
    assert (resumed["skipped_complete"], resumed["synthesized"]) == (1, 2)
    assert _stats(out / "00000") == first
    # A forced rerun (Snakemake -f: the done marker exists or was just removed) makes every
    # identity anew: a damaged face comes back, and the folders are new ones.
    expected = _files(out)
    (out / "00001" / "000.png").write_bytes(b"damaged")
    stats = {i: _stats(out / f"{i:05d}") for i in range(3)}
    marker.unlink()
    forced = _synthesize(out, range(3), **settings)
    assert (forced["skipped_complete"], forced["synthesized"]) == (0, 3)
    assert _files(out) == expected
    assert all(_stats(out / f"{i:05d}") != stats[i] for i in range(3))
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", SETTINGS_FILE]


def test_a_copied_project_continues_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue: settings.json held absolute paths and the checkpoint's mtime, so `cp -a` of a
    project refused to continue. The record is content now."""
    project = tmp_path / "project"
    shutil.copytree(LDM.parent, project / "ldm")
    shutil.copytree(FIRST_STAGE, project / "first_stage")
    np.save(project / "contexts.npy", _contexts())

    def shard(root: Path, identities: range) -> dict:
        return _synthesize(
            root / "pool" / "images", identities, images_per_identity=1, steps=2, batch_size=1,
            ldm=root / "ldm" / LDM.name, first_stage=root / "first_stage",
            contexts=np.load(root / "contexts.npy"),
        )  # fmt: skip

    shard(project, range(0, 2))
    with monkeypatch.context() as patch:
        _interrupt_after_first_identity(patch)
        with pytest.raises(KeyboardInterrupt):
            shard(project, range(2, 4))
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(project, moved, symlinks=True)
    os.utime(moved / "ldm" / LDM.name, ns=(1, 1))  # a plain cp gives new times
    kept = {i: _stats(moved / "pool" / "images" / f"{i:05d}") for i in range(3)}
    shutil.rmtree(project)

    summary = shard(moved, range(2, 4))
    assert (summary["skipped_complete"], summary["synthesized"]) == (1, 1)
    assert {i: _stats(moved / "pool" / "images" / f"{i:05d}") for i in range(3)} == kept
    assert len(_files(moved / "pool" / "images")) == 4


def test_a_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one of"):
        _synthesize(tmp_path / "faces", range(1), sampler="ddpm")
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / SETTINGS_FILE).write_text("{}")  # a failed start's record is replaced
    _synthesize(tmp_path / "faces", range(1), images_per_identity=1)
    before = _files(tmp_path / "faces")
    with pytest.raises(ValueError, match="steps differ") as refused:
        _synthesize(tmp_path / "faces", range(1, 2), images_per_identity=1, steps=6)
    # The refusal changes nothing, and a remedy that deletes finished faces says so.
    assert "nothing was changed" in str(refused.value)
    assert "deletes its 1 finished identities" in str(refused.value)
    assert _files(tmp_path / "faces") == before
    assert not (tmp_path / "faces" / "00001").exists()
    with pytest.raises(ValueError, match="sampler ddim only"):
        _synthesize(tmp_path / "other", range(1), eta=0.5, sampler="dpmsolver++")
    with pytest.raises(ValueError, match="not 1"):
        _synthesize(tmp_path / "x", range(1), images_per_identity=1, contexts=2 * _contexts())


def _pil_bilinear(image: torch.Tensor, size: int) -> np.ndarray:
    """PIL's antialiased (area-scaled triangle filter) resize, one channel at a time."""
    channels = [
        np.asarray(Image.fromarray(channel.numpy()).resize((size, size), Image.BILINEAR))
        for channel in image
    ]
    return np.stack(channels).astype(int)


def test_faces_are_resized_to_the_face_size_with_antialiasing(tmp_path: Path) -> None:
    # Hand-computed: every 4th column white, 32 -> 8 px. An antialiased filter averages each
    # 4-pixel cell to 255/4 = 63.75; point-sampling filters see only black or white columns.
    stripes = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    stripes[..., ::4] = 255
    interior = resize_faces(stripes, 8)[0, :, :, 1:-1].int()
    assert (interior - 64).abs().max() <= 1, interior[0]
    # The written faces match an independent implementation (PIL) to within rounding.
    _synthesize(tmp_path / "32", range(1), images_per_identity=2)
    _synthesize(tmp_path / "24", range(1), images_per_identity=2, face_size=24)
    for name in ("000.png", "001.png"):
        full = decode_png(read_file(str(tmp_path / "32" / "00000" / name)))
        small = decode_png(read_file(str(tmp_path / "24" / "00000" / name)))
        assert small.shape == (3, 24, 24)
        assert np.abs(small.numpy().astype(int) - _pil_bilinear(full, 24)).max() <= 1


def test_antialias_off_gives_admis_plain_bilinear_resize(tmp_path: Path) -> None:
    """``synthesis.antialias: false`` is ADMIS's ``F.interpolate(mode="bilinear")``: on the
    stripes of the test above it samples between the black columns (0, not 64), and the
    written faces equal torch's plain bilinear interpolation of the full-size faces."""
    stripes = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    stripes[..., ::4] = 255
    assert resize_faces(stripes, 8, antialias=False).max() == 0
    _synthesize(tmp_path / "32", range(1), images_per_identity=2)
    _synthesize(tmp_path / "24", range(1), images_per_identity=2, face_size=24, antialias=False)
    for name in ("000.png", "001.png"):
        full = decode_png(read_file(str(tmp_path / "32" / "00000" / name)))
        small = decode_png(read_file(str(tmp_path / "24" / "00000" / name)))
        plain = F.interpolate(full[None].float(), size=[24, 24], mode="bilinear")[0]
        assert (small.int() - plain.round().int()).abs().max() <= 1
        assert np.abs(small.numpy().astype(int) - _pil_bilinear(full, 24)).max() > 1
    recorded = json.loads((tmp_path / "24" / SETTINGS_FILE).read_text())
    assert recorded["antialias"] is False


def test_a_failed_write_stops_the_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faces are written by a writer thread while the next batch samples: its error (a full
    disk) must end the shard like an error of the loop itself, with no done marker."""
    marker = tmp_path / "shards" / "0-3.json"

    def full_disk(face: torch.Tensor, path: str) -> None:
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(synthesis, "write_png", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _synthesize(tmp_path / "faces", range(3), images_per_identity=1, steps=2, batch_size=1,
                    done_marker=marker)  # fmt: skip
    assert not marker.exists()
    visible = sorted(p.name for p in (tmp_path / "faces").iterdir() if p.name[0] != ".")
    assert visible == [SETTINGS_FILE]


def test_compiling_is_a_switch_that_leaves_the_eager_generator_alone() -> None:
    """``synthesis.compile`` wraps the UNet and decoder in ``torch.compile`` (not run here:
    compiling the demo UNet takes minutes on a CPU); the record keeps the switch, since
    compiled kernels may round differently."""
    generator = FaceGenerator(LDM, FIRST_STAGE, torch.device("cpu"))
    compiled = generator.compiled()
    assert isinstance(compiled.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(compiled.decoder, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled.unet._orig_mod is generator.unet and compiled.device == generator.device
    assert not isinstance(generator.unet, torch._dynamo.eval_frame.OptimizedModule)
    settings = SynthesisSettings.from_settings({"compile": True})
    assert settings.sampling()["compile"] is True
    assert SynthesisSettings.from_settings({}).compile is False

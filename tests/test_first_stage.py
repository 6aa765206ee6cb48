"""The first stage as a folder: ``first_stage.json`` beside the two weight files, the latent
cache's mirror encoding, and the shipped demo weights' packing."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import write_toy_dataset
from PIL import Image

from synface.demo_weights import pack_demo_weights
from synface.io.embeddings import write_embeddings
from synface.ldm.first_stage import (
    FIRST_STAGE_JSON,
    AutoencoderTrainConfig,
    FirstStage,
    FirstStageSpec,
    train_autoencoder,
)
from synface.ldm.latents import encode_latents
from synface.models.vq_f4 import DECODER_FILE, ENCODER_FILE

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo_weights"
SHIPPED = DEMO / "first_stage"


def test_the_shipped_first_stage_carries_the_config_spec() -> None:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["first_stage"]
    first_stage = FirstStage.load(SHIPPED)
    assert first_stage.spec == FirstStageSpec(
        config["ddconfig"], config["embed_dim"], config["n_embed"]
    )
    assert not first_stage.decoder.training


def test_a_folder_without_a_valid_spec_says_what_to_write(tmp_path: Path) -> None:
    for name in (ENCODER_FILE, DECODER_FILE):
        (tmp_path / name).write_bytes((SHIPPED / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=FIRST_STAGE_JSON) as missing:
        FirstStage.load(tmp_path)
    # The fix names the released VQ-f4's values (config/frcsyn.yaml's first_stage).
    assert '"ch_mult": [1, 2, 4]' in str(missing.value) and "frcsyn.yaml" in str(missing.value)
    (tmp_path / FIRST_STAGE_JSON).write_text('{"ddconfig": {}, "embed_dim": 3}')
    with pytest.raises(ValueError, match=rf"{FIRST_STAGE_JSON}: not a first-stage spec.*n_embed"):
        FirstStage.load(tmp_path)


def test_training_writes_the_spec_beside_the_weights(tmp_path: Path) -> None:
    spec = FirstStage.load(SHIPPED).spec
    manifest = write_toy_dataset(tmp_path / "toy", identities=2, images_per_identity=2)
    cfg = AutoencoderTrainConfig.from_settings(
        {"spec": asdict(spec), "image_size": 32, "batch_size": 2, "steps": 1, "log_every": 1}
    )
    train_autoencoder(manifest, tmp_path / "fs", tmp_path / "run", cfg)
    assert FirstStage.load(tmp_path / "fs").spec == spec


def _encoded_by_hand(encoder: torch.nn.Module, path: Path, mirror: bool) -> torch.Tensor:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    if mirror:
        pixels = pixels[:, ::-1]
    image = torch.from_numpy(pixels.copy()).permute(2, 0, 1) / 127.5 - 1
    with torch.no_grad():
        return encoder(image[None])[0]


def test_the_cache_holds_each_face_and_its_mirror(tmp_path: Path) -> None:
    manifest = write_toy_dataset(tmp_path / "toy", identities=2, images_per_identity=2)
    names = [line.split("\t")[0] for line in manifest.read_text().splitlines()]
    rng = np.random.default_rng(0)
    write_embeddings(tmp_path / "emb", rng.normal(size=(4, 512)).astype(np.float32), names)
    info = encode_latents(manifest, tmp_path / "emb", SHIPPED, 32, tmp_path / "cache", 3)
    latents = np.load(tmp_path / "cache" / "latents.npy")
    assert info["latent_shape"] == [3, 8, 8] and latents.shape == (4, 2, 3, 8, 8)
    encoder = FirstStage.load(SHIPPED).encoder
    for row, name in enumerate(names):
        for view, mirror in enumerate((False, True)):
            expected = _encoded_by_hand(encoder, manifest.parent / name, mirror).numpy()
            assert np.allclose(latents[row, view], expected, atol=2e-2), (row, view)
        assert not np.allclose(latents[row, 0], latents[row, 1], atol=0.1)


def test_packing_demo_weights_ships_the_spec(tmp_path: Path) -> None:
    check = tmp_path / "identity_check.json"
    check.write_text('{"retrieval_top1": 1.0}')
    config = {"first_stage": {"train": {"steps": 1}}, "recognition": {"train": {"epochs": 1}}}
    provenance = pack_demo_weights(
        DEMO / "embedding" / "backbone.pth", SHIPPED, DEMO / "ldm" / "ema_averaged_model.ckpt",
        check, config, tmp_path / "out", [], tmp_path / "benchmarks", "here",
    )  # fmt: skip
    packed = tmp_path / "out" / "first_stage" / FIRST_STAGE_JSON
    assert json.loads(packed.read_text()) == json.loads((SHIPPED / FIRST_STAGE_JSON).read_text())
    assert "first_stage/first_stage.json" in provenance["sha256"]
    shipped = json.loads((DEMO / "PROVENANCE.json").read_text())["sha256"]
    assert set(provenance["sha256"]) == set(shipped)

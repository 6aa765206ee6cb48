"""An LDM checkpoint and the description of its UNet: the released ADMIS model needs none, the
reference's model yaml is read as it is, the latent shape follows from the first stage, and a
missing or wrong piece is named with its fix. Diffusers folders are read offline only."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import yaml

from synface.contexts import generate_diffusers_faces
from synface.ldm.first_stage import FirstStageSpec
from synface.ldm.model import DEFAULT_PRESET, UNET_PRESETS, latent_shape, load_ldm, read_ldm_spec
from synface.models import build_model
from synface.models.admis_checkpoint import admis_ddpm_scheduler, save_admis_checkpoint

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
TINY_UNET = {
    "input_channels": 3,
    "initial_channels": 32,
    "channel_multipliers": [1, 2],
    "is_attention": [False, True],
    "attention_head_channels": 16,
    "n_blocks_per_resolution": 1,
    "context_input_channels": 16,
    "context_channels": 32,
}
VQ_F4 = FirstStageSpec({"ch_mult": [1, 2, 4]}, embed_dim=3)


def _tiny_checkpoint(path: Path, unet_args: dict) -> torch.nn.Module:
    unet = build_model("idiff_unet", **unet_args)
    save_admis_checkpoint(path, unet, admis_ddpm_scheduler())
    return unet


def test_the_released_checkpoint_preset_is_the_reference_model() -> None:
    """The preset holds the constructor arguments recorded from the reference's
    unet_cond_ca_cpd25.yaml (the fixture's meta.json)."""
    meta = json.loads((REFERENCE / "admis_unet_ca_cpd25" / "meta.json").read_text())
    assert UNET_PRESETS[DEFAULT_PRESET] == meta["constructor"]


def test_a_checkpoint_without_a_description_loads_as_the_released_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The released file comes without a .json: the preset builds its UNet (a tiny stand-in
    here), and the latents are the released VQ-f4's at 128 px."""
    monkeypatch.setitem(UNET_PRESETS, DEFAULT_PRESET, TINY_UNET)
    saved = _tiny_checkpoint(tmp_path / "ema_averaged_model_200000.ckpt", TINY_UNET)
    unet, spec = load_ldm(tmp_path / "ema_averaged_model_200000.ckpt")
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(unet.state_dict()[name], value, rtol=0, atol=0)
    assert spec["scheduler"]["num_train_timesteps"] == 1000
    assert latent_shape(spec, VQ_F4) == (3, 32, 32)


def test_a_checkpoint_of_another_architecture_says_to_describe_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(UNET_PRESETS, DEFAULT_PRESET, TINY_UNET)
    _tiny_checkpoint(tmp_path / "m.ckpt", {**TINY_UNET, "initial_channels": 64})
    with pytest.raises(ValueError, match=r"m\.ckpt.*another UNet.*m\.yaml.*m\.json"):
        load_ldm(tmp_path / "m.ckpt")


def test_the_reference_model_yaml_is_read_as_it_is(tmp_path: Path) -> None:
    """The reference's yaml form: a `_target_` key, comments, YAML booleans."""
    text = "# PARAMS: 1234\n_target_: models.diffusion.unet.ConditionalUNet\n"
    text += yaml.safe_dump({**TINY_UNET, "condition_type": "CA", "learn_empty_context": False})
    (tmp_path / "m.yaml").write_text(text.replace("false", "False"))
    saved = _tiny_checkpoint(tmp_path / "m.ckpt", TINY_UNET)
    unet, spec = load_ldm(tmp_path / "m.ckpt")
    assert spec["unet"] == {**TINY_UNET, "condition_type": "CA", "learn_empty_context": False}
    torch.testing.assert_close(unet.state_dict(), saved.state_dict(), rtol=0, atol=0)


def test_a_reference_yaml_of_another_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("_target_: models.diffusion.controlnet.ControlNet\n")
    with pytest.raises(ValueError, match=r"m\.yaml: _target_ is .*ControlNet"):
        read_ldm_spec(tmp_path / "m.ckpt")


@pytest.mark.parametrize(
    ("written", "named"),
    [
        ({"scheduler": {}}, r"m\.json: no UNet arguments \('unet'\).*m\.yaml"),
        ({"unet": "admis"}, r"m\.json: unknown UNet preset 'admis'.*admis_unet_cond_ca_cpd25"),
        ({"unet": {"channels": 3}}, r"m\.json: \['channels'\] are not ConditionalUNet arguments"),
    ],
)
def test_a_wrong_description_names_its_file_and_fix(
    tmp_path: Path, written: dict, named: str
) -> None:
    (tmp_path / "m.json").write_text(json.dumps(written))
    with pytest.raises(ValueError, match=named):
        read_ldm_spec(tmp_path / "m.ckpt")


def test_a_named_preset_in_the_json_is_the_preset(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"unet": DEFAULT_PRESET, "image_size": 64}))
    spec = read_ldm_spec(tmp_path / "m.ckpt")
    assert spec["unet"] == UNET_PRESETS[DEFAULT_PRESET]
    assert latent_shape(spec, VQ_F4) == (3, 16, 16)


def test_the_latent_shape_follows_the_first_stage_or_is_refused() -> None:
    assert latent_shape({"unet": TINY_UNET, "latent_shape": [3, 8, 8]}, VQ_F4) == (3, 8, 8)
    f8 = FirstStageSpec({"ch_mult": [1, 2, 4, 4]}, embed_dim=3)
    assert latent_shape({"unet": TINY_UNET}, f8) == (3, 16, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        latent_shape({"unet": TINY_UNET, "image_size": 130}, VQ_F4)
    with pytest.raises(ValueError, match="3 input channels but its latents have 4"):
        latent_shape({"unet": TINY_UNET}, FirstStageSpec({"ch_mult": [1, 2, 4]}, embed_dim=4))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(
    ("folder", "named"),
    [("absent", r"absent: no such folder \(contexts.model_dir\)"), ("empty", "not a diffusers")],
)
def test_a_diffusers_folder_is_read_offline(tmp_path: Path, folder: str, named: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises((FileNotFoundError, ValueError), match=named):
        generate_diffusers_faces(tmp_path / folder, 1, tmp_path / "out", face_size=8, seed=0)

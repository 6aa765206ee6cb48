"""VQ-f4 first stage: layout and function against the four `vq_f4_*` fixtures; the file loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reference_weights import fill_state_dict, load_fixture, manifest
from torch import nn

from synface.models import build_model
from synface.models.vq_f4 import DECODER_FILE, ENCODER_FILE, VQDecoder, VQEncoder, load_first_stage
from synface.models.vq_modules import AttnBlock

# Fixture name -> registry name.
FIXTURES = {
    "vq_f4_encoder": "vq_encoder",
    "vq_f4_tiny_encoder": "vq_encoder",
    "vq_f4_decoder": "vq_decoder",
    "vq_f4_tiny_decoder": "vq_decoder",
}
DECODER_OUTPUTS = ("decoded_quantized", "decoded_unquantized", "quantized_latent")


def constructor_args(meta: dict[str, Any]) -> dict[str, Any]:
    """meta.json's constructor arguments without `first_stage_config`.

    That entry only names the yaml the reference read `ddconfig` / `embed_dim` from (specs §2.1);
    our constructors take those values directly and never read files.
    """
    return {key: value for key, value in meta["constructor"].items() if key != "first_stage_config"}


def filled_model(name: str) -> tuple[dict[str, Any], dict[str, np.ndarray], nn.Module]:
    """The fixture's model with the fill-rule weights loaded strictly, in eval mode."""
    meta, shapes, arrays = load_fixture(name)
    model = build_model(FIXTURES[name], **constructor_args(meta))
    model.load_state_dict(fill_state_dict(shapes, meta["seed"], meta["gain"]), strict=True)
    return meta, arrays, model.eval()


def assert_close(name: str, actual: torch.Tensor, expected: np.ndarray, meta: dict) -> None:
    tolerance = meta["tolerance"]
    actual_np = actual.detach().numpy()
    assert actual_np.shape == expected.shape, name
    max_diff = float(np.abs(actual_np - expected).max())
    assert np.allclose(actual_np, expected, atol=tolerance["atol"], rtol=tolerance["rtol"]), (
        f"{name}: max |diff| {max_diff:.3g} (atol {tolerance['atol']}, rtol {tolerance['rtol']})"
    )


@pytest.fixture(scope="module", params=["vq_f4_tiny_encoder", "vq_f4_encoder"])
def encoder_case(request):
    return filled_model(request.param)


@pytest.fixture(scope="module", params=["vq_f4_tiny_decoder", "vq_f4_decoder"])
def decoder_case(request):
    return filled_model(request.param)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, Path, dict[str, Any]]:
    """The tiny fixtures' filled state dicts saved as the two released files, plus the config."""
    folder = tmp_path_factory.mktemp("first_stage")
    for fixture, file_name in (
        ("vq_f4_tiny_encoder", ENCODER_FILE),
        ("vq_f4_tiny_decoder", DECODER_FILE),
    ):
        meta, shapes, _ = load_fixture(fixture)
        torch.save(fill_state_dict(shapes, meta["seed"], meta["gain"]), folder / file_name)
    return folder / ENCODER_FILE, folder / DECODER_FILE, constructor_args(meta)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_state_dict_layout_equals_reference(name):
    meta, shapes, _ = load_fixture(name)
    # Shapes only: the meta device skips allocating up to 33 M parameters.
    with torch.device("meta"):
        model = build_model(FIXTURES[name], **constructor_args(meta))
    # Same keys, shapes and order, so the released files load strictly (specs §2.3).
    assert list(manifest(model).items()) == list(shapes.items())
    assert len(shapes) == meta["state_dict_keys"]
    assert sum(p.numel() for p in model.parameters()) == meta["param_count"]


def test_encoder_computes_the_reference_latent(encoder_case):
    meta, arrays, encoder = encoder_case
    with torch.no_grad():
        latent = encoder(torch.from_numpy(arrays["image"]))
    # Pre-quantisation latent, f = 4 (specs §2.1).
    assert_close("latent", latent, arrays["latent"], meta)


def test_decoder_computes_the_reference_outputs(decoder_case):
    meta, arrays, decoder = decoder_case
    latent = torch.from_numpy(arrays["latent"])
    with torch.no_grad():
        quantized, indices = decoder.quantize(latent)
        outputs = {
            "decoded_quantized": decoder(latent),
            "decoded_unquantized": decoder(latent, force_not_quantize=True),
            "quantized_latent": quantized,
        }
    assert indices.dtype == torch.int64
    assert np.array_equal(indices.numpy(), arrays["indices"])
    for name in DECODER_OUTPUTS:
        assert_close(name, outputs[name], arrays[name], meta)


def test_quantize_passes_the_gradient_straight_through():
    _, arrays, decoder = filled_model("vq_f4_tiny_decoder")
    latent = torch.from_numpy(arrays["latent"]).requires_grad_(True)
    quantized, indices = decoder.quantize(latent)
    quantized.sum().backward()
    # z + (e − z).detach(): identity gradient, codebook values (specs §2.2).
    assert torch.equal(latent.grad, torch.ones_like(latent))
    codes = decoder.quantize.embedding.weight[indices].view(1, 8, 8, 3).permute(0, 3, 1, 2)
    assert torch.allclose(quantized, codes, atol=1e-6, rtol=0)


def test_loader_round_trip_reproduces_the_fixtures(tiny_files):
    encoder_path, decoder_path, config = tiny_files
    encoder, decoder = load_first_stage(encoder_path, decoder_path, **config)
    assert isinstance(encoder, VQEncoder) and isinstance(decoder, VQDecoder)
    assert not encoder.training and not decoder.training
    assert not any(p.requires_grad for p in [*encoder.parameters(), *decoder.parameters()])
    enc_meta, _, enc_arrays = load_fixture("vq_f4_tiny_encoder")
    dec_meta, _, dec_arrays = load_fixture("vq_f4_tiny_decoder")
    with torch.no_grad():
        latent = encoder(torch.from_numpy(enc_arrays["image"]))
        image = decoder(latent)
    assert_close("latent", latent, enc_arrays["latent"], enc_meta)
    assert_close("decoded_quantized", image, dec_arrays["decoded_quantized"], dec_meta)


def test_loader_names_swapped_files(tiny_files):
    encoder_path, decoder_path, config = tiny_files
    with pytest.raises(
        ValueError,
        match=r"(?s)first_stage_decoder_state_dict\.pt: .*missing keys.*"
        r"encoder\.conv_in\.weight.*unexpected keys.*decoder\.conv_in.*swapped",
    ):
        load_first_stage(decoder_path, encoder_path, **config)


def test_loader_names_a_config_mismatch(tiny_files):
    encoder_path, decoder_path, config = tiny_files
    with pytest.raises(
        ValueError,
        match=r"(?s)decoder_state_dict\.pt.*shape mismatches.*"
        r"quantize\.embedding\.weight \[64, 3\].*another ddconfig",
    ):
        load_first_stage(encoder_path, decoder_path, **{**config, "n_embed": 32})


def test_loader_asks_to_strip_the_ldm_prefix(tiny_files, tmp_path):
    encoder_path, decoder_path, config = tiny_files
    prefixed = tmp_path / ENCODER_FILE
    state = torch.load(encoder_path, weights_only=True)
    torch.save({f"first_stage_model.{key}": value for key, value in state.items()}, prefixed)
    with pytest.raises(ValueError, match=r"(?s)encoder_state_dict\.pt.*Strip the 'first_stage"):
        load_first_stage(prefixed, decoder_path, **config)


def test_loader_explains_a_full_checkpoint(tiny_files, tmp_path):
    encoder_path, decoder_path, config = tiny_files
    wrapped = tmp_path / "model.ckpt"
    torch.save({"state_dict": torch.load(encoder_path, weights_only=True), "epoch": 1}, wrapped)
    with pytest.raises(ValueError, match=r"(?s)model\.ckpt: not a state dict.*full checkpoint"):
        load_first_stage(wrapped, decoder_path, **config)


def test_loader_refuses_pickled_objects(tiny_files, tmp_path):
    _, decoder_path, config = tiny_files
    unsafe = tmp_path / ENCODER_FILE
    # A Path is not on the weights_only allow-list: the file is refused, not executed.
    torch.save({"weight": tmp_path}, unsafe)
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_first_stage(unsafe, decoder_path, **config)


def test_loader_names_a_missing_file(tiny_files, tmp_path):
    encoder_path, _, config = tiny_files
    with pytest.raises(FileNotFoundError, match=r"absent\.pt.*first_stage_decoder_state_dict\.pt"):
        load_first_stage(encoder_path, tmp_path / "absent.pt", **config)


def test_attention_resolutions_follow_the_compvis_layout():
    # Not used by VQ-f4 (attn_resolutions is empty, specs §2.1), but part of ddconfig: attention
    # after every block of a listed resolution, under `down.N.attn.M` / `up.N.attn.M`.
    meta, _, _ = load_fixture("vq_f4_tiny_decoder")
    config = {**constructor_args(meta)["ddconfig"], "attn_resolutions": [16]}
    encoder = build_model("vq_encoder", ddconfig=config, n_embed=64)
    decoder = build_model("vq_decoder", ddconfig=config, n_embed=64)

    def attention_blocks(model: nn.Module) -> set[str]:
        return {name for name, module in model.named_modules() if isinstance(module, AttnBlock)}

    # Resolutions 32, 16, 8 by level; the decoder has num_res_blocks + 1 = 2 blocks per level.
    assert attention_blocks(encoder) == {"encoder.down.1.attn.0", "encoder.mid.attn_1"}
    assert attention_blocks(decoder) == {
        "decoder.up.1.attn.0",
        "decoder.up.1.attn.1",
        "decoder.mid.attn_1",
    }
    assert "encoder.down.1.attn.0.proj_out.weight" in manifest(encoder)
    with torch.no_grad():
        assert decoder(encoder(torch.zeros(1, 3, 32, 32))).shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_linear_attn": True}, r"unknown: \['use_linear_attn'\]"),
        ({"ch": None}, r"missing: \['ch'\]"),
        ({"double_z": True}, "double_z must be false"),
        ({"ch": 40}, "divisible by 32"),
        ({"num_res_blocks": 0}, "num_res_blocks must be positive"),
    ],
)
@pytest.mark.parametrize("name", ["vq_encoder", "vq_decoder"])
def test_invalid_ddconfig_names_the_key(name, change, message):
    meta, _, _ = load_fixture("vq_f4_tiny_encoder")
    config = {**meta["constructor"]["ddconfig"], **change}
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        build_model(name, ddconfig=config)

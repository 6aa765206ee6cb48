"""The frozen VQ-f4 first stage of IDiff-Face / ADMIS, re-implemented from CompVis latent-diffusion.

`VQEncoder` and `VQDecoder` mirror the reference `VQEncoderInterface` / `VQDecoderInterface`
key for key, so the released `first_stage_{encoder,decoder}_state_dict.pt` files load strictly.
Unlike the reference, the constructors take `embed_dim` and `n_embed` as arguments
instead of hard-coding 3 and 8192, and never read files: `load_first_stage` does that.
The function is pinned by the `vq_f4_*` fixtures in `tests/fixtures/reference/`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synface import checkpoint
from synface.models.vq_modules import AutoencoderConfig, Decoder, Encoder, VectorQuantizer

# The released file names; the loader's errors name them.
ENCODER_FILE = "first_stage_encoder_state_dict.pt"
DECODER_FILE = "first_stage_decoder_state_dict.pt"
# Key prefix of the first stage inside an LDM ffhq256 `model.ckpt`.
LDM_PREFIX = "first_stage_model."
# How many offending keys an error message lists.
KEYS_SHOWN = 5


class VQEncoder(nn.Module):
    """Image in [-1, 1] (N, 3, s, s) -> pre-quantisation latent (N, embed_dim, s/4, s/4).

    `quant_conv(encoder(x))`, never quantised: the diffusion model is trained on this latent as
    is, without a scale factor.
    """

    def __init__(
        self, ddconfig: Mapping[str, Any], embed_dim: int = 3, n_embed: int = 8192
    ) -> None:
        super().__init__()
        # The encoder has no codebook; `n_embed` is accepted so that one first-stage config
        # (ddconfig, embed_dim, n_embed) builds both halves.
        del n_embed
        config = AutoencoderConfig.from_mapping(ddconfig)
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, embed_dim, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(image))


class VQDecoder(nn.Module):
    """Latent (N, embed_dim, r, r) -> image (N, 3, 4r, 4r) in about [-1, 1], not clamped.

    The latent is snapped to its nearest codebook vector before decoding unless
    `force_not_quantize` is set: sampled latents are decoded with quantisation.
    """

    def __init__(
        self, ddconfig: Mapping[str, Any], embed_dim: int = 3, n_embed: int = 8192
    ) -> None:
        super().__init__()
        config = AutoencoderConfig.from_mapping(ddconfig)
        # Registration order = the reference's state-dict order (fixture manifest).
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.post_quant_conv = nn.Conv2d(embed_dim, config.z_channels, 1)

    def forward(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        if not force_not_quantize:
            z, _ = self.quantize(z)
        return self.decoder(self.post_quant_conv(z))


def load_first_stage(
    encoder_path: Path,
    decoder_path: Path,
    ddconfig: Mapping[str, Any],
    embed_dim: int = 3,
    n_embed: int = 8192,
) -> tuple[VQEncoder, VQDecoder]:
    """Build both halves on the CPU, load the released files strictly, return them frozen.

    The first stage is never trained here, so both come back in eval mode without
    gradients; the caller moves them with `.to(device)`. Files are read with
    `weights_only=True`.
    """
    encoder = VQEncoder(ddconfig, embed_dim=embed_dim, n_embed=n_embed)
    decoder = VQDecoder(ddconfig, embed_dim=embed_dim, n_embed=n_embed)
    _load_strict(encoder, Path(encoder_path), ENCODER_FILE, "encoder.* and quant_conv.*")
    _load_strict(
        decoder, Path(decoder_path), DECODER_FILE, "decoder.*, quantize.* and post_quant_conv.*"
    )
    for module in (encoder, decoder):
        module.eval().requires_grad_(False)
    return encoder, decoder


def _load_strict(module: nn.Module, path: Path, expected_file: str, expected_keys: str) -> None:
    """Load `path` into `module` with `strict=True`, or say which file is wrong and how."""
    expected = f"a plain state dict with keys {expected_keys} ({expected_file})"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {expected}")
    try:
        state = checkpoint.load(path)
    except (pickle.UnpicklingError, RuntimeError) as err:
        # weights_only refusals and unreadable archives both land here.
        raise ValueError(
            f"{path}: cannot be read with torch.load(weights_only=True); expected {expected}"
        ) from err
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        hint = (
            f" It looks like a full checkpoint: keep the `{LDM_PREFIX}*` entries of its "
            "'state_dict', strip the prefix and split them into the two files."
            if isinstance(state, Mapping) and "state_dict" in state
            else ""
        )
        raise ValueError(f"{path}: not a state dict of tensors; expected {expected}.{hint}")

    own = module.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    wrong_shape = [
        f"{key} {list(state[key].shape)} (model: {list(own[key].shape)})"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{len(keys)} {what} (e.g. {', '.join(keys[:KEYS_SHOWN])})"
            for what, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", wrong_shape),
            )
            if keys
        ]
        raise ValueError(
            f"{path}: does not match {type(module).__name__}: {'; '.join(problems)}. "
            f"Expected {expected}.{_mismatch_hint(unexpected, wrong_shape)}"
        )
    module.load_state_dict(state, strict=True)


def _mismatch_hint(unexpected: list[str], wrong_shape: list[str]) -> str:
    """The likely fix for the usual mistakes: prefixed keys, swapped files, another config."""
    if any(key.startswith(LDM_PREFIX) for key in unexpected):
        return f" Strip the '{LDM_PREFIX}' prefix from the keys."
    if any(key.startswith(("decoder.", "quantize.", "post_quant_conv.")) for key in unexpected):
        return f" This looks like the decoder file ({DECODER_FILE}); are the two paths swapped?"
    if any(key.startswith(("encoder.", "quant_conv.")) for key in unexpected):
        return f" This looks like the encoder file ({ENCODER_FILE}); are the two paths swapped?"
    if wrong_shape:
        return " The file was saved with another ddconfig, embed_dim or n_embed."
    return ""

"""CompVis/taming-style autoencoder blocks, `Encoder` and `Decoder`, re-implemented from
CompVis latent-diffusion's `ldm/modules/diffusionmodules/model.py`.

Attribute names and registration order reproduce the reference `modules.py` state-dict layout
(`down.N.block.M.norm1`, `mid.attn_1.q`, `up.N.upsample.conv`, ...), so the released VQ-f4
files load strictly into `synface.models.vq_f4`. The layout is pinned by the `vq_f4_*` fixtures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Every norm in the first stage: 32 groups, eps 1e-6, affine.
NORM_GROUPS = 32
NORM_EPS = 1e-6


@dataclass(frozen=True)
class AutoencoderConfig:
    """The reference `ddconfig`, validated once and shared by encoder and decoder.

    All ten keys of `first_stage_config.yaml` are required so that a config that silently drops
    one (and falls back to a different default) cannot build a different network.
    """

    ch: int
    out_ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]
    dropout: float
    in_channels: int
    resolution: int
    z_channels: int
    double_z: bool

    @classmethod
    def from_mapping(cls, ddconfig: Mapping[str, Any]) -> AutoencoderConfig:
        """Check the keys and values of a `ddconfig` mapping and freeze it."""
        names = [field.name for field in fields(cls)]
        unknown = sorted(set(ddconfig) - set(names))
        missing = [name for name in names if name not in ddconfig]
        if unknown or missing:
            raise ValueError(
                f"ddconfig must have exactly the keys {names} (as in the reference's first-stage "
                f"yaml); "
                f"unknown: {unknown}, missing: {missing}"
            )
        config = cls(
            ch=int(ddconfig["ch"]),
            out_ch=int(ddconfig["out_ch"]),
            ch_mult=tuple(int(m) for m in ddconfig["ch_mult"]),
            num_res_blocks=int(ddconfig["num_res_blocks"]),
            attn_resolutions=tuple(int(r) for r in ddconfig["attn_resolutions"]),
            dropout=float(ddconfig["dropout"]),
            in_channels=int(ddconfig["in_channels"]),
            resolution=int(ddconfig["resolution"]),
            z_channels=int(ddconfig["z_channels"]),
            double_z=bool(ddconfig["double_z"]),
        )
        if config.double_z:
            # double_z makes the encoder emit a KL autoencoder's mean and log-variance; a VQ
            # first stage feeds z_channels into quant_conv (double_z false).
            raise ValueError(
                "ddconfig.double_z must be false for a VQ first stage (true is a KL autoencoder); "
                "set double_z: false"
            )
        widths = [config.ch * mult for mult in config.ch_mult]
        if not widths or min(widths) <= 0 or any(w % NORM_GROUPS for w in widths):
            raise ValueError(
                f"ddconfig.ch * ch_mult must give positive widths divisible by {NORM_GROUPS} "
                f"(GroupNorm groups), got ch={config.ch}, ch_mult={config.ch_mult}"
            )
        if config.num_res_blocks <= 0:
            raise ValueError(
                f"ddconfig.num_res_blocks must be positive, got {config.num_res_blocks}"
            )
        return config


def normalize(channels: int) -> nn.GroupNorm:
    """The first stage's only norm."""
    return nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    """x·sigmoid(x), the reference's `nonlinearity` (fixture README)."""
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm1 → swish → conv1 → norm2 → swish → dropout → conv2, plus a 1×1 `nin_shortcut` when the
    width changes. The first stage passes no time embedding, so there is no `temb_proj`.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1×1 conv q/k/v/proj_out and a residual.

    Scores are scaled by channels^-0.5 (fixture README), the default of
    `scaled_dot_product_attention`, which computes the reference's softmax(q·kᵀ)·v.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        # (b, c, h, w) -> (b, h·w, c): one token per position, row-major.
        q, k, v = (proj(h).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Pad right and bottom by one pixel, then a 3×3 stride-2 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest ×2, then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResolutionLevel(nn.Module):
    """The ResNet blocks of one resolution level, each followed by attention where the level's
    resolution is listed in `attn_resolutions` (an identity elsewhere: no parameters, no keys).
    """

    def __init__(
        self, widths: Sequence[tuple[int, int]], with_attention: bool, dropout: float
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, dropout) for i, o in widths)
        self.attn = nn.ModuleList(
            AttnBlock(o) if with_attention else nn.Identity() for _, o in widths
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, attn in zip(self.block, self.attn, strict=True):
            x = attn(block(x))
        return x


class DownLevel(ResolutionLevel):
    """Encoder level: blocks, then `downsample` (an identity at the last level, where the
    reference has no such attribute; neither holds state, so the keys match).
    """

    def __init__(
        self, widths: Sequence[tuple[int, int]], with_attention: bool, dropout: float, last: bool
    ) -> None:
        super().__init__(widths, with_attention, dropout)
        self.downsample = nn.Identity() if last else Downsample(widths[-1][1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(super().forward(x))


class UpLevel(ResolutionLevel):
    """Decoder level: blocks, then `upsample` (an identity at full resolution, `up.0`)."""

    def __init__(
        self, widths: Sequence[tuple[int, int]], with_attention: bool, dropout: float, first: bool
    ) -> None:
        super().__init__(widths, with_attention, dropout)
        self.upsample = nn.Identity() if first else Upsample(widths[-1][1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(super().forward(x))


class MidBlock(nn.Module):
    """ResNet block, self-attention, ResNet block at the lowest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (N, in_channels, s, s) -> (N, z_channels, s/f, s/f), f = 2^(len(ch_mult) - 1)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = [config.ch * mult for mult in config.ch_mult]
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, 3, padding=1)
        levels: list[DownLevel] = []
        block_in, resolution = config.ch, config.resolution
        for index, block_out in enumerate(widths):
            # Each level's first block changes the width; the rest keep it.
            pairs = [(block_in, block_out)] + [(block_out, block_out)] * (config.num_res_blocks - 1)
            last = index == len(widths) - 1
            levels.append(
                DownLevel(pairs, resolution in config.attn_resolutions, config.dropout, last)
            )
            block_in = block_out
            resolution = resolution if last else resolution // 2
        self.down = nn.ModuleList(levels)
        self.mid = MidBlock(block_in, config.dropout)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(swish(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latent (N, z_channels, r, r) -> image (N, out_ch, r·f, r·f); no tanh at the end."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        widths = [config.ch * mult for mult in config.ch_mult]
        block_in = widths[-1]
        resolution = config.resolution // 2 ** (len(widths) - 1)
        self.conv_in = nn.Conv2d(config.z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, config.dropout)
        # Built deepest first, as it runs, but `up.0` is the full-resolution level (fixture README):
        # `forward` walks the list in reverse.
        levels: list[UpLevel] = []
        for index in reversed(range(len(widths))):
            block_out = widths[index]
            # num_res_blocks + 1 blocks per level in the decoder.
            pairs = [(block_in, block_out)] + [(block_out, block_out)] * config.num_res_blocks
            first = index == 0
            levels.insert(
                0, UpLevel(pairs, resolution in config.attn_resolutions, config.dropout, first)
            )
            block_in = block_out
            resolution = resolution if first else resolution * 2
        self.up = nn.ModuleList(levels)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantiser of the reference `VectorQuantizer2(legacy=True)`.

    Only the decode path uses it and the first stage is frozen, so the commitment loss (beta) and
    perplexity of the reference are not computed; the straight-through estimator is kept so a
    gradient still reaches the latent.
    """

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        if n_embed <= 0 or embed_dim <= 0:
            raise ValueError(
                f"n_embed and embed_dim must be positive, got {n_embed} and {embed_dim}"
            )
        self.embedding = nn.Embedding(n_embed, embed_dim)
        # The reference's init, U(-1/n, 1/n); released weights overwrite it.
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (quantised latent shaped like `z`, int64 code index per position).

        Indices are flattened in (batch, row, column) order, as the reference's
        `min_encoding_indices`.
        """
        batch, channels, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, channels)
        codebook = self.embedding.weight
        # The reference's expanded squared distance |z|² + |e|² − 2 z·e, in the input precision
        # (fixture README: its argmin is what the stored indices record).
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True)
            + codebook.pow(2).sum(dim=1)
            - 2.0 * flat @ codebook.t()
        )
        indices = distances.argmin(dim=1)
        codes = self.embedding(indices).view(batch, height, width, channels).permute(0, 3, 1, 2)
        # z + (e − z): straight-through gradient; the value can differ from e by one rounding,
        # as in the reference (fixture README).
        return z + (codes - z).detach(), indices

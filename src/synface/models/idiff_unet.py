"""IDiff-Face / ADMIS denoising UNet `ConditionalUNet`, re-implemented from the reference.

The parameter layout reproduces the reference key for key and in the same state-dict order, so
released `ema_averaged_model_*.ckpt` weights load strictly; the function is
pinned by the `admis_unet_ca_cpd25` and `admis_unet_tiny` fixtures in `tests/fixtures/reference/`.

Two ways for the identity context to enter are implemented:
- "CA" (the released IDiff-Face and ADMIS models): the context reaches the network only through
  the cross-attention blocks, as 32 tokens of 256 channels per block;
- "AdaGN": the context is added to the time embedding of every residual block, and the attention
  blocks are plain self-attention. With `is_context_conditional=False` this is the unconditional
  UNet of `unet_uncond_adagn.yaml`.
The reference's other options ("AddPlusGN", "DiffAE") were never released or used and are refused.

Attention runs through `scaled_dot_product_attention` by default. `attention_backend="matmul"`
selects the reference formulation (explicit scores, float32 softmax), kept as the benchmark
baseline and as a cross-check of the fused path. Both meet the fixture tolerance in float32 on
CPU and on CUDA (H200) with TF32 off; with TF32 on (cuDNN's default for convolutions) ε moves by
about 4e-3, ten times the tolerance, so a GPU conformance check must disable TF32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionBackend = Literal["sdpa", "matmul"]
ATTENTION_BACKENDS: tuple[str, ...] = ("sdpa", "matmul")
CONDITION_TYPES: tuple[str, ...] = ("CA", "AdaGN")

# Every GroupNorm of the UNet uses 32 groups and eps 1e-5 (fixture README, "Behaviour").
GROUPS = 32
# The sinusoidal time features use periods up to 10000 steps.
MAX_PERIOD = 10000


def _zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer that ends a residual branch, so a fresh block starts as the identity.

    The reference zero-initialises every residual `conv2`, every cross-attention `x_proj_out` and
    the output conv, which makes a freshly built model predict ε = 0.
    """
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class SinusoidalTimeEmbedding(nn.Module):
    """Integer step index → `4·initial_channels` features.

    The sinusoid has `n_channels/4` features, cosines first; t is the raw step 0..T-1, not rescaled.
    The frequency table is recomputed in float32 on every call rather than stored, because the
    reference keeps it out of the state dict and half precision would blur the high frequencies.
    """

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        self.sinusoid_channels = n_channels // 4
        self.lin1 = nn.Linear(self.sinusoid_channels, n_channels)
        self.act = nn.SiLU()
        self.lin2 = nn.Linear(n_channels, n_channels)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.sinusoid_channels // 2
        steps = torch.arange(half, dtype=torch.float32, device=t.device)
        frequencies = torch.exp(-math.log(MAX_PERIOD) * steps / half)
        args = t[:, None].float() * frequencies[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.lin2(self.act(self.lin1(features.to(self.lin1.weight.dtype))))


class AdaptiveGroupNorm(nn.Module):
    """`(1 + scale)·GN(h) + shift`, wrapped so that the key is `norm2.norm` as in the reference."""

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, n_channels)

    def forward(self, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        return (1 + scale) * self.norm(h) + shift


class ResidualBlock(nn.Module):
    """GN → SiLU → conv → adaptive GN from the time (and, for AdaGN, context) embedding → conv.

    The reference follows the second SiLU with `Dropout(p=0.0)`, which
    has no parameters and no effect, so it is left out.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_channels: int,
        context_channels: int | None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        # Sequential(SiLU, Linear): the reference's key index `.1`.
        self.time_emb = nn.Sequential(nn.SiLU(), nn.Linear(time_channels, out_channels))
        # AdaGN only: the context shifts the same embedding that drives scale and shift.
        self.context_emb = (
            nn.Sequential(nn.SiLU(), nn.Linear(context_channels, out_channels))
            if context_channels is not None
            else None
        )
        self.scale_emb = nn.Linear(out_channels, out_channels)
        self.shift_emb = nn.Linear(out_channels, out_channels)
        self.norm2 = AdaptiveGroupNorm(out_channels)
        self.conv2 = _zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        emb = self.time_emb(t_emb)
        if self.context_emb is not None:
            emb = emb + self.context_emb(c)
        scale = self.scale_emb(emb)[:, :, None, None]
        shift = self.shift_emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h, scale, shift)))
        return h + self.shortcut(x)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over channels-first tokens (B, C, L) with 1×1 Conv1d projections.

    Heads split the channels contiguously. `backend` is a plain attribute, so a
    benchmark can switch a built model between the fused and the reference formulation.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        head_channels: int,
        key_value_channels: int | None = None,
        backend: AttentionBackend = "sdpa",
    ) -> None:
        super().__init__()
        inner = n_heads * head_channels
        kv_channels = in_channels if key_value_channels is None else key_value_channels
        self.n_heads = n_heads
        self.head_channels = head_channels
        self.backend = backend
        self.to_q = nn.Conv1d(in_channels, inner, 1)
        self.to_k = nn.Conv1d(kv_channels, inner, 1)
        self.to_v = nn.Conv1d(kv_channels, inner, 1)
        self.proj_out = nn.Conv1d(inner, in_channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        kv = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(kv), self.to_v(kv)
        batch, inner, length = q.shape
        out = self._sdpa(q, k, v) if self.backend == "sdpa" else self._matmul(q, k, v)
        return self.proj_out(out.reshape(batch, inner, length))

    def _heads(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, heads·d, L) → (B, heads, L, d): contiguous channel blocks per head."""
        batch, _, length = tokens.shape
        return tokens.view(batch, self.n_heads, self.head_channels, length).transpose(-1, -2)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # The reference multiplies q and k each by d^(-1/4) before the dot product, i.e. one factor
        # d^(-1/2) on the scores: SDPA's default scale. Its fused kernels keep the softmax in
        # float32 under fp16/bf16 as the reference does explicitly.
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        return out.transpose(-1, -2)

    def _matmul(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # The reference formulation: the scale is split between q and k (kinder to
        # fp16 than scaling the scores afterwards) and the softmax runs in float32.
        scale = self.head_channels**-0.25
        scores = (self._heads(q) * scale) @ (self._heads(k) * scale).transpose(-1, -2)
        weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        return (weights @ self._heads(v)).transpose(-1, -2)


class CrossAttentionBlock(nn.Module):
    """The reference `SpatialEmbeddingCrossAttentionBlock`, the only context entry
    point of a CA model.

    Self-attention, cross-attention to the context tokens and a feed-forward layer, each
    pre-normalised by the same `x_norm` and with its own residual, between 1×1 convs. The context
    vector becomes `head_channels` tokens of `context_channels` channels (a reshape, then
    GroupNorm over the 256-channel axis).
    """

    def __init__(
        self,
        channels: int,
        context_channels: int,
        n_heads: int,
        head_channels: int,
        backend: AttentionBackend,
    ) -> None:
        super().__init__()
        inner = n_heads * head_channels
        self.context_channels = context_channels
        self.n_context_tokens = head_channels
        self.x_proj_in = nn.Conv2d(channels, inner, 1)
        self.x_proj_out = _zero_init(nn.Conv2d(inner, channels, 1))
        self.self_attention = MultiHeadAttention(inner, n_heads, head_channels, backend=backend)
        self.c_proj_in = nn.Linear(context_channels, context_channels * self.n_context_tokens)
        self.cross_attention = MultiHeadAttention(
            inner, n_heads, head_channels, key_value_channels=context_channels, backend=backend
        )
        self.x_norm = nn.GroupNorm(GROUPS, inner)
        self.c_norm = nn.GroupNorm(GROUPS, context_channels)
        self.ff = nn.Sequential(nn.Linear(inner, 4 * inner), nn.GELU(), nn.Linear(4 * inner, inner))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        h = self.x_proj_in(x).flatten(2)
        # "b (n d) -> b n d" with n = context channels: channel-major split.
        tokens = self.c_norm(
            self.c_proj_in(c).view(batch, self.context_channels, self.n_context_tokens)
        )
        h = self.self_attention(self.x_norm(h)) + h
        h = self.cross_attention(self.x_norm(h), tokens) + h
        h = self.ff(self.x_norm(h).transpose(1, 2)).transpose(1, 2) + h
        return self.x_proj_out(h.reshape(batch, -1, height, width)) + x


class SelfAttentionBlock(nn.Module):
    """The reference `SpatialSelfAttentionBlock`: GN → multi-head self-attention → residual.

    Used wherever attention is on in AdaGN and unconditional models. Unlike the
    cross-attention block it has no projections and nothing zero-initialised.
    """

    def __init__(
        self, channels: int, n_heads: int, head_channels: int, backend: AttentionBackend
    ) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(channels, n_heads, head_channels, backend=backend)
        self.norm = nn.GroupNorm(GROUPS, channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.attention(self.norm(x).flatten(2)).view_as(x) + x


class UNetBlock(nn.Module):
    """A down or up block: residual block, then attention where the level has it (keys `res`,
    `attn`). Up blocks receive their input already concatenated with the skip."""

    def __init__(self, res: ResidualBlock, attn: nn.Module | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = self.res(x, t_emb, c)
        return x if self.attn is None else self.attn(x, c)


class MiddleBlock(nn.Module):
    """Residual block, attention (always on), residual block."""

    def __init__(self, res1: ResidualBlock, attn: nn.Module, res2: ResidualBlock) -> None:
        super().__init__()
        self.res1 = res1
        self.attn = attn
        self.res2 = res2

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x, t_emb, c), c), t_emb, c)


class Downsample(nn.Module):
    """Stride-2 3×3 conv; sits at its own index of `down`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Stride-2 4×4 transposed conv; takes no skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@dataclass(frozen=True)
class _BlockFactory:
    """Builds the UNet's residual and attention blocks, one definition shared by the down path,
    the middle and the up path so that every level wires time and context the same way.

    `block_context` is the context width the residual blocks take (AdaGN), `attention_context`
    the one the attention blocks take (CA); None where the context does not enter there.
    """

    time_channels: int
    block_context: int | None
    attention_context: int | None
    attention_heads: int
    attention_head_channels: int
    backend: AttentionBackend

    def residual(self, in_channels: int, out_channels: int) -> ResidualBlock:
        return ResidualBlock(in_channels, out_channels, self.time_channels, self.block_context)

    def attention(self, channels: int) -> nn.Module:
        """Cross-attention where the context enters attention, self-attention otherwise."""
        heads = (
            self.attention_heads
            if self.attention_heads > 0
            else channels // self.attention_head_channels
        )
        if self.attention_context is not None:
            return CrossAttentionBlock(
                channels, self.attention_context, heads, self.attention_head_channels, self.backend
            )
        return SelfAttentionBlock(channels, heads, self.attention_head_channels, self.backend)

    def block(self, in_channels: int, out_channels: int, has_attention: bool) -> UNetBlock:
        """Residual block to `out_channels`, then attention at that width where the level has it
        (residual first: a seeded build draws its weights in this order)."""
        res = self.residual(in_channels, out_channels)
        return UNetBlock(res, self.attention(out_channels) if has_attention else None)


class ConditionalUNet(nn.Module):
    """ε-prediction UNet of IDiff-Face / ADMIS: `forward(x, t, context=None, dropout_mask=None)`.

    The constructor takes the reference yaml keys (`configs/model/unet_cond_ca_cpd25.yaml`), so
    `build_model("idiff_unet", **yaml)` rebuilds a released model; the defaults are that yaml's
    values. `channel_multipliers` compound (96·[1, 2, 2, 2] gives 96, 192, 384, 768);
    `attention_heads <= 0` means one head per `attention_head_channels` channels.
    `attention_backend` is ours, not a reference key.

    Context handling: `context` (B, context_input_channels) is projected to the
    shared `context_channels` embedding; rows where `dropout_mask` is True are replaced by the
    "empty" embedding (zeros, or a learned vector with `learn_empty_context`), which is how whole
    contexts are dropped for an unconditional mode; then element-wise dropout with
    `context_dropout_probability` ("CPD") applies in train mode. `context=None` means the empty
    embedding for every row, without CPD.
    """

    def __init__(
        self,
        input_channels: int = 3,
        initial_channels: int = 96,
        channel_multipliers: Sequence[int] = (1, 2, 2, 2),
        is_attention: Sequence[bool] = (False, True, True, True),
        attention_heads: int = -1,
        attention_head_channels: int = 32,
        n_blocks_per_resolution: int = 2,
        condition_type: str = "CA",
        is_context_conditional: bool = True,
        n_context_classes: int = 0,
        context_input_channels: int = 512,
        context_channels: int = 256,
        learn_empty_context: bool = False,
        context_dropout_probability: float = 0.25,
        attention_backend: AttentionBackend = "sdpa",
    ) -> None:
        super().__init__()
        condition = _condition_type(condition_type)
        widths = _level_widths(initial_channels, channel_multipliers, is_attention)
        _check_attention_backend(attention_backend)
        _check_unet_arguments(
            n_blocks_per_resolution,
            context_dropout_probability,
            is_context_conditional,
            context_channels,
        )
        self.is_context_conditional = is_context_conditional
        self.context_channels = context_channels
        blocks = _BlockFactory(
            time_channels=4 * initial_channels,
            # The context enters the residual blocks only in AdaGN, the attention blocks only in
            # CA, and neither in an unconditional model.
            block_context=(
                context_channels if condition == "AdaGN" and is_context_conditional else None
            ),
            attention_context=(
                context_channels if condition == "CA" and is_context_conditional else None
            ),
            attention_heads=attention_heads,
            attention_head_channels=attention_head_channels,
            backend=attention_backend,
        )

        # Attribute order = the reference's state-dict order (fixture manifests). Modules are also
        # built in this order, so a seeded build draws the same initial weights.
        self.image_proj = nn.Conv2d(input_channels, initial_channels, 3, padding=1)
        self.time_emb = SinusoidalTimeEmbedding(blocks.time_channels)
        if is_context_conditional:
            self.context_dropout, self.context_emb, self.empty_context_embedding = _context_path(
                n_context_classes,
                context_input_channels,
                context_channels,
                learn_empty_context,
                context_dropout_probability,
            )
        down = _down_path(blocks, initial_channels, widths, is_attention, n_blocks_per_resolution)
        self.down = nn.ModuleList(down)
        self.middle = MiddleBlock(
            blocks.residual(widths[-1], widths[-1]),
            blocks.attention(widths[-1]),
            blocks.residual(widths[-1], widths[-1]),
        )
        self.up = nn.ModuleList(
            _up_path(blocks, initial_channels, down, widths, is_attention, n_blocks_per_resolution)
        )
        self.norm = nn.GroupNorm(GROUPS, initial_channels)
        self.final = _zero_init(nn.Conv2d(initial_channels, input_channels, 3, padding=1))

    def set_attention_backend(self, backend: AttentionBackend) -> None:
        """Switch every attention layer between SDPA and the reference matmul path (benchmarks)."""
        _check_attention_backend(backend)
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.backend = backend

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None = None,
        dropout_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict ε for latents `x` (B, C, H, W) at integer steps `t` (B,) or a scalar step."""
        if t.ndim == 0:
            # A sampler's scalar step applies to the whole batch.
            t = t.expand(x.shape[0])
        t_emb = self.time_emb(t)
        c = self._context_embedding(x, context, dropout_mask)

        h = self.image_proj(x)
        skips = [h]
        for module in self.down:
            h = module(h) if isinstance(module, Downsample) else module(h, t_emb, c)
            skips.append(h)
        h = self.middle(h, t_emb, c)
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h)
            else:
                # Current features first, skip second.
                h = module(torch.cat((h, skips.pop()), dim=1), t_emb, c)
        return self.final(F.silu(self.norm(h)))

    def _context_embedding(
        self, x: torch.Tensor, context: torch.Tensor | None, dropout_mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """The shared context embedding c (B, context_channels), or None for an unconditional
        model."""
        if not self.is_context_conditional:
            if context is not None or dropout_mask is not None:
                raise ValueError(
                    "this UNet was built with is_context_conditional=False; call it without "
                    "context and dropout_mask"
                )
            return None
        if self.empty_context_embedding is None:
            empty = x.new_zeros(self.context_channels)
        else:
            empty = self.empty_context_embedding.to(x.dtype)
        if context is None:
            return empty.expand(x.shape[0], -1)
        c = self.context_emb(context)
        if dropout_mask is not None:
            if dropout_mask.shape != (c.shape[0],) or dropout_mask.dtype != torch.bool:
                raise ValueError(
                    f"dropout_mask must be a bool tensor of shape ({c.shape[0]},), one flag per "
                    f"sample; got {dropout_mask.dtype} {tuple(dropout_mask.shape)}"
                )
            c = torch.where(dropout_mask[:, None], empty.to(c.dtype), c)
        return self.context_dropout(c)


def _output_width(module: nn.Module) -> int:
    """Channels a down-path module outputs (what its skip contributes to the up path)."""
    if isinstance(module, Downsample):
        return module.conv.out_channels
    return module.res.conv1.out_channels


def _check_unet_arguments(
    n_blocks_per_resolution: int,
    context_dropout_probability: float,
    is_context_conditional: bool,
    context_channels: int,
) -> None:
    """Refuse constructor values the reference architecture cannot take, naming the key."""
    if n_blocks_per_resolution < 1:
        raise ValueError(f"n_blocks_per_resolution must be >= 1, got {n_blocks_per_resolution}")
    if not 0.0 <= context_dropout_probability < 1.0:
        raise ValueError(
            f"context_dropout_probability must be in [0, 1), got {context_dropout_probability}"
        )
    if is_context_conditional and context_channels % GROUPS:
        raise ValueError(
            f"context_channels must be divisible by {GROUPS} (GroupNorm groups of the "
            f"cross-attention context), got {context_channels}"
        )


def _context_path(
    n_context_classes: int,
    context_input_channels: int,
    context_channels: int,
    learn_empty_context: bool,
    context_dropout_probability: float,
) -> tuple[nn.Module, nn.Module, nn.Parameter | None]:
    """Element-wise context dropout ("CPD"), the projection to the shared `context_channels`
    embedding (an embedding table for class labels, a linear map for embedding vectors) and the
    learned empty embedding, in the reference's state-dict order.

    The empty embedding is None when it is zeros: those are made on the fly, because the reference
    keeps the zero vector out of the state dict (fixture notes); a learned one is
    normal-initialised and a state-dict entry.
    """
    dropout: nn.Module = (
        nn.Dropout(context_dropout_probability)
        if context_dropout_probability > 0
        else nn.Identity()
    )
    projection: nn.Module = (
        nn.Embedding(n_context_classes, context_channels)
        if n_context_classes > 0
        else nn.Linear(context_input_channels, context_channels)
    )
    empty = nn.Parameter(torch.randn(context_channels)) if learn_empty_context else None
    return dropout, projection, empty


def _down_path(
    blocks: _BlockFactory,
    initial_channels: int,
    widths: Sequence[int],
    is_attention: Sequence[bool],
    n_blocks_per_resolution: int,
) -> list[nn.Module]:
    """Per level, shallowest first: n blocks at the level's width, then a downsampler except at
    the deepest level."""
    down: list[nn.Module] = []
    in_channels = initial_channels
    for level, (width, has_attention) in enumerate(zip(widths, is_attention, strict=True)):
        for _ in range(n_blocks_per_resolution):
            down.append(blocks.block(in_channels, width, has_attention))
            in_channels = width
        if level < len(widths) - 1:
            down.append(Downsample(width))
    return down


def _up_path(
    blocks: _BlockFactory,
    initial_channels: int,
    down: Sequence[nn.Module],
    widths: Sequence[int],
    is_attention: Sequence[bool],
    n_blocks_per_resolution: int,
) -> list[nn.Module]:
    """Per level, deepest first: n blocks at the level's width, one that reduces to the next
    shallower width, then an upsampler except at full resolution.

    Each block's input is its own width plus the width of the skip it pops: the skips are the
    image projection's output and then each module of `down`, consumed last first.
    """
    skip_widths = [initial_channels, *(_output_width(m) for m in down)]
    up: list[nn.Module] = []
    in_channels = widths[-1]
    for level in reversed(range(len(widths))):
        reduced = widths[level - 1] if level else initial_channels
        for out_width in [widths[level]] * n_blocks_per_resolution + [reduced]:
            up.append(blocks.block(in_channels + skip_widths.pop(), out_width, is_attention[level]))
            in_channels = out_width
        if level > 0:
            up.append(Upsample(in_channels))
    return up


def _condition_type(condition_type: str) -> str:
    """Canonical spelling; the reference compares case-insensitively."""
    for known in CONDITION_TYPES:
        if condition_type.lower() == known.lower():
            return known
    raise ValueError(
        f"condition_type {condition_type!r} is not supported; use one of {list(CONDITION_TYPES)} "
        "(the reference's AddPlusGN and DiffAE options were never released or used)"
    )


def _level_widths(
    initial_channels: int, channel_multipliers: Sequence[int], is_attention: Sequence[bool]
) -> list[int]:
    """Compounded level widths: each multiplier scales the previous level."""
    if not channel_multipliers:
        raise ValueError("channel_multipliers must name at least one level, e.g. [1, 2, 2, 2]")
    if len(is_attention) != len(channel_multipliers):
        raise ValueError(
            f"is_attention needs one flag per level: {len(channel_multipliers)} channel "
            f"multipliers but {len(is_attention)} is_attention flags"
        )
    widths = []
    width = initial_channels
    for multiplier in channel_multipliers:
        width *= multiplier
        widths.append(width)
    if any(w <= 0 or w % GROUPS for w in [initial_channels, *widths]):
        raise ValueError(
            f"initial_channels={initial_channels} with channel_multipliers="
            f"{list(channel_multipliers)} gives widths {widths}; every width must be a positive "
            f"multiple of {GROUPS} (GroupNorm groups)"
        )
    return widths


def _check_attention_backend(backend: str) -> None:
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend must be one of {list(ATTENTION_BACKENDS)}, got {backend!r}"
        )

"""The stage layout shared by the two face ResNets, insightface IResNet and TFace IR.

Both stack four stages of residual units whose first unit halves the resolution, so the input side
must be divisible by 16, and both take four stage widths. What differs stays in `iresnet.py` and
`tface_ir.py`: the unit (shortcut, order of layers), the initialisation, and which depths each
reference offers (insightface also 200, TFace the alias 101).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import nn

# Four stride-2 stages: 112 -> 7, the references' fixed 7 × 7 final map.
DOWNSAMPLING = 16

StageDepths = tuple[int, int, int, int]

# Units per stage of the depths both references build, with the same counts in each.
COMMON_DEPTHS: dict[int, StageDepths] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}


def blocks_for_depth(
    depth: int, table: Mapping[int, StageDepths], aliases: Mapping[int, int] | None = None
) -> StageDepths:
    """Units per stage for a network depth (the number in the reference's factory name)."""
    aliases = aliases or {}
    known = sorted([*table, *aliases])
    depth = aliases.get(depth, depth)
    if depth not in table:
        raise ValueError(f"depth must be one of {known}, got {depth!r}")
    return table[depth]


def stage_widths(channels: Sequence[int]) -> tuple[int, ...]:
    """The four stage widths as ints; the references hard-code 64, 128, 256, 512."""
    widths = tuple(int(c) for c in channels)
    if len(widths) != 4 or min(widths) <= 0:
        raise ValueError(
            "channels must be four positive stage widths, e.g. (64, 128, 256, 512), "
            f"got {channels!r}"
        )
    return widths


def build_stages(
    unit: Callable[[int, int, int], nn.Module],
    in_channels: int,
    widths: Sequence[int],
    blocks: Sequence[int],
) -> list[list[nn.Module]]:
    """The units of each stage, built in state-dict order by `unit(in_channels, out_channels,
    stride)`: the first unit of every stage changes the width and halves the resolution."""
    stages = []
    for out_channels, num_blocks in zip(widths, blocks, strict=True):
        stage = [unit(in_channels, out_channels, 2)]
        stage.extend(unit(out_channels, out_channels, 1) for _ in range(num_blocks - 1))
        stages.append(stage)
        in_channels = out_channels
    return stages

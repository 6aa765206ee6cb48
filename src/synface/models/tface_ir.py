"""TFace IR backbones (IR-18/34/50/100), re-implemented.

The parameter layout reproduces TFace's `model_irse.Backbone(input_size, depth, "ir")` key for key
and in the same state-dict order, so TFace `Backbone_Epoch_*_checkpoint.pth` files load strictly and
our checkpoints load into TFace. The network is pinned by the `tface_ir50` fixture in
`tests/fixtures/reference/`.

Beyond TFace (which accepts 112 and 224 only) any square input divisible by 16 and any four stage
widths are accepted, so the demo world can train a narrow, low-resolution variant with this code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from synface.models import resnet_stages

# Units per stage. 152/200 use bottleneck units and are not implemented.
BLOCKS_PER_STAGE: dict[int, resnet_stages.StageDepths] = resnet_stages.COMMON_DEPTHS
# TFace's `IR_101` factory builds the 100-layer network.
DEPTH_ALIASES: dict[int, int] = {101: 100}


class BasicBlockIR(nn.Module):
    """Pre-activation-style IR unit: BN → conv → BN → PReLU → strided conv → BN, plus shortcut.

    There is no activation after the residual add. The shortcut is registered before
    `res_layer` because that is TFace's state-dict order (fixture manifest).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels == out_channels:
            # Parameter-free subsampling, also for the stride-2 first unit of stage 1,
            # where insightface uses a conv instead.
            self.shortcut_layer: nn.Module = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            # The stride sits on the second conv.
            nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class TFaceIR(nn.Module):
    """TFace IR backbone mapping (N, 3, s, s) images in [-1, 1] to raw (N, embedding_size) features.

    The output is not L2-normalised: the margin head and the evaluation protocol do that.
    `build_model("tface_ir", depth=50, input_size=112)` is TFace's IR_50.
    """

    def __init__(
        self,
        depth: int,
        input_size: int | Sequence[int] = 112,
        channels: Sequence[int] = (64, 128, 256, 512),
        embedding_size: int = 512,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        blocks = resnet_stages.blocks_for_depth(depth, BLOCKS_PER_STAGE, DEPTH_ALIASES)
        size = _square_size(input_size)
        widths = resnet_stages.stage_widths(channels)
        if embedding_size <= 0:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")

        # Attribute order = TFace's state-dict order: input_layer, output_layer, body (fixture).
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
        )
        final_size = size // resnet_stages.DOWNSAMPLING
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.Dropout(dropout),
            # Channel-major (C, H, W) flattening, as TFace's `x.view(N, -1)`.
            nn.Flatten(),
            nn.Linear(widths[-1] * final_size * final_size, embedding_size),
            # No affine parameters: only running statistics appear in the state dict.
            nn.BatchNorm1d(embedding_size, affine=False),
        )
        # The first unit of every stage halves the resolution; TFace keeps them flat.
        stages = resnet_stages.build_stages(BasicBlockIR, widths[0], widths, blocks)
        self.body = nn.Sequential(*(unit for stage in stages for unit in stage))

        self._init_weights()

    def _init_weights(self) -> None:
        """TFace `common.initialize_weights`; PReLU keeps PyTorch's 0.25 slope."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def _square_size(input_size: int | Sequence[int]) -> int:
    """Accept TFace's `[112, 112]` form as well as a plain int."""
    if isinstance(input_size, int):
        height = width = input_size
    elif len(input_size) == 2:
        height, width = (int(v) for v in input_size)
    else:
        raise ValueError(f"input_size must be an int or a pair (height, width), got {input_size!r}")
    if height != width or height <= 0 or height % resnet_stages.DOWNSAMPLING:
        raise ValueError(
            f"input_size must be square with a side divisible by {resnet_stages.DOWNSAMPLING} "
            f"(e.g. 112 or [112, 112]), got {input_size!r}"
        )
    return height

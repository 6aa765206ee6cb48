"""insightface / ElasticFace IResNet backbones, re-implemented.

The parameter layout reproduces insightface arcface_torch `backbones/iresnet.py` key for key and in
the same state-dict order (r50: 475 entries, r100: 925), so `build_model("iresnet", depth=100)`
loads ElasticFace's `295672backbone.pth` with `strict=True`, the identity encoder of the
generative stage. The network is pinned by the `iresnet50` and `iresnet100` fixtures in
`tests/fixtures/reference/`.

Differences from TFace IR (`tface_ir.py`), on purpose and not weight compatible: every
stage's first block, including stage 1, has a 1×1-conv + BN shortcut (TFace subsamples by max-pool
where the width does not change), and the embedding BatchNorm1d has an affine weight frozen at 1.

Beyond the reference (which hard-codes 112 px and widths 64…512) `input_size` and `channels` let the
demo world build a narrow, low-resolution variant with the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from synface.models import resnet_stages

# Blocks per stage; the depth is the name's number (r50 → 50).
BLOCKS_PER_STAGE: dict[int, resnet_stages.StageDepths] = {
    **resnet_stages.COMMON_DEPTHS,
    200: (6, 26, 60, 6),
}

# Every BatchNorm of the reference sets eps explicitly to PyTorch's default.
BN_EPS = 1e-5


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN → conv3×3 → BN → PReLU → conv3×3 (stride here) → BN, plus the shortcut.

    No activation follows the residual add. Attribute order = the reference's state-dict order
    (fixture manifest): bn1, conv1, bn2, prelu, conv2, bn3, downsample.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, stride)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            # A conv shortcut even for stage 1's 64 → 64 stride-2 block.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(x)
        out = self.prelu(self.bn2(self.conv1(out)))
        out = self.bn3(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """IResNet mapping (N, 3, s, s) RGB images in [-1, 1] to raw (N, num_features) embeddings.

    The output is not L2-normalised: the margin head, the evaluation protocol and embedding
    extraction do that. `build_model("iresnet", depth=100)` is ElasticFace's
    `iresnet100(num_features=512, use_se=False)`.

    Args:
        depth: 18, 34, 50, 100 or 200 (the reference's factory name `iresnet<depth>`).
        num_features: embedding width (reference argument).
        dropout: dropout before `fc`; ElasticFace r50 trains with 0.4, r100 with 0.
        fp16: run the trunk under CUDA fp16 autocast and `fc`/`features` in fp32, as the
            reference does; no effect on CPU tensors, as in the reference.
        pretrained: the reference factories' flag; must be False: load weights with
            `load_state_dict` instead (the reference raises too).
        use_se: ElasticFace's flag; must be False, which is how its checkpoints were trained.
        input_size: square input side, divisible by 16 (synface extension; reference: 112).
        channels: the four stage widths (synface extension; reference: 64, 128, 256, 512).
    """

    def __init__(
        self,
        depth: int,
        num_features: int = 512,
        dropout: float = 0.0,
        fp16: bool = False,
        pretrained: bool = False,
        use_se: bool = False,
        input_size: int = 112,
        channels: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        blocks = resnet_stages.blocks_for_depth(depth, BLOCKS_PER_STAGE)
        widths = resnet_stages.stage_widths(channels)
        _check_options(num_features, dropout, pretrained, use_se, input_size)
        self.fp16 = fp16

        # Attribute order = the reference's state-dict order (fixture manifest).
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0], eps=BN_EPS)
        self.prelu = nn.PReLU(widths[0])
        # The first block of every stage halves the resolution.
        stages = resnet_stages.build_stages(IBasicBlock, widths[0], widths, blocks)
        self.layer1, self.layer2, self.layer3, self.layer4 = (nn.Sequential(*s) for s in stages)
        self.bn2 = nn.BatchNorm2d(widths[-1], eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        final_size = input_size // resnet_stages.DOWNSAMPLING
        self.fc = nn.Linear(widths[-1] * final_size * final_size, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)

        self._init_weights()

    def _init_weights(self) -> None:
        """Reference init: conv N(0, 0.1), BN (1, 0), `fc` and PReLU keep PyTorch's.

        `features.weight` is 1 and frozen, so the embedding BN only learns a shift; it stays an
        ordinary state-dict entry.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_amp = self.fp16 and x.is_cuda
        amp = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
        with amp:
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            # BN → flatten (channel-major C, H, W) → dropout, then fc in fp32.
            x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x.float()))


def _check_options(
    num_features: int, dropout: float, pretrained: bool, use_se: bool, input_size: int
) -> None:
    if num_features <= 0:
        raise ValueError(f"num_features must be positive, got {num_features!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if pretrained:
        raise ValueError(
            "pretrained=True is not supported (the reference raises as well): build with "
            "pretrained=False and load the checkpoint, e.g. 295672backbone.pth, with "
            "load_state_dict(..., strict=True)"
        )
    if use_se:
        raise ValueError(
            "use_se=True is not implemented: ElasticFace's released backbones use use_se=False, "
            "build with use_se=False"
        )
    side_step = resnet_stages.DOWNSAMPLING
    if not isinstance(input_size, int) or input_size <= 0 or input_size % side_step:
        raise ValueError(
            f"input_size must be a positive int divisible by {side_step} (e.g. 112), "
            f"got {input_size!r}"
        )

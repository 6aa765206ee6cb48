"""Network architectures, one per module, built by name through `build_model` only.

`resnet_stages` is not an architecture: it holds the stage layout that IResNet and TFace IR share.

Configs and checkpoints refer to an architecture by its registry name plus constructor arguments,
so this table is the single place where a name becomes a class.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from synface.models.idiff_unet import ConditionalUNet
from synface.models.iresnet import IResNet
from synface.models.tface_ir import TFaceIR
from synface.models.vq_f4 import VQDecoder, VQEncoder

MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "idiff_unet": ConditionalUNet,
    "iresnet": IResNet,
    "tface_ir": TFaceIR,
    "vq_decoder": VQDecoder,
    "vq_encoder": VQEncoder,
}


def build_model(name: str, **kwargs: object) -> nn.Module:
    """Build the architecture registered as `name` with its constructor arguments."""
    factory = MODEL_FACTORIES.get(name)
    if factory is None:
        known = ", ".join(sorted(MODEL_FACTORIES))
        raise ValueError(f"unknown model name {name!r}; known names: {known}")
    return factory(**kwargs)

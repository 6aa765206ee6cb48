"""Backbone files on disk: a state dict plus a `.json` spec that names its architecture.

A weights file `X.pth` is always read together with `X.json`, `{"name": ..., "args": {...}}`, the
`build_model` registry name and constructor arguments. Evaluation and embedding export both
rebuild backbones this way, so a trained model and a user-supplied one (ElasticFace's
`295672backbone.pth` next to a hand-written spec) go through the same code.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from synface import checkpoint
from synface.models import build_model

# Reference input side when a spec has no `input_size` (IResNet's fixed 7×7 fc; TFace's default).
DEFAULT_INPUT_SIZE = 112


def load_backbone(weights: Path) -> tuple[nn.Module, int]:
    """Rebuild a backbone from `weights` and its `.json` spec, in eval mode; returns its input size.

    The state dict is loaded strictly with `weights_only=True`, so a spec that
    does not match the weights fails here rather than producing wrong embeddings.
    """
    weights = Path(weights)
    spec_path = weights.with_suffix(".json")
    if not spec_path.exists():
        raise FileNotFoundError(
            f"{spec_path} is missing: it names the architecture of {weights} "
            '(e.g. {"name": "tface_ir", "args": {"depth": 50, "input_size": 112}}, or for '
            'ElasticFace\'s 295672backbone.pth {"name": "iresnet", "args": {"depth": 100}})'
        )
    try:
        spec = json.loads(spec_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{spec_path}: not valid JSON ({error})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f'{spec_path}: needs a string "name", the build_model registry name')
    args = spec.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f'{spec_path}: "args" must be an object of constructor arguments')
    model = build_model(spec["name"], **args)
    model.load_state_dict(checkpoint.load(weights), strict=True)
    input_size = args.get("input_size", DEFAULT_INPUT_SIZE)
    size = input_size if isinstance(input_size, int) else input_size[0]
    return model.eval(), size

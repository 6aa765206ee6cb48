"""Architecture-conformance helpers: the fixtures' deterministic fill rule and a fixture loader.

Fixtures (copied verbatim from `shared/fixtures/reference/`, see the README there) store no
weights: a state-dict manifest, fixed inputs and the outputs the reference network gave after its
state dict was filled by the rule below. Our module conforms when, filled by the same rule, it
reproduces those outputs. Because the draws follow the sorted key names, a single misnamed or
misshaped key shifts every later tensor and the outputs miss by orders of magnitude.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FIXTURE_ROOT = Path(__file__).parent / "fixtures" / "reference"


def manifest(module: nn.Module) -> dict[str, list[int]]:
    """The module's state dict as key -> shape, in its own order (how fixtures store it)."""
    return {key: list(value.shape) for key, value in module.state_dict().items()}


def fill_state_dict(
    shapes: dict[str, list[int]], seed: int, gain: float = 1.0
) -> dict[str, torch.Tensor]:
    """Deterministic float32 values for every entry, drawn in sorted-key order from one generator.

    Each tensor draws its numel float64 normals, then is scaled by its role so that a deep network
    stays O(1): variances positive around 1, matrices by gain/sqrt(fan_in), norm scales and PReLU
    slopes around 1, biases and means small. Step counters draw nothing and are 0.
    """
    generator = torch.Generator().manual_seed(seed)
    filled: dict[str, torch.Tensor] = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key.endswith("num_batches_tracked"):
            filled[key] = torch.tensor(0, dtype=torch.long)
            continue
        noise = torch.randn(shape, generator=generator, dtype=torch.float64)
        if key.endswith("running_var"):
            value = noise.abs() * 0.5 + 0.75
        elif len(shape) >= 2:
            value = noise * gain / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            value = 1.0 + 0.1 * noise
        else:
            value = 0.1 * noise
        filled[key] = value.to(torch.float32)
    return filled


def load_fixture(name: str) -> tuple[dict[str, Any], dict[str, list[int]], dict[str, np.ndarray]]:
    """Return (meta, key -> shape in the reference's order, input and output arrays)."""
    folder = FIXTURE_ROOT / name
    meta = json.loads((folder / "meta.json").read_text())
    shapes = json.loads((folder / "manifest.json").read_text())["shapes"]
    with np.load(folder / "data.npz") as data:
        arrays = {key: data[key] for key in data.files}
    return meta, shapes, arrays

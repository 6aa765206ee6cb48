"""A trained LDM on disk: an ADMIS-format checkpoint plus a ``.json`` with its UNet arguments
(``unet``), training-scheduler config (``scheduler``) and latent shape (``latent_shape``).

``train_ldm`` writes both. For the released ADMIS weights write the ``.json`` by hand: the
``unet_cond_ca_cpd25.yaml`` values, ``admis_ddpm_scheduler()``'s config, latent shape [3, 32, 32].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import DDPMScheduler

from synface.models import build_model
from synface.models.admis_checkpoint import load_admis_checkpoint
from synface.models.idiff_unet import ConditionalUNet


def load_ldm(path: Path) -> tuple[ConditionalUNet, dict[str, Any]]:
    """The UNet in eval mode (on the CPU) and its spec (``scheduler``, ``latent_shape``)."""
    path = Path(path)
    spec_path = path.with_suffix(".json")
    if not spec_path.exists():
        raise FileNotFoundError(
            f"{spec_path} is missing: it holds the UNet arguments ('unet') and the training "
            f"scheduler config ('scheduler') of {path}"
        )
    spec = json.loads(spec_path.read_text())
    unet = build_model("idiff_unet", **spec["unet"])
    scheduler = DDPMScheduler.from_config(spec["scheduler"])
    load_admis_checkpoint(path, unet, scheduler)
    return unet.eval(), spec

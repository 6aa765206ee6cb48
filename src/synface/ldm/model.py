"""A trained LDM on disk: an ADMIS-format checkpoint ``X.ckpt`` and the description of its UNet.

The description is read from, in this order:

- ``X.json`` (``train_ldm`` writes it): ``unet`` (the UNet arguments, or the name of a preset in
  ``UNET_PRESETS``), and optionally ``scheduler`` (a diffusers ``DDPMScheduler`` config; default
  ADMIS's T=1000 linear schedule), ``latent_shape`` and ``image_size``;
- ``X.yaml``: the reference's own model yaml (``configs/model/unet_cond_ca_cpd25.yaml``), as it
  is, ``_target_`` key included;
- neither: the released ADMIS model (``ema_averaged_model_200000.ckpt``), preset
  ``admis_unet_cond_ca_cpd25``. A checkpoint of another architecture does not load silently:
  the strict load names the keys that do not fit and says to put ``X.json`` or ``X.yaml`` there.

Without ``latent_shape`` the latents follow from the first stage: ``embed_dim`` channels, side
``image_size`` (default 128, the size ADMIS trains and samples at) over the first stage's
downsampling factor, i.e. [3, 32, 32] for the released VQ-f4.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from diffusers import DDPMScheduler

from synface.ldm.first_stage import FirstStageSpec
from synface.models import build_model
from synface.models.admis_checkpoint import admis_ddpm_scheduler, load_admis_checkpoint
from synface.models.idiff_unet import ConditionalUNet

log = logging.getLogger(__name__)

# The released ADMIS model's UNet: configs/model/unet_cond_ca_cpd25.yaml of the ADMIS repository
# (zzzweakman/CVPR24_FRCSyn_ADMIS, generative_model_training), 216,341,187 parameters.
UNET_PRESETS: dict[str, dict[str, Any]] = {
    "admis_unet_cond_ca_cpd25": {
        "input_channels": 3,
        "initial_channels": 96,
        "channel_multipliers": [1, 2, 2, 2],
        "is_attention": [False, True, True, True],
        "attention_heads": -1,
        "attention_head_channels": 32,
        "n_blocks_per_resolution": 2,
        "condition_type": "CA",
        "is_context_conditional": True,
        "n_context_classes": 0,
        "context_input_channels": 512,
        "context_channels": 256,
        "learn_empty_context": False,
        "context_dropout_probability": 0.25,
    }
}
DEFAULT_PRESET = "admis_unet_cond_ca_cpd25"
# ADMIS trains and samples at 128 px (CASIA's 112 px faces resized up), 32x32 latents.
DEFAULT_IMAGE_SIZE = 128


def _spec_fix(checkpoint: Path) -> str:
    return (
        f"describe the UNet of {checkpoint} in {checkpoint.with_suffix('.json')} "
        f'({{"unet": {{...ConditionalUNet arguments...}}}} or {{"unet": "{DEFAULT_PRESET}"}}) '
        f"or put the reference model yaml it was trained with there as "
        f"{checkpoint.with_suffix('.yaml')}"
    )


def _unet_args(unet: Any, source: Path, checkpoint: Path) -> dict[str, Any]:
    """The ConditionalUNet arguments of a preset name or a dict, checked against its signature."""
    if isinstance(unet, str):
        if unet not in UNET_PRESETS:
            raise ValueError(
                f"{source}: unknown UNet preset {unet!r} (known: {sorted(UNET_PRESETS)}); "
                + _spec_fix(checkpoint)
            )
        return dict(UNET_PRESETS[unet])
    if not isinstance(unet, dict):
        raise ValueError(f"{source}: no UNet arguments ('unet'); " + _spec_fix(checkpoint))
    accepted = set(inspect.signature(ConditionalUNet.__init__).parameters) - {"self"}
    unknown = sorted(set(unet) - accepted)
    if unknown:
        raise ValueError(
            f"{source}: {unknown} are not ConditionalUNet arguments (accepted: "
            f"{sorted(accepted)}); " + _spec_fix(checkpoint)
        )
    return dict(unet)


def _read_reference_yaml(path: Path, checkpoint: Path) -> dict[str, Any]:
    """The reference's model yaml: its ``_target_`` must be the ConditionalUNet (the ControlNet
    and unconditional yamls describe other models) and the other keys are its arguments."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error}); " + _spec_fix(checkpoint)) from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of UNet arguments; " + _spec_fix(checkpoint))
    target = str(values.get("_target_", "ConditionalUNet"))
    if target.rsplit(".", 1)[-1] != "ConditionalUNet":
        raise ValueError(
            f"{path}: _target_ is {target}, but the LDM is a ConditionalUNet "
            "(models.diffusion.unet.ConditionalUNet, e.g. configs/model/unet_cond_ca_cpd25.yaml)"
        )
    unet = {key: value for key, value in values.items() if not key.startswith("_")}
    return {"unet": _unet_args(unet, path, checkpoint)}


def read_ldm_spec(checkpoint: Path) -> dict[str, Any]:
    """The spec of ``checkpoint``: ``unet`` (arguments), ``scheduler`` (a DDPMScheduler config)
    and, where given, ``latent_shape`` and ``image_size``."""
    checkpoint = Path(checkpoint)
    json_path, yaml_path = checkpoint.with_suffix(".json"), checkpoint.with_suffix(".yaml")
    if json_path.is_file():
        try:
            spec = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{json_path}: not valid JSON ({error}); " + _spec_fix(checkpoint)
            ) from None
        if not isinstance(spec, dict):
            raise ValueError(f"{json_path}: expected an object; " + _spec_fix(checkpoint))
        spec = {**spec, "unet": _unet_args(spec.get("unet"), json_path, checkpoint)}
    elif yaml_path.is_file():
        spec = _read_reference_yaml(yaml_path, checkpoint)
    else:
        log.info("%s: no %s or %s beside it; the released ADMIS UNet (%s)", checkpoint,
                 json_path.name, yaml_path.name, DEFAULT_PRESET)  # fmt: skip
        spec = {"unet": dict(UNET_PRESETS[DEFAULT_PRESET])}
    if "scheduler" not in spec:
        spec["scheduler"] = dict(admis_ddpm_scheduler().config)
    return spec


def latent_shape(spec: dict[str, Any], first_stage: FirstStageSpec) -> tuple[int, int, int]:
    """The spec's ``latent_shape``, or the one the first stage gives an ``image_size`` image."""
    channels = spec["unet"].get("input_channels", 3)
    if "latent_shape" in spec:
        shape = tuple(int(n) for n in spec["latent_shape"])
    else:
        size = int(spec.get("image_size", DEFAULT_IMAGE_SIZE))
        side, rest = divmod(size, first_stage.downsampling)
        if rest:
            raise ValueError(
                f"image_size {size} is not a multiple of the first stage's downsampling factor "
                f"{first_stage.downsampling}: set image_size or latent_shape in the LDM's .json"
            )
        shape = (first_stage.embed_dim, side, side)
    if shape[0] != channels:
        raise ValueError(
            f"the LDM's UNet takes {channels} input channels but its latents have {shape[0]} "
            f"(latent_shape {list(shape)}; the first stage's embed_dim is "
            f"{first_stage.embed_dim}): the LDM was trained on another first stage"
        )
    return shape  # type: ignore[return-value]


def load_ldm(path: Path) -> tuple[ConditionalUNet, dict[str, Any]]:
    """The UNet in eval mode (on the CPU) and its spec (``read_ldm_spec``)."""
    spec = read_ldm_spec(path)
    unet = build_model("idiff_unet", **spec["unet"])
    load_admis_checkpoint(Path(path), unet, DDPMScheduler.from_config(spec["scheduler"]))
    return unet.eval(), spec

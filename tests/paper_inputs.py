"""Every real input of `config/frcsyn.yaml`, in its released file format, with random weights.

What a researcher puts under `resources/` before a paper run, made tiny: the same containers, key
names, folders and file names as the released files, so the paper path's readers meet what they
will meet on real data. Only the sizes are small (architectures the config makes small, or the
smallest the format allows) and the weights random.

`write_paper_inputs(root, config)` writes them for a config (frcsyn.yaml merged with a small diff)
under the workdir `root`:

- `datasets.real.path`: `<identity>/<n>.jpg`, 112 px JPEGs in CASIA-WebFace's 7-digit folders;
- `benchmarks.path`: `lfw.bin` ... `calfw.bin`, a py2 protocol-2 pickle of (JPEG `str`s, bools);
- `embedding.weights`: ElasticFace's bare iresnet state dict (`torch.save`) + the `.json` spec;
- `first_stage.path`: CompVis VQ-f4 split as IDiff-Face ships it, the two `*_state_dict.pt` files,
  plus `first_stage.json` (`ddconfig`, `embed_dim`, `n_embed`);
- `ldm.checkpoint`: ADMIS `ema_averaged_model_*.ckpt` (schedule buffers + `eps_model.*`) + `.json`;
- `contexts.model_dir`: a diffusers DDPM folder (`UNet2DModel.save_pretrained` + scheduler config).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from synface.models import build_model
from synface.models.admis_checkpoint import admis_ddpm_scheduler, save_admis_checkpoint
from synface.models.vq_f4 import DECODER_FILE, ENCODER_FILE

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
BENCHMARKS = ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")
FACE_SIZE = 112

# ElasticFace-Arc is iresnet100 at 512 features; the smallest iresnet the format allows is depth
# 18 (same key names, fewer blocks), made narrow with synface's `channels` extension. 512 features
# stay: the LDM's context input is an ElasticFace embedding.
ELASTICFACE_SPEC = {"name": "iresnet", "args": {"depth": 18, "channels": [8, 16, 32, 64]}}


def write_paper_inputs(
    root: Path,
    config: Mapping[str, Any],
    identities: int = 6,
    images_per_identity: int = 4,
    pairs_per_fold: int = 2,
) -> dict[str, Path]:
    """Write every real input `config` names, under the workdir `root`; returns them by role."""
    root = Path(root)
    written = {
        "images": root / config["datasets"]["real"]["path"],
        "benchmarks": root / config["benchmarks"]["path"],
        "embedding": root / config["embedding"]["weights"],
        "first_stage": root / config["first_stage"]["path"],
        "ldm": root / config["ldm"]["checkpoint"],
        "contexts": root / config["contexts"]["model_dir"],
    }
    write_image_folder(written["images"], identities, images_per_identity)
    for name in BENCHMARKS:
        write_py2_pack(written["benchmarks"] / f"{name}.bin", pairs_per_fold, seed=len(name))
    write_elasticface(written["embedding"])
    write_vq_f4(written["first_stage"], config["first_stage"])
    write_admis_ckpt(written["ldm"], config["ldm"]["unet"], config["ldm"]["image_size"])
    write_diffusers_ddpm(written["contexts"])
    return written


def _face(rng: np.random.Generator, layout: np.ndarray) -> bytes:
    """One JPEG: the identity's colour layout plus per-image noise (conftest's toy-face idea)."""
    noisy = np.clip(layout + rng.normal(0, 20, layout.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(noisy).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _layout(rng: np.random.Generator) -> np.ndarray:
    cells = rng.integers(0, 256, size=(4, 4, 3)).astype(np.float64)
    return cells.repeat(FACE_SIZE // 4, 0).repeat(FACE_SIZE // 4, 1)


def write_image_folder(folder: Path, identities: int, images_per_identity: int) -> None:
    """CASIA-WebFace's layout: `<7-digit identity>/<3-digit n>.jpg`, aligned 112 px crops."""
    rng = np.random.default_rng(0)
    for identity in range(identities):
        layout = _layout(rng)
        for n in range(1, images_per_identity + 1):
            path = folder / f"{identity:07d}" / f"{n:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_face(rng, layout))


def py2_pickle(images: Sequence[bytes], issame: Sequence[bool]) -> bytes:
    """`pickle.dump((images, issame), f, 2)` as Python 2 wrote it: JPEGs as py2 `str` (BINSTRING).

    Python 3 cannot emit BINSTRING for bytes (it pickles them through `_codecs.encode`), so the
    opcodes are written here; the stream is what insightface's py2 packing script produced.
    """
    out = [b"\x80\x02", b"]", b"("]  # PROTO 2, EMPTY_LIST, MARK
    out += [b"T" + struct.pack("<i", len(image)) + image for image in images]
    out += [b"e", b"]", b"("]  # APPENDS, EMPTY_LIST, MARK
    out += [b"\x88" if same else b"\x89" for same in issame]  # NEWTRUE / NEWFALSE
    out += [b"e", b"\x86", b"."]  # APPENDS, TUPLE2, STOP
    return b"".join(out)


def write_py2_pack(path: Path, pairs_per_fold: int, seed: int) -> None:
    """A verification pack of 10 folds; each fold half genuine then half impostor pairs (LFW's
    order). Images are consecutive pairs: (2k, 2k+1) is pair k."""
    rng = np.random.default_rng(seed)
    images: list[bytes] = []
    issame: list[bool] = []
    for _ in range(10):
        for k in range(pairs_per_fold):
            same = k < pairs_per_fold // 2
            first = _layout(rng)
            second = first if same else _layout(rng)
            images += [_face(rng, first), _face(rng, second)]
            issame.append(same)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle(images, issame))


def _reference_keys(fixture: str) -> list[str]:
    return list(json.loads((REFERENCE / fixture / "manifest.json").read_text())["shapes"])


def write_elasticface(weights: Path) -> None:
    """`295672backbone.pth`: a bare iresnet state dict (no wrapper), as ElasticFace releases it."""
    torch.manual_seed(0)
    model = build_model(ELASTICFACE_SPEC["name"], **ELASTICFACE_SPEC["args"])
    state = model.state_dict()
    # Key names are the reference's: every key of the depth-18 net is one of iresnet50's.
    stray = set(state) - set(_reference_keys("iresnet50"))
    assert not stray, f"iresnet keys not in the reference's: {sorted(stray)[:5]}"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, weights)
    weights.with_suffix(".json").write_text(json.dumps(ELASTICFACE_SPEC) + "\n")


def write_vq_f4(folder: Path, first_stage: Mapping[str, Any]) -> None:
    """The two IDiff-Face files (bare state dicts) and the `first_stage.json` spec beside them."""
    spec = {k: first_stage[k] for k in ("ddconfig", "embed_dim", "n_embed")}
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, fixture, file in (
        ("vq_encoder", "vq_f4_tiny_encoder", ENCODER_FILE),
        ("vq_decoder", "vq_f4_tiny_decoder", DECODER_FILE),
    ):
        state = build_model(name, **spec).state_dict()
        # Same ch_mult / num_res_blocks as the reference's tiny fixture: identical key names.
        assert list(state) == _reference_keys(fixture), f"{name} keys differ from the reference"
        torch.save(state, folder / file)
    (folder / "first_stage.json").write_text(json.dumps(spec, indent=2) + "\n")


def write_admis_ckpt(path: Path, unet_args: Mapping[str, Any], image_size: int) -> None:
    """`ema_averaged_model_200000.ckpt` and the `.json` spec synface reads beside it."""
    torch.manual_seed(0)
    unet = build_model("idiff_unet", **unet_args)
    scheduler = admis_ddpm_scheduler()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_admis_checkpoint(path, unet, scheduler)
    latent = image_size // 4  # VQ-f4
    spec = {
        "unet": dict(unet_args),
        "scheduler": dict(scheduler.config),
        "latent_shape": [unet_args["input_channels"], latent, latent],
    }
    path.with_suffix(".json").write_text(json.dumps(spec, indent=2) + "\n")


def write_diffusers_ddpm(folder: Path) -> None:
    """An unconditional DDPM folder as the hub's google/ddpm-* repositories hold it today: the
    UNet's `save_pretrained` files, `scheduler_config.json` and `model_index.json`, all at the top
    (no `unet/`, `scheduler/` subfolders); tiny: 32 px, two levels."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    unet.save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    index = {
        "_class_name": "DDPMPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

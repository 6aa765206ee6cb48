"""Procedural cartoon faces: the demo world's stand-in for photographs of people.

A face is a pure function of an `Identity` (what a recogniser must learn to see), a `Nuisance`
(what it must learn to ignore) and an output size, so a dataset is reproducible from seeds
alone. The head is modelled just well enough for yaw to behave like head rotation rather than
a flat squeeze: a vertical cylinder of elliptical cross-section (deeper than wide), whose
frontal "texture" holds eyes, brows, nose, mouth and beard. Turning it hides the far eye, moves
the features towards one side and lets the nose stick out of the silhouette, as a near-profile
photograph does. Everything is drawn on a supersampled grid with boolean masks and averaged
down, which anti-aliases 32-px faces for the price of a few vectorised passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

RGB = tuple[float, float, float]

HAIR_STYLES = ("bald", "buzz", "short", "fringe", "long", "curly")
BEARD_STYLES = ("none", "moustache", "goatee", "full")

# Ordered from the largest visual effect to the smallest: `num_identity_factors=k` lets the
# first k vary, so a small k gives a world of few, salient differences (the easier world that
# demo-world-feasibility.md asks for when a small generator must learn identity conditioning).
IDENTITY_FACTORS = (
    "skin_tone",
    "hair_color",
    "hair_style",
    "face_width",
    "eye_spacing",
    "face_length",
    "eye_color",
    "brow_thickness",
    "nose_length",
    "mouth_width",
    "jaw",
    "eye_size",
    "brow_slant",
    "nose_width",
    "lip_color",
    "glasses",
    "beard",
    "mark",
)

# Nominal ranges, reached at strength 1 (the measured world of demo-world-feasibility.md, plus
# a near-profile yaw so that CFP-FP-like pairs exist).
YAW_MAX_DEG = 75.0
ROLL_MAX_DEG = 14.0
SHIFT_MAX = 0.08  # fraction of the image size
SCALE_MAX = 0.12  # relative
LIGHT_GRADIENT_MAX = 0.55
BRIGHTNESS_MAX = 0.2
BLUR_MAX = 1.2 / 32  # Gaussian sigma as a fraction of the image width (1.2 px at 32 px)
NOISE_MAX = 12.0  # Gaussian sigma in 8-bit units
NEUTRAL_BACKGROUND: RGB = (0.55, 0.56, 0.58)
NEUTRAL_CLOTHING: RGB = (0.28, 0.31, 0.38)

# The face-unit window an unshifted, unscaled image shows: the top of the hair to below the
# chin, about as much head as an aligned 112x112 recognition crop keeps.
_WINDOW_X = (-1.2, 1.2)
_WINDOW_Y = (-1.08, 1.32)
_ROTATION_CENTRE = (0.0, 0.1)
_HEAD_DEPTH = 1.2  # half-depth / half-width of the head's cross-section
_EYE_LINE = -0.02
_CROWN = -1.0  # top of the skull; the widest point of the head is at v = 0
_OFF_FACE = 9.0  # texture coordinate given to pixels the face texture does not cover

_GREY_HAIR: RGB = (0.80, 0.79, 0.77)
_SCLERA: RGB = (0.96, 0.95, 0.92)
_DARK: RGB = (0.08, 0.06, 0.06)
_FRAME: RGB = (0.10, 0.10, 0.12)

_SKIN_RAMP = np.array([(0.98, 0.84, 0.74), (0.86, 0.64, 0.48), (0.62, 0.42, 0.28), (0.36, 0.23, 0.16)])
_HAIR_PALETTE = np.array(
    [
        (0.07, 0.06, 0.06),
        (0.20, 0.13, 0.08),
        (0.40, 0.26, 0.15),
        (0.55, 0.24, 0.11),
        (0.86, 0.71, 0.44),
        (0.70, 0.33, 0.14),
        (0.58, 0.48, 0.36),
    ]
)
_EYE_PALETTE = np.array(
    [
        (0.35, 0.21, 0.11),
        (0.16, 0.10, 0.07),
        (0.26, 0.48, 0.78),
        (0.30, 0.52, 0.28),
        (0.52, 0.42, 0.20),
        (0.50, 0.56, 0.62),
    ]
)
_LIP_PALETTE = np.array(
    [(0.80, 0.44, 0.44), (0.70, 0.22, 0.26), (0.50, 0.28, 0.24), (0.86, 0.60, 0.56), (0.55, 0.24, 0.36)]
)
_BEARD_PROBABILITIES = (0.6, 0.13, 0.12, 0.15)


@dataclass(frozen=True)
class Identity:
    """What makes a person recognisable; lengths are in face units (head half-height = 1).

    The defaults are the neutral face every identity shares in the factors that do not vary.
    """

    skin_tone: RGB = (0.86, 0.66, 0.52)
    hair_color: RGB = (0.25, 0.16, 0.10)
    hair_style: str = "short"
    face_width: float = 0.72  # half-width of the head at its widest
    face_length: float = 1.0  # widest line to chin
    jaw: float = 2.4  # superellipse exponent of the lower face: ~1.7 pointed, ~3.5 square
    eye_spacing: float = 0.29  # half the distance between the eye centres
    eye_size: float = 0.13  # half-width of one eye
    eye_color: RGB = (0.35, 0.21, 0.11)
    brow_thickness: float = 0.04  # half-thickness
    brow_slant: float = 0.0  # rise of the outer end of each brow
    nose_length: float = 0.42  # eye line to the base of the nose
    nose_width: float = 0.10
    mouth_width: float = 0.22  # half-width
    lip_color: RGB = (0.80, 0.44, 0.44)
    glasses: bool = False
    beard: str = "none"
    mark: tuple[float, float] | None = None  # a mole's centre on the face texture


@dataclass(frozen=True)
class Nuisance:
    """How one photograph of a person differs from another; the defaults change nothing."""

    yaw_deg: float = 0.0  # positive turns the face towards the image's right
    roll_deg: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)  # fraction of the image size, (x, y)
    scale: float = 1.0
    light_angle_deg: float = 0.0  # direction the light comes from, in the image plane
    light_gradient: float = 0.0  # relative brightness difference across half the image
    brightness: float = 1.0
    smile: float = 0.0  # -1 frown .. 1 broad smile
    mouth_open: float = 0.0  # 0 closed .. 1 wide open
    eye_open: float = 1.0  # relative eye height
    age: float = 0.0  # 0 young .. 1 old: wrinkles, grey hair, sagging lower face
    blur_sigma: float = 0.0  # fraction of the image width, so the look is size-independent
    noise_sigma: float = 0.0  # 8-bit units
    noise_seed: int = 0
    background: RGB = NEUTRAL_BACKGROUND
    clothing: RGB = NEUTRAL_CLOTHING


@dataclass(frozen=True)
class NuisanceStrength:
    """Per-nuisance strength: 0 switches it off, 1 spans its nominal range."""

    yaw: float = 0.0
    roll: float = 0.0
    translation: float = 0.0
    scale: float = 0.0
    illumination: float = 0.0
    expression: float = 0.0
    age: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    background: float = 0.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"nuisance strength '{field.name}' is {value!r}; give a number >= 0 "
                    f"(0 switches it off, 1 is the nominal range)"
                )

    @classmethod
    def uniform(cls, strength: float) -> NuisanceStrength:
        """Every nuisance at one strength."""
        return cls(**{field.name: strength for field in fields(cls)})


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> RGB:
    colour = palette[rng.integers(len(palette))] + rng.uniform(-jitter, jitter, 3)
    return _rgb(colour)


def _rgb(values: np.ndarray) -> RGB:
    r, g, b = (float(v) for v in np.clip(values, 0.0, 1.0))
    return (r, g, b)


def _skin(rng: np.random.Generator) -> RGB:
    position = rng.uniform(0, len(_SKIN_RAMP) - 1)
    low = int(min(position, len(_SKIN_RAMP) - 2))
    colour = _SKIN_RAMP[low] + (position - low) * (_SKIN_RAMP[low + 1] - _SKIN_RAMP[low])
    return _rgb(colour + rng.uniform(-0.025, 0.025, 3))


def _mark(rng: np.random.Generator) -> tuple[float, float] | None:
    present, side, u, v = rng.random(), rng.choice((-1.0, 1.0)), rng.random(), rng.random()
    if present >= 0.3:
        return None
    return (float(side * (0.18 + 0.22 * u)), float(0.12 + 0.45 * v))


def sample_identity(rng: np.random.Generator, num_factors: int = len(IDENTITY_FACTORS)) -> Identity:
    """Draw an identity whose first `num_factors` factors vary and the rest stay neutral.

    Every factor is drawn whether it varies or not, so a given stream yields the same values
    for the varying factors whatever `num_factors` is.
    """
    if not 0 <= num_factors <= len(IDENTITY_FACTORS):
        raise ValueError(
            f"num_identity_factors is {num_factors}; choose 0..{len(IDENTITY_FACTORS)} "
            f"(factors vary in this order: {', '.join(IDENTITY_FACTORS)})"
        )
    drawn = {
        "skin_tone": _skin(rng),
        "hair_color": _pick(rng, _HAIR_PALETTE, 0.04),
        "hair_style": str(rng.choice(HAIR_STYLES)),
        "face_width": float(rng.uniform(0.62, 0.82)),
        "eye_spacing": float(rng.uniform(0.23, 0.34)),
        "face_length": float(rng.uniform(0.86, 1.14)),
        "eye_color": _pick(rng, _EYE_PALETTE, 0.04),
        "brow_thickness": float(rng.uniform(0.02, 0.065)),
        "nose_length": float(rng.uniform(0.32, 0.50)),
        "mouth_width": float(rng.uniform(0.15, 0.29)),
        "jaw": float(rng.uniform(1.7, 3.6)),
        "eye_size": float(rng.uniform(0.10, 0.16)),
        "brow_slant": float(rng.uniform(-0.07, 0.07)),
        "nose_width": float(rng.uniform(0.07, 0.14)),
        "lip_color": _pick(rng, _LIP_PALETTE, 0.04),
        "glasses": bool(rng.random() < 0.25),
        "beard": str(rng.choice(BEARD_STYLES, p=_BEARD_PROBABILITIES)),
        "mark": _mark(rng),
    }
    return replace(Identity(), **{name: drawn[name] for name in IDENTITY_FACTORS[:num_factors]})


def sample_nuisance(rng: np.random.Generator, strength: NuisanceStrength) -> Nuisance:
    """Draw one photograph's nuisances, each scaled by its strength.

    The same number of values is drawn whatever the strengths, so switching one nuisance off
    leaves the others' values unchanged.
    """
    u = rng.uniform(-1.0, 1.0, 12)
    neutral_bg, neutral_cloth = np.array(NEUTRAL_BACKGROUND), np.array(NEUTRAL_CLOTHING)
    background = neutral_bg + strength.background * (rng.uniform(0.05, 0.95, 3) - neutral_bg)
    clothing = neutral_cloth + strength.background * (rng.uniform(0.05, 0.9, 3) - neutral_cloth)
    noise_seed = int(rng.integers(2**31))
    return Nuisance(
        yaw_deg=float(np.clip(YAW_MAX_DEG * strength.yaw * u[0], -88.0, 88.0)),
        roll_deg=float(ROLL_MAX_DEG * strength.roll * u[1]),
        shift=(float(SHIFT_MAX * strength.translation * u[2]), float(SHIFT_MAX * strength.translation * u[3])),
        scale=float(max(0.3, 1.0 + SCALE_MAX * strength.scale * u[4])),
        light_angle_deg=float(180.0 * u[5]),
        light_gradient=float(LIGHT_GRADIENT_MAX * strength.illumination * abs(u[6])),
        brightness=float(max(0.3, 1.0 + BRIGHTNESS_MAX * strength.illumination * u[7])),
        smile=float(np.clip(strength.expression * (0.2 + 0.8 * u[8]), -1.0, 1.0)),
        mouth_open=float(min(1.0, strength.expression * max(0.0, u[9]) ** 2)),
        eye_open=float(max(0.25, 1.0 + strength.expression * 0.4 * u[10])),
        age=float(min(1.0, strength.age * abs(u[11]))),
        blur_sigma=float(BLUR_MAX * strength.blur * abs(u[6] * u[9] + u[3] * u[5]) / 2),
        noise_sigma=float(NOISE_MAX * strength.noise * abs(u[2] + u[10]) / 2),
        noise_seed=noise_seed,
        background=_rgb(background),
        clothing=_rgb(clothing),
    )

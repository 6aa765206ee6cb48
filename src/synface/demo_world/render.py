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

_SKIN_RAMP = np.array(
    [(0.98, 0.84, 0.74), (0.86, 0.64, 0.48), (0.62, 0.42, 0.28), (0.36, 0.23, 0.16)]
)
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
    [
        (0.80, 0.44, 0.44),
        (0.70, 0.22, 0.26),
        (0.50, 0.28, 0.24),
        (0.86, 0.60, 0.56),
        (0.55, 0.24, 0.36),
    ]
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
    light_gradient: float = 0.0  # the lit edge is (1 + gradient / 2) x the centre's brightness
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
    """Per-nuisance strength: 0 switches it off, 1 spans its nominal range. The config's
    strengths (``demo_world.train_nuisance``, a pack's ``nuisance``) take their defaults from
    the schema; `uniform` builds one by hand."""

    yaw: float
    roll: float
    translation: float
    scale: float
    illumination: float
    expression: float
    age: float
    blur: float
    noise: float
    background: float

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"nuisance strength '{field.name}' is {value!r}; give a number >= 0 "
                    f"(0 switches it off, 1 is the nominal range)"
                )

    @classmethod
    def uniform(cls, strength: float, **exceptions: float) -> NuisanceStrength:
        """Every nuisance at one strength, except those named in `exceptions`."""
        return cls(**{**{field.name: strength for field in fields(cls)}, **exceptions})


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
    u = rng.uniform(-1.0, 1.0, 14)
    neutral_bg, neutral_cloth = np.array(NEUTRAL_BACKGROUND), np.array(NEUTRAL_CLOTHING)
    background = neutral_bg + strength.background * (rng.uniform(0.05, 0.95, 3) - neutral_bg)
    clothing = neutral_cloth + strength.background * (rng.uniform(0.05, 0.9, 3) - neutral_cloth)
    noise_seed = int(rng.integers(2**31))
    shift = SHIFT_MAX * strength.translation
    return Nuisance(
        yaw_deg=float(np.clip(YAW_MAX_DEG * strength.yaw * u[0], -88.0, 88.0)),
        roll_deg=float(ROLL_MAX_DEG * strength.roll * u[1]),
        shift=(float(shift * u[2]), float(shift * u[3])),
        scale=float(max(0.3, 1.0 + SCALE_MAX * strength.scale * u[4])),
        light_angle_deg=float(180.0 * u[5]),
        light_gradient=float(LIGHT_GRADIENT_MAX * strength.illumination * abs(u[6])),
        brightness=float(max(0.3, 1.0 + BRIGHTNESS_MAX * strength.illumination * u[7])),
        # People smile more often than they frown: the range is skewed towards smiles.
        smile=float(np.clip(strength.expression * (0.2 + 0.8 * u[8]), -1.0, 1.0)),
        mouth_open=float(min(1.0, strength.expression * max(0.0, u[9]) ** 2)),
        eye_open=float(max(0.25, 1.0 + 0.4 * strength.expression * u[10])),
        age=float(min(1.0, strength.age * abs(u[11]))),
        blur_sigma=float(BLUR_MAX * strength.blur * abs(u[12])),
        noise_sigma=float(NOISE_MAX * strength.noise * abs(u[13])),
        noise_seed=noise_seed,
        background=_rgb(background),
        clothing=_rgb(clothing),
    )


@dataclass(frozen=True)
class _HairStyle:
    """Where a style puts hair: on the scalp between `top` and `bottom` (v limits given at knot
    angles around the head, 0 = front, pi = back), and as a layer `thickness` thick around the
    skull down to `volume_bottom` behind it."""

    bottom: tuple[float, ...]
    top: tuple[float, ...] = (-3.0,) * 6
    thickness: float = 0.0
    volume_bottom: float = -0.1
    stubble: float = 0.0  # how much skin shows through


_HAIR_KNOTS = (0.0, 0.9, 1.2, 1.45, 1.75, math.pi)
_HAIR_STYLE_SHAPES = {
    "bald": _HairStyle(
        bottom=(-3.0, -3.0, -3.0, 0.25, 0.35, 0.45), top=(3.0, 3.0, 3.0, 0.0, -0.15, -0.3)
    ),
    "buzz": _HairStyle(bottom=(-0.55, -0.5, -0.3, 0.05, 0.3, 0.45), stubble=0.45),
    "short": _HairStyle(bottom=(-0.52, -0.46, -0.28, 0.1, 0.3, 0.45), thickness=0.07),
    "fringe": _HairStyle(
        bottom=(-0.24, -0.22, -0.06, 0.18, 0.4, 0.55), thickness=0.1, volume_bottom=0.15
    ),
    "long": _HairStyle(bottom=(-0.56, -0.46, 0.9, 1.0, 1.2, 1.3), thickness=0.1, volume_bottom=1.3),
    "curly": _HairStyle(
        bottom=(-0.5, -0.42, -0.15, 0.2, 0.4, 0.5), thickness=0.26, volume_bottom=0.35
    ),
}


@dataclass(frozen=True)
class _Look:
    """An identity as one photograph shows it: aged (grey hair, sagging lower face) and with
    the feature heights the painters share."""

    identity: Identity
    nuisance: Nuisance
    skin: np.ndarray
    hair: np.ndarray
    chin: float
    jaw: float
    nose_base: float
    mouth_line: float

    @classmethod
    def of(cls, identity: Identity, nuisance: Nuisance) -> _Look:
        age = nuisance.age
        grey = 0.85 * age**1.3
        hair = (1 - grey) * np.array(identity.hair_color) + grey * np.array(_GREY_HAIR)
        skin = np.array(identity.skin_tone) * (1 - 0.07 * age)
        # Sagging: a longer, squarer lower face and lower mouth.
        chin = identity.face_length * (1 + 0.06 * age)
        nose_base = _EYE_LINE + identity.nose_length * (1 + 0.05 * age)
        mouth_line = nose_base + 0.42 * (chin - nose_base) + 0.02 * age
        return cls(
            identity, nuisance, skin, hair, chin, identity.jaw + 0.9 * age, nose_base, mouth_line
        )


@dataclass(frozen=True)
class _View:
    """Some rows of the grid: a small feature only pays for the rows it can touch.

    `x`, `v`: the projected face plane (face units) after undoing roll, shift and scale.
    `t`: angle around the head (0 = front centre); `u`: the frontal texture coordinate,
    `_OFF_FACE` wherever the face texture is not visible.
    """

    rows: slice
    x: np.ndarray
    v: np.ndarray
    t: np.ndarray
    u: np.ndarray
    head: np.ndarray
    front: np.ndarray


class _Geometry:
    """The supersampled grid, inverse-mapped through the nuisance pose into the head's frame."""

    def __init__(self, look: _Look, pixels: int):
        nuisance = look.nuisance
        centres = (np.arange(pixels, dtype=np.float32) + 0.5) / pixels * 2 - 1
        self.image_x, self.image_y = centres[np.newaxis, :], centres[:, np.newaxis]
        span_x = _WINDOW_X[1] - _WINDOW_X[0]
        span_y = _WINDOW_Y[1] - _WINDOW_Y[0]
        cx = _WINDOW_X[0] + (self.image_x + 1) / 2 * span_x
        cy = _WINDOW_Y[0] + (self.image_y + 1) / 2 * span_y
        wx = cx - _ROTATION_CENTRE[0] - nuisance.shift[0] * span_x
        wy = cy - _ROTATION_CENTRE[1] - nuisance.shift[1] * span_y
        roll = math.radians(nuisance.roll_deg)
        cos_r, sin_r = math.cos(roll), math.sin(roll)
        x = (cos_r * wx + sin_r * wy) / nuisance.scale + _ROTATION_CENTRE[0]
        v = (cos_r * wy - sin_r * wx) / nuisance.scale + _ROTATION_CENTRE[1]

        yaw = math.radians(nuisance.yaw_deg)
        self.sin_yaw, self.cos_yaw = math.sin(yaw), math.cos(yaw)
        # A point at angle t on an ellipse of half-axes (a, depth * a) projects to
        # x = a * stretch * sin(t + turn): the silhouette widens and the face slides sideways.
        self.stretch = math.hypot(self.cos_yaw, _HEAD_DEPTH * self.sin_yaw)
        self.turn = turn = math.atan2(_HEAD_DEPTH * self.sin_yaw, self.cos_yaw)
        half_width = _head_half_width(v, look.identity.face_width, look.chin, look.jaw)
        projected = half_width * self.stretch
        head = np.abs(x) < projected
        # ratio = sin of the surface normal's angle from the view direction.
        self.ratio = np.clip(x / np.maximum(projected, 1e-6), -1.0, 1.0)
        self.facing = np.sqrt(1 - self.ratio**2)
        cos_t = self.facing * math.cos(turn) + self.ratio * math.sin(turn)
        front = head & (cos_t > 0)
        sin_t = self.ratio * math.cos(turn) - self.facing * math.sin(turn)
        u = np.where(front, half_width * sin_t, np.float32(_OFF_FACE))
        t = np.arcsin(self.ratio) - turn
        self.full = _View(slice(None), x, v, t, u, head, front)
        # v is affine in the pixel position, so each row's extremes sit at its two ends.
        self._row_min = np.minimum(v[:, 0], v[:, -1])
        self._row_max = np.maximum(v[:, 0], v[:, -1])

    def band(self, low: float, high: float) -> _View:
        """The rows holding any pixel with low <= v <= high."""
        hit = np.flatnonzero((self._row_max >= low) & (self._row_min <= high))
        rows = slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0)
        f = self.full
        return _View(rows, f.x[rows], f.v[rows], f.t[rows], f.u[rows], f.head[rows], f.front[rows])

    def project(self, u: float, v: float, look: _Look) -> float:
        """Projected x of the face-texture point (u, v)."""
        half_width = _head_half_width_at(v, look)
        return half_width * self.stretch * math.sin(math.asin(u / half_width) + self.turn)


def _head_half_width(v: np.ndarray, width: float, chin: float, jaw: float) -> np.ndarray:
    """A round skull above the widest line, a superellipse jaw below it."""
    skull = width * np.sqrt(np.clip(1 - (v / _CROWN) ** 2, 0.0, 1.0))
    lower = np.clip(1 - np.clip(v / chin, 0.0, 1.0) ** jaw, 0.0, 1.0) ** (1 / jaw)
    return np.where(v < 0, skull, width * lower).astype(np.float32)


def _head_half_width_at(v: float, look: _Look) -> float:
    """`_head_half_width` at one height, in plain floats (numpy's per-call cost dominates)."""
    width = look.identity.face_width
    if v < 0:
        return width * math.sqrt(max(0.0, 1 - (v / _CROWN) ** 2))
    lower = 1 - min(v / look.chin, 1.0) ** look.jaw
    return width * max(0.0, lower) ** (1 / look.jaw)


class _Canvas:
    """RGB painted back to front through masks, plus a per-pixel shading factor."""

    def __init__(self, pixels: int, background: RGB):
        self.rgb = np.empty((pixels, pixels, 3), dtype=np.float32)
        self.rgb[:] = background
        self.shade = np.ones((pixels, pixels), dtype=np.float32)

    def paint(
        self, view: _View, mask: np.ndarray, colour: np.ndarray | RGB, alpha: float = 1.0
    ) -> None:
        # Flat indices: 2-3x faster than boolean-mask assignment into an RGB array.
        target = self.rgb[view.rows].reshape(-1, 3)
        index = np.flatnonzero(mask)
        if alpha >= 1.0:
            target[index] = colour
        elif alpha > 0.0:
            target[index] += alpha * (np.asarray(colour, dtype=np.float32) - target[index])


def _ellipse(
    x: np.ndarray, y: np.ndarray, centre: tuple[float, float], rx: float, ry: float
) -> np.ndarray:
    return ((x - centre[0]) / rx) ** 2 + ((y - centre[1]) / ry) ** 2 < 1


def _paint_segment(
    c: _Canvas,
    g: _Geometry,
    ends: tuple[tuple[float, float], tuple[float, float]],
    width: float,
    colour: np.ndarray,
    alpha: float,
) -> None:
    """Paint face-texture pixels within `width` of a line segment and of its mirror image
    across the face's midline: wrinkles and creases come in pairs."""
    (u0, v0), (u1, v1) = ends
    w = g.band(min(v0, v1) - width, max(v0, v1) + width)
    du, dv = u1 - u0, v1 - v0
    pu, pv = np.abs(w.u) - u0, w.v - v0
    along = np.clip((pu * du + pv * dv) / (du * du + dv * dv), 0, 1)
    c.paint(w, (pu - along * du) ** 2 + (pv - along * dv) ** 2 < width * width, colour, alpha)


def _triangle(view: _View, corners: list[tuple[float, float]]) -> np.ndarray:
    """Projected-plane pixels inside a triangle, whatever its winding."""
    signs = [
        (x1 - x0) * (view.v - y0) - (y1 - y0) * (view.x - x0) >= 0
        for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True)
    ]
    return (signs[0] == signs[1]) & (signs[1] == signs[2])


def _paint_body(c: _Canvas, g: _Geometry, look: _Look) -> None:
    neck_view = g.band(0.3, 9.0)
    neck = np.abs(neck_view.x + 0.12 * g.sin_yaw) < 0.5 * look.identity.face_width
    c.paint(neck_view, neck, look.skin * 0.8)
    shoulders_view = g.band(look.chin + 0.2, 9.0)
    shoulders = shoulders_view.v > look.chin + 0.2 + 0.12 * shoulders_view.x**2
    c.paint(shoulders_view, shoulders, look.nuisance.clothing)


def _paint_hair_volume(c: _Canvas, g: _Geometry, look: _Look, style: _HairStyle) -> None:
    """Hair standing off the skull; drawn before the head so only its outer rim shows."""
    if style.thickness <= 0:
        return
    w = g.band(_CROWN * (1 + style.thickness), style.volume_bottom)
    width = (look.identity.face_width + style.thickness) * g.stretch
    # Long hair falls behind the head, so it trails away from the turned face.
    x = w.x + 0.25 * g.sin_yaw * np.clip(w.v, 0, None)
    if look.identity.hair_style == "curly":
        width = width * (1 + 0.06 * np.sin(14 * np.arctan2(w.v, x)))
    cap = (x / width) ** 2 + (np.minimum(w.v, 0) / (1 - _CROWN * style.thickness)) ** 2 < 1
    c.paint(w, cap & (w.v < style.volume_bottom), look.hair)


def _paint_ear(c: _Canvas, g: _Geometry, look: _Look, side: int) -> None:
    centre_v = _EYE_LINE + 0.16
    w = g.band(centre_v - 0.15, centre_v + 0.15)
    width = _head_half_width_at(centre_v, look)
    centre = (side * (width + 0.035) * g.cos_yaw, centre_v)
    rx = 0.055 * abs(g.cos_yaw) + 0.07 * abs(g.sin_yaw)
    c.paint(w, _ellipse(w.x, w.v, centre, rx, 0.15), look.skin * 0.92)
    c.paint(w, _ellipse(w.x, w.v, centre, 0.55 * rx, 0.09), look.skin * 0.72)


def _paint_head(c: _Canvas, g: _Geometry, look: _Look) -> None:
    head = g.full.head
    c.paint(g.full, head, look.skin)
    c.shade[head] = 0.8 + 0.2 * g.facing[head]


def _paint_age_lines(c: _Canvas, g: _Geometry, look: _Look) -> None:
    alpha = 0.6 * look.nuisance.age
    if alpha <= 0.0:
        return
    ident, crease = look.identity, look.skin * 0.6
    forehead = g.band(-0.47, -0.27)
    # Three wavy lines: distance to the nearest of three evenly spaced levels.
    level = (forehead.v + 0.44 - 0.012 * np.cos(7 * forehead.u)) / 0.075
    nearest = np.clip(np.rint(level), 0, 2)
    lines = (np.abs(level - nearest) * 0.075 < 0.009) & (np.abs(forehead.u) < 0.3)
    c.paint(forehead, lines, crease, alpha)
    corner = ident.eye_spacing + ident.eye_size
    bag_v = _EYE_LINE + 0.5 * ident.eye_size + 0.03
    creases = (
        (
            (ident.nose_width + 0.05, look.nose_base - 0.03),
            (ident.mouth_width + 0.04, look.mouth_line + 0.06),
        ),
        ((corner + 0.015, _EYE_LINE), (corner + 0.08, _EYE_LINE - 0.04)),
        ((corner + 0.015, _EYE_LINE), (corner + 0.08, _EYE_LINE + 0.04)),
        (
            (ident.eye_spacing - 0.6 * ident.eye_size, bag_v),
            (ident.eye_spacing + 0.6 * ident.eye_size, bag_v),
        ),
    )
    for ends in creases:
        _paint_segment(c, g, ends, 0.01, crease, alpha)


def _paint_mark(c: _Canvas, g: _Geometry, look: _Look) -> None:
    if look.identity.mark is None:
        return
    radius = 0.035
    w = g.band(look.identity.mark[1] - radius, look.identity.mark[1] + radius)
    c.paint(w, _ellipse(w.u, w.v, look.identity.mark, radius, radius), look.skin * 0.42)


def _paint_beard(c: _Canvas, g: _Geometry, look: _Look) -> None:
    ident = look.identity
    if ident.beard == "none":
        return
    w = g.band(look.nose_base, look.chin)
    lip_top = look.mouth_line - 0.04
    beard = (np.abs(w.u) < ident.mouth_width + 0.05) & (w.v > look.nose_base + 0.03)
    beard &= w.v < lip_top
    if ident.beard == "goatee":
        centre = (0.0, 0.5 * (look.mouth_line + look.chin) + 0.03)
        rx, ry = 0.75 * ident.mouth_width, 0.55 * (look.chin - look.mouth_line)
        beard |= _ellipse(w.u, w.v, centre, rx, ry)
    elif ident.beard == "full":
        jaw_line = look.mouth_line - 0.1 * (w.u / ident.face_width) ** 2
        beard |= w.front & (w.v > jaw_line)
        beard |= w.head & (np.abs(w.t) >= math.pi / 2) & (np.abs(w.t) < 1.8) & (w.v > 0.35)
    c.paint(w, beard, look.hair * 0.9)


def _paint_nose(c: _Canvas, g: _Geometry, look: _Look) -> None:
    ident, base = look.identity, look.nose_base
    w = g.band(_EYE_LINE, base + 0.03)
    shadow = _ellipse(w.u, w.v, (0.0, base - 0.015), 1.1 * ident.nose_width, 0.055)
    c.paint(w, shadow, look.skin * 0.86, 0.7)
    bridge = (np.abs(w.u + 0.045) < 0.012) & (w.v > _EYE_LINE + 0.05) & (w.v < base - 0.04)
    c.paint(w, bridge, look.skin * 0.84, 0.6)
    nostrils = _ellipse(np.abs(w.u), w.v, (0.55 * ident.nose_width, base), 0.038, 0.022)
    c.paint(w, nostrils, look.skin * 0.4)


def _paint_nose_profile(c: _Canvas, g: _Geometry, look: _Look) -> None:
    """The part of the nose that sticks out of the face plane; it only shows when turned."""
    if abs(g.sin_yaw) < 0.05:
        return
    root_v, tip_v, base = _EYE_LINE + 0.03, look.nose_base - 0.035, look.nose_base
    depth = (0.1 + 0.35 * look.identity.nose_length) * g.sin_yaw
    root = (g.project(0.0, root_v, look), root_v)
    tip = (g.project(0.0, tip_v, look) + depth, tip_v)
    foot = (g.project(0.0, base, look), base)
    w = g.band(root_v, base)
    c.paint(w, _triangle(w, [root, tip, foot]), look.skin * 0.95)


def _paint_mouth(c: _Canvas, g: _Geometry, look: _Look) -> None:
    nuisance = look.nuisance
    w = g.band(look.mouth_line - 0.16, look.mouth_line + 0.16)
    u, v = w.u / look.identity.mouth_width, w.v
    inside = np.abs(u) < 1
    width = np.sqrt(np.clip(1 - u**2, 0, 1))
    centre = look.mouth_line + nuisance.smile * (0.02 - 0.065 * u**2) + 0.025 * nuisance.age * u**2
    gap = 0.045 * nuisance.mouth_open * width
    upper, lower = centre - gap - 0.032 * width - 0.006, centre + gap + 0.042 * width + 0.006
    c.paint(w, inside & (v > upper) & (v < lower), look.identity.lip_color)
    c.paint(w, inside & (np.abs(v - centre) < np.maximum(gap, 0.008)), (0.28, 0.07, 0.08))
    teeth = inside & (v > centre - gap) & (v < centre - 0.4 * gap) & (np.abs(u) < 0.7)
    c.paint(w, teeth, (0.92, 0.9, 0.85))


def _paint_eyes(c: _Canvas, g: _Geometry, look: _Look) -> None:
    ident = look.identity
    size = ident.eye_size
    height = 0.5 * size * look.nuisance.eye_open
    w = g.band(_EYE_LINE - height - 0.04, _EYE_LINE + height)
    dv = w.v - _EYE_LINE
    du = (np.abs(w.u) - ident.eye_spacing) / size  # both eyes at once: the face is symmetric
    lid = 1 - du**2
    eye = (lid > 0) & (dv > -height * lid) & (dv < 0.75 * height * lid)
    c.paint(w, eye, _SCLERA)
    radius2 = (du * size) ** 2 + dv**2
    c.paint(w, eye & (radius2 < (0.46 * size) ** 2), ident.eye_color)
    c.paint(w, eye & (radius2 < (0.2 * size) ** 2), _DARK)
    upper_lid = (lid > -0.15) & (dv < -height * lid) & (dv > -height * lid - 0.03)
    c.paint(w, upper_lid, _DARK)


def _paint_brows(c: _Canvas, g: _Geometry, look: _Look) -> None:
    ident = look.identity
    raised = 0.08 * (look.nuisance.eye_open - 1)
    middle = _EYE_LINE - 0.75 * ident.eye_size - 0.07 - raised
    reach = 0.04 + abs(ident.brow_slant) + ident.brow_thickness
    w = g.band(middle - reach, middle + reach)
    du = (np.abs(w.u) - ident.eye_spacing) / (1.25 * ident.eye_size)  # positive: outwards
    line = middle - 0.035 * (1 - du**2) - ident.brow_slant * du
    thickness = ident.brow_thickness * (1 - 0.4 * du**2)
    c.paint(w, (np.abs(du) < 1) & (np.abs(w.v - line) < thickness), look.hair * 0.8)


def _paint_scalp_hair(c: _Canvas, g: _Geometry, look: _Look, style: _HairStyle) -> None:
    w = g.band(_CROWN, max(style.bottom))
    around = np.abs(w.t)
    bottom = np.interp(around, _HAIR_KNOTS, style.bottom)
    if look.identity.hair_style == "fringe":
        bottom = bottom + 0.025 * np.sin(45 * w.t) * (around < 0.9)
    hair = w.head & (w.v < bottom)
    if min(style.top) < max(style.bottom):
        hair &= w.v > np.interp(around, _HAIR_KNOTS, style.top)
    colour = (1 - style.stubble) * look.hair + style.stubble * look.skin
    c.paint(w, hair, colour)


def _paint_glasses(c: _Canvas, g: _Geometry, look: _Look) -> None:
    ident = look.identity
    if not ident.glasses:
        return
    radius = 1.3 * ident.eye_size
    w = g.band(_EYE_LINE - radius - 0.03, _EYE_LINE + radius + 0.03)
    dv = w.v - _EYE_LINE
    temple = np.abs(dv + 0.02) < 0.017
    frame = (np.abs(w.u) < ident.eye_spacing - radius + 0.01) & (np.abs(dv + 0.03) < 0.017)
    frame |= (np.abs(w.u) > ident.eye_spacing + radius - 0.01) & temple
    frame &= w.front
    side = np.abs(w.t)
    frame |= w.head & (side >= math.pi / 2) & (side < 2.0) & temple
    distance = np.hypot(np.abs(w.u) - ident.eye_spacing, 1.15 * dv)
    c.paint(w, distance < radius, (0.8, 0.85, 0.9), 0.15)
    frame |= np.abs(distance - radius) < 0.022
    c.paint(w, frame, _FRAME)


def _light(c: _Canvas, g: _Geometry, nuisance: Nuisance) -> None:
    """A light from one side: a gradient over the scene plus brighter surfaces facing it."""
    angle = math.radians(nuisance.light_angle_deg)
    towards = math.cos(angle) * g.image_x + math.sin(angle) * g.image_y
    facing = np.where(g.full.head, math.cos(angle) * g.ratio, 0.0)
    light = nuisance.brightness * c.shade * (1 + 0.5 * nuisance.light_gradient * (towards + facing))
    c.rgb *= light[..., np.newaxis]


def _paint_face(look: _Look, pixels: int) -> np.ndarray:
    """Paint back to front; returns the lit RGB grid in [0, 1]-ish floats."""
    g = _Geometry(look, pixels)
    c = _Canvas(pixels, look.nuisance.background)
    style = _HAIR_STYLE_SHAPES[look.identity.hair_style]
    near_side = -1 if g.sin_yaw > 0 else 1
    _paint_body(c, g, look)
    _paint_hair_volume(c, g, look, style)
    _paint_ear(c, g, look, -near_side)
    _paint_head(c, g, look)
    _paint_age_lines(c, g, look)
    _paint_mark(c, g, look)
    _paint_beard(c, g, look)
    _paint_nose(c, g, look)
    _paint_mouth(c, g, look)
    _paint_eyes(c, g, look)
    _paint_brows(c, g, look)
    _paint_ear(c, g, look, near_side)
    _paint_nose_profile(c, g, look)
    _paint_scalp_hair(c, g, look, style)
    _paint_glasses(c, g, look)
    _light(c, g, look.nuisance)
    return c.rgb


def _supersampling(size: int) -> int:
    """About 96 samples across the image, at least 2x: at 32 px, 3x looks the same as 4x
    (checked side by side) for 56 % of the work."""
    return max(2, math.ceil(96 / size))


def _box_sum(image: np.ndarray, factor: int) -> np.ndarray:
    """Sum factor x factor blocks, as adds of strided views: numpy's reduction over the small
    block axes of a reshaped view is several times slower."""
    rows = sum(image[k::factor] for k in range(factor))
    return sum(rows[:, k::factor] for k in range(factor))


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    radius = math.ceil(3 * sigma)
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    height, width = image.shape[:2]
    rows = sum(weight * padded[i : i + height] for i, weight in enumerate(kernel))
    return sum(weight * rows[:, i : i + width] for i, weight in enumerate(kernel))


def render_face(identity: Identity, nuisance: Nuisance, size: int) -> np.ndarray:
    """Render one face as a size x size x 3 uint8 RGB array."""
    if size < 8:
        raise ValueError(f"image_size is {size}; faces need at least 8 pixels, use 32 or more")
    factor = _supersampling(size)
    rgb = _paint_face(_Look.of(identity, nuisance), size * factor)
    image = _box_sum(rgb, factor) * (255.0 / factor**2)
    sigma = nuisance.blur_sigma * size
    if sigma >= 0.05:
        image = _gaussian_blur(image, sigma)
    if nuisance.noise_sigma > 0:
        noise_rng = np.random.default_rng(nuisance.noise_seed)
        image = image + noise_rng.normal(0.0, nuisance.noise_sigma, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)

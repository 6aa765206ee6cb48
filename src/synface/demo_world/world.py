"""The demo world on disk: a CASIA-like training set and five verification packs.

Every image is a pure function of (config, what it is for, its index): its identity and
nuisances come from a numpy Generator seeded by a SeedSequence over (seed, purpose, index).
That makes the output independent of worker count and chunking, lets a test rebuild one pack
without the training set, and keeps benchmark identities disjoint from training identities by
construction: they come from a different stream.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synface.demo_world.render import (
    IDENTITY_FACTORS,
    YAW_MAX_DEG,
    Identity,
    Nuisance,
    NuisanceStrength,
    render_face,
    sample_identity,
    sample_nuisance,
)
from synface.io import atomic
from synface.io.binpack import write_bin
from synface.settings import StageSettings, from_settings, schema_defaults

log = logging.getLogger(__name__)

NUM_FOLDS = 10  # the insightface protocol's folds
JPEG_QUALITY = 95

# How each pack's pairs differ, after its real counterpart.
STRESSES = ("mild", "frontal_profile", "cross_pose", "age_gap", "cross_age")


def _check_int(key: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key} is {value!r}; give an integer >= {minimum}")


def _whole(minimum: int) -> Any:
    """A whole-number setting with the smallest value it takes, checked by `_check_wholes`."""
    return field(metadata={"minimum": minimum})


def _check_wholes(settings: Any) -> None:
    """Check every `_whole` field of a settings dataclass, in declaration order."""
    for setting in fields(settings):
        if "minimum" in setting.metadata:
            _check_int(setting.name, getattr(settings, setting.name), setting.metadata["minimum"])


def _check_keys(where: str, settings: object, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if not isinstance(settings, Mapping):
        raise ValueError(f"{where} must be a mapping of {', '.join(allowed)}")
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where} has unknown keys {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )


@dataclass(frozen=True)
class BenchmarkSpec:
    """One verification pack: which nuisance its pairs stress, on top of `nuisance` for both
    images, and how big it is (`NUM_FOLDS` folds of `pairs_per_fold` pairs, half genuine).
    The default packs are config ``demo_world.benchmarks``' schema defaults."""

    stress: str
    nuisance: NuisanceStrength
    pairs_per_fold: int = _whole(minimum=2)
    # An impostor pair needs two different people from the fold's pool.
    identities_per_fold: int = _whole(minimum=2)

    def __post_init__(self) -> None:
        if self.stress not in STRESSES:
            raise ValueError(
                f"benchmark stress is {self.stress!r}; choose one of {', '.join(STRESSES)}"
            )
        _check_wholes(self)
        if self.pairs_per_fold % 2:
            raise ValueError(
                f"pairs_per_fold is {self.pairs_per_fold}; use an even number, each fold is "
                f"half genuine and half impostor pairs"
            )


@dataclass(frozen=True)
class DemoWorldConfig(StageSettings, section="demo_world"):
    """Everything that determines the demo world's bytes; built by `from_settings`, which
    takes the defaults from config ``demo_world``'s schema."""

    seed: int = _whole(minimum=0)
    # The workflow's face_size; no default, since the schema's face_size is the paper's.
    image_size: int = _whole(minimum=8)
    train_identities: int = _whole(minimum=1)
    images_per_identity: int = _whole(minimum=1)
    # People outside training and the packs, one neutral face each: the held-out contexts of
    # the generator's identity check.
    heldout_identities: int = _whole(minimum=0)
    num_identity_factors: int = _whole(minimum=0)
    train_nuisance: NuisanceStrength
    benchmarks: Mapping[str, BenchmarkSpec]

    def __post_init__(self) -> None:
        _check_wholes(self)
        if self.num_identity_factors > len(IDENTITY_FACTORS):
            raise ValueError(
                f"num_identity_factors is {self.num_identity_factors}; the renderer has "
                f"{len(IDENTITY_FACTORS)} identity factors, use at most that"
            )
        for name in self.benchmarks:
            if not name or not all(ch.isalnum() or ch == "_" for ch in name):
                raise ValueError(
                    f"benchmark name {name!r} becomes a file name; use letters, digits and _"
                )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DemoWorldConfig:
        """Build from the YAML `demo_world` section plus `image_size` (the workflow's
        face_size); keys left out take the schema's defaults, nested ones included.

        `benchmarks` maps pack names to their settings; a pack named like a default pack
        (lfw, cfp_fp, cplfw, agedb_30, calfw) starts from that pack's settings. Giving the key
        replaces the set of packs.
        """
        _check_keys("demo_world", settings, [f.name for f in fields(cls)])
        values = dict(settings)
        values["train_nuisance"] = _strength(
            "demo_world.train_nuisance", values.get("train_nuisance", {})
        )
        packs = values.get("benchmarks", schema_defaults("demo_world.benchmarks"))
        if not isinstance(packs, Mapping):
            raise ValueError(
                "demo_world.benchmarks must map pack names to settings, e.g. "
                "{lfw: {pairs_per_fold: 30}}"
            )
        values["benchmarks"] = {name: _benchmark(name, spec) for name, spec in packs.items()}
        return super().from_settings(values)

    def to_dict(self) -> dict[str, Any]:
        """The inverse of `from_settings`, JSON-ready."""
        return asdict(self)


def _strength(
    where: str, settings: object, base: Mapping[str, float] | None = None
) -> NuisanceStrength:
    """`settings` over `base` (a default pack's nuisance) over the schema defaults of `where`."""
    _check_keys(where, settings, [f.name for f in fields(NuisanceStrength)])
    return from_settings(NuisanceStrength, {**(base or {}), **settings}, where)


def _benchmark(name: str, settings: object) -> BenchmarkSpec:
    """Pack `name`: `settings` over the default pack of that name (if any) over the defaults
    every pack shares."""
    where = f"demo_world.benchmarks.{name}"
    settings = {} if settings is None else settings  # a bare `lfw:` in YAML: all defaults
    _check_keys(where, settings, [f.name for f in fields(BenchmarkSpec)])
    default = schema_defaults("demo_world.benchmarks").get(name, {})
    values = {**default, **settings}
    if "stress" not in values:
        raise ValueError(
            f"{where} is not a default pack, so it needs a stress: one of {', '.join(STRESSES)}"
        )
    values["nuisance"] = _strength(
        f"{where}.nuisance", settings.get("nuisance", {}), default.get("nuisance")
    )
    return from_settings(BenchmarkSpec, values, where)


def _rng(seed: int, purpose: str, *index: int) -> np.random.Generator:
    """The stream for one (purpose, index): independent of every other draw in the world."""
    key = int.from_bytes(purpose.encode(), "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key, *index]))


def train_identity(cfg: DemoWorldConfig, index: int) -> Identity:
    """Training identity `index` (label `index`)."""
    return sample_identity(_rng(cfg.seed, "train/identity", index), cfg.num_identity_factors)


def benchmark_identity(cfg: DemoWorldConfig, pack: str, index: int) -> Identity:
    """Identity `index` of a pack's pool; a stream of its own, so never a training identity."""
    return sample_identity(
        _rng(cfg.seed, f"benchmark/{pack}/identity", index), cfg.num_identity_factors
    )


def heldout_identity(cfg: DemoWorldConfig, index: int) -> Identity:
    """Held-out identity `index`: a stream of its own, disjoint from training and the packs."""
    return sample_identity(_rng(cfg.seed, "heldout/identity", index), cfg.num_identity_factors)


def _render_heldout_face(cfg: DemoWorldConfig, index: int) -> bytes:
    return _encode(render_face(heldout_identity(cfg, index), Nuisance(), cfg.image_size))


def _encode(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # 4:4:4: at 32 px, 2x2 chroma subsampling visibly smears eye and lip colours.
    Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def _render_identity_images(cfg: DemoWorldConfig, index: int) -> list[bytes]:
    identity = train_identity(cfg, index)
    images = []
    for n in range(cfg.images_per_identity):
        nuisance = sample_nuisance(_rng(cfg.seed, "train/nuisance", index, n), cfg.train_nuisance)
        images.append(_encode(render_face(identity, nuisance, cfg.image_size)))
    return images


def _stress(
    rng: np.random.Generator, stress: str, first: Nuisance, second: Nuisance
) -> tuple[Nuisance, Nuisance]:
    """Override the nuisance a pack is about; the two images' other nuisances stay as drawn."""
    coin, side, low, high = rng.uniform(size=4)
    sign = 1.0 if side < 0.5 else -1.0
    if stress == "frontal_profile":
        # CFP-FP: a frontal image (within 10 degrees) against a near-profile one.
        profile = sign * YAW_MAX_DEG * (0.8 + 0.2 * high)
        return replace(first, yaw_deg=10.0 * (2 * low - 1)), replace(second, yaw_deg=profile)
    if stress == "cross_pose":
        # CPLFW: both images in strong poses, on the same or opposite sides.
        other = 1.0 if coin < 0.5 else -1.0
        yaw_first = sign * YAW_MAX_DEG * (0.4 + 0.6 * low)
        yaw_second = other * YAW_MAX_DEG * (0.4 + 0.6 * high)
        return replace(first, yaw_deg=yaw_first), replace(second, yaw_deg=yaw_second)
    if stress == "age_gap":
        # AgeDB-30: young against old.
        young, old = 0.15 * low, 0.85 + 0.15 * high
    elif stress == "cross_age":
        # CALFW: a smaller but certain age gap, over a wider spread of ages.
        young, old = 0.3 * low, 0.6 + 0.4 * high
    else:
        return first, second
    ages = (young, old) if coin < 0.5 else (old, young)
    return replace(first, age=float(ages[0])), replace(second, age=float(ages[1]))


def _pair_identities(
    rng: np.random.Generator, spec: BenchmarkSpec, fold: int, k: int
) -> tuple[int, int]:
    """Pool indices of pair k of a fold; each fold has its own people, as in LFW's folds."""
    pool = fold * spec.identities_per_fold
    if k < spec.pairs_per_fold // 2:
        person = pool + k % spec.identities_per_fold
        return person, person
    a, b = rng.choice(spec.identities_per_fold, size=2, replace=False)
    return pool + int(a), pool + int(b)


def _render_pair(
    cfg: DemoWorldConfig, name: str, people: list[Identity], index: int
) -> tuple[bytes, bytes]:
    spec = cfg.benchmarks[name]
    fold, k = divmod(index, spec.pairs_per_fold)
    rng = _rng(cfg.seed, f"benchmark/{name}/pair", index)
    pair = _pair_identities(rng, spec, fold, k)
    draws = (sample_nuisance(rng, spec.nuisance), sample_nuisance(rng, spec.nuisance))
    nuisances = _stress(rng, spec.stress, *draws)
    first, second = (
        _encode(render_face(people[person], nuisance, cfg.image_size))
        for person, nuisance in zip(pair, nuisances, strict=True)
    )
    return first, second


def _pair_is_genuine(spec: BenchmarkSpec, index: int) -> bool:
    return index % spec.pairs_per_fold < spec.pairs_per_fold // 2


@contextmanager
def _pool_map(workers: int) -> Iterator[Callable[[Callable[[int], Any], list[int]], list[Any]]]:
    """A `map(task, items) -> list` that keeps order: in-process, or over one process pool
    shared by all of a build's stages (each pool start re-imports numpy in every worker)."""
    if workers <= 1:
        yield lambda task, items: [task(item) for item in items]
        return
    # spawn: forking a parent that already runs torch's thread pools can deadlock.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield lambda task, items: list(
            pool.map(task, items, chunksize=max(1, math.ceil(len(items) / (4 * workers))))
        )


def _render_benchmark(
    cfg: DemoWorldConfig, name: str, pool_map: Callable[..., list[Any]]
) -> tuple[list[bytes], list[bool]]:
    if name not in cfg.benchmarks:
        raise ValueError(
            f"no benchmark named {name!r}; demo_world.benchmarks has {', '.join(cfg.benchmarks)}"
        )
    spec = cfg.benchmarks[name]
    people = [benchmark_identity(cfg, name, j) for j in range(NUM_FOLDS * spec.identities_per_fold)]
    pairs = list(range(NUM_FOLDS * spec.pairs_per_fold))
    rendered = pool_map(partial(_render_pair, cfg, name, people), pairs)
    images = [image for pair in rendered for image in pair]
    return images, [_pair_is_genuine(spec, index) for index in pairs]


def render_benchmark(
    cfg: DemoWorldConfig, name: str, workers: int = 1
) -> tuple[list[bytes], list[bool]]:
    """One pack's JPEG images (pair i = images 2i, 2i+1) and genuine flags, without writing."""
    _check_int("workers", workers, 1)
    with _pool_map(workers) as pool_map:
        return _render_benchmark(cfg, name, pool_map)


def _write_train(cfg: DemoWorldConfig, out_dir: Path, pool_map: Callable[..., list[Any]]) -> int:
    """Write train/images/<id>/<n>.jpg and the manifest; returns the image count."""
    train_dir = out_dir / "train"
    identities = list(range(cfg.train_identities))
    rendered = pool_map(partial(_render_identity_images, cfg), identities)
    id_width = max(5, len(str(cfg.train_identities - 1)))
    image_width = max(3, len(str(cfg.images_per_identity - 1)))
    lines = []
    for label, images in zip(identities, rendered, strict=True):
        folder = Path("images") / f"{label:0{id_width}d}"
        (train_dir / folder).mkdir(parents=True, exist_ok=True)
        for n, data in enumerate(images):
            relative = folder / f"{n:0{image_width}d}.jpg"
            (train_dir / relative).write_bytes(data)
            lines.append(f"{relative.as_posix()}\t{label}\n")
    atomic.write_text(train_dir / "manifest.tsv", "".join(lines))
    return len(lines)


def _write_heldout(cfg: DemoWorldConfig, out_dir: Path, pool_map: Callable[..., list[Any]]) -> int:
    """Write heldout/images/<id>/0.jpg (neutral pose and light) and its manifest."""
    folder = out_dir / "heldout"
    faces = pool_map(partial(_render_heldout_face, cfg), list(range(cfg.heldout_identities)))
    lines = []
    for label, data in enumerate(faces):
        relative = Path("images") / f"{label:05d}" / "0.jpg"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
        lines.append(f"{relative.as_posix()}\t{label}\n")
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(folder / "manifest.tsv", "".join(lines))
    return len(lines)


def build_demo_world(cfg: DemoWorldConfig, out_dir: Path, workers: int = 1) -> dict[str, Any]:
    """Render the world into out_dir; returns what world.json records (config and counts).

    The bytes depend on `cfg` only, not on `workers`. Workers are spawned processes, so a
    script that calls this with workers > 1 needs an `if __name__ == "__main__":` guard.
    world.json is written last, so its presence means the build finished.
    """
    _check_int("workers", workers, 1)
    out_dir = Path(out_dir)
    started = time.perf_counter()
    packs = {}
    with _pool_map(workers) as pool_map:
        train_images = _write_train(cfg, out_dir, pool_map)
        heldout_images = _write_heldout(cfg, out_dir, pool_map)
        log.info(
            "demo world: %d training images in %.1f s", train_images, time.perf_counter() - started
        )
        for name, spec in cfg.benchmarks.items():
            images, issame = _render_benchmark(cfg, name, pool_map)
            write_bin(out_dir / "benchmarks" / f"{name}.bin", images, issame)
            packs[name] = {
                "pairs": len(issame),
                "genuine_pairs": sum(issame),
                "identities": NUM_FOLDS * spec.identities_per_fold,
            }
    log.info("demo world: %d packs in %.1f s total", len(packs), time.perf_counter() - started)
    summary = {
        "config": cfg.to_dict(),
        "counts": {
            "train_identities": cfg.train_identities,
            "train_images": train_images,
            "heldout_identities": heldout_images,
            "benchmarks": packs,
        },
        "varying_identity_factors": list(IDENTITY_FACTORS[: cfg.num_identity_factors]),
    }
    atomic.write_text(out_dir / "world.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary

"""The demo world: reproducible bytes, the on-disk layout, and packs that are neither broken
nor trivial."""

from __future__ import annotations

import io
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synface.demo_world.render import (
    IDENTITY_FACTORS,
    Identity,
    Nuisance,
    NuisanceStrength,
    render_face,
    sample_identity,
    sample_nuisance,
)
from synface.demo_world.world import (
    NUM_FOLDS,
    DemoWorldConfig,
    benchmark_identity,
    build_demo_world,
    render_benchmark,
    train_identity,
)
from synface.evaluation.benchmark import embed_with_flip
from synface.evaluation.verification import kfold_accuracy, l2_normalize
from synface.io.binpack import read_bin
from synface.models.spec import load_backbone

PACKS = ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")


def _default(**settings: object) -> DemoWorldConfig:
    """The schema's default world, at the demo's 32 px."""
    return DemoWorldConfig.from_settings({"image_size": 32, **settings})


def _tiny(**settings: object) -> DemoWorldConfig:
    packs = {name: {"pairs_per_fold": 2, "identities_per_fold": 2} for name in PACKS}
    base = {"seed": 5, "train_identities": 3, "images_per_identity": 2, "benchmarks": packs}
    return _default(**{**base, **settings})


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoWorldConfig, Path, dict]:
    cfg = _tiny()
    out = tmp_path_factory.mktemp("world")
    return cfg, out, build_demo_world(cfg, out)


def test_same_config_same_bytes_whatever_the_worker_count(
    tiny_world: tuple[DemoWorldConfig, Path, dict], tmp_path: Path
) -> None:
    cfg, first, _ = tiny_world
    small = replace(cfg, benchmarks={name: cfg.benchmarks[name] for name in ("lfw", "cfp_fp")})
    build_demo_world(small, tmp_path / "one", workers=1)
    build_demo_world(small, tmp_path / "two", workers=2)
    reference = _tree(tmp_path / "one")
    assert reference == _tree(tmp_path / "two")
    # The training images and shared packs match the 5-pack build too: every image depends
    # only on its own (seed, purpose, index).
    full = _tree(first)
    assert all(full[path] == data for path, data in reference.items() if path != "world.json")


def test_a_different_seed_changes_the_images(tmp_path: Path) -> None:
    cfg = _tiny(benchmarks={"lfw": {"pairs_per_fold": 2, "identities_per_fold": 2}})
    build_demo_world(cfg, tmp_path / "a")
    build_demo_world(replace(cfg, seed=6), tmp_path / "b")
    image = "train/images/00000/000.jpg"
    assert (tmp_path / "a" / image).read_bytes() != (tmp_path / "b" / image).read_bytes()


def test_layout_and_manifest(tiny_world: tuple[DemoWorldConfig, Path, dict]) -> None:
    cfg, out, summary = tiny_world
    lines = (out / "train" / "manifest.tsv").read_text().splitlines()
    assert len(lines) == cfg.train_identities * cfg.images_per_identity
    labels = []
    for line in lines:
        path, label = line.split("\t")
        assert path == f"images/{int(label):05d}/{path.rsplit('/', 1)[1]}"
        assert path.endswith(".jpg")
        with Image.open(out / "train" / path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))
        labels.append(int(label))
    assert labels == sorted(labels)
    assert sorted(set(labels)) == list(range(cfg.train_identities))
    assert sorted(p.name for p in (out / "benchmarks").iterdir()) == sorted(
        f"{name}.bin" for name in PACKS
    )
    assert json.loads((out / "world.json").read_text()) == summary
    assert summary["counts"]["train_images"] == len(lines)
    assert DemoWorldConfig.from_settings(summary["config"]) == cfg


@pytest.mark.parametrize("name", PACKS)
def test_packs_hold_ten_folds_of_genuine_then_impostor_pairs(
    tiny_world: tuple[DemoWorldConfig, Path, dict], name: str
) -> None:
    cfg, out, _ = tiny_world
    images, issame = read_bin(out / "benchmarks" / f"{name}.bin")
    per_fold = cfg.benchmarks[name].pairs_per_fold
    assert len(issame) == NUM_FOLDS * per_fold
    assert len(images) == 2 * len(issame)
    fold = [True] * (per_fold // 2) + [False] * (per_fold // 2)
    assert issame == fold * NUM_FOLDS
    assert all(_decode(image).shape == (32, 32, 3) for image in images)


def test_benchmark_identities_are_disjoint_from_training() -> None:
    cfg = _default()
    train = {train_identity(cfg, i) for i in range(cfg.train_identities)}
    assert len(train) == cfg.train_identities
    for name, spec in cfg.benchmarks.items():
        pool = {
            benchmark_identity(cfg, name, j) for j in range(NUM_FOLDS * spec.identities_per_fold)
        }
        assert len(pool) == NUM_FOLDS * spec.identities_per_fold
        assert not pool & train


def test_strength_zero_renders_an_identity_identically() -> None:
    identity = sample_identity(np.random.default_rng(1))
    off = NuisanceStrength.uniform(0.0)
    renders = [
        render_face(identity, sample_nuisance(np.random.default_rng(seed), off), 32)
        for seed in range(3)
    ]
    renders.append(render_face(identity, Nuisance(), 32))
    assert all(np.array_equal(renders[0], other) for other in renders[1:])


def test_distinct_identities_differ() -> None:
    faces = [
        render_face(sample_identity(np.random.default_rng([2, i])), Nuisance(), 32).astype(float)
        for i in range(8)
    ]
    for i, a in enumerate(faces):
        for b in faces[i + 1 :]:
            assert np.abs(a - b).mean() > 2.0


def test_nuisances_change_the_image_but_keep_its_format() -> None:
    identity = sample_identity(np.random.default_rng(3))
    frontal = render_face(identity, Nuisance(), 48)
    for nuisance in (
        Nuisance(yaw_deg=70.0),
        Nuisance(age=1.0),
        Nuisance(smile=1.0, mouth_open=1.0),
        Nuisance(blur_sigma=0.04, noise_sigma=10.0, noise_seed=1),
    ):
        image = render_face(identity, nuisance, 48)
        assert image.shape == (48, 48, 3)
        assert image.dtype == np.uint8
        assert np.abs(image.astype(float) - frontal).mean() > 0.5


@pytest.mark.parametrize("size", [16, 33, 112])
def test_any_size_renders(size: int) -> None:
    nuisance = sample_nuisance(np.random.default_rng(6), NuisanceStrength.uniform(1.0))
    image = render_face(sample_identity(np.random.default_rng(6)), nuisance, size)
    assert image.shape == (size, size, 3)
    assert 20 < image.mean() < 235


def test_identity_factor_count_fixes_the_rest_at_neutral() -> None:
    neutral = Identity()
    assert sample_identity(np.random.default_rng(4), num_factors=0) == neutral
    full = sample_identity(np.random.default_rng(4))
    few = sample_identity(np.random.default_rng(4), num_factors=3)
    for factor in IDENTITY_FACTORS:
        expected = (
            getattr(full, factor) if factor in IDENTITY_FACTORS[:3] else getattr(neutral, factor)
        )
        assert getattr(few, factor) == expected
    assert {f.name for f in fields(Identity)} == set(IDENTITY_FACTORS)


def test_switching_one_nuisance_off_keeps_the_others() -> None:
    strength = NuisanceStrength.uniform(1.0)
    a = sample_nuisance(np.random.default_rng(5), strength)
    b = sample_nuisance(np.random.default_rng(5), replace(strength, yaw=0.0))
    assert b.yaw_deg == 0.0
    assert replace(a, yaw_deg=0.0) == b


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sed": 1}, "unknown keys sed"),
        ({"image_size": 4}, "image_size is 4"),
        ({"train_identities": 2.5}, "train_identities is 2.5"),
        ({"num_identity_factors": 99}, "num_identity_factors is 99"),
        ({"train_nuisance": {"yaw": -1}}, "'yaw' is -1"),
        ({"train_nuisance": {"pose": 1}}, "train_nuisance has unknown keys pose"),
        ({"benchmarks": {"lfw": {"pairs_per_fold": 3}}}, "pairs_per_fold is 3"),
        ({"benchmarks": {"mine": {"pairs_per_fold": 4}}}, "mine is not a default pack"),
        ({"benchmarks": {"lfw": {"stress": "glare"}}}, "stress is 'glare'"),
        ({"benchmarks": {"a/b": {"stress": "mild"}}}, "benchmark name 'a/b'"),
    ],
)
def test_bad_settings_name_the_key(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _default(**settings)


def test_partial_benchmark_settings_start_from_the_default_pack() -> None:
    default = _default().benchmarks
    cfg = _default(benchmarks={"cfp_fp": {"nuisance": {"noise": 0.0}}, "lfw": None})
    assert list(cfg.benchmarks) == ["cfp_fp", "lfw"]
    assert cfg.benchmarks["cfp_fp"].stress == "frontal_profile"
    assert cfg.benchmarks["cfp_fp"].nuisance == replace(default["cfp_fp"].nuisance, noise=0.0)
    assert cfg.benchmarks["lfw"] == default["lfw"]


@pytest.mark.parametrize("name", ["cfp_fp", "cplfw", "agedb_30"])
def test_hard_packs_defeat_raw_pixel_matching(name: str) -> None:
    # The default-size pack: if raw-pixel cosine could verify its pairs, a recognition model
    # scoring well on it would prove nothing.
    images, issame = render_benchmark(_default(), name)
    pixels = l2_normalize(np.stack([_decode(image).ravel() for image in images]).astype(float))
    accuracy, _, _ = kfold_accuracy(pixels[0::2], pixels[1::2], issame)
    assert accuracy < 0.8


@pytest.fixture(scope="module")
def demo_embedding() -> tuple[torch.nn.Module, int]:
    """The shipped demo embedding model: trained on the demo world's training identities only."""
    weights = Path(__file__).resolve().parents[1] / "demo_weights/embedding/backbone.pth"
    model, size = load_backbone(weights)
    return model.eval(), size


@pytest.mark.parametrize("name", PACKS)
def test_a_model_that_knows_faces_verifies_every_packs_pairs(
    demo_embedding: tuple[torch.nn.Module, int], name: str
) -> None:
    """Genuine pairs show one identity, impostor pairs two: a model trained on other identities
    of the world verifies them well above chance. A pack whose pairs or flags were mixed up
    scores about 50 % (measured: 0.42-0.58 with the pairs shuffled), a correct one 0.83-0.92."""
    model, size = demo_embedding
    packs = {pack: {"pairs_per_fold": 10, "identities_per_fold": 5} for pack in PACKS}
    images, issame = render_benchmark(_default(benchmarks=packs), name)
    embeddings, _ = embed_with_flip(model, images, size, 128, torch.device("cpu"))
    rows = embeddings.double().numpy()
    accuracy, _, _ = kfold_accuracy(rows[0::2], rows[1::2], issame)
    assert accuracy > 0.7, f"{name}: {accuracy:.3f}"

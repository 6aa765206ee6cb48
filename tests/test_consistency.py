"""Identity-consistency metrics (specs/generative.md §16): EER, FDR, pairs, report files."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synface.cli import main
from synface.consistency import (
    PNG_SIZE,
    PairScores,
    consistency_report,
    identity_consistency,
    pair_scores,
    summarise,
    write_report,
)
from synface.io.embeddings import EMBEDDINGS_FILE, NAMES_FILE
from synface.io.manifest import ManifestEntry, write_manifest
from synface.io.rejected import write_rejected


def clusters(identities: int, per_identity: int, dim: int, noise: float, seed: int = 0):
    """One orthogonal direction per identity plus isotropic noise; labels 0..identities-1."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(identities), per_identity)
    centres = np.eye(dim)[:identities]
    return centres[labels] + noise * rng.normal(size=(len(labels), dim)), labels


def scores(genuine: list[float], impostor: list[float]) -> PairScores:
    return PairScores(np.array(genuine), np.array(impostor), 0, 0, len(impostor))


def test_separated_clusters_have_zero_eer_and_large_fdr() -> None:
    embeddings, labels = clusters(identities=8, per_identity=10, dim=16, noise=0.03)
    report = identity_consistency(embeddings, labels)
    assert report.eer == 0.0
    assert report.auc == 1.0
    assert report.fmr100 == 0.0 and report.fmr1000 == 0.0
    assert report.fdr > 100
    assert report.genuine_mean > 0.95 and abs(report.impostor_mean) < 0.05
    assert report.genuine_pairs == 8 * 45
    assert report.impostor_pairs == report.impostor_pairs_total == 80 * 79 // 2 - 8 * 45
    assert (report.images, report.identities) == (80, 8)


def test_shuffled_labels_give_chance_eer_and_no_separation() -> None:
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(400, 32))
    labels = rng.permutation(np.repeat(np.arange(20), 20))
    report = identity_consistency(embeddings, labels)
    assert report.eer == pytest.approx(0.5, abs=0.03)
    assert report.auc == pytest.approx(0.5, abs=0.03)
    assert report.fdr < 0.01


def test_hand_checked_eer_interpolation_fdr_auc() -> None:
    # FMR = P(imp ≥ t), FNMR = P(gen < t) at t = .1 .2 .3 .4 .5 .7 .9:
    #   FMR  1  .75  .5  .25  .25  0  0;   FNMR 0  0  0  0  1/3  1/3  2/3.
    # They cross between t = .4 (d = FMR − FNMR = 1/4) and t = .5 (d = −1/12): λ = 3/4, so
    # EER = .25 + λ·0 = 0 + λ·1/3 = 1/4 at t = .4 + λ·.1 = .475.
    report = summarise(scores([0.9, 0.7, 0.4], [0.5, 0.3, 0.2, 0.1]))
    assert report.eer == pytest.approx(0.25)
    assert report.eer_threshold == pytest.approx(0.475)
    # Population variances: genuine (7² + 1² + 8²) / 30² / 3, impostor 0.0875 / 4.
    g_var, i_var = 114 / 2700, 0.0875 / 4
    assert report.genuine_mean == pytest.approx(2 / 3)
    assert report.genuine_std == pytest.approx(np.sqrt(g_var))
    assert report.impostor_mean == pytest.approx(0.275)
    assert report.fdr == pytest.approx((2 / 3 - 0.275) ** 2 / (g_var + i_var))
    assert report.auc == pytest.approx(11 / 12)  # 11 of 12 (genuine, impostor) pairs ordered
    assert report.fmr100 == pytest.approx(1 / 3)  # first FMR = 0 is at t = .7


def test_eer_exact_when_rates_meet_and_auc_counts_ties_half() -> None:
    # Rates meet exactly at t = .5 (FMR = FNMR = 0.5); the 0.5 tie counts half in the AUC.
    report = summarise(scores([0.9, 0.5], [0.5, 0.1]))
    assert report.eer == pytest.approx(0.25)
    assert report.eer_threshold == pytest.approx(0.7)
    report = summarise(scores([0.6, 0.4], [0.5, 0.2]))
    assert (report.eer, report.eer_threshold) == (0.5, 0.5)
    assert report.auc == pytest.approx(0.75)


def test_auc_is_mann_whitney() -> None:
    rng = np.random.default_rng(2)
    genuine = np.round(rng.normal(0.3, 0.2, 300), 2)  # rounded: plenty of ties
    impostor = np.round(rng.normal(0.0, 0.2, 500), 2)
    diff = genuine[:, None] - impostor[None, :]
    expected = np.mean(diff > 0) + 0.5 * np.mean(diff == 0)
    assert summarise(scores(list(genuine), list(impostor))).auc == pytest.approx(expected)


def test_fdr_undefined_for_constant_scores() -> None:
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    report = identity_consistency(embeddings, np.array([0, 0, 1, 1]))
    assert report.fdr is None
    assert json.loads(json.dumps(report.to_dict()))["fdr"] is None


def test_pairs_are_all_genuine_and_a_seeded_uniform_impostor_sample() -> None:
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(6, 8))
    labels = np.array([5, 2, 5, 9, 2, 5])  # sizes 3, 2, 1: 4 genuine, 15 − 4 = 11 impostor pairs
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    genuine, impostor = [], []
    for i, j in combinations(range(6), 2):
        (genuine if labels[i] == labels[j] else impostor).append(float(unit[i] @ unit[j]))

    full = pair_scores(embeddings, labels)
    assert np.allclose(np.sort(full.genuine), np.sort(genuine))
    assert np.allclose(np.sort(full.impostor), np.sort(impostor))
    assert full.impostor_pairs_total == 11

    capped = pair_scores(embeddings, labels, max_impostor_pairs=5, seed=7)
    assert capped.impostor.size == 5 and capped.impostor_pairs_total == 11
    # Distinct cross-identity pairs: each sampled score is one of the 11, none repeated.
    hits = np.isclose(capped.impostor[:, None], np.array(impostor)[None, :])
    assert (hits.sum(axis=1) == 1).all() and (hits.sum(axis=0) <= 1).all()
    again = pair_scores(embeddings, labels, max_impostor_pairs=5, seed=7)
    assert np.array_equal(capped.impostor, again.impostor)

    # Uniform: over many seeds every cross pair is picked about 5/11 of the time.
    picked = np.zeros(11)
    for seed in range(400):
        sample = pair_scores(embeddings, labels, max_impostor_pairs=5, seed=seed).impostor
        picked += np.isclose(sample[:, None], np.array(impostor)[None, :]).any(axis=0)
    assert np.allclose(picked / 400, 5 / 11, atol=0.1)


def test_capped_report_counts() -> None:
    embeddings, labels = clusters(identities=8, per_identity=10, dim=16, noise=0.03)
    report = identity_consistency(embeddings, labels, max_impostor_pairs=100, seed=1)
    assert report.impostor_pairs == 100
    assert report.impostor_pairs_total == 80 * 79 // 2 - 8 * 45


@pytest.mark.parametrize(
    ("labels", "message"),
    [([0, 0, 0], "no impostor pairs"), ([0, 1, 2], "no genuine pairs"), ([0, 1], "labels")],
)
def test_degenerate_sets_are_refused(labels: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pair_scores(np.eye(3), np.array(labels))


def test_zero_row_is_refused() -> None:
    with pytest.raises(ValueError, match="row index 1"):
        pair_scores(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([0, 0]))


def write_set(root: Path, embeddings: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    """An extract-embeddings output folder and the manifest it is aligned with."""
    names = [f"images/{label}/{row}.jpg" for row, label in enumerate(labels)]
    manifest = root / "manifest.tsv"
    entries = [ManifestEntry(root / n, int(lab)) for n, lab in zip(names, labels, strict=True)]
    write_manifest(manifest, entries)
    out = root / "embeddings"
    out.mkdir()
    np.save(out / EMBEDDINGS_FILE, embeddings.astype(np.float32))
    (out / NAMES_FILE).write_text("".join(f"{name}\n" for name in names))
    return out, manifest


def test_cli_writes_json_and_png(tmp_path: Path) -> None:
    embeddings, labels = clusters(identities=6, per_identity=8, dim=16, noise=0.3)
    folder, manifest = write_set(tmp_path, embeddings, labels)
    out_json, out_png = tmp_path / "report" / "c.json", tmp_path / "report" / "c.png"
    main(
        [
            *("identity-consistency", "--embeddings", str(folder), "--manifest", str(manifest)),
            *("--out-json", str(out_json), "--out-png", str(out_png)),
        ]
    )
    written = json.loads(out_json.read_text())
    assert written == identity_consistency(embeddings.astype(np.float32), labels).to_dict()
    with Image.open(out_png) as image:
        image.load()
        assert image.format == "PNG" and image.size == PNG_SIZE
        # Both histogram colours are on the canvas, not just axes on white.
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 10
    assert sorted(p.name for p in out_json.parent.iterdir()) == ["c.json", "c.png"]


def test_misaligned_embeddings_and_manifest_name_both_files(tmp_path: Path) -> None:
    embeddings, labels = clusters(identities=3, per_identity=3, dim=4, noise=0.1)
    folder, manifest = write_set(tmp_path, embeddings, labels)
    names = (folder / NAMES_FILE).read_text().splitlines()
    names[2], names[5] = names[5], names[2]
    (folder / NAMES_FILE).write_text("".join(f"{name}\n" for name in names))
    out = (tmp_path / "c.json", tmp_path / "c.png")
    with pytest.raises(ValueError, match="row 3") as error:
        consistency_report(folder, manifest, *out)
    assert str(folder / NAMES_FILE) in str(error.value) and str(manifest) in str(error.value)

    (folder / NAMES_FILE).write_text("".join(f"{name}\n" for name in names[:-1]))
    np.save(folder / EMBEDDINGS_FILE, embeddings[:-1].astype(np.float32))
    with pytest.raises(ValueError, match="lists 8 images but") as error:
        consistency_report(folder, manifest, *out)
    assert str(manifest) in str(error.value)
    assert not out[0].exists() and not out[1].exists()


def test_write_report_png_for_degenerate_scores(tmp_path: Path) -> None:
    # Scores at ±1 (and a rounding error past 1) land in the end bins; FDR shows as n/a.
    report = summarise(scores([1.0000001, 1.0], [-1.0, -1.0]))
    write_report(report, tmp_path / "r.json", tmp_path / "r.png", [1.0000001, 1.0], [-1.0, -1.0])
    with Image.open(tmp_path / "r.png") as image:
        assert image.size == PNG_SIZE
    assert json.loads((tmp_path / "r.json").read_text())["eer"] == 0.0


def test_images_extraction_rejected_are_left_out_and_the_rest_keep_their_labels(
    tmp_path: Path,
) -> None:
    embeddings, labels = clusters(identities=3, per_identity=3, dim=4, noise=0.1)
    folder, manifest = write_set(tmp_path, embeddings, labels)
    names = (folder / NAMES_FILE).read_text().splitlines()
    kept = [row for row in range(len(names)) if row not in (1, 5)]
    (folder / NAMES_FILE).write_text("".join(f"{names[row]}\n" for row in kept))
    np.save(folder / EMBEDDINGS_FILE, embeddings[kept].astype(np.float32))
    out = (tmp_path / "c.json", tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"lists 7 images but .* lists 9; re-run"):
        consistency_report(folder, manifest, *out)
    write_rejected(folder, [(names[1], "unreadable: gone"), (names[5], "undecodable: x")])
    report = consistency_report(folder, manifest, *out)
    assert report == identity_consistency(embeddings[kept].astype(np.float32), labels[kept])

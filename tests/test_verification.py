"""The 10-fold verification protocol against the fixture's recorded values and hand-worked cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synface.evaluation.verification import (
    THRESHOLDS,
    fold_bounds,
    kfold_accuracy,
    l2_normalize,
)

FORMATS = Path(__file__).parent / "fixtures" / "formats"


def test_fixture_matches_recorded_protocol_output() -> None:
    data = np.load(FORMATS / "verification.npz")
    expected = json.loads((FORMATS / "verification.json").read_text())
    mean, std, threshold = kfold_accuracy(
        data["emb1"], data["emb2"], data["issame"], nfolds=expected["nfolds"]
    )
    assert mean == pytest.approx(expected["accuracy_mean"], abs=1e-9)
    assert std == pytest.approx(expected["accuracy_std"], abs=1e-9)
    assert threshold == pytest.approx(expected["threshold_mean"], abs=1e-9)


def test_thresholds_are_insightface_arange() -> None:
    assert len(THRESHOLDS) == 400
    assert THRESHOLDS[0] == 0.0
    assert THRESHOLDS[-1] == pytest.approx(3.99)


def test_hand_worked_two_fold_case() -> None:
    # Squared distances (exact in binary) 0.25 (same), 1.0 (diff) | 0.5625 (same), 2.25 (diff);
    # folds {0,1} and {2,3}.
    emb1 = np.zeros((4, 1))
    emb2 = np.array([[0.5], [1.0], [0.75], [1.5]])
    issame = [True, False, True, False]
    # Fold 1 trains on {2,3}: thresholds in (0.5625, 2.25] are all perfect; the first is 0.57.
    #   Test {0,1}: 0.25 < 0.57 -> same (right), 1.0 -> diff (right): accuracy 1.
    # Fold 2 trains on {0,1}: thresholds in (0.25, 1.0] are perfect; strict `<` means 0.25 itself
    #   is not (it would call pair 0 "different"), so the first is 0.26.
    #   Test {2,3}: 0.5625 < 0.26 fails -> diff (wrong), 2.25 -> diff (right): accuracy 0.5.
    assert THRESHOLDS[25] == 0.25  # the strictness check above relies on 0.25 being a candidate
    mean, std, threshold = kfold_accuracy(emb1, emb2, issame, nfolds=2)
    assert mean == pytest.approx(0.75)
    assert std == pytest.approx(0.25)  # population std of [1.0, 0.5]
    assert threshold == pytest.approx((0.57 + 0.26) / 2)


def test_perfectly_separable_pairs() -> None:
    rng = np.random.default_rng(0)
    emb1 = l2_normalize(rng.normal(size=(40, 8)))
    emb2 = emb1.copy()
    emb2[1::2] = -emb1[1::2]  # odd pairs: opposite points, squared distance 4
    issame = np.arange(40) % 2 == 0
    mean, std, _ = kfold_accuracy(emb1, emb2, issame)
    assert (mean, std) == (1.0, 0.0)


def test_fold_bounds_match_sklearn_kfold() -> None:
    # KFold(10, shuffle=False) on 23 items: three folds of 3, then seven of 2.
    bounds = fold_bounds(23, 10)
    assert [stop - start for start, stop in bounds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert bounds[0] == (0, 3)
    assert bounds[-1] == (21, 23)
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(9))


def test_uneven_folds_use_fold_sized_denominators() -> None:
    # 3 pairs in 2 folds -> sizes 2 and 1; squared distances 0.25 (same), 3.0625 (diff) | 2.25
    # (same). Fold 1's first perfect threshold is 0.26, which calls pair 2 "different": accuracy
    # 0. Fold 2 picks 2.26, which gets both fold-1 pairs right: accuracy 1. Mean 0.5 (pooling
    # the three pairs would give 2/3).
    emb1 = np.zeros((3, 1))
    emb2 = np.array([[0.5], [1.75], [1.5]])
    mean, std, threshold = kfold_accuracy(emb1, emb2, [True, False, True], nfolds=2)
    assert threshold == pytest.approx((0.26 + 2.26) / 2)
    assert (mean, std) == (pytest.approx(0.5), pytest.approx(0.5))


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="issame"):
        kfold_accuracy(np.zeros((10, 2)), np.zeros((10, 2)), [True] * 9)
    with pytest.raises(ValueError, match="at least one per fold"):
        kfold_accuracy(np.zeros((5, 2)), np.zeros((5, 2)), [True] * 5, nfolds=10)


def test_l2_normalize_rows_and_zero_rows() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    assert np.array_equal(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])

"""The insightface 10-fold verification protocol, reproduced exactly.

Published LFW/CFP-FP/AgeDB numbers (ADMIS, FRCSyn) come from this procedure; any deviation in
thresholds, fold boundaries, tie-breaking or the strict `<` shifts accuracies in the third
decimal, so each of those details is kept as in `calculate_roc`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

# insightface's `np.arange(0, 4, 0.01)`: 400 candidate thresholds on the squared L2 distance, whose
# range on unit vectors is [0, 4]. Built with arange (not linspace) so the values match bit for bit.
THRESHOLDS = np.arange(0, 4, 0.01)
DEFAULT_NFOLDS = 10


def l2_normalize(x: ArrayLike) -> NDArray[np.float64]:
    """Row-wise L2 normalisation; zero rows stay zero, as with sklearn's `normalize`."""
    arr = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    return arr / np.where(norms == 0, 1.0, norms)


def fold_bounds(n: int, nfolds: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) folds as sklearn `KFold(nfolds, shuffle=False)` makes them.

    The first `n % nfolds` folds get one extra item; with the official pair order this
    reproduces the benchmark's published splits.
    """
    if nfolds < 2:
        raise ValueError(f"nfolds must be >= 2, got {nfolds}")
    if n < nfolds:
        raise ValueError(f"cannot split {n} pairs into {nfolds} folds; need at least one per fold")
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for size, stop in zip(sizes, stops, strict=True)]


def kfold_accuracy(
    emb1: ArrayLike, emb2: ArrayLike, issame: ArrayLike, nfolds: int = DEFAULT_NFOLDS
) -> tuple[float, float, float]:
    """Return (mean accuracy, population std over folds, mean best threshold).

    Each fold's threshold is the first maximiser of accuracy on the other folds, and the
    prediction is "same" iff the squared distance is strictly below it.
    """
    e1 = np.asarray(emb1, dtype=np.float64)
    e2 = np.asarray(emb2, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    if e1.ndim != 2 or e1.shape != e2.shape or same.shape != (e1.shape[0],):
        raise ValueError(
            f"need emb1 and emb2 of equal shape (pairs, dim) and one issame flag per pair; got "
            f"emb1 {e1.shape}, emb2 {e2.shape}, issame {same.shape}"
        )
    dist = np.sum(np.square(e1 - e2), axis=1)
    # correct[t, i]: does threshold t classify pair i correctly? One pass over all thresholds.
    correct = (dist[np.newaxis, :] < THRESHOLDS[:, np.newaxis]) == same[np.newaxis, :]
    bounds = fold_bounds(len(dist), nfolds)
    # Correct counts per (threshold, fold); a fold's training count is the total minus its own.
    per_fold = np.add.reduceat(correct, [start for start, _ in bounds], axis=1, dtype=np.int64)
    train_counts = per_fold.sum(axis=1, keepdims=True) - per_fold
    # Within one fold every threshold shares the same denominator, so comparing counts picks the
    # same first argmax as comparing accuracies does.
    best = np.argmax(train_counts, axis=0)
    sizes = np.array([stop - start for start, stop in bounds])
    accuracies = per_fold[best, np.arange(nfolds)] / sizes
    return float(accuracies.mean()), float(accuracies.std()), float(THRESHOLDS[best].mean())

"""Identity consistency of a labelled face set: genuine vs impostor cosine scores, EER, FDR.

IDiff-Face judges how well generated faces keep their identity by embedding every sample with
ElasticFace and comparing the cosine similarities of same-identity pairs (genuine) with those of
cross-identity pairs (impostor): pyeer's EER, AUC, FMR100, FMR1000, the mean and standard
deviation of both distributions, the Fisher discriminant ratio
FDR = (μ_g − μ_i)² / (σ_g² + σ_i²) and a histogram of the two distributions
(IDiff-Face's `evaluate.py`, `plot_ffhq_experiments.py`). The same figures
describe any labelled set, real or synthetic, so they also show how far a synthetic set is from
the real one it imitates.

Where this differs from the reference, and why:
- Genuine pairs are unordered (i < j). IDiff-Face enumerates ordered pairs, which lists each
  score twice and leaves every statistic unchanged.
- Impostor pairs are a seeded uniform sample, without replacement, of at most
  `max_impostor_pairs` unordered cross-identity pairs (all of them when there are fewer).
  IDiff-Face draws as many pairs as there are genuine ones, with replacement, from numpy's global
  generator: 24.5 M pairs for 10k identities × 50, where a bounded seeded sample estimates the
  same distribution reproducibly.
- EER is the crossing of the FMR and FNMR curves, interpolated linearly between the two
  thresholds that bracket it (`_equal_error_rate`). pyeer instead takes the midpoint of
  (FMR, FNMR) at whichever bracketing threshold has the smaller sum (FVC2000's rule). The two
  differ by at most half the larger jump of FMR or FNMR between those thresholds, at most
  1 / (2 min(n_genuine, n_impostor)) when no scores tie: negligible at 10⁴–10⁵ pairs, visible
  only on toy sets.
- AUC is the exact trapezoid area under the ROC through every threshold, P(genuine > impostor)
  + ½ P(tie); pyeer's sum stops at the highest score and misses the last segment to FMR = 0.
- Histograms are normalised per distribution (each sums to 1); seaborn's default in the
  reference normalises both together.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from synface.evaluation.verification import l2_normalize
from synface.io.atomic import write_bytes, write_json
from synface.io.embeddings import aligned_entries, read_embeddings

log = logging.getLogger(__name__)

MAX_IMPOSTOR_PAIRS = 200_000
# Rows per chunk of impostor dot products: bounds the gathered pair rows to a few tens of MB.
IMPOSTOR_CHUNK = 8192
# pyeer's operating points: FNMR where FMR is closest to 1 % and to 0.1 %.
FMR100, FMR1000 = 0.01, 0.001

# Histogram figure. 100 bins on [-1, 1] as `plot_ffhq_experiments.py` draws them; colours are
# the reference's TU_DESIGN_COLORS for genuine, imposter and the EER threshold line.
HIST_BINS = 100
PNG_SIZE = (800, 500)
_GENUINE_COLOUR = "#009d81"
_IMPOSTOR_COLOUR = "#0083cc"
_EER_COLOUR = "#ec6500"


@dataclass(frozen=True)
class PairScores:
    """Cosine similarities of the genuine and (sampled) impostor pairs of a labelled set."""

    genuine: np.ndarray
    impostor: np.ndarray
    images: int
    identities: int
    # All cross-identity pairs, before the `max_impostor_pairs` cap.
    impostor_pairs_total: int


@dataclass(frozen=True)
class ConsistencyReport:
    """The identity-consistency figures IDiff-Face reports.

    Rates are fractions in [0, 1]. A pair is accepted when its score is ≥ the threshold, as in
    pyeer. `fmr100` / `fmr1000` keep pyeer's names: the FNMR at the threshold whose FMR is
    closest to 1 % / 0.1 %. `fdr` is None when both distributions have zero variance.
    """

    images: int
    identities: int
    genuine_pairs: int
    impostor_pairs: int
    impostor_pairs_total: int
    genuine_mean: float
    genuine_std: float
    impostor_mean: float
    impostor_std: float
    eer: float
    eer_threshold: float
    auc: float
    fmr100: float
    fmr1000: float
    fdr: float | None

    def to_dict(self) -> dict[str, int | float | None]:
        """Plain JSON-ready values, in field order."""
        return asdict(self)


def pair_scores(
    embeddings: np.ndarray,
    labels: np.ndarray,
    max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS,
    seed: int = 0,
) -> PairScores:
    """Cosine similarity of every same-identity pair and of sampled cross-identity pairs.

    Rows are L2-normalised here, so the scores are cosines even for raw embeddings. The impostor
    sample is uniform over unordered cross-identity pairs, without replacement, drawn by
    `numpy.random.default_rng(seed)`: the same inputs and seed give the same scores.

    Raises:
        ValueError: on mismatched shapes, a zero or non-finite row, a set with no genuine pair
            (every identity seen once) or with a single identity, or a cap below 1.
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or labels.shape != (embeddings.shape[0],):
        raise ValueError(
            f"expected embeddings (N, D) and labels (N,), got {embeddings.shape} and {labels.shape}"
        )
    if max_impostor_pairs < 1:
        raise ValueError(f"max_impostor_pairs must be >= 1, got {max_impostor_pairs}")
    unit = _unit_rows(embeddings)

    # Rows grouped by identity: identity c owns sorted positions [starts[c], ends[c]).
    _, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    if len(sizes) < 2:
        raise ValueError("all images carry one label: there are no impostor pairs to compare")
    if not np.any(sizes >= 2):
        raise ValueError("every identity has a single image: there are no genuine pairs")

    genuine = []
    for start, end in zip(starts, ends, strict=True):
        if end - start < 2:
            continue
        block = unit[order[start:end]].astype(np.float64)
        upper = np.triu_indices(end - start, k=1)
        genuine.append((block @ block.T)[upper])

    # Cross-identity pairs are enumerated without materialising them: identity c pairs each of
    # its rows with every row of a later identity, sizes[c] * (N - ends[c]) pairs in a block.
    total_rows = len(labels)
    widths = total_rows - ends
    block_ends = np.cumsum(sizes * widths)
    total = int(block_ends[-1])
    if total <= max_impostor_pairs:
        picks = np.arange(total, dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        picks = np.sort(rng.choice(total, size=max_impostor_pairs, replace=False, shuffle=False))
    blocks = np.searchsorted(block_ends, picks, side="right")
    offsets = picks - (block_ends[blocks] - sizes[blocks] * widths[blocks])
    first = order[starts[blocks] + offsets // widths[blocks]]
    second = order[ends[blocks] + offsets % widths[blocks]]
    impostor = np.concatenate(
        [
            np.einsum(
                "ij,ij->i",
                unit[first[i : i + IMPOSTOR_CHUNK]].astype(np.float64),
                unit[second[i : i + IMPOSTOR_CHUNK]].astype(np.float64),
            )
            for i in range(0, len(picks), IMPOSTOR_CHUNK)
        ]
    )
    return PairScores(np.concatenate(genuine), impostor, total_rows, len(sizes), total)


def summarise(scores: PairScores) -> ConsistencyReport:
    """EER, AUC, FMR operating points, moments and FDR of a genuine / impostor score split.

    Standard deviations are population ones (numpy's default, as pyeer computes them), and FDR
    is computed from them exactly as `plot_ffhq_experiments.py` derives it from pyeer's stats.
    """
    genuine = np.asarray(scores.genuine, dtype=np.float64)
    impostor = np.asarray(scores.impostor, dtype=np.float64)
    if genuine.size == 0 or impostor.size == 0:
        raise ValueError("need at least one genuine and one impostor score")
    thresholds, fmr, fnmr = _error_rates(genuine, impostor)
    eer, eer_threshold = _equal_error_rate(thresholds, fmr, fnmr)
    g_mean, g_std = float(genuine.mean()), float(genuine.std())
    i_mean, i_std = float(impostor.mean()), float(impostor.std())
    spread = g_std**2 + i_std**2
    return ConsistencyReport(
        images=scores.images,
        identities=scores.identities,
        genuine_pairs=int(genuine.size),
        impostor_pairs=int(impostor.size),
        impostor_pairs_total=scores.impostor_pairs_total,
        genuine_mean=g_mean,
        genuine_std=g_std,
        impostor_mean=i_mean,
        impostor_std=i_std,
        eer=eer,
        eer_threshold=eer_threshold,
        auc=_roc_auc(fmr, fnmr),
        fmr100=_fnmr_at_fmr(fmr, fnmr, FMR100),
        fmr1000=_fnmr_at_fmr(fmr, fnmr, FMR1000),
        fdr=(g_mean - i_mean) ** 2 / spread if spread > 0 else None,
    )


def identity_consistency(
    embeddings: np.ndarray,
    labels: np.ndarray,
    max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS,
    seed: int = 0,
) -> ConsistencyReport:
    """`pair_scores` then `summarise`: the consistency figures of one labelled embedding set."""
    return summarise(pair_scores(embeddings, labels, max_impostor_pairs, seed))


def write_report(
    report: ConsistencyReport,
    out_json: Path,
    out_png: Path,
    genuine: np.ndarray,
    impostor: np.ndarray,
) -> None:
    """Write the report as JSON and the two score histograms as a PNG, each atomically."""
    out_json, out_png = Path(out_json), Path(out_png)
    write_json(out_json, report.to_dict())
    write_bytes(out_png, _histogram_figure(report, genuine, impostor))


def consistency_report(
    embeddings_dir: Path,
    manifest: Path,
    out_json: Path,
    out_png: Path,
    max_impostor_pairs: int = MAX_IMPOSTOR_PAIRS,
    seed: int = 0,
) -> ConsistencyReport:
    """Stage: the identity consistency of an `extract-embeddings` output, labelled by its manifest.

    Rows are joined to the manifest by `synface.io.embeddings.aligned_entries` (the manifest's
    images in order, less those extraction rejected); anything else raises rather than
    mislabels.
    """
    embeddings_dir, manifest = Path(embeddings_dir), Path(manifest)
    embeddings, names = read_embeddings(embeddings_dir)
    entries = aligned_entries(embeddings_dir, names, manifest)
    labels = np.array([entry.label for entry in entries], dtype=np.int64)
    scores = pair_scores(embeddings, labels, max_impostor_pairs, seed)
    report = summarise(scores)
    write_report(report, out_json, out_png, scores.genuine, scores.impostor)
    log.info("identity consistency of %s: %s", embeddings_dir, report)
    return report


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, refusing zero or non-finite rows: a cosine needs a direction."""
    norms = np.linalg.norm(embeddings.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(
            f"{bad.size} embedding rows are zero or non-finite (first: row index {bad[0]}); "
            "a cosine needs a direction"
        )
    return l2_normalize(embeddings).astype(np.float32)


def _error_rates(
    genuine: np.ndarray, impostor: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pyeer's `calculate_roc`: at each distinct score t, FMR = P(imp. ≥ t), FNMR = P(gen. < t)."""
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    fnmr = np.searchsorted(np.sort(genuine), thresholds, side="left") / genuine.size
    fmr = 1.0 - np.searchsorted(np.sort(impostor), thresholds, side="left") / impostor.size
    return thresholds, fmr, fnmr


def _equal_error_rate(
    thresholds: np.ndarray, fmr: np.ndarray, fnmr: np.ndarray
) -> tuple[float, float]:
    """The rate and threshold where the FMR and FNMR curves cross.

    FMR falls and FNMR rises with the threshold. At the lowest score FMR = 1 > FNMR = 0, and at
    the highest FMR ≤ FNMR, so there is a first threshold k with FMR ≤ FNMR. If they are equal
    there, that is the EER; otherwise both curves are taken as straight between thresholds
    k − 1 and k, and the EER is their crossing: with d = FMR − FNMR, λ = d[k−1] / (d[k−1] −
    d[k]), EER = FMR[k−1] + λ (FMR[k] − FMR[k−1]) (= the same expression in FNMR) at threshold
    t[k−1] + λ (t[k] − t[k−1]).
    """
    diff = fmr - fnmr
    k = int(np.flatnonzero(diff <= 0)[0])
    if diff[k] == 0:
        return float(fmr[k]), float(thresholds[k])
    lam = diff[k - 1] / (diff[k - 1] - diff[k])
    eer = fmr[k - 1] + lam * (fmr[k] - fmr[k - 1])
    return float(eer), float(thresholds[k - 1] + lam * (thresholds[k] - thresholds[k - 1]))


def _roc_auc(fmr: np.ndarray, fnmr: np.ndarray) -> float:
    """Trapezoid area under (FMR, 1 − FNMR), closed at (0, 0) above the highest score."""
    x = np.append(fmr, 0.0)
    y = np.append(1.0 - fnmr, 0.0)
    return float(np.sum((x[:-1] - x[1:]) * (y[:-1] + y[1:]) / 2))


def _fnmr_at_fmr(fmr: np.ndarray, fnmr: np.ndarray, target: float) -> float:
    """pyeer's `get_fmr_op`: FNMR at the first threshold whose FMR is closest to `target`."""
    return float(fnmr[np.argmin(np.abs(fmr - target))])


def _histogram_figure(
    report: ConsistencyReport, genuine: np.ndarray, impostor: np.ndarray
) -> bytes:
    """Two overlaid per-distribution probability histograms and the EER threshold, as PNG."""
    from matplotlib.figure import Figure

    from synface.figures import DPI, save_png

    figure = Figure(figsize=(PNG_SIZE[0] / DPI, PNG_SIZE[1] / DPI), layout="constrained")
    axis = figure.subplots()
    edges = np.linspace(-1.0, 1.0, HIST_BINS + 1)
    for name, scores, pairs, colour in (
        ("genuine", genuine, report.genuine_pairs, _GENUINE_COLOUR),
        ("impostor", impostor, report.impostor_pairs, _IMPOSTOR_COLOUR),
    ):
        axis.stairs(
            _bin_probabilities(scores, edges), edges, fill=True, alpha=0.55, color=colour,
            label=f"{name} ({pairs:,} pairs)",
        )  # fmt: skip
    threshold = min(max(report.eer_threshold, -1.0), 1.0)
    axis.axvline(threshold, color=_EER_COLOUR, lw=2, label=f"EER threshold {threshold:.3f}")
    fdr = "n/a" if report.fdr is None else f"{report.fdr:.3g}"
    axis.set(xlim=(-1, 1), xlabel="cosine similarity", ylabel="probability per bin")
    axis.set_title(f"Identity consistency: EER {report.eer:.2%}, FDR {fdr}")
    axis.legend(loc="upper left")
    return save_png(figure)


def _bin_probabilities(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # Clipped so a cosine a rounding error past ±1 still lands in the end bin.
    counts, _ = np.histogram(np.clip(scores, -1.0, 1.0), bins=edges)
    return counts / counts.sum()

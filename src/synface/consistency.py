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
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synface.evaluation.verification import l2_normalize
from synface.io.atomic import atomic_path, write_json
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
_MARGINS = (76, 44, 24, 60)  # left, top, right, bottom, in pixels
_GENUINE_RGB = (0, 157, 129)
_IMPOSTOR_RGB = (0, 131, 204)
_EER_RGB = (236, 101, 0)
_BAR_ALPHA = 140
_FONT_SIZE = 14
_X_TICKS = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)
_Y_TICK_COUNT = 5


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
    with atomic_path(out_png) as tmp:
        _histogram_figure(report, genuine, impostor).save(tmp, format="PNG")


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
) -> Image.Image:
    """Two overlaid per-distribution probability histograms with axes, ticks and a legend."""
    width, height = PNG_SIZE
    left, top, right, bottom = _MARGINS
    box = (left, top, width - right, height - bottom)
    edges = np.linspace(-1.0, 1.0, HIST_BINS + 1)
    series = [
        (
            f"genuine ({report.genuine_pairs:,} pairs)",
            _bin_probabilities(genuine, edges),
            _GENUINE_RGB,
        ),
        (
            f"impostor ({report.impostor_pairs:,} pairs)",
            _bin_probabilities(impostor, edges),
            _IMPOSTOR_RGB,
        ),
    ]
    highest = max(float(p.max()) for _, p, _ in series)
    y_step = _nice_step(highest / _Y_TICK_COUNT)
    y_top = y_step * math.ceil(highest / y_step)

    def x_px(value: float) -> int:
        return round(box[0] + (value + 1.0) / 2.0 * (box[2] - box[0]))

    def y_px(value: float) -> int:
        return round(box[3] - value / y_top * (box[3] - box[1]))

    image = Image.new("RGBA", PNG_SIZE, "white")
    for _, probabilities, rgb in series:
        layer = Image.new("RGBA", PNG_SIZE, (0, 0, 0, 0))
        bars = ImageDraw.Draw(layer)
        for low, high, p in zip(edges[:-1], edges[1:], probabilities, strict=True):
            if p > 0:
                bars.rectangle(
                    (x_px(low), y_px(p), x_px(high) - 1, box[3]), fill=(*rgb, _BAR_ALPHA)
                )
        image = Image.alpha_composite(image, layer)

    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=_FONT_SIZE)
    draw.rectangle(box, outline="black")
    for tick in _X_TICKS:
        x = x_px(tick)
        draw.line((x, box[3], x, box[3] + 5), fill="black")
        draw.text((x, box[3] + 8), f"{tick:g}", fill="black", font=font, anchor="mt")
    decimals = max(0, -math.floor(math.log10(y_step)))
    for i in range(round(y_top / y_step) + 1):
        y = y_px(i * y_step)
        draw.line((box[0] - 5, y, box[0], y), fill="black")
        draw.text(
            (box[0] - 8, y), f"{i * y_step:.{decimals}f}", fill="black", font=font, anchor="rm"
        )
    eer_x = x_px(min(max(report.eer_threshold, -1.0), 1.0))
    draw.line((eer_x, box[1], eer_x, box[3]), fill=_EER_RGB, width=2)

    legend = [(label, rgb) for label, _, rgb in series]
    legend.append((f"EER threshold {report.eer_threshold:.3f}", _EER_RGB))
    _draw_legend(draw, box, font, legend)

    fdr = "n/a" if report.fdr is None else f"{report.fdr:.3g}"
    title = f"Identity consistency: EER {report.eer:.2%}, FDR {fdr}"
    draw.text((width / 2, top / 2), title, fill="black", font=font, anchor="mm")
    draw.text(
        ((box[0] + box[2]) / 2, height - 12),
        "cosine similarity",
        fill="black",
        font=font,
        anchor="mb",
    )
    _draw_y_label(image, box, font, "probability per bin")
    return image.convert("RGB")


def _draw_y_label(
    image: Image.Image,
    box: tuple[int, int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    text: str,
) -> None:
    """``text`` turned 90°, centred along the plot's left edge."""
    y_label = Image.new("RGBA", (box[3] - box[1], _FONT_SIZE + 6), (0, 0, 0, 0))
    ImageDraw.Draw(y_label).text(
        (y_label.width / 2, y_label.height / 2), text, fill="black", font=font, anchor="mm"
    )
    image.alpha_composite(y_label.rotate(90, expand=True), (6, box[1]))


def _draw_legend(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    legend: list[tuple[str, tuple[int, int, int]]],
) -> None:
    """A boxed legend in the plot's top-left corner: one colour swatch and label per row."""
    row_height = _FONT_SIZE + 8
    legend_width = 40 + max(round(draw.textlength(label, font=font)) for label, _ in legend)
    draw.rectangle(
        (box[0] + 4, box[1] + 4, box[0] + legend_width, box[1] + 10 + len(legend) * row_height),
        fill="white",
        outline="gray",
    )
    for row, (label, rgb) in enumerate(legend):
        y = box[1] + 10 + row * row_height
        draw.rectangle((box[0] + 10, y, box[0] + 24, y + _FONT_SIZE), fill=rgb)
        draw.text((box[0] + 32, y), label, fill="black", font=font)


def _bin_probabilities(scores: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # Clipped so a cosine a rounding error past ±1 still lands in the end bin.
    counts, _ = np.histogram(np.clip(scores, -1.0, 1.0), bins=edges)
    return counts / counts.sum()


def _nice_step(raw: float) -> float:
    """The smallest 1, 2 or 5 × 10^k at or above `raw`: round numbers for the y ticks."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)

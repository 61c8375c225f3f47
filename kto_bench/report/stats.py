"""Pure statistics for reports: seed t-intervals, paired bootstrap contrasts, Wilson intervals, Holm.

No scipy: the t quantile comes from the regularized incomplete beta function (continued fraction),
the normal quantile from `statistics.NormalDist`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (bisection; accurate to ~1e-12)."""
    assert 0.0 < p < 1.0 and df > 0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class MeanCI:
    """Mean over seeds with a two-sided t-interval; half/lo/hi are NaN when n < 2 (no CI)."""

    mean: float
    half: float
    lo: float
    hi: float
    n: int

    @property
    def has_ci(self) -> bool:
        return self.n >= 2 and math.isfinite(self.half)


def mean_ci(values: Sequence[float], alpha: float = 0.05) -> MeanCI:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, math.nan, math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    half = t_quantile(1.0 - alpha / 2.0, n - 1) * sd / math.sqrt(n)
    return MeanCI(mean, half, mean - half, mean + half, n)


def wilson(k: float, n: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """Wilson score interval of a proportion k/n (k may be fractional: ties count as half wins).
    Returns (p, lo, hi)."""
    if n <= 0:
        return math.nan, math.nan, math.nan
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in input order.
    NaN p-values are passed through and not counted as tests."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


@dataclass(frozen=True)
class BootCI:
    """A bootstrap contrast: point estimate, percentile CI, two-sided p-value, and what it rests on."""

    estimate: float
    lo: float
    hi: float
    p_value: float
    n_items: int
    n_seeds: tuple[int, ...]


def align_items(groups: Sequence[Sequence[dict[str, float]]]) -> tuple[list[str], list[np.ndarray]]:
    """Pairs per-item scores by item_id. `groups[g][s]` maps item_id -> score for seed s of group g.
    Returns the item ids present in every run of every group and one (seeds x items) matrix per group."""
    common: set[str] | None = None
    for runs in groups:
        for scores in runs:
            common = set(scores) if common is None else common & set(scores)
    items = sorted(common or set())
    mats = [np.array([[scores[i] for i in items] for scores in runs], dtype=float) for runs in groups]
    return items, mats


def paired_bootstrap(
    terms: Sequence[tuple[float, np.ndarray]],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    chunk: int = 250,
) -> BootCI:
    """CI of a linear contrast sum_g c_g * mean(score_g) over the same evaluation items.

    `terms` holds (coefficient, scores) with scores a (seeds x items) matrix whose columns are the
    same items in the same order for every term (see `align_items`). Each replicate resamples the
    items once, jointly for all terms (this is the pairing: an item's difficulty cancels), and
    resamples the seeds of each term independently with replacement (training-seed variance). With
    one seed per term this is the ordinary paired item bootstrap. Percentile interval; the p-value is
    two-sided for "contrast = 0" (smallest attainable 1/(n_boot+1)).
    """
    mats = [np.asarray(m, dtype=float) for _, m in terms]
    coefs = [float(c) for c, _ in terms]
    n_items = mats[0].shape[1]
    assert n_items > 0 and all(m.ndim == 2 and m.shape[1] == n_items for m in mats)
    estimate = sum(c * float(m.mean()) for c, m in zip(coefs, mats, strict=True))
    rng = np.random.default_rng(seed)
    reps = np.zeros(n_boot)
    for start in range(0, n_boot, chunk):
        r = min(chunk, n_boot - start)
        draws = rng.integers(0, n_items, size=(r, n_items))
        flat = (draws + n_items * np.arange(r)[:, None]).ravel()  # replicate-major counts via one bincount
        weights = np.bincount(flat, minlength=r * n_items).reshape(r, n_items) / n_items
        for c, m in zip(coefs, mats, strict=True):
            per_seed = m @ weights.T  # (seeds, r): each seed's mean over the resampled items
            pick = rng.integers(0, m.shape[0], size=(r, m.shape[0]))
            reps[start : start + r] += c * per_seed[pick, np.arange(r)[:, None]].mean(axis=1)
    lo, hi = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    tail = min((reps <= 0).sum(), (reps >= 0).sum())
    p = float(min(1.0, max(2.0 * tail / n_boot, 1.0 / (n_boot + 1))))
    return BootCI(estimate, float(lo), float(hi), p, n_items, tuple(m.shape[0] for m in mats))


def verdict(lo: float, hi: float, direction: str, threshold: float = 0.0) -> str:
    """'reproduced' when the CI lies entirely on the claimed side of the threshold, 'contradicted'
    when entirely on the other side, else 'inconclusive'. direction: 'greater' or 'less'."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    above, below = lo > threshold, hi < threshold
    if direction == "less":
        above, below = below, above
    elif direction != "greater":
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    return "reproduced" if above else "contradicted" if below else "inconclusive"

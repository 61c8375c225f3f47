"""Pure statistics for reports: seed t-intervals, Wilson intervals, Holm, and the one interval every
difference of the report uses (`contrast_interval`), which counts both sources of variance: the
evaluation items and the training seeds.

The contrast model. Each run r of group g scores item i as y_gri. A contrast sum_g c_g·mean(group g)
estimates the difference over the *population* of items and of training seeds, so its variance has
  seed terms   sum_g c_g²·σ²_seed,g / S_g       (the runs of a group differ: data order, flips, init)
  item terms   σ²_item×contrast / I              (items on which one method is better whatever the seed)
  residual     sum_g c_g²·σ²_res,g / (S_g·I)     (seed × item: which items a given run happens to solve)
With the items aligned (the same item_ids in every run) the item main effect cancels (pairing by
item). Where every group has the same seeds and seed s of one group shares its data and flips with
seed s of the others (same seed → same corrupted data), the per-seed contrast matrix is analysed
instead (pairing by seed). A fixed group (the base model: one run, no seeds) adds item terms only.

Estimates come from the two-way (seeds × items) mean squares of each group (or of the paired
contrast matrix): a seed part with S−1 degrees of freedom (unpaired groups: their sum, with
Welch-Satterthwaite degrees of freedom) and an item part with I−1 (precise for benchmark-sized I). The interval is the generalized pivotal (fiducial) interval for "a mean whose
variance is a few-degrees-of-freedom part plus a precisely known part": the seed part is drawn from
its scaled-χ² fiducial distribution on a fixed stratified grid (deterministic), and the half-width
solves mean coverage = 1 − α. With the item part zero this is exactly Student's t over seeds; with
the seed part zero it tends to the normal interval over items. With fewer than two runs in a seeded
group there is no seed variance to estimate: the interval is then over items only (paired t over
items) and says so, since it does not cover training-seed variance.

Coverage is checked by simulation in tests/report/test_coverage.py (GSM8K-sized; see its table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import ndtr

# Labels of the interval methods (shown beside every difference of a report).
SEED_PAIRED = "seeds × items, seed-paired"
SEED_UNPAIRED = "seeds × items, unpaired seeds"
SEED_VS_FIXED = "seeds × items, vs a fixed run"  # method − base model
ITEMS_ONLY = "items only (one seed: no seed variance)"
N_PIVOT = 256  # fiducial draws of the seed variance (stratified χ² quantiles; fixed, so reports are stable)


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (scipy)."""
    assert 0.0 < p < 1.0 and df > 0
    return float(stats.t.ppf(p, df))


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
    half = t_quantile(1.0 - alpha / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return MeanCI(mean, half, mean - half, mean + half, n)


def wilson(k: float, n: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """Wilson score interval of a proportion k/n (k may be fractional: ties count as half wins).
    Returns (p, lo, hi). statsmodels' proportion_confint."""
    if n <= 0:
        return math.nan, math.nan, math.nan
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(k, n, alpha=alpha, method="wilson")
    return k / n, max(0.0, float(lo)), min(1.0, float(hi))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels' multipletests), in input order.
    NaN p-values are passed through and not counted as tests."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    out = [math.nan] * len(pvalues)
    if idx:
        from statsmodels.stats.multitest import multipletests

        adjusted = multipletests([pvalues[i] for i in idx], method="holm")[1]
        for i, p in zip(idx, adjusted, strict=True):
            out[i] = float(p)
    return out


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


# ---------------------------------------------------------------------------------------------- contrasts


@dataclass(frozen=True)
class Term:
    """One group of a contrast: coefficient, (..., seeds, items) scores, and whether it is fixed
    (a single run with no seed variance, such as the base model)."""

    coef: float
    scores: np.ndarray
    fixed: bool = False


@dataclass(frozen=True)
class Variance:
    """Variance parts of a contrast estimate (arrays over any leading batch axes).

    seed: [(scale, dof)]: the seed part, c²·MS_seed/(S·I) of the paired matrix with S−1 degrees of
    freedom, or the sum over seeded groups with Welch-Satterthwaite dof; [] when a seeded group has
    one run. items: the item part (≥ 0), estimated with I−1 dof (treated as known)."""

    estimate: np.ndarray
    seed: list[tuple[np.ndarray, np.ndarray | int]]
    items: np.ndarray
    method: str
    dof_items: int


def _two_way(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MS_seed and MS_residual of a (..., S, I) matrix (two-way layout, one score per cell), from sums
    of squares: SS_res = Σy² − I·Σ_s ȳ_s² − S·Σ_i ȳ_i² + S·I·ȳ² (no residual matrix is built)."""
    s, i = m.shape[-2:]
    seed_means, item_means = m.mean(-1), m.mean(-2)
    grand = seed_means.mean(-1)
    ss_seed = i * ((seed_means - grand[..., None]) ** 2).sum(-1)
    ss_item = s * ((item_means - grand[..., None]) ** 2).sum(-1)
    ss_total = np.einsum("...si,...si->...", m, m) - s * i * grand**2
    ss_res = np.maximum(ss_total - ss_seed - ss_item, 0.0)
    return ss_seed / (s - 1), ss_res / ((s - 1) * (i - 1))


def contrast_variance(terms: Sequence[Term], *, paired_seeds: bool) -> Variance:
    """The estimate and variance parts of sum c_g·mean(scores_g) over aligned items (pure, vectorised
    over leading batch axes). `paired_seeds`: every seeded group has the same seeds in the same order."""
    mats = [np.asarray(t.scores, dtype=float) for t in terms]
    n_items = mats[0].shape[-1]
    assert n_items >= 2 and all(m.shape[-1] == n_items for m in mats)
    assert all(m.shape[-2] == 1 for m, t in zip(mats, terms, strict=True) if t.fixed)
    estimate = sum(t.coef * m.mean((-2, -1)) for t, m in zip(terms, mats, strict=True))
    # item part: the per-item contrast of the seed-averaged scores (pairs the items)
    per_item = sum(t.coef * m.mean(-2) for t, m in zip(terms, mats, strict=True))
    item_var = per_item.var(-1, ddof=1) / n_items
    seeded = [(t, m) for t, m in zip(terms, mats, strict=True) if not t.fixed and t.coef != 0.0]
    if not seeded or any(m.shape[-2] < 2 for _, m in seeded):
        return Variance(estimate, [], item_var, ITEMS_ONLY, n_items - 1)
    if paired_seeds:
        n_seeds = {m.shape[-2] for _, m in seeded}
        assert len(n_seeds) == 1, "paired seeds need the same number of seeds in every seeded group"
        s = n_seeds.pop()
        d = sum(
            t.coef * np.broadcast_to(m, (*m.shape[:-2], s, n_items)) for t, m in zip(terms, mats, strict=True)
        )
        ms_seed, ms_res = _two_way(d)
        seed = [(ms_seed / (s * n_items), s - 1)]
        resid = ms_res / (s * n_items)
        method = SEED_PAIRED if len(seeded) > 1 else SEED_VS_FIXED
    else:
        seed, resid = [], 0.0
        for t, m in seeded:
            s = m.shape[-2]
            ms_seed, ms_res = _two_way(m)
            seed.append((t.coef**2 * ms_seed / (s * n_items), s - 1))
            resid = resid + t.coef**2 * ms_res / (s * n_items)
        # one seed part with Welch-Satterthwaite degrees of freedom (fractional; at least min S−1)
        total = sum(scale for scale, _ in seed)
        with np.errstate(divide="ignore", invalid="ignore"):
            dof = total**2 / sum(scale**2 / nu for scale, nu in seed)
        dof = np.where(np.isfinite(dof), dof, min(nu for _, nu in seed))
        seed = [(total, dof)]
        method = SEED_UNPAIRED
    # the item part of the per-item variance, less the residual the seed part already holds
    return Variance(estimate, seed, np.maximum(item_var - resid, 0.0), method, n_items - 1)


def _pivot_draws(dof: float | np.ndarray) -> np.ndarray:
    """(..., N_PIVOT) fiducial draws of ν/χ²_ν at stratified quantiles (deterministic). One seed part
    per contrast, so the draws need no joint design; ν may be an array (Welch-Satterthwaite dof)."""
    u = (np.arange(N_PIVOT) + 0.5) / N_PIVOT
    nu = np.asarray(dof, dtype=float)[..., None]
    return nu / stats.chi2.ppf(u, nu)


def pivot_interval(
    var: Variance, alpha: float = 0.05, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, p): the two-sided 1−α interval and the p-value of "contrast = threshold".

    Items only: paired t over items (I−1 dof). Otherwise the generalized pivotal interval: the total
    variance is drawn as sum_k scale_k·ν_k/χ²_ν_k + items over fixed draws, and the half-width h
    solves mean_j [2Φ(h/sd_j) − 1] = 1 − α; p = mean_j 2(1 − Φ(|est − threshold|/sd_j)), so p < α
    exactly when the threshold lies outside the interval."""
    est = np.asarray(var.estimate, dtype=float)
    gap = np.abs(est - threshold)
    if not var.seed:
        se = np.sqrt(np.asarray(var.items, dtype=float))
        half = stats.t.ppf(1.0 - alpha / 2.0, var.dof_items) * se
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, gap / se, np.where(gap > 0, np.inf, 0.0))
        return est - half, est + half, np.minimum(2.0 * stats.t.sf(z, var.dof_items), 1.0)
    total = sum(np.asarray(scale)[..., None] * _pivot_draws(nu) for scale, nu in var.seed)
    sd = np.sqrt(total + np.asarray(var.items)[..., None])  # (..., N_PIVOT)

    def standardized(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 0, x[..., None] / sd, np.where(x[..., None] > 0, np.inf, 0.0))

    # the half-width lies between z·min(sd) and z·max(sd) (every draw covers less / more than 1−α there):
    # bisection on its logarithm, to a relative precision of 2^-24 of that range
    z = stats.norm.ppf(1.0 - alpha / 2.0)
    log_lo, log_hi = np.log(z * sd.min(-1) + 1e-300), np.log(z * sd.max(-1) + 1e-300)
    for _ in range(24):
        mid = 0.5 * (log_lo + log_hi)
        below = (2.0 * ndtr(standardized(np.exp(mid))) - 1.0).mean(-1) < 1.0 - alpha
        log_lo, log_hi = np.where(below, mid, log_lo), np.where(below, log_hi, mid)
    hi_h = np.where(sd.max(-1) > 0, np.exp(log_hi), 0.0)
    p = (2.0 * ndtr(-standardized(gap))).mean(-1)
    return est - hi_h, est + hi_h, np.minimum(p, 1.0)


@dataclass(frozen=True)
class Interval:
    """A difference with its interval: what `contrasts.contrast` and the claims report.

    interval: the method's label (SEED_PAIRED, SEED_UNPAIRED or ITEMS_ONLY); item_level_only is
    True when it does not cover training-seed variance (a seeded group has one run)."""

    estimate: float
    lo: float
    hi: float
    p: float
    interval: str
    n_seeds: tuple[int, ...]
    n_items: int
    alpha: float

    @property
    def item_level_only(self) -> bool:
        return self.interval == ITEMS_ONLY


def contrast_interval(
    terms: Sequence[Term], *, paired_seeds: bool, alpha: float = 0.05, threshold: float = 0.0
) -> Interval:
    """The 1−α interval and p-value of sum c_g·mean(scores_g) for one contrast (2-D score matrices)."""
    var = contrast_variance(terms, paired_seeds=paired_seeds)
    lo, hi, p = pivot_interval(var, alpha, threshold)
    n_seeds = tuple(0 if t.fixed else int(np.shape(t.scores)[-2]) for t in terms)
    return Interval(
        float(var.estimate),
        float(lo),
        float(hi),
        float(p),
        var.method,
        n_seeds,
        int(np.shape(terms[0].scores)[-1]),
        alpha,
    )


def sign_verdict(lo: float, hi: float, direction: str, threshold: float = 0.0) -> str:
    """'reproduced' when the interval lies entirely on the claimed side of the threshold,
    'contradicted' when entirely on the other side, else 'inconclusive'. direction: 'greater' or 'less'."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    above, below = lo > threshold, hi < threshold
    if direction == "less":
        above, below = below, above
    elif direction != "greater":
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    return "reproduced" if above else "contradicted" if below else "inconclusive"


def size_verdict(lo: float, hi: float, paper: float | None) -> str:
    """The measured size against the paper's number: 'smaller' / 'larger' when the interval lies
    entirely below / above it, 'consistent' when it contains it, '' without a paper number."""
    if paper is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return "smaller" if hi < paper else "larger" if lo > paper else "consistent"

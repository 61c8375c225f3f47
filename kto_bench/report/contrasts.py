"""Paired contrasts of per-item scores: the one function that gives a difference of two methods (or a
method and its base model) at a grid point, with its seeds × items interval (`stats.contrast_interval`).
The paired table, the forest plot and the claims all measure through `contrast` / `contrast_terms`."""

from __future__ import annotations

from kto_bench.report.aggregate import Experiment, Run
from kto_bench.report.stats import Interval, Term, align_items, contrast_interval


def group_scores(
    exp: Experiment, runs: list[Run], task: str, metric: str, item_key: str | None = None
) -> list[dict[str, float]] | None:
    scores = [exp.item_scores(r.run_id, task, item_key or metric) for r in runs]
    return None if not scores or any(s is None for s in scores) else scores  # type: ignore[return-value]


def seed_pairing(groups: list[list[Run]]) -> tuple[list[list[Run]], bool]:
    """Pairs the seeded groups of a contrast by seed where they allow it: when every seeded group has
    one run per seed and at least two seeds are common to all, keep the common seeds (same seed → same
    corrupted data and flips) in one order; otherwise keep every run, unpaired. Base runs are fixed."""
    seeded = [g for g in groups if not any(r.is_base for r in g)]
    by_seed = [{r.seed: r for r in g} for g in seeded]
    if not seeded or any(len(m) != len(g) or None in m for m, g in zip(by_seed, seeded, strict=True)):
        return groups, False
    common = sorted(set.intersection(*(set(m) for m in by_seed)), key=str)
    if len(common) < 2:
        return groups, False
    out, paired_groups = [], iter(by_seed)
    for g in groups:
        if any(r.is_base for r in g):
            out.append(g)
        else:
            runs = next(paired_groups)
            out.append([runs[s] for s in common])
    return out, True


def contrast_terms(
    exp: Experiment,
    terms: list[tuple[float, list[Run]]],
    task: str,
    metric: str,
    *,
    alpha: float = 0.05,
    threshold: float = 0.0,
    item_key: str | None = None,
) -> Interval | None:
    """sum coef·mean(score of runs) on the items every run shares, with its interval (see
    `stats.contrast_interval`): paired by item, by seed where the groups share their seeds, a base
    model as a fixed term. None without per-item samples or shared items."""
    if any(r.is_base for _, runs in terms for r in runs) and any(
        len(runs) != 1 for _, runs in terms if any(r.is_base for r in runs)
    ):
        raise ValueError("a base-model term holds exactly one run")
    groups, paired = seed_pairing([runs for _, runs in terms])
    scores = [group_scores(exp, runs, task, metric, item_key) for runs in groups]
    if any(s is None for s in scores):
        return None
    items, mats = align_items(scores)  # type: ignore[arg-type]
    if len(items) < 2:
        return None
    return contrast_interval(
        [Term(c, m, fixed=runs[0].is_base) for (c, _), m, runs in zip(terms, mats, groups, strict=True)],
        paired_seeds=paired,
        alpha=alpha,
        threshold=threshold,
    )


def contrast(
    exp: Experiment,
    plus: list[Run],
    minus: list[Run],
    task: str,
    metric: str,
    *,
    alpha: float = 0.05,
    item_key: str | None = None,
) -> Interval | None:
    """mean(plus) − mean(minus) on their common items with its 1−α interval and p-value: the one
    function that gives a difference of two methods (or a method and its base model, `minus` = [base
    run]) at a grid point. None without per-item samples."""
    return contrast_terms(exp, [(1.0, plus), (-1.0, minus)], task, metric, alpha=alpha, item_key=item_key)


def runs_of(exp: Experiment, method: str, point: str) -> list[Run]:
    return [r for r in exp.trained if r.method == method and r.point == point]

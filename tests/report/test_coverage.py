"""Coverage of the report's intervals, by simulation (GSM8K-sized: 1,319 items, accuracy 0.4-0.6).

Item model (one simulated experiment): item i has difficulty u_i ~ U(0, 1) and, per method, a
method-specific shift g_mi ~ N(0, INTERACTION) (items one method is better at, whatever the seed);
run r of method m with seed s solves item i when u_i + g_mi + e_ri < a_m + z_ms, e_ri ~ N(0, NOISE)
(which items a given run happens to solve) and z_ms ~ N(0, seed SD) (the seed's effect on accuracy,
in points/100; correlated RHO across methods at the same seed when seeds share data and flips). The
expected accuracy over the population of items and seeds is a_m exactly, so the true difference is
known. Items are drawn afresh in every simulated experiment: the intervals must cover the item
sampling as well as the seeds.

Run as a script (`python -m tests.report.test_coverage`) it prints the coverage table.
"""

from __future__ import annotations

import numpy as np
import pytest

from kto_bench.report.stats import Term, contrast_variance, pivot_interval

N_SIMS = 800
N_ITEMS = 1319
SEED_SDS = (0.0, 0.01, 0.02, 0.03)  # 0-3 points
INTERACTION, NOISE, RHO, DELTA = 0.05, 0.1, 0.5, 0.03
LEVEL = 0.95


def simulate(rng: np.random.Generator, n: int, seeds: int, seed_sd: float, rho: float):
    """(plus, minus, base) scores of n simulated experiments: (n, seeds, items) twice and (n, 1, items)."""
    acc = rng.uniform(0.4, 0.6, size=(n, 1, 1))
    u = rng.random((n, 1, N_ITEMS), dtype=np.float32)
    z = rng.normal(size=(n, seeds, 2))
    shift_plus = seed_sd * z[..., :1]
    shift_minus = seed_sd * (rho * z[..., :1] + np.sqrt(1 - rho**2) * z[..., 1:])

    def runs(ability: np.ndarray, s: int) -> np.ndarray:
        g = INTERACTION * rng.standard_normal((n, 1, N_ITEMS), dtype=np.float32)
        return (u + g + NOISE * rng.standard_normal((n, s, N_ITEMS), dtype=np.float32) < ability.astype(np.float32)).astype(float)

    return runs(acc + DELTA + shift_plus, seeds), runs(acc + shift_minus, seeds), runs(acc - 0.05, 1)


def coverage(terms: list[Term], paired: bool, truth: float) -> float:
    lo, hi, _ = pivot_interval(contrast_variance(terms, paired_seeds=paired), 1 - LEVEL)
    return float(np.mean((lo <= truth) & (truth <= hi)))


def coverage_table(n_sims: int = N_SIMS, seed: int = 0) -> dict[tuple[str, int, float], float]:
    """{(interval, seeds per side, seed SD): coverage} for every interval the report uses."""
    rng = np.random.default_rng(seed)
    out = {}
    for seeds in range(1, 6):
        for sd in SEED_SDS:
            plus, minus, base = simulate(rng, n_sims, seeds, sd, RHO)
            if seeds == 1:  # one seed per side: the items-only interval (what the report falls back to)
                out[("items only", 1, sd)] = coverage([Term(1, plus), Term(-1, minus)], False, DELTA)
                continue
            out[("seed-paired", seeds, sd)] = coverage([Term(1, plus), Term(-1, minus)], True, DELTA)
            out[("method - base", seeds, sd)] = coverage(
                [Term(1, plus), Term(-1, base, fixed=True)], True, 0.08
            )
            plus, minus, _ = simulate(rng, n_sims, seeds, sd, 0.0)  # independent seeds
            out[("unpaired seeds", seeds, sd)] = coverage([Term(1, plus), Term(-1, minus)], False, DELTA)
    return out


@pytest.fixture(scope="module")
def table():
    return coverage_table()


def test_seeded_intervals_keep_their_coverage(table):
    # 800 experiments per cell: one standard error of a 95% coverage is 0.8 points
    for (kind, seeds, sd), cov in table.items():
        if kind != "items only":
            assert 0.93 <= cov <= 0.97, (kind, seeds, sd, cov)


def test_items_only_interval_covers_without_seed_variance_and_not_with_it(table):
    assert 0.93 <= table[("items only", 1, 0.0)] <= 0.97
    # what the report says it does not cover: a between-seed SD of 2-3 points breaks it
    assert table[("items only", 1, 0.02)] < 0.85 and table[("items only", 1, 0.03)] < 0.75


if __name__ == "__main__":
    import time

    t = time.time()
    tab = coverage_table()
    kinds = sorted({k for k, _, _ in tab})
    print("| interval | seeds | " + " | ".join(f"SD {100 * s:g} pt" for s in SEED_SDS) + " |")
    print("|---|---|" + "---|" * len(SEED_SDS))
    for kind in kinds:
        for seeds in range(1, 6):
            cells = [tab.get((kind, seeds, sd)) for sd in SEED_SDS]
            if any(c is not None for c in cells):
                print(f"| {kind} | {seeds} | " + " | ".join(f"{100 * c:.1f}%" for c in cells) + " |")
    print(f"{time.time() - t:.1f} s")

"""Coverage of the report's intervals, by simulation (GSM8K-sized: 1,319 items, accuracy 0.4-0.6).

Item model (one simulated experiment): item i has difficulty u_i ~ U(0, 1) and, per method, a
method-specific shift g_mi ~ N(0, INTERACTION) (items one method is better at, whatever the seed);
run r of method m with seed s solves item i when u_i + g_mi + e_ri < a_m + z_ms, e_ri ~ N(0, NOISE)
(which items a given run happens to solve) and z_ms ~ N(0, seed SD) (the seed's effect on accuracy,
in points/100; correlated RHO across methods at the same seed when seeds share data and flips). The
expected accuracy over the population of items and seeds is a_m exactly, so the true difference is
known. Items are drawn afresh in every simulated experiment: the intervals must cover the item
sampling as well as the seeds.

Run as a script (`python -m tests.report.test_coverage`) it prints the coverage table. Measured
(800 experiments per cell, seed 0; interaction SD 0.05, run noise SD 0.1, seed correlation 0.5 where paired):

| interval | seeds | SD 0 pt | SD 1 pt | SD 2 pt | SD 3 pt |
|---|---|---|---|---|---|
| items only | 1 | 95.5% | 81.6% | 61.3% | 46.1% |
| method - base | 2 | 98.4% | 98.9% | 97.4% | 96.6% |
| method - base | 3 | 97.5% | 97.1% | 98.0% | 96.0% |
| method - base | 4 | 96.2% | 96.1% | 96.0% | 97.1% |
| method - base | 5 | 96.9% | 95.5% | 96.2% | 96.9% |
| seed-paired | 2 | 97.1% | 96.8% | 95.5% | 95.4% |
| seed-paired | 3 | 96.0% | 95.6% | 95.8% | 95.6% |
| seed-paired | 4 | 95.5% | 96.2% | 94.1% | 95.5% |
| seed-paired | 5 | 96.8% | 95.9% | 96.6% | 95.1% |
| unpaired seeds | 2 | 98.2% | 98.1% | 98.4% | 96.8% |
| unpaired seeds | 3 | 96.6% | 96.8% | 97.9% | 97.6% |
| unpaired seeds | 4 | 97.2% | 95.8% | 95.9% | 95.5% |
| unpaired seeds | 5 | 95.4% | 96.1% | 95.6% | 96.0% |

For comparison, with an interaction SD of 0.1 a Welch t-interval over per-seed means alone (no item part) fell to
78% at five seeds with no seed effect: items one method is better at whatever the seed are a source of
variance the seeds do not show.
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
        return (
            u + g + NOISE * rng.standard_normal((n, s, N_ITEMS), dtype=np.float32)
            < ability.astype(np.float32)
        ).astype(float)

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


SE = (LEVEL * (1 - LEVEL) / N_SIMS) ** 0.5  # the simulation's own standard error, ≈ 0.8 points


def test_seeded_intervals_keep_their_coverage(table):
    """Never below 93% (a verdict would overstate); at most 97% (+2 simulation standard errors) from three
    seeds on. With two seeds the seed variance has one degree of freedom: the interval must then allow for
    a large seed variance it cannot rule out, and is conservative (up to ≈99%) when item variance dominates
    (method − base, unpaired seeds); the seed-paired interval stays within 93-97% there too."""
    for (kind, seeds, sd), cov in table.items():
        if kind == "items only":
            continue
        upper = 0.995 if seeds == 2 and kind != "seed-paired" else 0.97 + 2 * SE
        assert 0.93 <= cov <= upper, (kind, seeds, sd, cov)


def test_items_only_interval_covers_without_seed_variance_and_not_with_it(table):
    assert 0.93 <= table[("items only", 1, 0.0)] <= 0.97 + 2 * SE
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

import math

import numpy as np
import pytest

from kto_bench.report.stats import (
    align_items,
    holm,
    mean_ci,
    paired_bootstrap,
    t_quantile,
    verdict,
    wilson,
)


@pytest.mark.parametrize("p", [0.9, 0.975, 0.995])
def test_t_quantile_matches_closed_forms(p):
    # df=1 is Cauchy: tan(pi (p - 1/2)); df=2: (2p-1) / sqrt(2 p (1-p)).
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert t_quantile(1 - p, 2) == pytest.approx(-t_quantile(p, 2))


def test_t_quantile_table_values_and_normal_limit():
    assert t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-6)  # printed t tables
    assert t_quantile(0.975, 30) == pytest.approx(2.042272, abs=1e-6)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_mean_ci_by_hand():
    ci = mean_ci([0.5, 0.6, 0.7])
    sd = math.sqrt(((0.1) ** 2 + 0 + (0.1) ** 2) / 2)
    t = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)
    assert ci.mean == pytest.approx(0.6)
    assert ci.half == pytest.approx(t * sd / math.sqrt(3))
    assert (ci.lo, ci.hi) == pytest.approx((0.6 - ci.half, 0.6 + ci.half))
    assert ci.n == 3 and ci.has_ci


def test_mean_ci_single_seed_has_no_interval():
    ci = mean_ci([0.42])
    assert ci.mean == 0.42 and ci.n == 1 and not ci.has_ci and math.isnan(ci.half)
    assert mean_ci([]).n == 0


def test_wilson_by_hand_and_bounds():
    z = 1.959963984540054
    p, lo, hi = wilson(30, 100)
    centre = (0.3 + z * z / 200) / (1 + z * z / 100)
    half = z * math.sqrt(0.3 * 0.7 / 100 + z * z / 40000) / (1 + z * z / 100)
    assert p == 0.3 and lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert wilson(0, 20)[1] == pytest.approx(0.0, abs=1e-12) and wilson(20, 20)[2] == pytest.approx(1.0)
    assert wilson(0, 20)[2] > 0.0  # unlike the Wald interval, no zero-width CI at the boundary


def test_holm_known_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped
    out = holm([0.01, math.nan, 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_verdict_directions():
    assert verdict(0.01, 0.2, "greater") == "reproduced"
    assert verdict(-0.2, -0.01, "greater") == "contradicted"
    assert verdict(-0.1, 0.1, "greater") == "inconclusive"
    assert verdict(-0.2, -0.01, "less") == "reproduced"
    assert verdict(0.5, 0.6, "greater", threshold=0.55) == "inconclusive"
    assert verdict(math.nan, math.nan, "greater") == "inconclusive"
    with pytest.raises(ValueError):
        verdict(0, 1, "bigger")


def test_align_items_keeps_common_items_in_one_order():
    items, (a, b) = align_items([[{"x": 1, "y": 0, "z": 1}], [{"y": 1, "x": 0}, {"x": 1, "y": 1}]])
    assert items == ["x", "y"]
    assert a.tolist() == [[1, 0]] and b.tolist() == [[0, 1], [1, 1]]


def test_paired_bootstrap_pairing_cancels_item_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 10, size=300)  # huge between-item spread
    a, b = (difficulty + 1.0)[None, :], difficulty[None, :]
    r = paired_bootstrap([(1.0, a), (-1.0, b)], n_boot=500, seed=1)
    assert r.estimate == pytest.approx(1.0)
    assert r.lo == pytest.approx(1.0) and r.hi == pytest.approx(1.0)  # constant per-item difference
    assert r.p_value == pytest.approx(1 / 501) and r.n_items == 300 and r.n_seeds == (1, 1)


def test_paired_bootstrap_null_contains_zero_and_seeds_widen():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, size=(1, 400)).astype(float)
    b = rng.integers(0, 2, size=(1, 400)).astype(float)
    r = paired_bootstrap([(1.0, a), (-1.0, b)], n_boot=1000, seed=0)
    assert r.lo < 0 < r.hi and r.p_value > 0.05
    base = rng.normal(size=200)
    same = np.stack([base, base, base])
    spread = np.stack([base - 1, base, base + 1])  # seeds disagree by a constant
    narrow = paired_bootstrap([(1.0, same), (-1.0, same)], n_boot=500, seed=0)
    wide = paired_bootstrap([(1.0, spread), (-1.0, same)], n_boot=500, seed=0)
    assert narrow.hi - narrow.lo < 1e-9 and wide.hi - wide.lo > 0.5


def test_paired_bootstrap_is_seeded():
    x = np.random.default_rng(3).normal(size=(2, 50))
    y = np.random.default_rng(4).normal(size=(3, 50))
    r1 = paired_bootstrap([(1.0, x), (-1.0, y)], n_boot=300, seed=7)
    r2 = paired_bootstrap([(1.0, x), (-1.0, y)], n_boot=300, seed=7)
    assert r1 == r2

import math

import numpy as np
import pytest
from scipy import stats

from kto_bench.report.stats import (
    ITEMS_ONLY,
    SEED_PAIRED,
    SEED_UNPAIRED,
    Term,
    align_items,
    contrast_interval,
    holm,
    mean_ci,
    sign_verdict,
    size_verdict,
    t_quantile,
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


def test_sign_verdict_directions():
    assert sign_verdict(0.01, 0.2, "greater") == "reproduced"
    assert sign_verdict(-0.2, -0.01, "greater") == "contradicted"
    assert sign_verdict(-0.1, 0.1, "greater") == "inconclusive"
    assert sign_verdict(-0.2, -0.01, "less") == "reproduced"
    assert sign_verdict(0.5, 0.6, "greater", threshold=0.55) == "inconclusive"
    assert sign_verdict(math.nan, math.nan, "greater") == "inconclusive"
    with pytest.raises(ValueError):
        sign_verdict(0, 1, "bigger")


def test_align_items_keeps_common_items_in_one_order():
    items, (a, b) = align_items([[{"x": 1, "y": 0, "z": 1}], [{"y": 1, "x": 0}, {"x": 1, "y": 1}]])
    assert items == ["x", "y"]
    assert a.tolist() == [[1, 0]] and b.tolist() == [[0, 1], [1, 1]]


def test_contrast_interval_pairing_cancels_item_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 10, size=300)  # huge between-item spread
    a, b = (difficulty + 1.0)[None, :], difficulty[None, :]
    r = contrast_interval([Term(1.0, a), Term(-1.0, b)], paired_seeds=False)
    assert r.estimate == pytest.approx(1.0)
    assert r.lo == pytest.approx(1.0) and r.hi == pytest.approx(1.0)  # constant per-item difference
    assert r.p == 0.0 and r.n_items == 300 and r.n_seeds == (1, 1) and r.item_level_only


def test_one_seed_is_a_paired_t_over_items():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=(1, 400)).astype(float)
    b = rng.integers(0, 2, size=(1, 400)).astype(float)
    r = contrast_interval([Term(1.0, a), Term(-1.0, b)], paired_seeds=False)
    d = a[0] - b[0]
    half = stats.t.ppf(0.975, 399) * d.std(ddof=1) / math.sqrt(400)
    assert (r.lo, r.hi) == pytest.approx((d.mean() - half, d.mean() + half))
    assert r.p == pytest.approx(stats.ttest_rel(a[0], b[0]).pvalue)
    assert r.interval == ITEMS_ONLY


def test_seed_paired_without_item_part_is_students_t_over_seeds():
    # every seed's runs differ by a per-seed constant: no item × method interaction, no residual
    rng = np.random.default_rng(2)
    base = rng.normal(size=200)
    shifts = np.array([0.5, 0.9, 1.6])
    plus, minus = base + shifts[:, None], np.stack([base] * 3)
    r = contrast_interval([Term(1.0, plus), Term(-1.0, minus)], paired_seeds=True)
    half = stats.t.ppf(0.975, 2) * shifts.std(ddof=1) / math.sqrt(3)
    assert r.interval == SEED_PAIRED and r.n_seeds == (3, 3)
    assert r.estimate == pytest.approx(shifts.mean())  # the pivot's 256 fixed draws: t quantile to 0.5%
    assert (r.hi - r.lo) / 2 == pytest.approx(half, rel=5e-3)
    assert r.p == pytest.approx(stats.ttest_1samp(shifts, 0.0).pvalue, rel=2e-2)


def test_seed_variance_widens_and_the_p_value_matches_the_interval():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2, size=(1, 500)).astype(float)
    same = np.repeat(base, 3, axis=0)
    noisy = same.copy()
    noisy[0, :40], noisy[2, :40] = 1.0, 0.0  # seeds disagree on 40 items
    narrow = contrast_interval([Term(1.0, same), Term(-1.0, base, fixed=True)], paired_seeds=True)
    wide = contrast_interval([Term(1.0, noisy), Term(-1.0, base, fixed=True)], paired_seeds=True)
    assert narrow.hi - narrow.lo < 1e-9 < wide.hi - wide.lo and wide.n_seeds == (3, 0)
    for threshold in (wide.lo - 1e-6, wide.hi + 1e-6):
        assert contrast_interval([Term(1.0, noisy), Term(-1.0, base, fixed=True)], paired_seeds=True,
                                 threshold=threshold).p < 0.05  # fmt: skip
    inside = contrast_interval([Term(1.0, noisy), Term(-1.0, base, fixed=True)], paired_seeds=True,
                               threshold=wide.lo + 1e-3)  # fmt: skip
    assert inside.p > 0.05


def test_unpaired_seeds_and_determinism():
    x = np.random.default_rng(3).integers(0, 2, size=(2, 50)).astype(float)
    y = np.random.default_rng(4).integers(0, 2, size=(3, 50)).astype(float)
    r1 = contrast_interval([Term(1.0, x), Term(-1.0, y)], paired_seeds=False)
    r2 = contrast_interval([Term(1.0, x), Term(-1.0, y)], paired_seeds=False)
    assert r1 == r2 and r1.interval == SEED_UNPAIRED and r1.n_seeds == (2, 3)
    assert r1.lo < r1.estimate < r1.hi


def test_size_verdict():
    assert size_verdict(0.01, 0.07, 0.135) == "smaller"
    assert size_verdict(0.10, 0.20, 0.135) == "consistent"
    assert size_verdict(0.2, 0.3, 0.135) == "larger"
    assert size_verdict(0.2, 0.3, None) == ""

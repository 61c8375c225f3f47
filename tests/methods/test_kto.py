"""KTO's data-derived hyperparameters: λD, λU from the binary view's class counts (the config's hook)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kto_bench.methods.kto import KTOConfig, kto_weights


@settings(max_examples=80, deadline=None)
@given(nd=st.integers(1, 1000), nu=st.integers(1, 1000), ratio=st.floats(1.0, 4 / 3))
def test_lambda_ratio_lands_on_target(nd, nu, ratio):
    ld, lu = kto_weights(nd, nu, ratio)
    assert ld * nd / (lu * nu) == pytest.approx(ratio)
    assert min(ld, lu) == pytest.approx(1.0) or max(ld, lu) >= 1.0


def test_lambda_overrides():
    assert kto_weights(10, 100, 1.0, 2.0, 0.5) == (2.0, 0.5)
    ld, lu = kto_weights(10, 100, 1.0, desirable_weight=5.0)
    assert ld == 5.0 and ld * 10 / (lu * 100) == pytest.approx(1.0)


def test_config_derives_lambda_from_counts():
    counts = {"desirable": 10, "undesirable": 100}
    lam_d, lam_u = kto_weights(10, 100, 1.2)
    assert KTOConfig(lambda_ratio=1.2).loss_kwargs(counts) == {
        "beta": 0.1,
        "desirable_weight": lam_d,
        "undesirable_weight": lam_u,
    }
    assert KTOConfig(desirable_weight=2.0, undesirable_weight=0.5).loss_kwargs(counts) == {
        "beta": 0.1,
        "desirable_weight": 2.0,
        "undesirable_weight": 0.5,
    }
    # without counts (or with one class) unset weights are 1: what the loss gets before the data is known
    assert KTOConfig().loss_kwargs() == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    assert KTOConfig().loss_kwargs({"desirable": 5, "undesirable": 0})["undesirable_weight"] == 1.0

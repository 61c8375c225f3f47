"""Secrets in the environment never reach the results store, the report, or the logs."""

from __future__ import annotations

import pytest

from tests.reliability.helpers import SECRET

pytestmark = pytest.mark.slow  # uses the session's baseline: two `kto-bench run` processes


def test_planted_api_keys_appear_in_no_output(baseline):
    files = [p for root in (baseline.results, baseline.reports) for p in root.rglob("*") if p.is_file()]
    assert len(files) > 20  # the run really wrote its store and report
    leaked = [p for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []
    for out in baseline.outputs:
        assert SECRET not in out

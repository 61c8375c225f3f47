"""Tests whose prerequisite (a Debian package, a cached mirror) may be missing on a developer's machine."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(what: str) -> NoReturn:
    """Skip: `what` (the prerequisite and how to get it) is not here. Under CI ($KTO_BENCH_CI, set by
    .ci/run, which installs every prerequisite it does not name as a decided skip) fail instead."""
    if os.environ.get("KTO_BENCH_CI"):
        pytest.fail(f"CI must provide this (see .ci/run): {what}")
    pytest.skip(what)

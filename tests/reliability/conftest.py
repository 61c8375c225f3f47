"""Session fixtures of the reliability suite: one demo world, one uninterrupted baseline run.

The demo world ("arith-tiny") is built once per session into a temporary KTO_BENCH_CACHE (set
KTO_BENCH_TEST_CACHE=/some/dir to reuse one across sessions while developing). Every `kto-bench`
subprocess inherits that cache and runs single-threaded, so two runs of one spec are comparable bit
for bit.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.reliability.helpers import SECRET, Baseline, cli, digest, write_spec


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory) -> Path:
    """A KTO_BENCH_CACHE folder with the tiny demo world built in it (once per session)."""
    from kto_bench.demo.world import ensure_world, world_config

    root = Path(os.environ.get("KTO_BENCH_TEST_CACHE") or tmp_path_factory.mktemp("kto-bench-cache"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KTO_BENCH_CACHE", str(root))
        ensure_world(world_config("arith-tiny"), log=lambda *a: None)
    return root


@pytest.fixture(autouse=True)
def _use_world_cache(world_cache, monkeypatch) -> None:
    """Every reliability test sees the session's cache; tests outside this folder keep their own."""
    monkeypatch.setenv("KTO_BENCH_CACHE", str(world_cache))


@pytest.fixture(scope="session")
def baseline(world_cache, tmp_path_factory) -> Baseline:
    """SPEC run to the end (+ report) by two `kto-bench run` processes started together, with API keys
    planted in their environment: the reference result of the crash, concurrency, determinism and secrets
    tests."""
    work = tmp_path_factory.mktemp("baseline")
    spec = write_spec(work)
    secrets = {"OPENAI_API_KEY": SECRET, "HF_TOKEN": "hf_" + SECRET, "ANTHROPIC_API_KEY": SECRET}
    args = ["run", str(spec), "--results", "results", "--reports", "reports"]
    outs: list = [None, None]

    def go(i: int) -> None:
        outs[i] = cli(args, work, env={**secrets, "KTO_BENCH_CACHE": str(world_cache)})

    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in outs:
        assert res.returncode == 0, res.output
    return Baseline(
        work / "results", work / "reports", [res.output for res in outs], digest(work / "results")
    )

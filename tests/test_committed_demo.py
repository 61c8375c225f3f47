"""The committed demo results as a fresh clone meets them.

A new machine builds the demo world from an empty cache and runs the README's main command over the
committed store. Every committed run must then be either reused because it is truly identical (same model
hash, world, data source, world size and precision as the run recorded) or, if this machine built another
world, rerun: never relabelled. Provenance stays true and the report has one base row.

Then the same machine retrains the flip-0, seed-1 KTO and DPO runs and re-evaluates the base model from
scratch, in an empty store: their rewards and every per-item record must equal the committed ones field by
field, so the committed numbers are what any machine that runs the suite gets.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.reliability.helpers import cli, stage_lines

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "results" / "demo"


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One empty cache for the module: the first test builds the world in it, as on a new machine."""
    return tmp_path_factory.mktemp("empty-cache")


def test_committed_demo_is_reused_when_identical_or_rerun_truthfully(tmp_path, cache):
    assert COMMITTED.is_dir(), "the demo's results are committed (README); regenerate them from a clean tree"
    from kto_bench.spec import expand, load_spec

    results = tmp_path / "results"
    shutil.copytree(COMMITTED, results / "demo")
    before = files(results / "demo")
    env = {"KTO_BENCH_CACHE": str(cache)}
    spec_path = ROOT / "experiments" / "demo.yaml"
    res = cli(
        ["run", str(spec_path), "--results", str(results), "--reports", str(tmp_path / "reports")],
        tmp_path,
        env=env,
        timeout=1800,
    )
    assert res.returncode == 0, res.output[-3000:]
    stale = set(re.findall(r"stale (\S+):", res.output))
    rerun = {run for _, run in stage_lines(res.output)}
    assert rerun == stale  # nothing identical is redone; whatever differs is redone from scratch
    current = [r.run_id for r in expand(load_spec(spec_path))]
    after = files(results / "demo")
    for run_id in current:  # a reused run's files are untouched
        if run_id not in stale:
            mine = {k: v for k, v in after.items() if k.startswith(f"{run_id}/") and not k.endswith(".lock")}
            theirs = {
                k: v for k, v in before.items() if k.startswith(f"{run_id}/") and not k.endswith(".lock")
            }
            assert mine == theirs, run_id
    hashes = {
        json.loads((results / "demo" / r / "provenance.json").read_text())["identity"]["model_hash"]
        for r in current
    }
    world = json.loads(next(cache.rglob("world.json")).read_text())["content_hash"]
    idents = [json.loads((results / "demo" / r / "provenance.json").read_text())["identity"] for r in current]
    assert len(hashes) == 1 and {i["demo_world_hash"] for i in idents} == {world}  # provenance is true
    md = (tmp_path / "reports" / "demo" / "report.md").read_text()
    headline = md[md.index("id='headline'") if "id='headline'" in md else md.index("Headline") :]
    base_rows = [ln for ln in headline.split("\n\n", 2)[1].splitlines() if ln.startswith("| base")]
    assert len(base_rows) == 1, base_rows


def test_committed_demo_runs_retrain_to_the_same_bytes(tmp_path, cache):
    from kto_bench.spec import expand, load_spec

    spec_path = ROOT / "experiments" / "demo.yaml"
    runs = expand(load_spec(spec_path))
    chosen = [
        r.run_id
        for r in runs
        if r.seed == 1
        and r.corruption.flip_rate == 0.0
        and r.run_id.startswith(("kto-", "dpo-"))
        and r.corruption.desirable_fraction == 1.0
    ]
    assert len(chosen) == 2, chosen
    env = {"KTO_BENCH_CACHE": str(cache)}
    for run_id in chosen:
        res = cli(
            ["run", str(spec_path), "--only", run_id, "--no-report", "--results", str(tmp_path / "results")],
            tmp_path,
            env=env,
            timeout=1800,
        )
        assert res.returncode == 0, res.output[-3000:]
    fresh = tmp_path / "results" / "demo"
    base = [p.name for p in fresh.iterdir() if p.name.startswith("base-")]
    assert len(base) == 1 and (COMMITTED / base[0]).is_dir(), base
    compared = 0
    for run_id in [*chosen, *base]:
        for path in sorted((COMMITTED / run_id).rglob("*")):
            rel = path.relative_to(COMMITTED / run_id)
            if path.name == "rewards.jsonl" or path.name.endswith(".samples.jsonl"):
                # every committed field of every record, exactly (a later version may record more fields)
                theirs = [json.loads(line) for line in path.read_text().splitlines()]
                mine = [json.loads(line) for line in (fresh / run_id / rel).read_text().splitlines()]
                assert [{k: m.get(k) for k in t} for m, t in zip(mine, theirs, strict=True)] == theirs, (
                    f"{run_id}/{rel} differs"
                )
                compared += 1
    assert compared == 2 * 3 + 2  # each trained run: rewards + two tasks' items; the base: two tasks' items

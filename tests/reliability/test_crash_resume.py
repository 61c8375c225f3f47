"""kill -9 inside every stage, then rerun: nothing completed is redone, nothing partial is trusted, and the
final results equal an uninterrupted run's bit for bit (CPU).

Kills inside data, reference and train use the pipeline's KTO_BENCH_FAULT hook (a SIGKILL at a named
point); kills inside eval and report are external, as soon as a log line shows the stage under way.
"""

from __future__ import annotations

import json
import signal

import pytest
import torch

from tests.reliability.helpers import all_json_parses, cli, curve, digest, run_dirs, stage_lines, write_spec

pytestmark = pytest.mark.slow


def status(run_dir) -> dict:
    path = run_dir / "status.json"
    return json.loads(path.read_text())["stages"] if path.exists() else {}


def kto_dir(results):
    return next(d for d in (results / "rel").iterdir() if d.name.startswith("kto-"))


def test_kill_at_every_stage_then_resume_matches_an_uninterrupted_run(baseline, tmp_path):
    spec = write_spec(tmp_path)
    args = ["run", str(spec), "--results", "results", "--reports", "reports"]
    results = tmp_path / "results"

    def killed_run(**kw):
        res = cli(args, tmp_path, **kw)
        assert res.returncode == -signal.SIGKILL, res.output
        all_json_parses(results)  # every file a killed process left is whole
        return res

    # 1. data: data.pt written, stage not marked -> the stage is not trusted and reruns
    killed_run(env={"KTO_BENCH_FAULT": "data"})
    run = kto_dir(results)
    assert (run / "data.pt").exists() and status(run) == {}

    # 2. reference: the cache is filled, the stage not marked
    res = killed_run(env={"KTO_BENCH_FAULT": "reference"})
    assert ("data", run.name) in stage_lines(res.output)
    done_data = status(run)["data"]
    assert "reference" not in status(run)
    assert list((results / "_cache" / "reference").rglob("shard-*.pt"))

    # 3. train: steps 1-4 logged, checkpoint 2 renamed into place, checkpoint 4 still a temp file
    killed_run(env={"KTO_BENCH_FAULT": "train:checkpoint:4"})
    st = status(run)
    assert st["data"] == done_data  # not redone
    assert st["reference"]["computed"] == 0, "the resumed reference stage recomputed cached log-probs"
    assert "train" not in st
    assert [r["step"] for r in curve(run)] == [1, 2, 3, 4]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 2
    assert list((run / "checkpoints").glob(".last.pt.tmp*")), "the fault should leave the temp checkpoint"

    # 4. eval (steps 3-4 retrained from checkpoint 2), killed once its first task has been written
    res = killed_run(kill_on=r"\[1/2\] demo_arith_gen: ")
    st = status(run)
    assert "train" in st and "eval" not in st, res.output[-4000:]
    first_task = (run / "eval" / "demo_arith_gen.json").read_text()
    done_train = st["train"]

    # 5. report, killed as soon as the runs are done and rendering begins
    res = killed_run(kill_on=r"^done rel: ")
    assert "already evaluated, skipping" in res.output
    assert (run / "eval" / "demo_arith_gen.json").read_text() == first_task
    assert status(run)["train"] == done_train

    # 6. a clean rerun: no stage runs again, the report is written
    final = cli(args, tmp_path)
    assert final.returncode == 0, final.output
    assert stage_lines(final.output) == []
    assert (tmp_path / "reports" / "rel" / "report.md").is_file()
    assert status(run)["data"] == done_data and status(run)["train"] == done_train
    for method, d in run_dirs(results).items():
        assert ("eval" if method == "base" else "done") in status(d), d
    dpo_reference = status(run_dirs(results)["dpo"])["reference"]
    assert dpo_reference["computed"] == 0  # DPO's sequences are a subset of KTO's, all cached by then
    steps = [r["step"] for r in curve(run)]
    assert steps == sorted(set(steps)) == [1, 2, 3, 4]  # each step logged exactly once
    assert not [p for p in results.rglob("*") if ".tmp" in p.name], "temp files of killed processes remain"
    all_json_parses(results)
    # the same spec twice, once killed at every stage: bit-identical data, curves, rewards and eval outputs
    assert digest(results) == baseline.digest

"""Run identity: a finished run is reused only when what made it (model hash, data source, world size,
precision) equals what would make it now; anything else is a different run, rerun from scratch. A reused
run's record is never rewritten."""

from __future__ import annotations

import json
import shutil

import pytest

from kto_bench.errors import KtoBenchError
from kto_bench.spec import parse_spec
from tests.reliability.helpers import cli, run_dirs, stage_lines, write_spec

pytestmark = pytest.mark.slow


def snapshot(results) -> dict[str, bytes]:
    return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}


def test_identical_runs_are_reused_without_touching_their_record(baseline, tmp_path):
    shutil.copytree(baseline.results, tmp_path / "results")
    before = snapshot(tmp_path / "results")
    res = cli(["run", str(write_spec(tmp_path)), "--no-report"], tmp_path)
    assert res.returncode == 0, res.output
    assert stage_lines(res.output) == [] and "stale" not in res.output
    after = snapshot(tmp_path / "results")
    assert {k: v for k, v in after.items() if not k.endswith(".lock")} == {
        k: v for k, v in before.items() if not k.endswith(".lock")
    }
    prov = json.loads((run_dirs(tmp_path / "results")["kto"] / "provenance.json").read_text())
    assert prov["identity"]["world_size"] == 1 and prov["identity"]["effective_batch"] == 4
    assert prov["identity"]["precision"]["master_dtype"] == "float32"
    assert prov["identity"]["model_hash"] == prov["model_hash"]
    assert prov["identity"]["data_source"]["source"] == "demo_arith"


def test_a_run_made_by_another_model_is_rerun_not_relabelled(baseline, tmp_path):
    """The fresh-clone failure: a locally built model differs from the committer's. The run that recorded
    another model is rerun, and its provenance then names the model that made its results."""
    shutil.copytree(baseline.results, tmp_path / "results")
    kto = run_dirs(tmp_path / "results")["kto"]
    prov_file = kto / "provenance.json"
    prov = json.loads(prov_file.read_text())
    true_hash = prov["identity"]["model_hash"]
    prov["identity"]["model_hash"] = prov["model_hash"] = "0" * 16  # as if trained from another build
    prov_file.write_text(json.dumps(prov))
    res = cli(["run", str(write_spec(tmp_path)), "--no-report"], tmp_path)
    assert res.returncode == 0, res.output
    assert f"stale {kto.name}: its model_hash differ" in " ".join(res.output.split())
    assert {s for s, r in stage_lines(res.output) if r == kto.name} == {
        "data",
        "reference",
        "train",
        "eval",
        "done",
    }
    assert all(r == kto.name for _, r in stage_lines(res.output))  # the other run is untouched
    prov = json.loads(prov_file.read_text())
    assert prov["model_hash"] == prov["identity"]["model_hash"] == true_hash


def test_requires_is_checked_before_any_work(tmp_path, monkeypatch):
    from kto_bench.runner import check_requires

    spec = parse_spec(
        "name: r\nrequires: [gpu, hub, api-key]\nmodel: {source: hub, name: x}\n"
        "data: {source: local_pairs}\nmethods: [{type: dpo}]\n"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(KtoBenchError) as e:
        check_requires(spec)
    msg = str(e.value)
    assert "nothing was run" in msg and "gpu: no CUDA device" in msg
    assert "hub: HF_HUB_OFFLINE is set" in msg and "api-key: OPENAI_API_KEY is not set" in msg
    res = cli(
        ["run", str(write_spec(tmp_path, spec_text(), "req.yaml"))], tmp_path, env={"HF_HUB_OFFLINE": "1"}
    )
    assert res.returncode == 2 and "requires: not met" in res.output and not (tmp_path / "results").exists()


def spec_text() -> str:
    from tests.reliability.helpers import SPEC

    return SPEC.replace("name: rel\n", "name: req\nrequires: [hub]\n")

"""kto-bench tune: the dev-split procedure's record and its rule (runs faked: the record is what is tested)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kto_bench.spec import expand
from kto_bench.tune import tune

SPECS = Path(__file__).parent / "fixtures" / "specs"


@pytest.mark.parametrize(
    ("scores", "chosen"),
    [
        (
            {(1e-4, "kto"): 0.5, (1e-4, "dpo"): 0.3, (1e-3, "kto"): 0.45, (1e-3, "dpo"): 0.4},
            1e-3,
        ),  # best mean
        (
            {(1e-4, "kto"): 0.4, (1e-4, "dpo"): 0.4, (1e-3, "kto"): 0.5, (1e-3, "dpo"): 0.3},
            1e-4,
        ),  # tie: smaller
    ],
)
def test_tune_trains_each_candidate_on_the_dev_split_and_records_the_choice(
    tmp_path, monkeypatch, scores, chosen
):
    seen = {}

    def fake_run(spec, results_root, **_):
        seen["spec"] = spec
        for run in expand(spec):
            d = results_root / spec.name / run.run_id / "eval"
            d.mkdir(parents=True)
            value = scores[(run.training.lr, run.method.name)]
            metrics = [{"metric": "exact_match,strict-match", "value": value, "n": 16}]
            (d / "demo_arith_dev.json").write_text(json.dumps({"metrics": metrics}))
        base = results_root / spec.name / "base-x" / "eval"
        base.mkdir(parents=True)
        metrics = [{"metric": "exact_match,strict-match", "value": 0.1, "n": 16}]
        (base / "demo_arith_dev.json").write_text(json.dumps({"metrics": metrics}))

    monkeypatch.setattr("kto_bench.runner.run_experiment", fake_run)
    record = tune(SPECS / "tiny.yaml", "training.lr", [1e-4, 1e-3], tmp_path)
    spec = seen["spec"]
    # one seed, no noise, full data, only the dev task; every method at every candidate
    assert spec.name == "tiny-tuning" and spec.seeds == [1] and spec.corruption.flip_rate == 0.0
    assert [t.name for t in spec.evaluation.tasks] == ["demo_arith_dev"]
    assert len(expand(spec)) == 4
    assert json.loads((tmp_path / "tiny" / "tuning.json").read_text()) == record
    assert (
        record["split"] == "dev"
        and record["n_items"] == 16
        and record["metric"] == "exact_match,strict-match"
    )
    assert record["chosen"] == {"training.lr": chosen} and record["base_score"] == 0.1
    assert {(c["method"], c["params"]["training.lr"], c["score"]) for c in record["candidates"]} == {
        (m, lr, s) for (lr, m), s in scores.items()
    }
    assert (
        record["command"].startswith("python -m kto_bench tune")
        and "--values 0.0001,0.001" in record["command"]
    )
    assert record["procedure"] and record["rule"]

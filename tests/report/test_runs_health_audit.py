"""Which runs a report compares (the spec's runs now, one base per model), the "did it train?" health
check, the matched-settings audit with its confounds, and the hyperparameter-selection section."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from kto_bench.errors import StoreError
from kto_bench.report import render_report
from kto_bench.report.aggregate import load_experiment
from kto_bench.report.audit import audit_table, confounds, method_audit_table
from kto_bench.report.headline import headline_table
from kto_bench.report.health import health_checks, reward_accuracy, run_health, untrained_runs
from kto_bench.spec import ReportSpec
from tests.report.conftest import SEEDS, ResultsBuilder, build

CLEAN = {"corruption.flip_rate": 0.0}
NOISY = {"corruption.flip_rate": 0.2}


def ability(method: str, grid: dict) -> float:
    return {"dpo": 0.5, "kto": 0.6}[method] - grid.get("corruption.flip_rate", 0.0)


# ---------------------------------------------------------------------------------------------- which runs


def test_only_the_runs_the_spec_resolves_to_are_compared(tmp_path):
    root = build(tmp_path / "exp", ability, [CLEAN, NOISY])
    current = sorted(p.name for p in root.iterdir() if "flip_rate0.0" in p.name)
    stale = sorted(p.name for p in root.iterdir() if "flip_rate0.2" in p.name)
    missing = "kto-9-not-run-yet"
    exp = load_experiment(root, run_ids=[*current, missing])
    assert sorted(r.run_id for r in exp.trained) == current
    assert exp.stale == stale and len(stale) == 6
    assert any(missing in i and "no results yet" in i for i in exp.issues)
    out = tmp_path / "out"
    render_report(root, out, ReportSpec(), "name: exp\n", "exp", [*current, missing])
    headline = (out / "tables" / "headline.md").read_text()
    assert "flip_rate=0.2" not in headline and "flip_rate" not in exp.varying
    md = (out / "report.md").read_text()
    assert "- **not compared**: " + "; ".join(stale) in md
    assert "6 result folders are not part of this comparison" in md
    # without run ids (an ad-hoc store) every folder is a run of it
    assert len(load_experiment(root).trained) == 12


def test_trained_runs_from_different_base_models_are_an_error_naming_them(tmp_path):
    b = ResultsBuilder(tmp_path / "mixed")
    b.base()
    dpo = b.run("dpo", 0, CLEAN, 0.5)
    kto = b.run("kto", 0, CLEAN, 0.6, model_hash="x" * 64)
    with pytest.raises(StoreError, match="different base models") as e:
        load_experiment(tmp_path / "mixed")
    assert dpo.name in str(e.value) and kto.name in str(e.value) and "xxxxxxxxxxxx" in str(e.value)
    # the spec resolving to only one of them makes a valid (one-model) report
    assert load_experiment(tmp_path / "mixed", run_ids=[dpo.name]).bases[0].run_id == "base-tiny"


def test_the_base_row_is_the_runs_own_base_and_there_is_only_one(tmp_path):
    b = ResultsBuilder(tmp_path / "exp")
    b.base(0.9, name="base-aaaa-other", model_hash="y" * 64)  # another model's evaluation, sorted first
    b.base(0.3)  # base-tiny, the runs' model
    b.base(0.3, name="base-zzzz-nohash", model_hash="z" * 64)
    for s in SEEDS:
        b.run("dpo", s, CLEAN, 0.5)
        b.run("kto", s, CLEAN, 0.6)
    exp = load_experiment(tmp_path / "exp")
    assert [r.run_id for r in exp.bases] == ["base-tiny"]
    assert all(exp.base_for(r).run_id == "base-tiny" for r in exp.trained)
    assert [s.split(" ")[0] for s in exp.stale] == ["base-aaaa-other", "base-zzzz-nohash"]
    table = headline_table(exp, 0.05)
    assert [row[0] for row in table.rows if row[0].startswith("base")] == ["base"]


def test_a_model_sweep_gets_one_base_row_per_model(tmp_path):
    b = ResultsBuilder(tmp_path / "scale")
    b.base(0.2, name="base-small", model_hash="s" * 64)
    b.base(0.4, name="base-large", model_hash="l" * 64)
    for s in SEEDS:
        for size, h in (("small", "s"), ("large", "l")):
            grid = {"model.name": size}
            b.run("dpo", s, grid, 0.5, model_hash=h * 64)
            b.run("kto", s, grid, 0.6, model_hash=h * 64)
    exp = load_experiment(tmp_path / "scale")
    assert sorted(r.run_id for r in exp.bases) == ["base-large", "base-small"]
    for r in exp.trained:
        assert exp.base_for(r).run_id == f"base-{r.grid['model.name']}"
    labels = [row[0] for row in headline_table(exp, 0.05).rows if row[0].startswith("base")]
    assert labels == ["base (name=large)", "base (name=small)"]
    out = tmp_path / "out"
    render_report(tmp_path / "scale", out, ReportSpec(), "name: scale\n", "scale")
    forest = (out / "tables" / "forest.csv").read_text()
    # planted: the large model's base solves 40%, the small one's 20%; KTO 60% at both sizes
    kto_base = {
        line.split(",")[1]: float(line.split(",")[8])
        for line in forest.splitlines()
        if line.startswith("KTO − base") and ",demo_arith_gen," in line
    }
    assert kto_base["name=large"] == pytest.approx(0.2, abs=0.08)
    assert kto_base["name=small"] == pytest.approx(0.4, abs=0.08)
    # one size mixing two models is still an error
    b.run("kto", 9, {"model.name": "small"}, 0.6, model_hash="l" * 64)
    with pytest.raises(StoreError, match="at name=small"):
        load_experiment(tmp_path / "scale")


# ---------------------------------------------------------------------------------------------- health


def test_reward_accuracy_is_the_auc_with_ties_half():
    acc, se = reward_accuracy(np.array([1.0, 2.0]), np.array([0.0, 3.0]))
    assert acc == 0.5 and se == pytest.approx(math.sqrt(5 / 48))
    assert reward_accuracy(np.array([1.0, 1.0]), np.array([1.0, 0.0]))[0] == 0.75
    assert reward_accuracy(np.array([2.0]), np.array([]) + 0.0) is None


def _untrained_copy_of_base(b: ResultsBuilder, method: str, seed: int, grid: dict):
    """A run whose answers are the base's and whose rewards are all zero: it did not move."""
    d = b.run(method, seed, grid, 0.5)
    shutil.rmtree(d / "eval")
    shutil.copytree(b.root / "base-tiny" / "eval", d / "eval")
    rows = [{"seq": i, "desirable": i % 2 == 0, "reward": 0.0} for i in range(100)]
    (d / "rewards.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_health_check_flags_a_run_that_did_not_move(tmp_path):
    b = ResultsBuilder(tmp_path / "exp")
    b.base(0.3)
    for s in SEEDS:
        b.run("dpo", s, CLEAN, 0.5)
    still = _untrained_copy_of_base(b, "kto", 0, CLEAN)
    moved = b.run("kto", 1, CLEAN, 0.6)
    exp = load_experiment(tmp_path / "exp")
    checks = {h.run_id: h for h in health_checks(exp)}
    h = checks[still.name]
    assert (h.changed, h.compared) == (0, 2 * 200) and h.reward_acc == 0.5  # two tasks, 200 items each
    assert h.dlogp_desirable == 0.0 and h.verdict == "did not move" and "0 of 400 answers changed" in h.reason
    ok = checks[moved.name]
    # planted: the run solves items up to ability 0.6, the base up to 0.3: about 30% of answers change
    assert 0.2 < ok.changed_fraction < 0.4 and ok.reward_acc > 0.6 and ok.verdict == "trained"
    assert ok.dlogp_desirable > 0 > ok.dlogp_undesirable  # rewards ~ N(±0.5) / β 0.1
    assert untrained_runs(list(checks.values())) == {still.name}
    out = tmp_path / "out"
    render_report(tmp_path / "exp", out, ReportSpec(), "name: exp\n", "exp")
    md = (out / "report.md").read_text()
    assert f"1 of 5 runs did not move from their base model: {still.name}" in md
    assert f"| {still.name} | kto | 0 |" in md and "did not move: 0 of 400 answers changed" in md


def test_health_check_with_one_signal_and_with_none(tmp_path):
    b = ResultsBuilder(tmp_path / "exp")
    b.base(0.3)
    d = _untrained_copy_of_base(b, "kto", 0, CLEAN)
    (d / "rewards.jsonl").unlink()  # only the answers are left: they alone decide
    e = b.run("dpo", 0, CLEAN, 0.5)
    for f in (e / "eval").glob("*.samples.jsonl"):
        f.unlink()
    (e / "rewards.jsonl").unlink()
    (e / "metrics.jsonl").unlink()
    exp = load_experiment(tmp_path / "exp")
    assert run_health(exp, exp.run(d.name)).verdict == "did not move"
    nothing = run_health(exp, exp.run(e.name))
    assert nothing.verdict == "unknown" and nothing.reward_acc is None and nothing.compared is None


def test_log_prob_movement_falls_back_to_the_training_log(tmp_path):
    b = ResultsBuilder(tmp_path / "exp")
    b.base()
    d = b.run("kto", 0, CLEAN, 0.6)
    (d / "rewards.jsonl").unlink()
    exp = load_experiment(tmp_path / "exp")
    h = run_health(exp, exp.run(d.name))
    # metrics.jsonl: rewards ±0.02·step over 20 steps, last tenth = steps 19-20, β = 0.1
    assert h.logp_source == "training log" and h.dlogp_desirable == pytest.approx(0.39 / 0.1)
    assert h.dlogp_undesirable == pytest.approx(-0.39 / 0.1) and h.reward_acc is None


# ---------------------------------------------------------------------------------------------- audit


PRECISION = {"mode": "bf16", "master_dtype": "float32", "compute_dtype": "bfloat16"}


def _budget_store(tmp_path, kto_steps: int = 87, world: tuple[int, int] = (1, 1), kto_tokens: int = 20000):
    b = ResultsBuilder(tmp_path / "exp")
    b.base()
    for s in SEEDS:
        common = {"effective_batch": 16, "precision": PRECISION, "budget": {"rule": "epochs", "value": 1}}
        b.run("dpo", s, CLEAN, 0.5, summary={"steps": 43, "sequences": 688, "world_size": world[0], **common})
        b.run("kto", s, CLEAN, 0.6, summary={"steps": kto_steps, "sequences": 688, "world_size": world[1],
                                             "tokens": kto_tokens, **common})  # fmt: skip
    return load_experiment(tmp_path / "exp")


def test_audit_names_every_differing_column_and_states_the_confound(tmp_path):
    exp = _budget_store(tmp_path)
    table = audit_table(exp, ("kto", "dpo"))
    notes = " ".join(table.notes)
    assert "differ only in" not in notes and "differ in: method, steps." in notes
    assert (
        "Confound: KTO took 87 optimizer steps, DPO 43 (at the only grid point, seed 0; 3 of 3 compared groups "
        "differ): a KTO − DPO difference is confounded with the number of optimizer updates." in table.notes
    )
    assert not notes.startswith("WARNING") and "WARNING" not in notes  # steps are the budget's outcome
    row = dict(zip(table.columns, table.rows[-1], strict=True))
    assert (row["method"], row["steps"], row["sequences"], row["world size"]) == ("kto", "87", "688", "1")
    assert row["precision"] == "bf16 (master float32, compute bfloat16)" and row["budget"] == "epochs=1"
    assert row["eff. batch"] == "16"
    per_method = method_audit_table(exp, ("kto", "dpo"))
    assert per_method.columns == ["method", "runs", "steps", "sequences", "tokens", "eff. batch", "world size",
                                  "precision", "budget"]  # fmt: skip
    assert [r[:4] for r in per_method.rows] == [["dpo", "3", "43", "688"], ["kto", "3", "87", "688"]]
    assert any(n.startswith("Confound: KTO took 87 optimizer steps, DPO 43") for n in per_method.notes)


def test_audit_warns_when_world_size_differs_and_is_quiet_when_matched(tmp_path):
    exp = _budget_store(tmp_path / "a", world=(1, 4))
    notes = audit_table(exp).notes
    assert notes[0].startswith("WARNING") and "world size" in notes[0]
    assert any("DPO ran on 1 processes, KTO 4" in c and "world size" in c for c in confounds(exp))
    matched = _budget_store(tmp_path / "b", kto_steps=43)
    assert confounds(matched) == []
    assert (
        "Runs compared at the same grid point and seed differ only in: method." in audit_table(matched).notes
    )
    assert method_audit_table(matched).notes[-1].startswith("No confound")
    # an epoch's last batch moves tokens by a few: named in the audit, matched within 1%, not a confound
    near = _budget_store(tmp_path / "c", kto_steps=43, kto_tokens=20004)
    notes = audit_table(near).notes
    assert confounds(near) == [] and "differ in: method, tokens." in notes[0] and "WARNING" not in notes[0]
    assert (
        "tokens differ between compared runs by at most 0.02% (within 1%): matched, not a confound." in notes
    )
    far = _budget_store(tmp_path / "d", kto_steps=43, kto_tokens=20400)
    assert [c.split(" (")[0] for c in confounds(far)] == ["DPO trained on 20000 tokens, KTO 20400"]


# ---------------------------------------------------------------------------------------------- tuning


def test_hyperparameter_selection_is_rendered_when_recorded(tmp_path):
    root = build(tmp_path / "exp", ability, [CLEAN])
    tuning = {
        "procedure": "grid search over lr, one seed, flip 0",
        "command": "kto-bench tune experiments/demo.yaml",
        "split": "dev",
        "n_items": 300,
        "metric": "demo_arith_gen exact_match",
        "candidates": [
            {"method": "kto", "params": {"training.lr": 2e-5}, "score": 0.71},
            {"method": "kto", "params": {"training.lr": 5e-6}, "score": 0.64},
            {"method": "dpo", "params": {"training.lr": 2e-5}, "score": 0.66},
        ],
        "chosen": {"kto": {"training.lr": 2e-5}, "dpo": {"training.lr": 2e-5}},
        "rule": "best dev score per method",
    }
    (root / "tuning.json").write_text(json.dumps(tuning))
    out = tmp_path / "out"
    render_report(root, out, ReportSpec(), "name: exp\n", "exp")
    md = (out / "tables" / "tuning.md").read_text()
    assert '| kto | {"training.lr": 2e-05} | 0.71 | yes |' in md
    assert '| kto | {"training.lr": 5e-06} | 0.64 |  |' in md
    assert "on dev (300 items), disjoint from the reported items" in md and "kto-bench tune" in md
    assert "## Hyperparameter selection" in (out / "report.md").read_text()


def test_cli_report_compares_what_the_spec_resolves_to_now(tmp_path):
    from typer.testing import CliRunner

    from kto_bench.cli import app
    from kto_bench.spec import expand, load_spec

    text = Path("experiments/demo.yaml").read_text()
    spec_path = tmp_path / "demo.yaml"
    spec_path.write_text(text.split("\ngrid:")[0] + "\n")  # no grid: one point, 3 seeds, two methods
    spec = load_spec(spec_path)
    b = ResultsBuilder(tmp_path / "results" / spec.name)
    b.base()
    ids = []
    for run in expand(spec):
        ids.append(run.run_id)
        b.run(run.method.name, run.seed, {}, 0.6 if run.method.name == "kto" else 0.5, run_id=run.run_id)
    old = b.run("kto", 7, {}, 0.9, run_id="kto-0123456789")  # left over from an earlier spec
    args = [
        "report",
        str(spec_path),
        "--results",
        str(tmp_path / "results"),
        "--reports",
        str(tmp_path / "reports"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "reports" / spec.name / "report.md").read_text()
    assert len(ids) == 6 and all(i in md for i in ids)
    assert f"- **not compared**: {old.name}" in md
    tables = tmp_path / "reports" / spec.name / "tables"
    assert (
        old.name not in (tables / "audit.md").read_text()
        and old.name not in (tables / "health.csv").read_text()
    )
    headline = (tables / "headline.md").read_text()
    assert "| +KTO | " in headline and "n=4" not in headline  # the old seed-7 run is not averaged in

import json
import math

import pandas as pd
import pytest
from pydantic import ValidationError

from kto_bench.errors import KtoBenchError, StoreError
from kto_bench.report.aggregate import load_experiment, training_summary
from kto_bench.report.audit import audit_table
from kto_bench.report.claims import CLAIMS, ClaimContext, evaluate_claims
from kto_bench.report.claims_table import claim_sentence, claims_table, verdict_text
from kto_bench.report.headline import format_cell, headline_table, summarize_cell
from kto_bench.report.paired import paired_table
from kto_bench.report.render import build_tables
from kto_bench.report.stats import holm, wilson
from kto_bench.report.training import training_table
from kto_bench.report.writers import to_latex, to_markdown
from kto_bench.spec import ReportSpec
from tests.report.conftest import SEEDS, ResultsBuilder, build

CLEAN = [{"corruption.flip_rate": 0.0}]


def planted(tmp_path, delta: float, name: str = "exp"):
    """DPO at 50 points, KTO at 50 + 100*delta, on the same 200 items, 3 seeds each."""
    return load_experiment(build(tmp_path / name, lambda m, g: 0.5 + (delta if m == "kto" else 0.0), CLEAN))


def t975_df2() -> float:
    p = 0.975
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))  # closed form of the t quantile at df = 2


# ---------------------------------------------------------------------------------------------- aggregate


def test_tidy_frame_has_every_run_metric_and_base_rows(tmp_path):
    exp = planted(tmp_path, 0.1)
    df = exp.tidy
    for col in ("run_id", "method", "seed", "corruption.flip_rate", "task", "metric", "value", "stderr", "n"):
        assert col in df.columns
    # 6 trained runs + base, 3 metrics each (gsm8k strict + flexible, demo exact_match)
    assert len(df) == 7 * 3
    assert set(df["method"]) == {"base", "dpo", "kto"}
    assert df.loc[df["method"] == "base", "run_id"].unique().tolist() == ["base-tiny"]
    assert (df.loc[df["method"] == "kto", "n"] == 200).all()


def test_missing_results_dir_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="kto-bench run"):
        load_experiment(tmp_path / "nope")


def test_training_summary_final_and_best(tmp_path):
    exp = planted(tmp_path, 0.1)
    run = next(r for r in exp.trained if r.method == "dpo" and r.seed == 1)
    s = training_summary(exp.metrics(run.run_id), run.train_summary)
    assert s["steps"] == 20 and s["tokens"] == 20000 and s["wall_s"] == 10.0
    assert s["final_loss"] == pytest.approx(0.7 - 0.2 + 0.001)
    assert s["best_loss"] == pytest.approx(0.501) and s["best_loss_step"] == 20
    assert s["final_margin"] == pytest.approx(0.8)  # DPO's chosen/rejected read as desirable/undesirable
    # without train_summary.json the metrics stand in
    s2 = training_summary(exp.metrics(run.run_id), None)
    assert s2["steps"] == 20 and s2["tokens"] == 20000 and s2["wall_s"] == pytest.approx(10.0)


# ---------------------------------------------------------------------------------------------- headline


def test_headline_means_and_cis_match_hand_computation(tmp_path):
    exp = planted(tmp_path, 0.1)
    table = headline_table(exp, 0.05)
    values = []
    for r in exp.trained:
        if r.method == "kto":
            res = json.loads((r.path / "eval" / "demo_arith_gen.json").read_text())
            values.append(res["metrics"][0]["value"])
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = t975_df2() * sd / math.sqrt(3)
    row = next(i for i, r in enumerate(table.rows) if r[0] == "+KTO")
    col = table.columns.index("Demo arith (gen) EM")
    assert table.rows[row][col] == f"{100 * mean:.1f} ± {100 * half:.1f} (n=3)"
    data = table.data.set_index(["model", "task", "metric"]).loc[("+KTO", "demo_arith_gen", "exact_match")]
    assert data["mean"] == pytest.approx(mean) and data["ci_half"] == pytest.approx(half)
    assert data["n_seeds"] == 3
    assert [r[0] for r in table.rows] == ["base", "+DPO", "+KTO"]  # the paper's row order
    assert table.columns[1:3] == ["GSM8K CoT EM strict-match", "GSM8K CoT EM flexible-extract"]
    base = table.rows[0][col]
    assert "n=1, no CI" in base and "item s.e." in base


def test_bold_only_where_the_interval_separates(tmp_path):
    clear = headline_table(planted(tmp_path, 0.1, "clear"), 0.05)
    kto_row = next(i for i, r in enumerate(clear.rows) if r[0] == "+KTO")
    assert {(kto_row, j) for j in range(1, 4)} <= clear.bold
    assert "**" in to_markdown(clear) and "\\textbf{" in to_latex(clear)
    null = headline_table(planted(tmp_path, 0.0, "null"), 0.05)
    assert null.bold == set() and "**" not in to_markdown(null)


def test_paired_table_holm_and_significance(tmp_path):
    table = paired_table(planted(tmp_path, 0.2), ("kto", "dpo"), 0.05)
    kd = [r for r in table.rows if r[0] == "kto − dpo"]
    assert len(kd) == 3 and all(r[-1] == "yes" and r[5] == "seeds × items, seed-paired" for r in kd)
    assert all(float(r[3]) == pytest.approx(20, abs=4) for r in kd)  # planted +20 points
    df = table.data[table.data["contrast"] == "kto − dpo"]
    # Holm over the 3 benchmarks of one contrast and grid point
    assert df["p_holm"].tolist() == pytest.approx(holm(df["p"].tolist()))
    assert max(df["p_holm"]) > max(df["p"])
    assert {r[0] for r in table.rows} == {"kto − dpo", "kto − base", "dpo − base"}


# ---------------------------------------------------------------------------------------------- claims


def one(name: str, ctx: ClaimContext):
    (result,) = evaluate_claims([name], ctx)
    return result


@pytest.mark.parametrize(
    ("delta", "expected"), [(0.1, "reproduced"), (0.0, "inconclusive"), (-0.1, "contradicted")]
)
def test_planted_effects_give_the_right_verdict(tmp_path, delta, expected):
    exp = planted(tmp_path, delta)
    ctx = ClaimContext(exp, alpha=0.05)
    for name in ("demo_kto_vs_dpo", "table2_gsm8k"):
        result = one(name, ctx)
        assert result.verdict == expected, (name, result.measurement)
        iv = result.measurement.interval
        assert iv.estimate == pytest.approx(delta, abs=0.04) and iv.lo <= iv.estimate <= iv.hi
        assert iv.n_items == 200 and iv.n_seeds == (3, 3) and iv.interval == "seeds × items, seed-paired"
        assert result.p_holm == pytest.approx(iv.p)  # one test: Holm changes nothing
    gsm = one("table2_gsm8k", ctx)
    assert gsm.statement == "KTO ≥ DPO on GSM8K (8-shot CoT, strict-match) — tiny"  # the model actually run
    assert (
        "Zephyr" in claims_table([gsm], 0.05).rows[0][2]
    )  # the paper's setting stays with the paper's number
    if expected == "reproduced":
        assert verdict_text(gsm).startswith(
            "reproduced: sign; size +"
        ) and "vs paper +13.5 (consistent)" in verdict_text(gsm)


def test_holm_across_the_claims_of_a_report(tmp_path):
    ctx = ClaimContext(planted(tmp_path, 0.1))
    results = evaluate_claims(["demo_kto_vs_dpo", "table2_gsm8k"], ctx)
    raw = [r.measurement.interval.p for r in results]
    assert [r.p_holm for r in results] == pytest.approx(holm(raw))
    table = claims_table(results, 0.05)
    assert any("Holm's correction across the 2 seeded tests" in n for n in table.notes)


def test_one_seed_is_item_level_only(tmp_path):
    b = ResultsBuilder(tmp_path / "one")
    b.base()
    for m, ability in (("dpo", 0.4), ("kto", 0.6)):
        b.run(m, 0, CLEAN[0], ability)
    r = one("table2_gsm8k", ClaimContext(load_experiment(tmp_path / "one")))
    assert r.verdict == "item-level only" and r.measurement.interval.item_level_only
    assert math.isnan(r.p_holm)  # no sign verdict, so not in the Holm family
    assert "item-level only" in claim_sentence(r)


def test_untrained_runs_give_not_trained(tmp_path):
    exp = planted(tmp_path, 0.1)
    kto = next(r.run_id for r in exp.trained if r.method == "kto")
    r = one("demo_kto_vs_dpo", ClaimContext(exp, untrained=frozenset({kto})))
    assert r.verdict == "not trained" and kto in r.reason


def test_claims_without_results_are_missing(tmp_path):
    exp = planted(tmp_path, 0.1)
    results = {r.claim.id: r for r in evaluate_claims([], ClaimContext(exp))}
    assert set(results) == set(CLAIMS.names())  # [] means every registered claim
    assert (
        results["table2_mmlu"].verdict == "missing" and "no results of mmlu" in results["table2_mmlu"].reason
    )
    assert results["demo_noise_robustness"].verdict == "missing"
    assert "does not vary" in results["demo_noise_robustness"].reason
    assert results["table2_one_y_per_x"].verdict == "missing"


@pytest.mark.parametrize(("kto_drop", "expected"), [(0.05, "reproduced"), (0.4, "contradicted")])
def test_noise_robustness_claim(tmp_path, kto_drop, expected):
    drops = {"dpo": 0.2, "kto": kto_drop}
    root = build(
        tmp_path / "noise",
        lambda m, g: 0.6 - drops[m] * g["corruption.flip_rate"] / 0.2,
        [{"corruption.flip_rate": f} for f in (0.0, 0.1, 0.2)],
    )
    exp = load_experiment(root)
    assert exp.varying == ["corruption.flip_rate"] and exp.reference_point() == "flip_rate=0.0"
    r = one("demo_noise_robustness", ClaimContext(exp))
    assert r.verdict == expected
    assert r.measurement.estimate == pytest.approx(0.2 - kto_drop, abs=0.05)


def test_imbalance_claim_needs_a_win_rate(tmp_path):
    b = ResultsBuilder(tmp_path / "imb")
    b.base()
    for s in SEEDS:
        b.run("dpo", s, {"corruption.desirable_fraction": 1.0}, 0.5)
        for frac, ability in ((1.0, 0.65), (0.5, 0.62), (0.1, 0.6)):
            b.run("kto", s, {"corruption.desirable_fraction": frac}, ability)
    exp = load_experiment(tmp_path / "imb")
    r = one("imbalance_90pct", ClaimContext(exp))
    assert r.verdict == "missing" and "alpaca_eval" in r.reason  # no silent fallback to GSM8K


def test_scale_sweep_is_judged_per_model_against_its_own_base(tmp_path):
    b = ResultsBuilder(tmp_path / "scale")
    sizes = {"small": (0.3, 0.0), "large": (0.5, 0.15)}  # (base ability, KTO − DPO)
    for name, (base_ability, delta) in sizes.items():
        b.base(base_ability)
        (tmp_path / "scale" / "base-tiny").rename(tmp_path / "scale" / f"base-{name}")
        for s in SEEDS:
            grid = {"model.name": name}
            for m, ability in (("dpo", base_ability + 0.1), ("kto", base_ability + 0.1 + delta)):
                d = b.run(m, s, grid, ability, model_hash=name * 8)
                spec = json.loads((d / "run.json").read_text())
                spec["spec"]["model"]["name"] = name
                (d / "run.json").write_text(json.dumps(spec))
        (tmp_path / "scale" / f"base-{name}" / "provenance.json").write_text(
            json.dumps({"model_hash": name * 8})
        )
    exp = load_experiment(tmp_path / "scale")
    kd = {r.group: r for r in evaluate_claims(["table2_gsm8k"], ClaimContext(exp))}
    assert set(kd) == {"name=small", "name=large"}
    assert kd["name=large"].verdict == "reproduced" and kd["name=small"].verdict == "inconclusive"
    assert kd["name=large"].statement.endswith("— large")
    vs_base = {r.group: r for r in evaluate_claims(["table2_kto_vs_sft_gsm8k"], ClaimContext(exp))}
    for name, (_, delta) in sizes.items():  # each size against its own base: +10 (+15) points
        assert vs_base[f"name={name}"].measurement.estimate == pytest.approx(0.1 + delta, abs=0.05)
        assert vs_base[f"name={name}"].measurement.seeds == "kto: 3, base: fixed"
        assert vs_base[f"name={name}"].measurement.interval.interval == "seeds × items, vs a fixed run"


# ---------------------------------------------------------------------------------------------- audit/training


def test_audit_says_only_method_differs_and_warns_otherwise(tmp_path):
    exp = planted(tmp_path, 0.1)
    table = audit_table(exp)
    assert any("differ only in: method." in n for n in table.notes)
    assert len(table.rows) == 7 and table.rows[0][1] == "base"
    row = dict(zip(table.columns, table.rows[1], strict=True))
    assert (
        row["eff. batch"] == "16" and row["λD/λU"] == "1.000/1.000" and row["class counts"] == "D=100, U=100"
    )
    assert row["stages"] == "done"
    b = ResultsBuilder(tmp_path / "bad")
    b.run("dpo", 0, CLEAN[0], 0.5)
    b.run("kto", 0, CLEAN[0], 0.6, model_hash="x" * 64)
    with pytest.raises(StoreError, match="different base models"):  # never one comparison of two models
        load_experiment(tmp_path / "bad")


def test_training_table_marks_missing_metrics(tmp_path):
    exp = planted(tmp_path, 0.1)
    run = exp.trained[0]
    (run.path / "metrics.jsonl").unlink()
    (run.path / "train_summary.json").unlink()
    table = training_table(load_experiment(tmp_path / "exp"))
    row = next(r for r in table.rows if r[0] == run.run_id)
    assert row[4:] == ["missing"] * 10
    assert isinstance(table.data, pd.DataFrame) and len(table.data) == 6


# ---------------------------------------------------------------------------------------------- spec


def test_report_spec_defaults_and_validation():
    spec = ReportSpec()
    assert spec.tables == ["headline", "claims", "paired", "audit", "training"]
    assert spec.plots == ["bars", "noise", "imbalance", "training", "rewards"]
    assert spec.claims == [] and spec.alpha == 0.05 and spec.compare == ("kto", "dpo")
    assert ReportSpec(claims=["table2_gsm8k"]).claims == ["table2_gsm8k"]
    with pytest.raises(ValidationError, match="did you mean 'noise'"):
        ReportSpec(plots=["nois"])
    with pytest.raises(ValidationError, match="unknown claim"):
        ReportSpec(claims=["table9"])
    with pytest.raises(ValidationError, match="extra"):
        ReportSpec(colour="red")
    with pytest.raises(ValidationError, match="two different methods"):
        ReportSpec(compare=["kto", "kto"])
    assert ReportSpec.model_validate(ReportSpec(compare=["ipo", "dpo"]).model_dump(mode="json")).compare == (
        "ipo",
        "dpo",
    )
    with pytest.raises(KtoBenchError, match="did you mean"):
        CLAIMS.get("table2_gsm8")


def test_single_seed_win_rate_gets_a_wilson_interval():
    cell = summarize_cell([0.3], [0.04], [100], "length_controlled_winrate", 0.05)
    _, lo, hi = wilson(30, 100)
    assert cell.kind == "wilson" and (cell.lo, cell.hi) == pytest.approx((lo, hi))
    assert format_cell(cell, 100.0) == f"30.0 [{100 * lo:.1f}, {100 * hi:.1f}] (n=1, Wilson)"
    percent = summarize_cell([30.0], [4.0], [100], "win_rate", 0.05)  # alpaca_eval reports percent
    assert (percent.lo, percent.hi) == pytest.approx((100 * lo, 100 * hi))
    assert summarize_cell([0.3], [0.04], [100], "acc,none", 0.05).kind == "none"


def test_named_tables_and_plots_match_their_builders(tmp_path):
    from kto_bench.report import plots
    from kto_bench.report.registries import PLOTS, TABLES

    # the registries are the only lists: the spec's defaults and its validation read them
    assert ReportSpec().tables == TABLES.in_order() and ReportSpec().plots == PLOTS.in_order()
    assert set(TABLES.names()) == {"headline", "claims", "paired", "audit", "training"}
    assert set(PLOTS.names()) == {"bars", "noise", "imbalance", "training", "rewards"}
    for name in PLOTS:  # every lazy entry resolves to the plot function of that name
        assert PLOTS.get(name) is getattr(plots, f"plot_{name}")
    with pytest.raises(ValidationError, match="did you mean 'imbalance'"):
        ReportSpec(plots=["imbalanse"])
    (tmp_path / "empty").mkdir()
    tables = build_tables(load_experiment(tmp_path / "empty"), ReportSpec())
    assert [t.name for t in tables] == TABLES.in_order()


def test_listing_report_names_imports_no_pandas_or_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys; from kto_bench.report.registries import PLOTS, TABLES; "
        "from kto_bench.spec import ReportSpec; ReportSpec(tables=['audit'], plots=['noise']); "
        "print(TABLES.names(), PLOTS.names(), [m for m in ('pandas', 'matplotlib', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out


def test_report_column_order_names_registered_tasks():
    from kto_bench.eval.tasks import TASKS
    from kto_bench.report.labels import COLUMN_ORDER, column_label

    assert set(COLUMN_ORDER) <= set(TASKS.names())
    assert column_label("gsm8k_cot", "exact_match,strict-match") == "GSM8K CoT EM strict-match"
    assert column_label("demo_arith_dev", "exact_match") == "demo_arith_dev EM"  # unlabelled: its name


# ---------------------------------------------------------------------------------------------- spec: claims vs tasks

SPEC = """\
name: t
model: {source: hub, name: some/model}
data: {source: local_pairs, path: x.jsonl}
methods:
  - {type: kto}
  - {type: dpo}
seeds: [1, 2]
evaluation:
  tasks:
    - {name: gsm8k_cot}
"""


def test_validate_rejects_claims_the_spec_cannot_measure():
    from kto_bench.errors import SpecError
    from kto_bench.spec import parse_spec

    assert parse_spec(SPEC + "report: {claims: [table2_gsm8k]}\n", "s.yaml").report.claims == ["table2_gsm8k"]
    with pytest.raises(SpecError, match=r"s\.yaml:14: report\.claims: claim 'table2_mmlu' is measured on mmlu.*add "
                                        r"`- \{name: mmlu\}` to evaluation.tasks or remove the claim"):  # fmt: skip
        parse_spec(SPEC + "report:\n  claims:\n    - table2_gsm8k\n    - table2_mmlu\n", "s.yaml")
    with pytest.raises(
        SpecError, match="imbalance_90pct' is measured on alpaca_eval"
    ):  # no fallback to GSM8K
        parse_spec(SPEC + "report: {claims: [imbalance_90pct]}\n", "s.yaml")
    judged = SPEC + "    - {name: alpaca_eval}\n  judge: {type: api}\n"
    with pytest.raises(SpecError, match="imbalance_90pct' cannot be measured: no KTO run keeps ≤ 10%"):
        parse_spec(judged + "report: {claims: [imbalance_90pct]}\n", "s.yaml")
    with pytest.raises(SpecError, match="demo_noise_robustness' cannot be measured: .*flip rate 0"):
        parse_spec(SPEC + "report: {claims: [demo_noise_robustness]}\n", "s.yaml")
    parse_spec(SPEC + "grid: {corruption.flip_rate: [0.0, 0.2]}\nreport: {claims: [demo_noise_robustness]}\n")
    with pytest.raises(SpecError, match="evaluate_base: true"):
        parse_spec(
            SPEC.replace("  tasks:", "  evaluate_base: false\n  tasks:")
            + "report: {claims: [table2_kto_vs_sft_gsm8k]}\n"
        )


def test_validate_rejects_a_judge_without_its_task_and_the_task_without_a_judge():
    from kto_bench.errors import SpecError
    from kto_bench.spec import parse_spec

    with pytest.raises(SpecError, match=r"s\.yaml:11: evaluation\.judge: set, but no task uses it"):
        parse_spec(SPEC + "  judge: {type: api}\n", "s.yaml")
    with pytest.raises(SpecError, match="alpaca_eval needs evaluation.judge"):
        parse_spec(SPEC + "    - {name: alpaca_eval}\n", "s.yaml")


def test_every_shipped_spec_validates_with_its_claims():
    from pathlib import Path

    from kto_bench.spec import load_spec

    for path in sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml")):
        spec = load_spec(path)
        tasks = {t.name for t in spec.evaluation.tasks}
        assert all(tasks & set(CLAIMS.get(c).tasks) for c in spec.report.claims), path


def test_contrast_pairs_seeds_only_where_they_are_shared(tmp_path):
    from kto_bench.report.contrasts import contrast

    b = ResultsBuilder(tmp_path / "seeds")
    b.base()
    for m, seeds in (("kto", (0, 1, 2)), ("dpo", (0, 1)), ("sft", (5, 6))):
        for s in seeds:
            b.run(m, s, CLEAN[0], 0.5)
    exp = load_experiment(tmp_path / "seeds")
    runs = {m: [r for r in exp.trained if r.method == m] for m in ("kto", "dpo", "sft")}
    col = ("gsm8k_cot", "exact_match,strict-match")
    shared = contrast(exp, runs["kto"], runs["dpo"], *col)
    assert shared.interval == "seeds × items, seed-paired" and shared.n_seeds == (2, 2)  # seeds 0 and 1
    apart = contrast(exp, runs["kto"], runs["sft"], *col)
    assert apart.interval == "seeds × items, unpaired seeds" and apart.n_seeds == (3, 2)
    one = contrast(exp, runs["kto"][:1], runs["dpo"], *col)
    assert one.item_level_only and one.n_seeds == (1, 2) and one.n_items == 200

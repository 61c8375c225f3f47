"""The registry of paper claims, each measured on an experiment and given a verdict by its CI.

A claim's measure is a linear contrast of per-item scores (paired bootstrap over the common items,
seeds resampled within each side; see `stats.paired_bootstrap`). Runs are taken at the experiment's
reference point (corruption at clean values, see `Experiment.reference_point`) unless the claim is
about a corruption setting, in which case only that field moves. Verdict: "reproduced" when the CI
lies entirely on the claimed side of the threshold, "contradicted" when entirely on the other side,
"inconclusive" otherwise, and "missing" when the results it needs are absent. Each claim is tested
at the report's alpha on its own (no multiplicity correction across claims; the paired table applies
Holm across benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kto_bench.registry import Registry
from kto_bench.report.aggregate import Experiment, Run
from kto_bench.report.stats import align_items, paired_bootstrap, verdict
from kto_bench.report.tables import Table, column_label, group_scores, proportion_scale

GSM8K = (("gsm8k_cot", "gsm8k"), ("exact_match,strict-match", "strict-match"))
MMLU = (("mmlu",), ("acc",))
HUMANEVAL = (("humaneval", "humaneval_instruct"), ("pass@1",))
ALPACA_LC = (("alpaca_eval",), ("length_controlled_winrate", "lc_win_rate", "length_controlled"))
OASST = (("oasst_winrate", "oasst"), ("win_rate",))
DEMO = (("demo_arith_gen", "demo_arith_mc"), ("exact_match", "acc"))
# The score a data-setting claim (imbalance, noise) is judged on: the first of these present.
PRIMARY = (ALPACA_LC, OASST, GSM8K, DEMO)


@dataclass(frozen=True)
class ClaimContext:
    exp: Experiment
    alpha: float = 0.05
    n_boot: int = 2000
    seed: int = 0


@dataclass(frozen=True)
class Measurement:
    estimate: float
    lo: float
    hi: float
    scale: float  # 100 for proportions shown in points
    n: str  # what it rests on: items and seeds per side
    detail: str


Measure = Callable[[ClaimContext], "Measurement | str"]  # a str is the reason it is missing


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    paper: str
    measure: Measure
    direction: str = "greater"
    threshold: float = 0.0


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    verdict: str  # reproduced | contradicted | inconclusive | missing
    measurement: Measurement | None
    reason: str = ""


CLAIMS: Registry[Claim] = Registry("claim")


def evaluate_claim(claim: Claim, ctx: ClaimContext) -> ClaimResult:
    m = claim.measure(ctx)
    if isinstance(m, str):
        return ClaimResult(claim, "missing", None, m)
    return ClaimResult(claim, verdict(m.lo, m.hi, claim.direction, claim.threshold), m)


def evaluate_claims(names: list[str], ctx: ClaimContext) -> list[ClaimResult]:
    """The named claims, or every registered claim when `names` is empty."""
    return [evaluate_claim(CLAIMS.get(n), ctx) for n in (names or CLAIMS.names())]


# ---------------------------------------------------------------------------------------------- helpers


def _matches(metric: str, cand: str, level: int) -> bool:
    base, _, filt = metric.partition(",")
    return [metric == cand, cand in (base, filt), cand in metric][level]


def find_column(exp: Experiment, spec: tuple[tuple[str, ...], tuple[str, ...]]) -> tuple[str, str] | None:
    """The first (task, metric) of the experiment matching the candidates, in priority order."""
    tasks, metrics = spec
    df = exp.tidy
    for task in tasks:
        present = sorted(set(df.loc[df["task"] == task, "metric"]))
        for cand in metrics:
            for level in range(3):
                hit = next((m for m in present if _matches(m, cand, level)), None)
                if hit:
                    return task, hit
    return None


def primary_column(exp: Experiment) -> tuple[str, str] | None:
    return next((c for spec in PRIMARY if (c := find_column(exp, spec))), None)


def measure_contrast(
    ctx: ClaimContext, col: tuple[str, str] | None, terms: list[tuple[float, list[Run], str]]
) -> Measurement | str:
    """sum coef * mean(score of runs) on common items; terms are (coef, runs, name)."""
    if col is None:
        return "no matching task/metric in this experiment"
    for _, runs, name in terms:
        if not runs:
            return f"no runs for {name}"
    groups = [group_scores(ctx.exp, runs, *col) for _, runs, _ in terms]
    for g, (_, _, name) in zip(groups, terms, strict=True):
        if g is None:
            return f"no per-item samples of {column_label(*col)} for {name}"
    items, mats = align_items(groups)  # type: ignore[arg-type]
    if not items:
        return "the compared runs share no evaluation items"
    r = paired_bootstrap(
        [(c, m) for (c, _, _), m in zip(terms, mats, strict=True)],
        n_boot=ctx.n_boot,
        seed=ctx.seed,
        alpha=ctx.alpha,
    )
    seeds = ", ".join(f"{name}: {len(runs)}" for _, runs, name in terms)
    return Measurement(
        r.estimate,
        r.lo,
        r.hi,
        proportion_scale(ctx.exp, col),
        f"{r.n_items} items; seeds {seeds}",
        column_label(*col),
    )


def _versus(plus: str, minus: str, spec, moves: dict[str, Callable[[Any], bool]] | None = None) -> Measure:
    def measure(ctx: ClaimContext) -> Measurement | str:
        col = find_column(ctx.exp, spec) if spec is not None else primary_column(ctx.exp)
        minus_runs = [r for r in ctx.exp.runs if r.is_base][:1] if minus == "base" else ctx.exp.select(minus)
        return measure_contrast(
            ctx, col, [(1.0, ctx.exp.select(plus, moves), plus), (-1.0, minus_runs, minus)]
        )

    return measure


def _add(claim: Claim) -> None:
    CLAIMS.add(claim.id, claim, claim.statement)


# ---------------------------------------------------------------------------------------------- paper


_add(Claim("table2_gsm8k", "KTO ≥ DPO on GSM8K (8-shot CoT, strict-match), Zephyr-SFT on UltraFeedback",
           "KTO 53.5 vs DPO 40.0: +13.5", _versus("kto", "dpo", GSM8K)))  # fmt: skip
_add(Claim("table2_mmlu", "KTO ≥ DPO on MMLU (0-shot)", "58.6 vs 58.2: +0.4", _versus("kto", "dpo", MMLU)))
_add(Claim("table2_humaneval", "KTO ≥ DPO on HumanEval pass@1 (0-shot)", "30.9 vs 30.1: +0.8",
           _versus("kto", "dpo", HUMANEVAL)))  # fmt: skip
_add(Claim("table2_alpacaeval", "KTO ≥ DPO on AlpacaEval 2 (length-controlled win rate)", "12.48 vs 7.79: +4.69",
           _versus("kto", "dpo", ALPACA_LC)))  # fmt: skip
_add(Claim("table2_kto_vs_sft_gsm8k", "KTO improves GSM8K over the SFT base", "53.5 vs 39.0: +14.5",
           _versus("kto", "base", GSM8K)))  # fmt: skip
_add(Claim("table2_one_y_per_x", "KTO with one output per prompt still beats DPO on GSM8K", "50.0 vs 40.0: +10.0",
           _versus("kto", "dpo", GSM8K, {"corruption.one_output_per_prompt": lambda v: v is True})))  # fmt: skip
_add(Claim("oasst_winrate", "KTO's win rate vs the SFT target exceeds DPO's (Mistral-7B, OpenAssistant)",
           "0.652 ± 0.036 vs 0.600 ± 0.037 (90% CI)", _versus("kto", "dpo", OASST)))  # fmt: skip


def _imbalance(ctx: ClaimContext) -> Measurement | str:
    exp, field = ctx.exp, "corruption.desirable_fraction"
    if field not in exp.varying:
        return f"{field} does not vary in this experiment"
    fractions = [r.grid.get(field) for r in exp.trained if r.method == "kto"]
    low = max((f for f in fractions if f is not None and f <= 0.1 + 1e-9), default=None)
    if low is None:
        return "no KTO run keeps ≤ 10% of the desirable data"
    kto = exp.select("kto", {"corruption.desirable_fraction": lambda v: v == low})
    dpo = exp.select("dpo", {"corruption.desirable_fraction": lambda v: v in (None, 1.0)})
    m = measure_contrast(ctx, primary_column(exp), [(1.0, kto, f"kto@{low:g}"), (-1.0, dpo, "dpo@1.0")])
    return (
        m if isinstance(m, str) else Measurement(**{**m.__dict__, "detail": f"{m.detail}; KTO keeps {low:g}"})
    )


_add(Claim("imbalance_90pct", "KTO with ≤10% of the desirable data still beats DPO on full data",
           "win rate 0.328 (10%) vs DPO 0.309 [0.275, 0.344]; CIs overlap at 10%", _imbalance))  # fmt: skip


# ---------------------------------------------------------------------------------------------- demo world


def _noise(ctx: ClaimContext) -> Measurement | str:
    exp, field = ctx.exp, "corruption.flip_rate"
    if field not in exp.varying:
        return f"{field} does not vary in this experiment"
    rates = sorted({r.grid[field] for r in exp.trained if r.grid.get(field) is not None})
    top = rates[-1]
    at = {rate: (lambda v, rate=rate: v == rate) for rate in (0.0, top)}
    terms = [
        (1.0, exp.select("dpo", {field: at[0.0]}), "dpo@0"),
        (-1.0, exp.select("dpo", {field: at[top]}), f"dpo@{top:g}"),
        (-1.0, exp.select("kto", {field: at[0.0]}), "kto@0"),
        (1.0, exp.select("kto", {field: at[top]}), f"kto@{top:g}"),
    ]
    m = measure_contrast(ctx, primary_column(exp), terms)
    if isinstance(m, str):
        return m
    return Measurement(**{**m.__dict__, "detail": f"{m.detail}; DPO drop − KTO drop, flip 0 → {top:g}"})


_add(Claim("demo_noise_robustness", "KTO's score drops less than DPO's from flip rate 0 to the largest flip rate",
           "theory only (Prop. 4.1); Gao et al.: +10% flips cost DPO ≈30 win-rate points", _noise))  # fmt: skip
_add(Claim("demo_kto_vs_dpo", "KTO ≥ DPO on the demo world's verifiable arithmetic", "no paper number (demo)",
           _versus("kto", "dpo", DEMO)))  # fmt: skip


def format_measurement(m: Measurement | None, alpha: float) -> str:
    if m is None:
        return "—"
    s, d = m.scale, 2 if m.scale == 100.0 else 3
    ci = f"[{m.lo * s:+.{d}f}, {m.hi * s:+.{d}f}]" if math.isfinite(m.lo) else "no CI"
    return f"{m.estimate * s:+.{d}f} {ci}"


def claims_table(results: list[ClaimResult], alpha: float) -> Table:
    level = f"{100 * (1 - alpha):g}%"
    table = Table(
        "claims",
        "Paper claims",
        ["claim", "statement", "paper", f"measured Δ [{level} CI]", "on", "verdict"],
        [],
        notes=[
            f"Verdict by the {level} paired-bootstrap CI: reproduced = entirely on the claimed side of "
            "0, contradicted = entirely on the other side, inconclusive = straddles 0; missing = results absent.",
            "Δ is in points for proportions. Runs at the reference grid point unless the claim moves a corruption field.",
        ],
    )
    data = []
    for r in results:
        m = r.measurement
        on = f"{m.detail}; {m.n}" if m else r.reason
        table.rows.append(
            [r.claim.id, r.claim.statement, r.claim.paper, format_measurement(m, alpha), on, r.verdict]
        )
        data.append(
            {"claim": r.claim.id, "verdict": r.verdict, "estimate": m.estimate if m else None,
             "ci_lo": m.lo if m else None, "ci_hi": m.hi if m else None, "scale": m.scale if m else None,
             "on": on, "direction": r.claim.direction, "threshold": r.claim.threshold}
        )  # fmt: skip
    table.data = pd.DataFrame(data) if data else None
    return table

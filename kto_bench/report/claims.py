"""The registry of paper claims, each measured on an experiment and given a verdict by its interval.

A claim's measure is a linear contrast of per-item scores on the items every compared run shares,
with the interval of `stats.contrast_interval` (seeds × items; see contrasts.contrast_terms). Runs are
taken at each setting group's reference point (corruption at clean values) unless the claim is about
a corruption setting, in which case only that field moves. A setting group is one combination of the
non-corruption fields the experiment varies (a scale sweep is judged at every model size, each
against its own base model).

Verdicts, in two levels:
  sign  reproduced / contradicted (Holm-adjusted p < α across the claims of the report, with the
        estimate on / off the claimed side), inconclusive otherwise; "item-level only" when a compared
        method has one seed and the items-only interval excludes the threshold (seed variance is not
        covered, so no sign verdict); "not trained" when a compared run did not move from its base;
        "missing" when the results it needs are absent.
  size  the measured difference and its (unadjusted) interval against the paper's number:
        smaller / consistent / larger.
The claim's statement names the setting actually run (model and data of its runs); a benchmark that
stands in for the paper's says how it differs (proxy).

Over 400 lines because the paper's claims are registered here at their definitions (benchmark,
selection, spec needs) next to the rules that measure and judge them; their text and table are in
claims_table.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from kto_bench.registry import Registry
from kto_bench.report.aggregate import Experiment, Run
from kto_bench.report.axes import CLEAN_VALUES, IMBALANCE, NOISE, ONE_Y_PER_X
from kto_bench.report.contrasts import contrast_terms
from kto_bench.report.headline import proportion_scale
from kto_bench.report.labels import column_label
from kto_bench.report.stats import Interval, holm, size_verdict

# ---------------------------------------------------------------------------------------------- benchmarks


@dataclass(frozen=True)
class Benchmark:
    """Where a claim is measured: the first task present, the first metric of it present; `item_key`
    names the per-item score when it differs from the metric; `proxy` says how it differs from the
    paper's measurement (empty for the paper's own benchmark)."""

    tasks: tuple[str, ...]
    metrics: tuple[str, ...]
    item_key: str | None = None
    proxy: str = ""


GSM8K = Benchmark(("gsm8k_cot",), ("exact_match,strict-match", "strict-match"))
GSM8K_5SHOT = Benchmark(
    ("gsm8k",), ("exact_match,strict-match", "strict-match"), proxy="GSM8K 5-shot, not 8-shot CoT"
)
MMLU = Benchmark(("mmlu",), ("acc",))
HUMANEVAL = Benchmark(("humaneval", "humaneval_instruct"), ("pass@1",))
ALPACA_RAW = Benchmark(
    ("alpaca_eval",),
    ("win_rate",),
    item_key="win",
    proxy="raw AlpacaEval win rate (the paper's is length-controlled, which has no per-item scores)",
)
WINRATE_PROXY = Benchmark(
    ("alpaca_eval",),
    ("win_rate",),
    item_key="win",
    proxy="AlpacaEval win rate against its reference outputs, not the paper's GPT-4-judged win rate "
    "against the SFT target on held-out prompts of the training distribution",
)
DEMO = Benchmark(("demo_arith_gen", "demo_arith_mc"), ("exact_match", "acc"))


def _matches(metric: str, cand: str, level: int) -> bool:
    base, _, filt = metric.partition(",")
    return [metric == cand, cand in (base, filt), cand in metric][level]


def find_column(exp: Experiment, bench: Benchmark) -> tuple[str, str] | None:
    """The first (task, metric) of the experiment matching the benchmark, in priority order."""
    df = exp.tidy
    for task in bench.tasks:
        present = sorted(set(df.loc[df["task"] == task, "metric"]))
        for cand in bench.metrics:
            for level in range(3):
                hit = next((m for m in present if _matches(m, cand, level)), None)
                if hit:
                    return task, hit
    return None


# ---------------------------------------------------------------------------------------------- claims


Terms = list[tuple[float, list[Run], str]]  # (coefficient, runs, name) of a linear contrast
Select = Callable[[Experiment], "Terms | str"]  # a str is the reason it cannot be measured
Needs = Callable[[Any], "str | None"]  # spec -> what the spec lacks to measure the claim (None: fine)


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str  # what is claimed, without the setting (added from the runs)
    paper: str  # the paper's numbers
    paper_setting: str
    benchmarks: tuple[Benchmark, ...]  # the paper's own first, then proxies
    select: Select
    paper_delta: float | None = None  # the paper's difference, in the score's units (proportions: 0.135)
    direction: str = "greater"
    threshold: float = 0.0
    methods: tuple[str, ...] = ("kto", "dpo")
    needs: Needs | None = None  # a spec-level requirement beyond tasks and methods

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for b in self.benchmarks for t in b.tasks))


@dataclass(frozen=True)
class ClaimContext:
    exp: Experiment
    alpha: float = 0.05
    untrained: frozenset[str] = frozenset()  # run ids the health check found not trained


@dataclass(frozen=True)
class Measurement:
    interval: Interval
    scale: float  # 100 for proportions shown in points
    column: str  # benchmark label
    setting: str  # model and data of the runs measured
    proxy: str  # how the benchmark differs from the paper's ('' when it is the paper's)
    seeds: str  # seeds per side, by name

    @property
    def estimate(self) -> float:
        return self.interval.estimate


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    group: str  # the setting group ('' when the experiment has one)
    verdict: str  # reproduced | contradicted | inconclusive | item-level only | not trained | missing
    measurement: Measurement | None
    reason: str = ""
    p_holm: float = math.nan
    size: str = ""  # smaller | consistent | larger | '' (no paper number or no measurement)

    @property
    def statement(self) -> str:
        setting = self.measurement.setting if self.measurement else self.group
        return f"{self.claim.statement} — {setting}" if setting else self.claim.statement


CLAIMS: Registry[Claim] = Registry("claim")


def _add(claim: Claim) -> None:
    CLAIMS.add(claim.id, claim, claim.statement)


# ---------------------------------------------------------------------------------------------- groups


def setting_groups(exp: Experiment) -> list[tuple[str, Experiment]]:
    """One sub-experiment per combination of the non-corruption fields that vary (model size,
    learning rate, ...), each with the base model(s) its runs start from; [("", exp)] when none vary."""
    fields = [f for f in exp.varying if f not in CLEAN_VALUES]
    if not fields:
        return [("", exp)]
    groups: dict[str, list[Run]] = {}
    for r in exp.trained:
        label = ", ".join(f"{f.split('.')[-1]}={r.grid.get(f)}" for f in fields)
        groups.setdefault(label, []).append(r)
    out = []
    for label, runs in sorted(groups.items()):
        bases = bases_for(exp, runs)
        sub = Experiment(
            exp.name, exp.root, [*bases, *runs], exp.issues, [f for f in exp.varying if f not in fields]
        )
        sub._samples = exp._samples  # share the per-item cache
        out.append((label, sub))
    return out


def _model_key(run: Run) -> Any:
    return (run.provenance or {}).get("model_hash") or (run.spec.get("model") or {}).get("name")


def bases_for(exp: Experiment, runs: list[Run]) -> list[Run]:
    """The base-model evaluations the runs start from: same model hash (or model name); the only base
    when the store says nothing about either."""
    bases = [r for r in exp.runs if r.is_base]
    keys = {_model_key(r) for r in runs} - {None}
    matched = [b for b in bases if _model_key(b) in keys]
    return matched or (bases if len(bases) == 1 and not keys else [])


def setting_of(runs: list[Run]) -> str:
    """'model on data' of the runs (as their specs say), e.g. 'EleutherAI/pythia-1.4b on hh_rlhf'."""
    models = sorted(
        {
            str((r.spec.get("model") or {}).get("name"))
            for r in runs
            if (r.spec.get("model") or {}).get("name")
        }
    )
    data = sorted(
        {
            str(d["source"]) + (f" (first {d['limit']})" if d.get("limit") else "")
            for r in runs
            if (d := r.spec.get("data") or {}).get("source")
        }
    )
    return " on ".join(p for p in (", ".join(models), ", ".join(data)) if p)


# ---------------------------------------------------------------------------------------------- measuring


def _proxy_notes(exp: Experiment, runs: list[Run], task: str, bench: Benchmark) -> str:
    notes = [bench.proxy] if bench.proxy else []
    results = [r.results.get(task) or {} for r in runs]
    limits = sorted({(res.get("settings") or {}).get("limit") for res in results} - {None})
    if limits:
        notes.append(f"evaluated on the first {', '.join(map(str, limits))} items only")
    if task == "alpaca_eval":
        if any(res.get("variant") == "offline" for res in results):
            notes.append("offline stand-in instructions")
        judges = {str((res.get("judge") or {}).get("type")) for res in results if res.get("judge")}
        if "local" in judges:
            notes.append("a local judge model, not GPT-4 Turbo")
    return "; ".join(notes)


def measure(claim: Claim, ctx: ClaimContext, group: str) -> ClaimResult:
    """One claim on one setting group (ctx.exp is the group's sub-experiment)."""
    exp = ctx.exp
    found = next(((b, c) for b in claim.benchmarks if (c := find_column(exp, b))), None)
    if found is None:
        tasks = ", ".join(claim.tasks)
        return ClaimResult(claim, group, "missing", None, f"no results of {tasks} in this experiment")
    bench, col = found
    terms = claim.select(exp)
    if isinstance(terms, str):
        return ClaimResult(claim, group, "missing", None, terms)
    for _, runs, name in terms:
        if not runs:
            return ClaimResult(claim, group, "missing", None, f"no runs for {name}")
    used = [r for _, runs, _ in terms for r in runs]
    untrained = sorted(r.run_id for r in used if r.run_id in ctx.untrained)
    if untrained:
        return ClaimResult(
            claim, group, "not trained", None, f"did not move from the base model: {', '.join(untrained)}"
        )
    result = contrast_terms(
        exp,
        [(c, runs) for c, runs, _ in terms],
        *col,
        alpha=ctx.alpha,
        threshold=claim.threshold,
        item_key=bench.item_key,
    )
    if result is None:
        return ClaimResult(
            claim,
            group,
            "missing",
            None,
            f"no per-item samples of {column_label(*col)} shared by the compared runs",
        )
    seeds = ", ".join(
        f"{name}: {'fixed' if n == 0 else n}" for (_, _, name), n in zip(terms, result.n_seeds, strict=True)
    )
    trained = [r for r in used if not r.is_base]
    m = Measurement(
        result,
        proportion_scale(exp, col),
        column_label(*col),
        setting_of(trained),
        _proxy_notes(exp, trained, col[0], bench),
        seeds,
    )
    return ClaimResult(claim, group, "", m)


def evaluate_claim(claim: Claim, ctx: ClaimContext) -> list[ClaimResult]:
    """The claim at every setting group of the experiment (sign verdicts not yet Holm-corrected:
    `evaluate_claims` corrects across all the claims of a report)."""
    return [measure(claim, replace(ctx, exp=sub), group) for group, sub in setting_groups(ctx.exp)]


def evaluate_claims(names: list[str], ctx: ClaimContext) -> list[ClaimResult]:
    """The named claims (every registered claim when `names` is empty), one result per setting group,
    with Holm's correction across every result that can give a sign verdict (seeded intervals)."""
    results = [r for n in (names or CLAIMS.names()) for r in evaluate_claim(CLAIMS.get(n), ctx)]
    tested = [
        i for i, r in enumerate(results) if r.measurement and not r.measurement.interval.item_level_only
    ]
    adjusted = holm([results[i].measurement.interval.p for i in tested])  # type: ignore[union-attr]
    p_holm = dict(zip(tested, adjusted, strict=True))
    return [finish(r, p_holm.get(i, math.nan), ctx.alpha) for i, r in enumerate(results)]


def finish(r: ClaimResult, p_holm: float, alpha: float) -> ClaimResult:
    """Sign verdict (by the Holm-adjusted p) and size verdict (against the paper's number)."""
    m = r.measurement
    if m is None:
        return r
    iv, c = m.interval, r.claim
    on_side = iv.estimate > c.threshold if c.direction == "greater" else iv.estimate < c.threshold
    if iv.item_level_only:
        verdict = "item-level only" if iv.p < alpha else "inconclusive"
    elif p_holm < alpha:
        verdict = "reproduced" if on_side else "contradicted"
    else:
        verdict = "inconclusive"
    return replace(r, verdict=verdict, p_holm=p_holm, size=size_verdict(iv.lo, iv.hi, c.paper_delta))


# ---------------------------------------------------------------------------------------------- selections


def versus(plus: str, minus: str, moves: dict[str, Callable[[Any], bool]] | None = None) -> Select:
    """plus − minus at the reference point (minus 'base': the group's base model)."""

    def select(exp: Experiment) -> Terms | str:
        if minus == "base":
            bases = [r for r in exp.runs if r.is_base]
            if len(bases) > 1:
                return f"{len(bases)} base evaluations match these runs; keep one per model"
            minus_runs = bases
        else:
            minus_runs = exp.select(minus)
        return [(1.0, exp.select(plus, moves), plus), (-1.0, minus_runs, minus)]

    return select


def _imbalance(exp: Experiment) -> Terms | str:
    field_ = IMBALANCE.field
    if field_ not in exp.varying:
        return f"{field_} does not vary in this experiment"
    fractions = [r.grid.get(field_) for r in exp.trained if r.method == "kto"]
    low = max((f for f in fractions if f is not None and f <= 0.1 + 1e-9), default=None)
    if low is None:
        return "no KTO run keeps ≤ 10% of the desirable data"
    kto = exp.select("kto", {field_: lambda v: v == low})
    dpo = exp.select("dpo", {field_: lambda v: v in (None, 1.0)})
    return [(1.0, kto, f"kto@{low:g}"), (-1.0, dpo, "dpo@1.0")]


def _noise(exp: Experiment) -> Terms | str:
    field_ = NOISE.field
    if field_ not in exp.varying:
        return f"{field_} does not vary in this experiment"
    rates = sorted({r.grid[field_] for r in exp.trained if r.grid.get(field_) is not None})
    top = rates[-1]
    at = {rate: (lambda v, rate=rate: v == rate) for rate in (0.0, top)}
    return [
        (1.0, exp.select("dpo", {field_: at[0.0]}), "dpo@0"),
        (-1.0, exp.select("dpo", {field_: at[top]}), f"dpo@{top:g}"),
        (-1.0, exp.select("kto", {field_: at[0.0]}), "kto@0"),
        (1.0, exp.select("kto", {field_: at[top]}), f"kto@{top:g}"),
    ]


# ---------------------------------------------------------------------------------------------- spec needs


def _grid_runs(spec: Any) -> list[Any]:
    from kto_bench.spec import expand

    return expand(spec)


def _needs_base(spec: Any) -> str | None:
    if not spec.evaluation.evaluate_base:
        return "it compares with the base model: set evaluation.evaluate_base: true"
    return None


def _needs_one_y(spec: Any) -> str | None:
    if not any(r.method.type == "kto" and r.corruption.one_output_per_prompt for r in _grid_runs(spec)):
        return "no KTO run has corruption.one_output_per_prompt: true; add a grid block `- method: [kto]` with it"
    return None


def _needs_imbalance(spec: Any) -> str | None:
    runs = _grid_runs(spec)
    if not any(r.method.type == "kto" and r.corruption.desirable_fraction <= 0.1 + 1e-9 for r in runs):
        return "no KTO run keeps ≤ 10% of the desirable data; grid corruption.desirable_fraction down to 0.1"
    if not any(r.method.type == "dpo" and r.corruption.desirable_fraction == 1.0 for r in runs):
        return "no DPO run on the full data (desirable_fraction 1.0)"
    return None


def _needs_flips(spec: Any) -> str | None:
    rates = {(r.method.type, r.corruption.flip_rate) for r in _grid_runs(spec)}
    top = max((f for _, f in rates), default=0.0)
    if top == 0.0 or not all((m, f) in rates for m in ("kto", "dpo") for f in (0.0, top)):
        return "it needs KTO and DPO runs at flip rate 0 and at a larger one; grid corruption.flip_rate"
    return None


def spec_problems(spec: Any) -> list[tuple[int, str]]:
    """(index in report.claims, problem with its fix) for each named claim the spec cannot measure:
    a task it does not run, a method it lacks, a grid point it does not have. Pure function of the spec."""
    tasks = {t.name for t in spec.evaluation.tasks}
    methods = {m.type for m in spec.methods}
    out = []
    for i, name in enumerate(spec.report.claims):
        claim = CLAIMS.get(name)
        if not tasks & set(claim.tasks):
            need = " or ".join(claim.tasks)
            out.append((i, f"claim {name!r} is measured on {need}, which evaluation.tasks does not run; add "
                           f"`- {{name: {claim.tasks[0]}}}` to evaluation.tasks or remove the claim"))  # fmt: skip
            continue
        missing = [m for m in claim.methods if m not in methods]
        if missing:
            out.append((i, f"claim {name!r} compares {' and '.join(claim.methods)}; add method(s) {missing} "
                           "or remove the claim"))  # fmt: skip
            continue
        problem = claim.needs(spec) if claim.needs else None
        if problem:
            out.append((i, f"claim {name!r} cannot be measured: {problem}; or remove the claim"))
    return out


# ---------------------------------------------------------------------------------------------- paper

ZEPHYR = "Zephyr-β-SFT (Mistral-7B) on UltraFeedback"

_add(Claim("table2_gsm8k", "KTO ≥ DPO on GSM8K (8-shot CoT, strict-match)", "KTO 53.5 vs DPO 40.0: +13.5",
           ZEPHYR, (GSM8K, GSM8K_5SHOT), versus("kto", "dpo"), 0.135))  # fmt: skip
_add(Claim("table2_mmlu", "KTO ≥ DPO on MMLU (0-shot)", "KTO 58.6 vs DPO 58.2: +0.4", ZEPHYR, (MMLU,),
           versus("kto", "dpo"), 0.004))  # fmt: skip
_add(Claim("table2_humaneval", "KTO ≥ DPO on HumanEval pass@1 (0-shot)", "KTO 30.9 vs DPO 30.1: +0.8", ZEPHYR,
           (HUMANEVAL,), versus("kto", "dpo"), 0.008))  # fmt: skip
_add(Claim("table2_alpacaeval", "KTO ≥ DPO on AlpacaEval 2", "LC win rate KTO 12.48 vs DPO 7.79: +4.69 "
           "(GPT-4 Turbo judge)", ZEPHYR, (ALPACA_RAW,), versus("kto", "dpo"), 0.0469))  # fmt: skip
_add(Claim("table2_kto_vs_sft_gsm8k", "KTO improves GSM8K (8-shot CoT) over the SFT base model",
           "KTO 53.5 vs SFT 39.0: +14.5", ZEPHYR, (GSM8K, GSM8K_5SHOT), versus("kto", "base"), 0.145,
           methods=("kto",), needs=_needs_base))  # fmt: skip
_add(Claim("table2_one_y_per_x", "KTO with one output per prompt ≥ DPO on GSM8K (8-shot CoT)",
           "KTO one-y-per-x 50.0 vs DPO 40.0: +10.0", ZEPHYR, (GSM8K, GSM8K_5SHOT),
           versus("kto", "dpo", {ONE_Y_PER_X: lambda v: v is True}), 0.10,
           needs=_needs_one_y))  # fmt: skip
_add(Claim("oasst_winrate", "KTO's win rate ≥ DPO's", "KTO 0.652 ± 0.036 vs DPO 0.600 ± 0.037 (90% CI): +5.2 "
           "points", "Mistral-7B on OpenAssistant, GPT-4 judge vs the SFT target", (WINRATE_PROXY,),
           versus("kto", "dpo"), 0.052))  # fmt: skip
_add(Claim("imbalance_90pct", "KTO with ≤ 10% of the desirable data ≥ DPO on full data",
           "win rate KTO 0.328 (10%) vs DPO 0.309 [0.275, 0.344]: +1.9 points; the CIs overlap at 10%",
           "Llama-7B without SFT on SHP + HH + OASST, GPT-4 judge vs the SFT target", (WINRATE_PROXY,),
           _imbalance, 0.019, needs=_needs_imbalance))  # fmt: skip

# ---------------------------------------------------------------------------------------------- demo world

_add(Claim("demo_noise_robustness", "KTO's score drops less than DPO's from flip rate 0 to the largest flip rate "
           "(DPO drop − KTO drop)", "theory only (Prop. 4.1); Gao et al.: +10% flips cost DPO ≈30 win-rate points",
           "", (GSM8K, DEMO, MMLU), _noise, needs=_needs_flips))  # fmt: skip
_add(Claim("demo_kto_vs_dpo", "KTO ≥ DPO on the demo world's verifiable arithmetic", "no paper number (demo)",
           "", (DEMO,), versus("kto", "dpo")))  # fmt: skip


__all__ = [
    "CLAIMS", "Benchmark", "Claim", "ClaimContext", "ClaimResult", "Measurement", "evaluate_claim", "evaluate_claims",
    "spec_problems",
]  # fmt: skip

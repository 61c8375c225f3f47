"""Report tables (headline, paired differences, matched-settings audit, training, claims) and their
Markdown / CSV / LaTeX / HTML writers.

Sweeps: the headline table has one row per (method, grid point), labelled by the grid fields that
vary, so nothing is averaged across settings; the base model is one row shared by all points.
Bold marks the best cell of a column only when its interval separates it from every other row
(its lower bound above their upper bounds, or above their point value where they have no CI).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from kto_bench.report.aggregate import Experiment, Run, dig, method_rank, training_summary
from kto_bench.report.stats import (
    Interval,
    MeanCI,
    Term,
    align_items,
    contrast_interval,
    holm,
    mean_ci,
    wilson,
)

TASK_LABELS = {
    "mmlu": "MMLU",
    "gsm8k": "GSM8K",
    "gsm8k_cot": "GSM8K CoT",
    "humaneval": "HumanEval",
    "humaneval_instruct": "HumanEval-Instruct",
    "alpaca_eval": "AlpacaEval",
    "demo_arith_gen": "Demo arith (gen)",
    "demo_arith_mc": "Demo arith (MC)",
}
TASK_ORDER = list(TASK_LABELS)
METRIC_LABELS = {
    "exact_match": "EM",
    "length_controlled_winrate": "LC win rate",
    "lc_win_rate": "LC win rate",
    "win_rate": "win rate",
}
MISSING = "missing"


@dataclass
class Table:
    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    data: pd.DataFrame | None = None  # machine-readable form for CSV; defaults to the display rows

    def frame(self) -> pd.DataFrame:
        return self.data if self.data is not None else pd.DataFrame(self.rows, columns=self.columns)


# ---------------------------------------------------------------------------------------------- format


def metric_label(metric: str) -> str:
    base, _, filt = metric.partition(",")
    base = METRIC_LABELS.get(base, base)
    return base if filt in ("", "none", "create_test") else f"{base} {filt}"


def column_label(task: str, metric: str) -> str:
    return f"{TASK_LABELS.get(task, task)} {metric_label(metric)}"


def column_order(columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    def key(c: tuple[str, str]) -> tuple[int, str, bool, str]:
        task_rank = TASK_ORDER.index(c[0]) if c[0] in TASK_ORDER else len(TASK_ORDER)
        return (task_rank, c[0], "strict" not in c[1], c[1])  # strict-match before flexible-extract

    return sorted(columns, key=key)


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"
    return str(x)


def short(h: Any, n: int = 10) -> str:
    return str(h)[:n] if h else MISSING


def settings_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def is_win_rate(metric: str) -> bool:
    return "win" in metric.lower()


def row_label(method: str, point: str, base_key: str = "") -> str:
    if method == "base":
        return f"base ({base_key})" if base_key else "base"
    name = method.upper() if len(method) <= 4 else method
    return f"+{name}" + (f" ({point})" if point else "")


# ---------------------------------------------------------------------------------------------- headline


@dataclass(frozen=True)
class Cell:
    """One (row, benchmark) summary: seed mean with CI, or a single value with its own uncertainty."""

    ci: MeanCI
    lo: float
    hi: float
    kind: str  # "t" (seeds), "wilson" (one seed, win rate), "none"
    item_se: float


def summarize_cell(
    values: list[float], stderrs: list[float], ns: list[Any], metric: str, alpha: float
) -> Cell:
    ci = mean_ci(values, alpha)
    if ci.has_ci:
        return Cell(ci, ci.lo, ci.hi, "t", math.nan)
    se = stderrs[0] if stderrs else math.nan
    if ci.n == 1 and is_win_rate(metric) and ns and ns[0]:
        scale = 100.0 if ci.mean > 1.0 else 1.0
        _, lo, hi = wilson(ci.mean / scale * int(ns[0]), int(ns[0]), alpha)
        return Cell(ci, lo * scale, hi * scale, "wilson", se)
    return Cell(ci, math.nan, math.nan, "none", se)


def headline_cells(
    exp: Experiment, alpha: float
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]], dict]:
    """Rows (method, point, label), columns (task, metric) and {(row, col): Cell}."""
    df = exp.tidy
    if df.empty:
        return [], [], {}
    columns = column_order(sorted({(t, m) for t, m in zip(df["task"], df["metric"], strict=True)}))
    bases = exp.bases
    rows: list[tuple[str, str, str]] = [
        ("base", r.run_id, row_label("base", "", (r.group or r.run_id) if len(bases) > 1 else ""))
        for r in bases
    ]
    reference = exp.reference_point()
    groups = {(r.method, r.point) for r in exp.trained}
    # grouped by method (all KTO rows together), the reference point first within a method
    ordered = sorted(groups, key=lambda g: (method_rank(g[0]), g[1] != reference, g[1]))
    rows += [(m, p, row_label(m, p)) for m, p in ordered]
    cells = {}
    for method, point, label in rows:
        sel = (
            df[df["run_id"] == point]
            if method == "base"
            else df[(df["method"] == method) & (df["point"] == point)]
        )
        for task, metric in columns:
            part = sel[(sel["task"] == task) & (sel["metric"] == metric)]
            if part.empty:
                continue
            cells[(label, (task, metric))] = summarize_cell(
                part["value"].tolist(), part["stderr"].tolist(), part["n"].tolist(), metric, alpha
            )
    return rows, columns, cells


def column_scale(cells: dict, col: tuple[str, str]) -> float:
    """Proportions are shown in points (x100), as in the paper; anything else as stored."""
    means = [c.ci.mean for (_, k), c in cells.items() if k == col and math.isfinite(c.ci.mean)]
    return 100.0 if means and all(0.0 <= m <= 1.0 for m in means) else 1.0


def proportion_scale(exp: Experiment, col: tuple[str, str]) -> float:
    """100 when every stored value of (task, metric) is a proportion in [0, 1], else 1."""
    df = exp.tidy
    values = df.loc[(df["task"] == col[0]) & (df["metric"] == col[1]), "value"].dropna()
    return 100.0 if len(values) and values.between(0, 1).all() else 1.0


def best_separated(col_cells: dict[str, Cell]) -> str | None:
    """The label of the best (highest mean) cell if its interval separates it from all others."""
    finite = {k: c for k, c in col_cells.items() if math.isfinite(c.ci.mean)}
    if len(finite) < 2:
        return None
    best = max(finite, key=lambda k: finite[k].ci.mean)
    lo = finite[best].lo
    if not math.isfinite(lo):
        return None
    others = [c.hi if math.isfinite(c.hi) else c.ci.mean for k, c in finite.items() if k != best]
    return best if all(lo > o for o in others) else None


def format_cell(c: Cell, scale: float) -> str:
    m = c.ci.mean * scale
    digits = 1 if scale == 100.0 else 3
    if c.kind == "t":
        return f"{m:.{digits}f} ± {c.ci.half * scale:.{digits}f} (n={c.ci.n})"
    if c.kind == "wilson":
        return f"{m:.{digits}f} [{c.lo * scale:.{digits}f}, {c.hi * scale:.{digits}f}] (n=1, Wilson)"
    se = f"; item s.e. {c.item_se * scale:.{digits}f}" if math.isfinite(c.item_se) else ""
    return f"{m:.{digits}f} (n=1, no CI{se})"


def headline_table(exp: Experiment, alpha: float) -> Table:
    rows, columns, cells = headline_cells(exp, alpha)
    level = f"{100 * (1 - alpha):g}%"
    table = Table(
        "headline",
        "Headline results",
        ["model", *[column_label(*c) for c in columns]],
        [],
        notes=[
            f"Cells: mean over seeds ± {level} t-interval half-width (n = seeds). n=1: no CI across seeds "
            "(the item-level standard error is shown where the harness reports one; win rates get a Wilson interval).",
            "Proportions are shown ×100 (points). Bold: best in its column with an interval that separates it "
            "from every other row.",
            "Rows are grouped by method, one per grid point (the fields that vary between runs), the reference "
            "point first; the base model row is shared by the runs trained from it.",
        ],
    )
    data = []
    scales = {c: column_scale(cells, c) for c in columns}
    for _method, _point, label in rows:
        line = [label]
        for col in columns:
            c = cells.get((label, col))
            line.append(MISSING if c is None else format_cell(c, scales[col]))
            if c is not None:
                data.append(
                    {"model": label, "task": col[0], "metric": col[1], "mean": c.ci.mean, "ci_half": c.ci.half,
                     "ci_lo": c.lo, "ci_hi": c.hi, "ci_kind": c.kind, "n_seeds": c.ci.n, "item_stderr": c.item_se}
                )  # fmt: skip
        table.rows.append(line)
    for j, col in enumerate(columns, 1):
        best = best_separated({label: cells[(label, col)] for *_, label in rows if (label, col) in cells})
        if best is not None:
            table.bold.add(([r[2] for r in rows].index(best), j))
    data_df = pd.DataFrame(data)
    if not data_df.empty:
        bold_labels = {(table.rows[i][0], columns[j - 1]) for i, j in table.bold}
        data_df["bold"] = [(m, (t, k)) in bold_labels for m, t, k in zip(data_df["model"], data_df["task"], data_df["metric"], strict=True)]  # fmt: skip
    table.data = data_df
    if not rows:
        table.notes.append("missing: no evaluation results in this experiment yet.")
    return table


# ---------------------------------------------------------------------------------------------- paired


def group_scores(
    exp: Experiment, runs: list[Run], task: str, metric: str, item_key: str | None = None
) -> list[dict[str, float]] | None:
    scores = [exp.item_scores(r.run_id, task, item_key or metric) for r in runs]
    return None if not scores or any(s is None for s in scores) else scores  # type: ignore[return-value]


def seed_pairing(groups: list[list[Run]]) -> tuple[list[list[Run]], bool]:
    """Pairs the seeded groups of a contrast by seed where they allow it: when every seeded group has
    one run per seed and at least two seeds are common to all, keep the common seeds (same seed → same
    corrupted data and flips) in one order; otherwise keep every run, unpaired. Base runs are fixed."""
    seeded = [g for g in groups if not any(r.is_base for r in g)]
    by_seed = [{r.seed: r for r in g} for g in seeded]
    if not seeded or any(len(m) != len(g) or None in m for m, g in zip(by_seed, seeded, strict=True)):
        return groups, False
    common = sorted(set.intersection(*(set(m) for m in by_seed)), key=str)
    if len(common) < 2:
        return groups, False
    out, paired_groups = [], iter(by_seed)
    for g in groups:
        if any(r.is_base for r in g):
            out.append(g)
        else:
            runs = next(paired_groups)
            out.append([runs[s] for s in common])
    return out, True


def contrast_terms(
    exp: Experiment,
    terms: list[tuple[float, list[Run]]],
    task: str,
    metric: str,
    *,
    alpha: float = 0.05,
    threshold: float = 0.0,
    item_key: str | None = None,
) -> Interval | None:
    """sum coef·mean(score of runs) on the items every run shares, with its interval (see
    `stats.contrast_interval`): paired by item, by seed where the groups share their seeds, a base
    model as a fixed term. None without per-item samples or shared items."""
    if any(r.is_base for _, runs in terms for r in runs) and any(
        len(runs) != 1 for _, runs in terms if any(r.is_base for r in runs)
    ):
        raise ValueError("a base-model term holds exactly one run")
    groups, paired = seed_pairing([runs for _, runs in terms])
    scores = [group_scores(exp, runs, task, metric, item_key) for runs in groups]
    if any(s is None for s in scores):
        return None
    items, mats = align_items(scores)  # type: ignore[arg-type]
    if len(items) < 2:
        return None
    return contrast_interval(
        [Term(c, m, fixed=runs[0].is_base) for (c, _), m, runs in zip(terms, mats, groups, strict=True)],
        paired_seeds=paired,
        alpha=alpha,
        threshold=threshold,
    )


def contrast(
    exp: Experiment,
    plus: list[Run],
    minus: list[Run],
    task: str,
    metric: str,
    *,
    alpha: float = 0.05,
    item_key: str | None = None,
) -> Interval | None:
    """mean(plus) − mean(minus) on their common items with its 1−α interval and p-value: the one
    function that gives a difference of two methods (or a method and its base model, `minus` = [base
    run]) at a grid point. None without per-item samples."""
    return contrast_terms(exp, [(1.0, plus), (-1.0, minus)], task, metric, alpha=alpha, item_key=item_key)


def runs_of(exp: Experiment, method: str, point: str) -> list[Run]:
    return [r for r in exp.trained if r.method == method and r.point == point]


def paired_table(exp: Experiment, compare: tuple[str, str], alpha: float) -> Table:
    a, b = compare
    _, columns, _ = headline_cells(exp, alpha)
    reference = exp.reference_point()
    families: list[tuple[str, str, list[Run], list[Run]]] = []
    points = sorted({r.point for r in exp.trained}, key=lambda p: (p != reference, p))
    for p in points:
        if runs_of(exp, a, p) and runs_of(exp, b, p):
            families.append((f"{a} − {b}", p, runs_of(exp, a, p), runs_of(exp, b, p)))
    bases = [r for r in exp.runs if r.is_base]
    if bases and reference is not None:
        for m in compare:
            if runs_of(exp, m, reference):
                families.append((f"{m} − base", reference, runs_of(exp, m, reference), bases[:1]))
    level = f"{100 * (1 - alpha):g}%"
    table = Table(
        "paired",
        f"Paired differences on the same items ({level} intervals over seeds × items, Holm across benchmarks)",
        [
            "contrast",
            "point",
            "benchmark",
            "Δ",
            f"{level} CI",
            "interval",
            "items",
            "seeds",
            "p",
            "p (Holm)",
            "significant",
        ],  # fmt: skip
        [],
        notes=[
            "Intervals count both the evaluation items and the training seeds: per-item differences on the items "
            "both sides share (paired by item_id), with the seed variance from the spread of the runs "
            "(seed-paired where both methods ran the same seeds, which share their corrupted data and flips); the "
            "base model is one fixed run. 'items only': a method has one seed, so the interval does not cover "
            "seed variance and 'significant' is not claimed.",
            "Holm correction within each contrast and grid point, across the benchmarks of this table (seeded "
            "intervals only). Δ in points for proportions.",
        ],
    )
    data = []
    for name, point, plus, minus in families:
        results = [(col, contrast(exp, plus, minus, *col, alpha=alpha)) for col in columns]
        adjusted = holm([r.p if r and not r.item_level_only else math.nan for _, r in results])
        for (col, r), padj in zip(results, adjusted, strict=True):
            label = column_label(*col)
            if r is None:
                table.rows.append(
                    [name, point or "—", label, MISSING, "no per-item samples", "", "", "", "", "", ""]
                )
                continue
            s = proportion_scale(exp, col)
            seeds = "/".join("fixed" if n == 0 else str(n) for n in r.n_seeds)
            significant = "items only" if r.item_level_only else "yes" if padj < alpha else "no"
            table.rows.append(
                [name, point or "—", label, f"{r.estimate * s:+.2f}", f"[{r.lo * s:+.2f}, {r.hi * s:+.2f}]",
                 r.interval, str(r.n_items), seeds, f"{r.p:.3g}", "—" if math.isnan(padj) else f"{padj:.3g}",
                 significant]
            )  # fmt: skip
            data.append(
                {"contrast": name, "point": point, "task": col[0], "metric": col[1], "estimate": r.estimate,
                 "ci_lo": r.lo, "ci_hi": r.hi, "interval": r.interval, "n_items": r.n_items, "n_seeds": seeds,
                 "p": r.p, "p_holm": padj}
            )  # fmt: skip
    if not families:
        table.notes.append(f"missing: no grid point has runs of both {a!r} and {b!r} (nor a base model).")
    table.data = pd.DataFrame(data) if data else None
    return table


# ---------------------------------------------------------------------------------------------- audit


def effective_batch(spec: dict) -> Any:
    eff = dig(spec, "training.effective_batch_size", "training.effective_batch")
    if eff is not None:
        return eff
    micro = dig(spec, "training.batch_size", "training.micro_batch_size", "training.per_device_batch_size")
    accum = dig(
        spec, "training.gradient_accumulation_steps", "training.grad_accum", "training.accumulation_steps"
    )
    if micro is None:
        return None
    return micro * (accum or 1)


def final_counts(counts: Any) -> str:
    """Class counts after the last transform, written 'D=…, U=…' (or compact JSON if shaped otherwise)."""
    if not isinstance(counts, dict) or not counts:
        return MISSING
    if "final" in counts:
        counts = counts["final"]
    elif all(isinstance(v, dict) for v in counts.values()):
        counts = list(counts.values())[-1]
    if isinstance(counts, dict) and {"desirable", "undesirable"} <= set(counts):
        extra = f", pairs={counts['pairs']}" if "pairs" in counts else ""
        return f"D={counts['desirable']}, U={counts['undesirable']}{extra}"
    return json.dumps(counts, sort_keys=True, separators=(",", ":"))


def eval_settings(run: Run) -> dict:
    return {t: {"settings": r.get("settings"), "variant": r.get("variant"), "harness": r.get("harness")}
            for t, r in sorted(run.results.items())}  # fmt: skip


AUDIT_COLUMNS = [
    "run", "method", "seed", "point", "stages", "model hash", "data fingerprint", "n flipped", "class counts",
    "λD/λU", "steps", "sequences", "tokens", "eff. batch", "world size", "precision", "budget", "training cfg",
    "eval settings",
]  # fmt: skip
# every column a matched comparison is checked on (all but the run's own labels)
COMPARED = AUDIT_COLUMNS[5:]
# what the compute a method received is made of: shown per method, and a difference is a confound
COMPUTE_COLUMNS = ["steps", "sequences", "tokens", "eff. batch", "world size", "precision"]
CONFOUND_WORDS = {
    "steps": ("took", "optimizer steps", "the number of optimizer updates"),
    "sequences": ("trained on", "completion sequences", "the number of sequences trained on"),
    "tokens": ("trained on", "tokens", "the number of tokens trained on"),
    "eff. batch": ("used an effective batch of", "", "the batch size"),
    "world size": ("ran on", "processes", "the number of processes (world size)"),
    "precision": ("trained in", "", "numeric precision"),
    "model hash": ("started from model", "", "the base model"),
    "training cfg": ("used training settings", "", "the training settings"),
    "eval settings": ("was evaluated with settings", "", "the evaluation settings"),
}


def stages_label(run: Run) -> str:
    if run.is_base:
        return "eval" if run.results else MISSING
    done = run.stages_done()
    return "done" if "done" in done else f"{MISSING} after {done[-1]}" if done else MISSING


def precision_label(run: Run) -> str:
    """Precision semantics: mode with master/compute dtypes where train_summary records them."""
    p = (run.train_summary or {}).get("precision")
    if isinstance(p, dict) and p.get("mode"):
        rounding = str(p.get("update_rounding") or "")
        parts = [f"master {p['master_dtype']}" if p.get("master_dtype") else "",
                 f"compute {p['compute_dtype']}" if p.get("compute_dtype") else "",
                 f"{rounding} rounding" if rounding and not rounding.startswith("nearest") else ""]  # fmt: skip
        detail = ", ".join(x for x in parts if x)
        return f"{p['mode']} ({detail})" if detail else str(p["mode"])
    if isinstance(p, str):
        return p
    spec = dig(run.spec, "training.precision", "training.dtype", "model.dtype", "model.precision")
    return f"{spec} (spec)" if spec else "—"


def budget_label(run: Run) -> str:
    b = dig(run.train_summary, "budget") or dig(run.spec, "training.budget")
    if not isinstance(b, dict) or not b:
        return MISSING
    per = f" per {b['per']}" if b.get("per") not in (None, "", "absolute") else ""
    value = b.get("value")
    return f"{b.get('rule', '?')}={f'{value:g}' if isinstance(value, int | float) else value}{per}"


def world_size(run: Run) -> Any:
    return dig(run.train_summary, "world_size") or dig(run.provenance, "identity.world_size", "world_size")


def audit_row(run: Run) -> dict[str, str]:
    prov, rep, spec, summ = run.provenance or {}, run.data_report or {}, run.spec, run.train_summary or {}
    lam = rep.get("lambda") or {}
    training = dict(spec.get("training") or {})
    trained = not run.is_base

    def count(key: str) -> str:
        return str(summ[key]) if summ.get(key) is not None else MISSING

    return {
        "run": run.run_id,
        "method": run.method,
        "seed": "—" if run.seed is None else str(run.seed),
        "point": run.point or "—",
        "stages": stages_label(run),
        "model hash": short(dig(prov, "identity.model_hash", "model_hash")),
        "data fingerprint": short(rep.get("fingerprint") or prov.get("data_fingerprint")) if trained else "—",
        "n flipped": str(rep.get("n_flipped", MISSING)) if trained else "—",
        "class counts": final_counts(rep.get("counts")) if trained else "—",
        "λD/λU": (f"{fmt(lam.get('desirable'))}/{fmt(lam.get('undesirable'))}" if lam else MISSING)
        if trained
        else "—",
        "steps": count("steps") if trained else "—",
        "sequences": count("sequences") if trained else "—",
        "tokens": count("tokens") if trained else "—",
        "eff. batch": str(summ.get("effective_batch") or effective_batch(spec) or MISSING)
        if trained
        else "—",
        "world size": str(world_size(run) or MISSING) if trained else "—",
        "precision": precision_label(run) if trained else "—",
        "budget": budget_label(run) if trained else "—",
        "training cfg": settings_hash(training) if trained and training else "—",
        "eval settings": settings_hash(eval_settings(run)) if run.results else MISSING,
    }


def differing(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    return [c for c in columns if len({r[c] for r in rows}) > 1]


def matched_groups(exp: Experiment) -> list[list[tuple[Run, dict[str, str]]]]:
    """Trained runs compared with each other: same grid point and seed, more than one method."""
    groups: dict[tuple[str, str], list[tuple[Run, dict[str, str]]]] = {}
    for r in sorted(exp.trained, key=lambda r: (r.point != exp.reference_point(), r.point, str(r.seed),
                                                method_rank(r.method))):  # fmt: skip
        groups.setdefault((r.point, str(r.seed)), []).append((r, audit_row(r)))
    return [g for g in groups.values() if len({r.method for r, _ in g}) > 1]


# steps, sequences or tokens that differ by at most this fraction between compared runs count as matched
# (an epoch's last partial batch moves tokens by a handful); the audit still names the column
NEAR_EQUAL = 0.01
TOLERANT_COLUMNS = ("steps", "sequences", "tokens")


def _relative_spread(values: list[str]) -> float | None:
    """(max − min) / max of numeric values, None when any is not a number."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return None
    top = max(abs(x) for x in numbers)
    return 0.0 if top == 0 else (max(numbers) - min(numbers)) / top


def _material(col: str, group: list[tuple[Run, dict[str, str]]]) -> bool:
    values = [row[col] for _, row in group]
    if len(set(values)) < 2:
        return False
    spread = _relative_spread(values) if col in TOLERANT_COLUMNS else None
    return spread is None or spread > NEAR_EQUAL


def near_equal(exp: Experiment) -> list[str]:
    """Notes for the compute columns that differ between compared runs only within NEAR_EQUAL."""
    out = []
    groups = matched_groups(exp)
    for col in TOLERANT_COLUMNS:
        differs = [g for g in groups if col in differing([row for _, row in g], [col])]
        if differs and not any(_material(col, g) for g in differs):
            worst = max(_relative_spread([row[col] for _, row in g]) or 0.0 for g in differs)
            out.append(
                f"{col} differ between compared runs by at most {100 * worst:.2g}% (within {NEAR_EQUAL:.0%}): "
                "matched, not a confound."
            )
    return out


def confounds(exp: Experiment, compare: tuple[str, str] | None = None) -> list[str]:
    """One sentence per setting that differs materially between compared runs, with the values of the
    first matched group where it does (the reference point first), e.g. "KTO took 87 optimizer steps,
    DPO 43: a KTO − DPO difference is confounded with the number of optimizer updates". Steps,
    sequences and tokens within NEAR_EQUAL of each other are matched (see `near_equal`)."""
    out = []
    groups = matched_groups(exp)
    for col in [*COMPUTE_COLUMNS, "model hash", "training cfg", "eval settings"]:
        where = next((g for g in groups if _material(col, g)), None)
        if where is None:
            continue
        verb, unit, what = CONFOUND_WORDS[col]
        order = list(compare or ())
        values = sorted(((r.method, row[col]) for r, row in where),
                        key=lambda v: (order.index(v[0]) if v[0] in order else len(order), method_rank(v[0])))  # fmt: skip
        first, *rest = values
        listed = f"{first[0].upper()} {verb} {first[1]}{' ' + unit if unit else ''}, " + ", ".join(
            f"{m.upper()} {v}" for m, v in rest
        )
        n_groups = sum(_material(col, g) for g in groups)
        r0 = where[0][0]
        at = f"at {r0.point or 'the only grid point'}, seed {r0.seed}"
        contrast_name = " − ".join(m.upper() for m, _ in values[:2])
        out.append(
            f"{listed} ({at}; {n_groups} of {len(groups)} compared groups differ): "
            f"a {contrast_name} difference is confounded with {what}."
        )
    return out


def audit_table(exp: Experiment, compare: tuple[str, str] | None = None) -> Table:
    runs = sorted(exp.runs, key=lambda r: (not r.is_base, method_rank(r.method), r.point, str(r.seed)))
    rows = [audit_row(r) for r in runs]
    table = Table(
        "audit",
        "Matched-settings audit (per run)",
        AUDIT_COLUMNS,
        [[r[c] for c in AUDIT_COLUMNS] for r in rows],
    )
    groups = matched_groups(exp)
    within = sorted(
        {c for g in groups for c in differing([row for _, row in g], ["method", *COMPARED])},
        key=["method", *COMPARED].index,
    )
    if not groups:
        table.notes.append(
            "No matched groups (runs of different methods sharing grid point and seed) to compare yet."
        )
    elif within == ["method"]:
        table.notes.append("Runs compared at the same grid point and seed differ only in: method.")
    else:
        setup = [c for c in within if c not in ("method", "steps", "sequences", "tokens", "λD/λU")]
        prefix = "WARNING: " if setup else ""
        table.notes.append(
            f"{prefix}Runs compared at the same grid point and seed differ in: {', '.join(within)}."
            + (
                " Only the method (and the budget's outcome) should differ; the comparison is not matched."
                if setup
                else ""
            )
        )
    table.notes += [f"Confound: {c}" for c in confounds(exp, compare)] + near_equal(exp)
    across = (
        differing([audit_row(r) for r in exp.trained], ["point", "seed", *COMPARED]) if exp.trained else []
    )
    table.notes.append(f"Across all trained runs these columns vary: {', '.join(across) or 'none'}.")
    settings = {}
    for r in runs:
        if r.results:
            settings.setdefault(settings_hash(eval_settings(r)), eval_settings(r))
    for h, s in settings.items():
        table.notes.append(f"eval settings {h}: {json.dumps(s, sort_keys=True, default=str)}")
    return table


def _distinct(values: list[str]) -> str:
    seen = sorted(set(values), key=values.index)
    if len(seen) == 1:
        return seen[0]
    numbers = [float(v) for v in seen if v.replace(".", "", 1).isdigit()]
    if len(numbers) == len(seen):
        return f"{min(numbers):g}–{max(numbers):g} (varies)"
    return " / ".join(seen)


def method_audit_table(exp: Experiment, compare: tuple[str, str] | None = None) -> Table:
    """The compute each method received, one row per method (values that vary across its runs are
    shown as a range): steps, sequences, tokens, effective batch, world size, precision, budget rule."""
    columns = ["method", "runs", *COMPUTE_COLUMNS, "budget"]
    table = Table("audit_methods", "Matched-settings audit (per method)", columns, [])
    by_method: dict[str, list[dict[str, str]]] = {}
    for r in sorted(exp.trained, key=lambda r: method_rank(r.method)):
        by_method.setdefault(r.method, []).append(audit_row(r))
    data = []
    for method, rows in by_method.items():
        line = [method, str(len(rows))] + [_distinct([row[c] for row in rows]) for c in columns[2:]]
        table.rows.append(line)
        data.append(dict(zip(columns, line, strict=True)))
    table.data = pd.DataFrame(data) if data else None
    groups = matched_groups(exp)
    within = sorted(
        {c for g in groups for c in differing([row for _, row in g], ["method", *COMPARED])},
        key=["method", *COMPARED].index,
    )
    if groups:
        table.notes.append(
            "Compared runs (same grid point and seed) differ in: " + (", ".join(within) or "nothing") + "."
        )
    sentences = confounds(exp, compare)
    table.notes += near_equal(exp)
    table.notes += [f"Confound: {c}" for c in sentences] or (
        [
            "No confound: the compared methods received the same steps, sequences and tokens (within 1%), batch, processes and precision."
        ]
        if groups
        else []
    )
    if not by_method:
        table.notes.append(f"{MISSING}: no trained runs.")
    return table


# ---------------------------------------------------------------------------------------------- training


TRAINING_COLUMNS = [
    "run", "method", "seed", "point", "steps", "tokens", "wall (s)", "final loss", "best loss (step)",
    "final margin", "best margin", "final KL/z0", "final grad norm", "stopped",
]  # fmt: skip


def training_table(exp: Experiment) -> Table:
    table = Table(
        "training",
        "Training summaries",
        TRAINING_COLUMNS,
        [],
        notes=[
            "From metrics.jsonl and train_summary.json; margin = reward(desirable) − reward(undesirable), β·r."
        ],
    )
    data = []
    for r in sorted(exp.trained, key=lambda r: (r.point, method_rank(r.method), str(r.seed))):
        metrics = exp.metrics(r.run_id)
        s = training_summary(metrics, r.train_summary)
        data.append({"run_id": r.run_id, "method": r.method, "seed": r.seed, "point": r.point, **s})
        if metrics is None and r.train_summary is None:
            table.rows.append([r.run_id, r.method, str(r.seed), r.point or "—", *[MISSING] * 10])
            continue
        best = fmt(s.get("best_loss")) + (
            f" ({s['best_loss_step']})" if s.get("best_loss_step") is not None else ""
        )
        table.rows.append(
            [r.run_id, r.method, str(r.seed), r.point or "—", fmt(s.get("steps")), fmt(s.get("tokens")),
             fmt(s.get("wall_s"), 1), fmt(s.get("final_loss")), best, fmt(s.get("final_margin")),
             fmt(s.get("best_margin")), fmt(s.get("final_kl")), fmt(s.get("final_grad_norm")),
             str(s.get("stopped") or "—")]
        )  # fmt: skip
    table.data = pd.DataFrame(data) if data else None
    if not exp.trained:
        table.notes.append("missing: no trained runs.")
    return table


# ---------------------------------------------------------------------------------------------- writers


def to_markdown(table: Table) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = [f"| {' | '.join(esc(c) for c in table.columns)} |", f"|{'---|' * len(table.columns)}"]
    lines += [
        "| "
        + " | ".join(f"**{esc(v)}**" if (i, j) in table.bold else esc(v) for j, v in enumerate(row))
        + " |"
        for i, row in enumerate(table.rows)
    ]
    if not table.rows:
        lines.append(f"| {MISSING} |" + " |" * (len(table.columns) - 1))
    return "\n".join(lines + [""] + [f"- {n}" for n in table.notes])


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "Δ": r"$\Delta$",
          "λ": r"$\lambda$", "−": "-", "—": "--", "≥": r"$\geq$", "≤": r"$\leq$"}  # fmt: skip


def latex_escape(s: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(s))


def to_latex(table: Table) -> str:
    rows = [[latex_escape(v) for v in row] for row in table.rows]
    rows = [
        [f"\\textbf{{{v}}}" if (i, j) in table.bold else v for j, v in enumerate(row)]
        for i, row in enumerate(rows)
    ]
    body = "\n".join(" & ".join(r) + r" \\" for r in rows)
    return (
        f"% {latex_escape(table.title)}\n\\begin{{tabular}}{{l{'l' * (len(table.columns) - 1)}}}\n\\toprule\n"
        + " & ".join(latex_escape(c) for c in table.columns)
        + " \\\\\n\\midrule\n"
        + body
        + "\n\\bottomrule\n\\end{tabular}\n"
    )


def to_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    lines = []
    for i, row in enumerate(table.rows):
        tds = []
        for j, v in enumerate(row):
            text = f"<strong>{html.escape(v)}</strong>" if (i, j) in table.bold else html.escape(v)
            tds.append(f'<td class="missing">{text}</td>' if v == MISSING else f"<td>{text}</td>")
        lines.append("<tr>" + "".join(tds) + "</tr>")
    body = "\n".join(lines)
    if not table.rows:
        body = f'<tr><td class="missing" colspan="{len(table.columns)}">{MISSING}</td></tr>'
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
    return (
        f'<table id="table-{table.name}"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'
        + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


def to_csv(table: Table) -> str:
    return table.frame().to_csv(index=False)

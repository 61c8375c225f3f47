"""The matched-settings audit: per run (stages, hashes, data, compute, precision, budget, settings) and
per method (the compute each received), with every column that differs between compared runs named and
each material difference written as a confound sentence."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from kto_bench.report.aggregate import Experiment, Run, dig, method_rank
from kto_bench.report.labels import MISSING, fmt, settings_hash, short
from kto_bench.report.registries import TableInputs
from kto_bench.report.writers import Table


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


def build(inputs: TableInputs) -> Table:
    return audit_table(inputs.exp, inputs.compare)

"""The headline table: one row per (method, grid point) plus the base model, one column per benchmark.

Sweeps: one row per (method, grid point), labelled by the grid fields that vary, so nothing is averaged
across settings; the base model is one row shared by all points. Bold marks the best cell of a column
only when its interval separates it from every other row (its lower bound above their upper bounds, or
above their point value where they have no CI). Proportions are shown ×100 (`column_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kto_bench.report.aggregate import Experiment, method_rank
from kto_bench.report.labels import MISSING, column_label, column_order, is_win_rate, row_label
from kto_bench.report.registries import TableInputs
from kto_bench.report.stats import MeanCI, mean_ci, wilson
from kto_bench.report.writers import Table


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


def build(inputs: TableInputs) -> Table:
    return headline_table(inputs.exp, inputs.alpha)

"""The paired-differences table: compare[0] − compare[1] at each grid point where both ran, and each
compared method − the base model at the reference point, on the same items (Holm across benchmarks)."""

from __future__ import annotations

import math

import pandas as pd

from kto_bench.report.aggregate import Experiment, Run
from kto_bench.report.contrasts import contrast, runs_of
from kto_bench.report.headline import headline_cells, proportion_scale
from kto_bench.report.labels import MISSING, column_label
from kto_bench.report.registries import TableInputs
from kto_bench.report.stats import holm
from kto_bench.report.writers import Table


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


def build(inputs: TableInputs) -> Table:
    return paired_table(inputs.exp, inputs.compare, inputs.alpha)

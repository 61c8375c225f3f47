"""Report figures (PNG + SVG), drawn on matplotlib Figure objects (Agg, no pyplot state).

Okabe-Ito colours plus a distinct marker and hatch per method, so figures survive greyscale print.
Seed bands: score plots shade the t-interval across seeds (no band at n=1); training curves shade
the min-max envelope across seeds (a t-interval over 2-3 curves is mostly noise). Scores are dots
with intervals on an axis zoomed to the data (a bar from 0 would hide differences of a few points).
Files are byte-identical across renders of an unchanged store: fixed SVG hash salt, no dates or
software versions in SVG or PNG metadata.

Over 400 lines because every figure shares the style (colours, markers, hatches), the deterministic
save and the sweep helpers; the registry that names them is report/registries.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kto_bench.report.aggregate import Experiment, Run, margin_series, method_rank
from kto_bench.report.axes import IMBALANCE, NOISE, Axis
from kto_bench.report.contrasts import contrast, runs_of
from kto_bench.report.headline import column_scale, headline_cells, proportion_scale
from kto_bench.report.labels import (
    KL,
    LOSS,
    REWARD_DESIRABLE,
    REWARD_UNDESIRABLE,
    Z0,
    column_label,
    row_label,
)
from kto_bench.report.stats import mean_ci

OKABE_ITO = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
STYLE = {  # method -> (colour, marker, hatch)
    "base": ("#7f7f7f", "D", ".."),
    "sft": (OKABE_ITO[2], "^", "xx"),
    "dpo": (OKABE_ITO[4], "s", "//"),
    "kto": (OKABE_ITO[5], "o", ""),
}
EXTRA_MARKERS, EXTRA_HATCHES = ["v", "P", "X", "<", ">", "*"], ["\\\\", "--", "++", "oo", "||", "**"]


def style(method: str) -> tuple[str, str, str]:
    if method in STYLE:
        return STYLE[method]
    i = sum(ord(c) for c in method)  # stable across runs and reports
    extras = [OKABE_ITO[k] for k in (0, 1, 6, 3, 7)]
    return (
        extras[i % len(extras)],
        EXTRA_MARKERS[i % len(EXTRA_MARKERS)],
        EXTRA_HATCHES[i % len(EXTRA_HATCHES)],
    )


@dataclass
class PlotResult:
    name: str
    caption: str
    png: Path | None = None
    svg: Path | None = None
    missing: str = ""


# SVG element ids are hashes salted by this (matplotlib's default salt is random per process)
DETERMINISTIC = {"svg.hashsalt": "kto-bench", "svg.id": None, "svg.fonttype": "path"}


def save(fig: Figure, out_dir: Path, name: str, caption: str) -> PlotResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    with matplotlib.rc_context(DETERMINISTIC):
        fig.savefig(png, dpi=100, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None, "Creator": None})
    return PlotResult(name, caption, png, svg)


def _grid(n: int, width: float = 4.0, height: float = 3.2, max_cols: int = 3) -> tuple[Figure, list]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _columns(exp: Experiment) -> list[tuple[str, str]]:
    return headline_cells(exp, 0.05)[1]


def run_values(exp: Experiment, runs: list[Run], col: tuple[str, str]) -> list[float]:
    df = exp.tidy
    ids = {r.run_id for r in runs}
    sel = df[df["run_id"].isin(ids) & (df["task"] == col[0]) & (df["metric"] == col[1])]
    return sel["value"].tolist()


# ---------------------------------------------------------------------------------------------- bars


def plot_bars(exp: Experiment, alpha: float, out_dir: Path) -> PlotResult:
    caption = (
        "Score per benchmark at the reference grid point: dot = seed mean, whiskers = seed CI (Wilson for "
        "one-seed win rates). The axis is zoomed to the values, it does not start at 0."
    )
    rows, columns, cells = headline_cells(exp, alpha)
    ref = exp.reference_point()
    rows = [r for r in rows if r[0] == "base" or r[1] == ref]
    if not columns or not rows:
        return PlotResult("bars", caption, missing="no evaluation results")
    fig, axes = _grid(len(columns), 3.8, 0.6 + 0.42 * len(rows))
    for k, (ax, col) in enumerate(zip(axes, columns, strict=True)):
        scale = column_scale(cells, col)
        ys = list(range(len(rows)))[::-1]  # the first row on top
        for y, (method, _, label) in zip(ys, rows, strict=True):
            c = cells.get((label, col))
            colour, marker, _ = style(method)
            if c is None:
                ax.text(
                    0.5,
                    y,
                    "missing",
                    transform=ax.get_yaxis_transform(),
                    ha="center",
                    va="center",
                    fontsize=7,
                )
                continue
            mean = c.ci.mean * scale
            xerr = None
            if math.isfinite(c.lo):
                xerr = [[mean - c.lo * scale], [c.hi * scale - mean]]
            ax.errorbar(mean, y, xerr=xerr, fmt=marker, color=colour, ecolor=colour, capsize=3, markersize=6)
            ax.annotate(f"{mean:.1f}" if scale == 100.0 else f"{mean:.3g}", (mean, y), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=7)  # fmt: skip
        ax.set_yticks(ys, [label if m == "base" else row_label(m, "") for m, _, label in rows], fontsize=8)
        if k % 3:
            ax.tick_params(labelleft=False)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.margins(x=0.15)
        ax.set_title(column_label(*col) + (" (%)" if scale == 100.0 else ""), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    if ref:
        fig.suptitle(f"reference point: {ref}", fontsize=9)
    return save(fig, out_dir, "bars", caption)


# ---------------------------------------------------------------------------------------------- forest


def contrast_interval(
    exp: Experiment, plus: list[Run], minus: list[Run], col: tuple[str, str], *, alpha: float
) -> dict | None:
    """The one place the report's figures call `contrasts.contrast` (seeds × items, paired on items):
    estimate, lo, hi, n_items and the interval's method."""
    r = contrast(exp, plus, minus, *col, alpha=alpha)
    if r is None:
        return None
    return {"estimate": r.estimate, "lo": r.lo, "hi": r.hi, "n_items": r.n_items, "interval": r.interval}


def forest_data(exp: Experiment, compare: tuple[str, str], alpha: float) -> pd.DataFrame:
    """Every contrast the forest plot shows: compare[0] − compare[1] at each grid point where both ran,
    then each method − its base at each grid point; one row per (contrast, point, benchmark)."""
    columns = headline_cells(exp, alpha)[1]
    reference = exp.reference_point()
    points = sorted({r.point for r in exp.trained}, key=lambda p: (p != reference, p))
    a, b = compare
    families: list[tuple[str, str, list[Run], list[Run]]] = []
    for p in points:
        if runs_of(exp, a, p) and runs_of(exp, b, p):
            families.append((f"{a.upper()} − {b.upper()}", p, runs_of(exp, a, p), runs_of(exp, b, p)))
    for m in sorted({r.method for r in exp.trained}, key=method_rank):
        for p in points:
            runs = runs_of(exp, m, p)
            base = exp.base_for(runs[0]) if runs else None
            if runs and base is not None:
                families.append((f"{m.upper()} − base", p, runs, [base]))
    rows = []
    for name, point, plus, minus in families:
        for col in columns:
            ci = contrast_interval(exp, plus, minus, col, alpha=alpha)
            if ci is None:
                continue
            scale = proportion_scale(exp, col)
            rows.append({"contrast": name, "point": point, "task": col[0], "metric": col[1],
                         "benchmark": column_label(*col), "scale": scale, "n_seeds_plus": len(plus),
                         "n_seeds_minus": len(minus), **ci})  # fmt: skip
    return pd.DataFrame(
        rows,
        columns=["contrast", "point", "task", "metric", "benchmark", "scale", "n_seeds_plus", "n_seeds_minus",
                 "estimate", "lo", "hi", "n_items", "interval"],
    )  # fmt: skip


FOREST_COLOURS = [OKABE_ITO[7], OKABE_ITO[5], OKABE_ITO[4], OKABE_ITO[2], OKABE_ITO[6], OKABE_ITO[0]]


def plot_forest(data: pd.DataFrame, alpha: float, out_dir: Path) -> PlotResult:
    """The report's first figure: a forest plot of the contrasts in `data` (see `forest_data`), one panel
    per benchmark, one line per (contrast, grid point), intervals at level 1 − alpha."""
    level = f"{100 * (1 - alpha):g}%"
    caption = (
        f"Differences with {level} CIs, paired on the same evaluation items, at every grid point: "
        "the method comparison first, then each method against its base model. Points for proportions; "
        "the dotted line is no difference."
    )
    if data.empty:
        return PlotResult("forest", caption, missing="no contrast has per-item samples on both sides")
    caption += f" Interval: {'; '.join(sorted(set(data['interval'])))}."
    labels = list(
        dict.fromkeys(f"{c} · {p}" if p else c for c, p in zip(data["contrast"], data["point"], strict=True))
    )
    contrasts = list(dict.fromkeys(data["contrast"]))
    benchmarks = list(dict.fromkeys(data["benchmark"]))
    fig = Figure(figsize=(3.2 + 3.0 * len(benchmarks), 1.0 + 0.28 * len(labels)), layout="constrained")
    axes = fig.subplots(1, len(benchmarks), squeeze=False, sharey=True).ravel().tolist()
    ys = {label: len(labels) - 1 - i for i, label in enumerate(labels)}
    for ax, bench in zip(axes, benchmarks, strict=True):
        part = data[data["benchmark"] == bench]
        for row in part.itertuples():
            label = f"{row.contrast} · {row.point}" if row.point else row.contrast
            colour = FOREST_COLOURS[contrasts.index(row.contrast) % len(FOREST_COLOURS)]
            est, lo, hi = (v * row.scale for v in (row.estimate, row.lo, row.hi))
            xerr = [[est - lo], [hi - est]] if math.isfinite(lo) and math.isfinite(hi) else None
            ax.errorbar(
                est, ys[label], xerr=xerr, fmt="o", color=colour, ecolor=colour, capsize=2, markersize=4
            )
        ax.axvline(0.0, color="black", linestyle=":", linewidth=1)
        bounds = np.abs(part[["estimate", "lo", "hi"]].to_numpy(dtype=float) * part[["scale"]].to_numpy())
        if np.nanmax(bounds, initial=0.0) < 1e-9:  # every difference is exactly 0 (e.g. identical answers)
            ax.set_xlim(-1.0, 1.0)
        for i in range(1, len(contrasts)):  # a rule between contrast families
            first = next(lab for lab in labels if lab.startswith(contrasts[i] + " ·") or lab == contrasts[i])
            ax.axhline(ys[first] + 0.5, color="#bbbbbb", linewidth=0.6)
        scale = part["scale"].iloc[0] if len(part) else 1.0
        ax.set_title(bench + (" (Δ points)" if scale == 100.0 else " (Δ)"), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks([ys[lab] for lab in labels], labels, fontsize=7)
    axes[0].set_ylim(-0.7, len(labels) - 0.3)
    return save(fig, out_dir, "forest", caption)


# ---------------------------------------------------------------------------------------------- sweeps


def sweep_series(exp: Experiment, method: str, field: str, col, alpha: float) -> pd.DataFrame:
    """x, mean, lo, hi, n of a score over one grid field, everything else at the reference point."""
    xs = sorted(
        {r.grid.get(field) for r in exp.trained if r.method == method and r.grid.get(field) is not None}
    )
    out = []
    for x in xs:
        ci = mean_ci(run_values(exp, exp.select(method, {field: lambda v, x=x: v == x}), col), alpha)
        if ci.n:
            out.append({"x": float(x), "mean": ci.mean, "lo": ci.lo, "hi": ci.hi, "n": ci.n})
    return pd.DataFrame(out, columns=["x", "mean", "lo", "hi", "n"])


def _draw_series(ax, s: pd.DataFrame, method: str, scale: float, label: str) -> None:
    colour, marker, _ = style(method)
    ax.plot(s["x"], s["mean"] * scale, color=colour, marker=marker, label=label)
    band = s.dropna(subset=["lo", "hi"])
    if len(band):
        ax.fill_between(
            band["x"], band["lo"] * scale, band["hi"] * scale, color=colour, alpha=0.2, linewidth=0
        )


def _base_line(ax, exp: Experiment, col, scale: float) -> None:
    if len(exp.bases) != 1:  # one line only when the whole sweep shares one base model
        return
    values = run_values(exp, exp.bases, col)
    if values:
        ax.axhline(values[0] * scale, color=STYLE["base"][0], linestyle=":", label="base")


def _sweep_plot(exp: Experiment, alpha: float, out_dir: Path, name: str, axis: Axis, caption: str):
    field = axis.field
    if field not in exp.varying:
        return PlotResult(name, caption, missing=f"{field} does not vary in this experiment")
    columns = _columns(exp)
    if not columns:
        return PlotResult(name, caption, missing="no evaluation results")
    fig, axes = _grid(len(columns))
    methods = sorted({r.method for r in exp.trained}, key=method_rank)
    scales = {c: column_scale(headline_cells(exp, alpha)[2], c) for c in columns}
    for ax, col in zip(axes, columns, strict=True):
        scale = scales[col]
        for m in methods:
            s = sweep_series(exp, m, field, col, alpha)
            if name == "imbalance" and m == "dpo":
                _dpo_reference(ax, exp, s, scale)
            elif len(s):
                _draw_series(ax, s, m, scale, row_label(m, ""))
        _base_line(ax, exp, col, scale)
        ax.set_xlabel(axis.label)
        ax.set_title(column_label(*col) + (" (%)" if scale == 100.0 else ""), fontsize=9)
        ax.grid(alpha=0.3)
        xs = sorted({r.grid.get(field) for r in exp.trained} - {None})
        if name == "imbalance" and len(xs) > 1 and xs[0] > 0 and xs[-1] / xs[0] >= 10:
            ax.set_xscale("log")
    axes[0].legend(fontsize=8)
    return save(fig, out_dir, name, caption)


def _dpo_reference(ax, exp: Experiment, s: pd.DataFrame, scale: float) -> None:
    """DPO on full data as a horizontal line with its CI band (paper Figure 6)."""
    full = s[s["x"] == s["x"].max()] if len(s) else s
    if full.empty:
        return
    row = full.iloc[0]
    colour, _, _ = style("dpo")
    ax.axhline(row["mean"] * scale, color=colour, linestyle="--", label=f"+DPO (fraction {row['x']:g})")
    if np.isfinite(row["lo"]):
        ax.axhspan(row["lo"] * scale, row["hi"] * scale, color=colour, alpha=0.15, linewidth=0)


def plot_noise(exp: Experiment, alpha: float, out_dir: Path) -> PlotResult:
    caption = "Score vs fraction of flipped preference labels (other settings at the reference point); bands: seed CI."
    return _sweep_plot(exp, alpha, out_dir, "noise", NOISE, caption)


def plot_imbalance(exp: Experiment, alpha: float, out_dir: Path) -> PlotResult:
    caption = "Score vs fraction of desirable examples kept (paper Figure 6 shape); dashed line and band: DPO on full data."
    return _sweep_plot(exp, alpha, out_dir, "imbalance", IMBALANCE, caption)


# ---------------------------------------------------------------------------------------------- training


CURVES = [
    ("loss", lambda m: m.get(LOSS)),
    ("reward margin (desirable − undesirable)", margin_series),
    ("rewards: desirable (solid) / undesirable (dashed)", None),
    ("KL / z0", lambda m: m.get(KL, m.get(Z0))),
]


def _envelope(frames: list[pd.Series]) -> pd.DataFrame:
    wide = pd.concat(frames, axis=1)
    return pd.DataFrame({"mean": wide.mean(axis=1), "lo": wide.min(axis=1), "hi": wide.max(axis=1)})


def plot_training(exp: Experiment, alpha: float, out_dir: Path) -> PlotResult:
    ref = exp.reference_point()
    caption = f"Training curves at the reference point ({ref or 'all runs'}); line: seed mean, band: min-max over seeds."
    per_method: dict[str, list[pd.DataFrame]] = {}
    for r in exp.trained:
        if r.point == ref and (m := exp.metrics(r.run_id)) is not None and "step" in m:
            per_method.setdefault(r.method, []).append(m.set_index("step"))
    if not per_method:
        return PlotResult("training", caption, missing="no metrics.jsonl")
    fig, axes = _grid(len(CURVES), 4.6, 3.0, max_cols=2)
    for ax, (title, get) in zip(axes, CURVES, strict=True):
        for method in sorted(per_method, key=method_rank):
            colour, marker, _ = style(method)
            keys = [(REWARD_DESIRABLE, "-"), (REWARD_UNDESIRABLE, "--")] if get is None else [(get, "-")]
            for key, ls in keys:
                series = [(m.get(key) if isinstance(key, str) else key(m)) for m in per_method[method]]
                series = [s.dropna() for s in series if s is not None and s.notna().any()]
                if not series:
                    continue
                env = _envelope(series)
                ax.plot(
                    env.index,
                    env["mean"],
                    color=colour,
                    linestyle=ls,
                    marker=marker,
                    markevery=max(1, len(env) // 8),
                    label=row_label(method, "") if ls == "-" else None,
                )
                ax.fill_between(env.index, env["lo"], env["hi"], color=colour, alpha=0.18, linewidth=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save(fig, out_dir, "training", caption)


# ---------------------------------------------------------------------------------------------- rewards


def plot_rewards(exp: Experiment, alpha: float, out_dir: Path) -> PlotResult:
    ref = exp.reference_point()
    caption = f"Final-policy implied rewards of training examples at the reference point ({ref or '—'}), seeds pooled."
    per_method: dict[str, list[pd.DataFrame]] = {}
    for r in exp.trained:
        if (
            r.point == ref
            and (df := exp.rewards(r.run_id)) is not None
            and {"desirable", "reward"} <= set(df.columns)
        ):
            per_method.setdefault(r.method, []).append(df)
    if not per_method:
        return PlotResult("rewards", caption, missing="no rewards.jsonl in any run at the reference point")
    methods = sorted(per_method, key=method_rank)
    fig, axes = _grid(len(methods), 4.0, 3.0)
    for ax, method in zip(axes, methods, strict=True):
        df = pd.concat(per_method[method])
        values = df["reward"].astype(float)
        bins = np.linspace(values.min(), values.max() + 1e-9, 30)
        desirable = df["desirable"].astype(bool)
        ax.hist(
            values[desirable],
            bins=bins,
            alpha=0.55,
            color=OKABE_ITO[2],
            label="desirable",
            edgecolor="black",
            linewidth=0.3,
        )
        ax.hist(values[~desirable], bins=bins, alpha=0.55, color=OKABE_ITO[6], hatch="//", label="undesirable", edgecolor="black", linewidth=0.3)  # fmt: skip
        ax.set_title(row_label(method, ""), fontsize=9)
        ax.set_xlabel("implied reward β·r")
        ax.legend(fontsize=8)
    return save(fig, out_dir, "rewards", caption)

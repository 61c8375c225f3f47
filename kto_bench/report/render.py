"""Renders reports/<experiment>/: report.md, a self-contained index.html (plots embedded as base64
PNG, inline CSS, no external resource), tables/<name>.{md,csv,tex,html} and plots/<name>.{png,svg}.
A report is a pure function of the results store and the report spec: re-rendering an unchanged
store writes byte-identical files (no timestamps; see plots.save for the figures).

The report answers first: one sentence for the method comparison at the reference point and where it
holds across the grid, one sentence per claim with its verdict and interval, the confounds and the
runs that did not train, then the forest plot of every contrast; the curves and tables follow;
provenance, the per-run audit and the run lists come last.

Over 400 lines because the page order (answer first, curves, tables, provenance last) is written
once for Markdown and once for HTML, side by side; the tables come from report/registries.TABLES.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kto_bench.io import atomic_write_text, read_json
from kto_bench.report import claims_table
from kto_bench.report.aggregate import Experiment, load_experiment
from kto_bench.report.audit import confounds, method_audit_table
from kto_bench.report.claims import ClaimContext, ClaimResult, evaluate_claims
from kto_bench.report.health import Health, health_checks, health_table, untrained_runs
from kto_bench.report.labels import MISSING
from kto_bench.report.plots import PlotResult, forest_data, plot_forest
from kto_bench.report.registries import PLOTS, TABLES, TableInputs
from kto_bench.report.writers import WRITERS, Table, to_csv, to_html, to_markdown
from kto_bench.spec import ReportSpec

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222;overflow-wrap:anywhere}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
#answer{background:#f5f8fc;border:1px solid #d0dbe8;padding:.6em 1.2em;border-radius:4px}
p.answer{font-size:1.1em}ul.claims li{margin:.3em 0}
.table-wrap{max-width:100%;overflow-x:auto;margin:.5em 0}
table{border-collapse:collapse;font-size:.85em;margin:.2em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;white-space:nowrap;overflow-wrap:normal}
th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
td.missing,.missing{color:#b00020;font-style:italic}
#table-claims td,#table-paired td,#table-provenance td,#table-tuning td{white-space:normal;min-width:4em}
ul.notes{font-size:.8em;color:#555}figure{margin:1em 0}figcaption{font-size:.85em;color:#444}
img{max-width:100%;height:auto;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.8em;overflow-wrap:normal}
.verdict-reproduced{color:#006d2c;font-weight:bold}.verdict-contradicted{color:#b00020;font-weight:bold}
.verdict-not-trained,.verdict-did-not-move{color:#b00020;font-weight:bold}
"""
FRONT_TABLES = (
    "headline",
    "claims",
    "paired",
)  # spec tables shown before the always-on ones; the rest go last


def claim_context(exp: Experiment, report: ReportSpec, untrained: set[str]) -> ClaimContext:
    """The one place the report builds the claims' context. The runs that did not train are passed, so a
    claim resting on one says "not trained"."""
    return ClaimContext(exp, alpha=report.alpha, untrained=frozenset(untrained))


def build_tables(
    exp: Experiment,
    report: ReportSpec,
    claim_results: list[ClaimResult] | None = None,
    untrained: set[str] | None = None,
) -> list[Table]:
    """The tables the spec names (`report.tables`), in its order, each built by its entry in `TABLES`."""

    def claims() -> list[ClaimResult]:
        if claim_results is not None:
            return claim_results
        return evaluate_claims(report.claims, claim_context(exp, report, untrained or set()))

    inputs = TableInputs(exp, report.alpha, report.compare, claims)
    return [TABLES.get(name)(inputs) for name in report.tables]


def provenance_summary(exp: Experiment) -> list[tuple[str, str]]:
    """(label, value) lines: everything needed to trace a number back to its runs."""

    def distinct(values) -> str:
        counts = Counter(str(v) for v in values if v not in (None, ""))
        return "; ".join(f"{v} ({n} runs)" if len(counts) > 1 else v for v, n in counts.items()) or MISSING

    runs, prov = exp.runs, [r.provenance or {} for r in exp.runs]
    packages: dict[str, set[str]] = {}
    for p in prov:
        for k, v in (p.get("packages") or {}).items():
            packages.setdefault(k, set()).add(str(v))
    git = [p.get("git") or {} for p in prov]
    times = sorted(t for p in prov for t in (p.get("started_at"), p.get("finished_at")) if t)
    return [
        ("experiment", exp.name),
        ("results", str(exp.root)),
        (
            "runs",
            ", ".join(f"{r.run_id} ({r.method}, seed {r.seed})" for r in runs if not r.is_base) or MISSING,
        ),
        ("base evaluations", ", ".join(r.run_id for r in exp.bases) or MISSING),
        ("spec hash", distinct(r.meta.get("spec_hash") for r in runs if not r.is_base)),
        ("model hash", distinct(p.get("model_hash") for p in prov)),
        ("data fingerprints", distinct(p.get("data_fingerprint") for p in prov)),
        (
            "git commit",
            distinct(f"{g.get('commit')}{' (dirty)' if g.get('dirty') else ''}" for g in git if g),
        ),
        ("packages", ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(packages.items())) or MISSING),
        (
            "hardware",
            distinct(json.dumps(p.get("hardware"), sort_keys=True) for p in prov if p.get("hardware")),
        ),
        ("run times", f"{times[0]} … {times[-1]}" if times else MISSING),
        ("not compared", "; ".join(exp.stale) or "none"),
    ]


# ---------------------------------------------------------------------------------------------- the answer


def _signed(x: float, digits: int) -> str:
    text = f"{x:+.{digits}f}"
    return f"{0.0:+.{digits}f}" if float(text) == 0.0 else text  # no "-0.0"


def _ci_text(row, digits: int = 1) -> str:
    s = row.scale
    d = digits if s == 100.0 else 3
    unit = " points" if s == 100.0 else ""
    if not (math.isfinite(row.lo) and math.isfinite(row.hi)):
        return f"{_signed(row.estimate * s, d)}{unit} (no CI)"
    return f"{_signed(row.estimate * s, d)}{unit} [{_signed(row.lo * s, d)}, {_signed(row.hi * s, d)}]"


def _at_reference(part: pd.DataFrame, ref: str | None) -> pd.DataFrame:
    at_ref = part[part["point"] == (ref or "")]
    return at_ref if not at_ref.empty else part[part["point"] == part["point"].iloc[0]]


def _by_benchmark(rows: pd.DataFrame) -> str:
    return "; ".join(f"{r.benchmark} {_ci_text(r)} ({r.n_items} items)" for r in rows.itertuples())


def comparison_sentences(forest: pd.DataFrame, exp: Experiment, report: ReportSpec) -> list[str]:
    """By how much (the method contrast at the reference point, per benchmark), when (at how many grid
    points its CI lies above 0, below 0, or straddles it), and each method against its base model."""
    a, b = (m.upper() for m in report.compare)
    name = f"{a} − {b}"
    level = f"{100 * (1 - report.alpha):g}%"
    ref = exp.reference_point()
    part = forest[forest["contrast"] == name] if not forest.empty else forest
    if part.empty:
        out = [f"No {name} comparison yet: no grid point has per-item results of both methods."]
    else:
        at_ref = _at_reference(part, ref)
        where = at_ref["point"].iloc[0]
        out = [
            f"{name}{f' at {where}' if where else ''}: {_by_benchmark(at_ref)} "
            f"({level} CI, paired on the items; {at_ref['interval'].iloc[0]})."
        ]
    if part["point"].nunique() > 1:
        summaries: dict[tuple[int, str], list[str]] = {}  # benchmarks with the same pattern share a sentence
        for bench in dict.fromkeys(part["benchmark"]):
            rows = part[part["benchmark"] == bench]
            above = [r.point for r in rows.itertuples() if r.lo > 0]
            below = [r.point for r in rows.itertuples() if r.hi < 0]
            rest = len(rows) - len(above) - len(below)
            detail = []
            if above:
                detail.append(f"{a} ahead at {len(above)} ({'; '.join(above)})")
            if below:
                detail.append(f"{b} ahead at {len(below)} ({'; '.join(below)})")
            if rest:
                detail.append(f"no clear difference at {rest}")
            summaries.setdefault((len(rows), "; ".join(detail)), []).append(bench)
        for (n, detail), benches in summaries.items():
            out.append(f"Across {n} grid points on {', '.join(benches)}: {detail}.")
    base = forest[forest["contrast"].str.endswith(" − base")] if not forest.empty else forest
    if not base.empty:
        per_method = [
            f"{contrast.removesuffix(' − base')}: {_by_benchmark(_at_reference(rows, ref))}"
            for contrast, rows in base.groupby("contrast", sort=False)
        ]
        out.append(f"Against the base model{f' at {ref}' if ref else ''}: {'. '.join(per_method)}.")
    return out


def claim_sentence(r: ClaimResult, alpha: float) -> str:
    """One sentence per claim: the claims module's own (statement, measured setting, interval, paper)."""
    return claims_table.claim_sentence(r)


def health_sentence(checks: list[Health]) -> str:
    if not checks:
        return "No trained runs to check."
    untrained = sorted(untrained_runs(checks))
    unknown = [h.run_id for h in checks if h.verdict == "unknown"]
    changed = [h.changed_fraction for h in checks if h.changed_fraction is not None]
    span = (
        f" (answers changed vs base: {100 * min(changed):.1f}–{100 * max(changed):.1f}% of items)"
        if changed
        else ""
    )
    if untrained:
        head = f"{len(untrained)} of {len(checks)} runs did not move from their base model: {', '.join(untrained)}; claims resting on them are not trained."
    else:
        head = f"All {len(checks) - len(unknown)} checked runs moved from their base model{span}."
    return head + (f" Not checkable (no samples or rewards): {len(unknown)} runs." if unknown else "")


@dataclass
class Answer:
    comparison: list[str]
    claims: list[tuple[str, str]]  # (verdict, sentence)
    caveats: list[str]


def answer(exp: Experiment, report: ReportSpec, forest: pd.DataFrame, claim_results: list[ClaimResult],
           checks: list[Health]) -> Answer:  # fmt: skip
    caveats = [f"Confound: {c}" for c in confounds(exp, report.compare)] + [health_sentence(checks)]
    if exp.stale:
        caveats.append(
            f"{len(exp.stale)} result folders are not part of this comparison (listed at the end)."
        )
    return Answer(
        comparison_sentences(forest, exp, report),
        [(r.verdict, claim_sentence(r, report.alpha)) for r in claim_results],
        caveats,
    )


# ---------------------------------------------------------------------------------------------- tuning


def _is_chosen(candidate: dict, chosen: dict) -> bool:
    """chosen is either {"method": m, "params": {...}} or {method: {...params} or {"params": {...}}}."""
    method, params = candidate.get("method"), candidate.get("params")
    if isinstance(chosen.get(method), dict):
        mine = chosen[method]
        return mine.get("params", mine) == params
    return chosen.get("params", chosen) == params and chosen.get("method", method) == method


def tuning_table(exp: Experiment) -> Table | None:
    """results/<experiment>/tuning.json (hyperparameters chosen on a dev split), when present."""
    path = exp.root / "tuning.json"
    try:
        t = read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        exp.issues.append(f"{path}: unreadable ({e}); hyperparameter selection not shown")
        return None
    if t is None:
        return None
    chosen = t.get("chosen") or {}
    table = Table("tuning", "Hyperparameter selection", ["method", "parameters", "score", "chosen"], [])
    for c in t.get("candidates") or []:
        params = json.dumps(c.get("params") or {}, sort_keys=True)
        is_chosen = _is_chosen(c, chosen)
        score = c.get("score")
        table.rows.append([str(c.get("method", "—")), params, "—" if score is None else f"{score:.4g}",
                           "yes" if is_chosen else ""])  # fmt: skip
    table.notes += [
        f"procedure: {t.get('procedure', MISSING)}",
        f"on {t.get('split', MISSING)} ({t.get('n_items', MISSING)} items), disjoint from the reported items; "
        f"metric: {t.get('metric', MISSING)}; rule: {t.get('rule', MISSING)}",
        f"chosen: {json.dumps(chosen, sort_keys=True)}",
        f"command: {t.get('command', MISSING)}",
    ]
    return table


# ---------------------------------------------------------------------------------------------- writers


@dataclass
class Sections:
    answer: Answer
    forest: PlotResult
    plots: list[PlotResult]
    front: list[Table]  # after the figures: headline, claims, paired, per-method audit, health, tuning
    back: list[Table]  # at the end: per-run audit, training


def _figure_md(p: PlotResult) -> list[str]:
    if p.missing:
        return [f"{MISSING}: {p.missing}"]
    return [f"![{p.name}](plots/{p.name}.png)", "", p.caption]


def _markdown(exp: Experiment, sec: Sections, spec_text: str) -> str:
    out = [f"# {exp.name}: when does KTO beat DPO, and by how much?", ""]
    for sentence in sec.answer.comparison:
        out += [sentence, ""]
    out += [f"- **{verdict}** — {sentence}" for verdict, sentence in sec.answer.claims]
    out += ["", *[f"> {c}  " for c in sec.answer.caveats], ""]
    out += _figure_md(sec.forest)
    if sec.plots:
        out += ["", "## Curves"]
    for p in sec.plots:
        out += ["", f"### {p.name}", "", *_figure_md(p)]
    for t in sec.front:
        out += ["", f"## {t.title}", "", to_markdown(t)]
    if exp.issues:
        out += ["", "## Missing and skipped", ""] + [f"- {i}" for i in exp.issues]
    out += ["", "## Provenance", ""] + [f"- **{k}**: {v}" for k, v in provenance_summary(exp)]
    for t in sec.back:
        out += ["", f"## {t.title}", "", to_markdown(t)]
    out += ["", "## Spec", "", "```yaml", spec_text.rstrip(), "```", ""]
    return "\n".join(out)


def _table_html(t: Table) -> str:
    rendered = to_html(t)
    for v in ("reproduced", "contradicted", "not trained"):
        rendered = rendered.replace(f"<td>{v}</td>", f"<td class='verdict-{v.replace(' ', '-')}'>{v}</td>")
    return f"<h2 id='{t.name}'>{html.escape(t.title)}</h2>\n<div class='table-wrap'>{rendered}</div>"


def _figure_html(p: PlotResult, heading: str = "h3") -> str:
    esc = html.escape
    if p.missing:
        return f"<{heading}>{esc(p.name)}</{heading}><p class='missing'>{MISSING}: {esc(p.missing)}</p>"
    data = base64.b64encode(p.png.read_bytes()).decode()  # type: ignore[union-attr]
    return (
        f"<figure id='plot-{p.name}'><img alt='{esc(p.name)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{esc(p.caption)}</figcaption></figure>"
    )


def _html(exp: Experiment, sec: Sections, spec_text: str) -> str:
    esc = html.escape
    body = [f"<h1>{esc(exp.name)}: when does KTO beat DPO, and by how much?</h1>", "<section id='answer'>"]
    body += [f"<p class='answer'>{esc(s)}</p>" for s in sec.answer.comparison]
    if sec.answer.claims:
        body.append("<ul class='claims'>")
        for verdict, sentence in sec.answer.claims:
            css = "verdict-" + "-".join(verdict.split())
            body.append(f"<li><span class='{esc(css)}'>{esc(verdict)}</span> — {esc(sentence)}</li>")
        body.append("</ul>")
    body += [f"<p class='caveat'>{esc(c)}</p>" for c in sec.answer.caveats]
    body += [_figure_html(sec.forest, "h2"), "</section>"]
    if sec.plots:
        body.append("<h2 id='curves'>Curves</h2>")
    body += [_figure_html(p) for p in sec.plots]
    body += [_table_html(t) for t in sec.front]
    if exp.issues:
        body += ["<h2>Missing and skipped</h2><ul class='missing'>"] + [
            f"<li>{esc(i)}</li>" for i in exp.issues
        ]
        body.append("</ul>")
    body += [
        "<h2 id='provenance'>Provenance</h2><div class='table-wrap'><table id='table-provenance'><tbody>"
    ]
    body += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in provenance_summary(exp)]
    body.append("</tbody></table></div>")
    body += [_table_html(t) for t in sec.back]
    body += ["<h2>Spec</h2>", f"<pre>{esc(spec_text)}</pre>"]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>kto-bench report: {esc(exp.name)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def render_report(
    experiment_dir: Path,
    out_dir: Path,
    report: ReportSpec,
    spec_text: str,
    experiment: str,
    run_ids: list[str] | None = None,
) -> Path:
    """Renders the report of results/<experiment>/ into out_dir; returns the index.html path.

    `run_ids`: the runs the spec resolves to now (`[r.run_id for r in spec.expand(spec)]`); other
    folders of the store are listed as not compared. None compares every folder (an ad-hoc store)."""
    out_dir = Path(out_dir)
    exp = load_experiment(Path(experiment_dir), experiment, run_ids)
    checks = health_checks(exp)
    untrained = untrained_runs(checks)
    claim_results = evaluate_claims(report.claims, claim_context(exp, report, untrained))
    forest = forest_data(exp, report.compare, report.alpha)
    spec_tables = build_tables(exp, report, claim_results, untrained)
    tuning = tuning_table(exp)
    front = [t for t in spec_tables if t.name in FRONT_TABLES]
    front += [method_audit_table(exp, report.compare), health_table(checks)] + ([tuning] if tuning else [])
    back = [t for t in spec_tables if t.name not in FRONT_TABLES]
    forest_table = Table("forest", "Contrasts of the forest plot", list(forest.columns), [], data=forest)
    for t in [*front, *back]:
        for ext, writer in WRITERS.items():
            atomic_write_text(out_dir / "tables" / f"{t.name}.{ext}", writer(t))
    atomic_write_text(out_dir / "tables" / "forest.csv", to_csv(forest_table))
    plots_dir = out_dir / "plots"
    sec = Sections(
        answer(exp, report, forest, claim_results, checks),
        plot_forest(forest, report.alpha, plots_dir),
        [PLOTS.get(name)(exp, report.alpha, plots_dir) for name in report.plots],
        front,
        back,
    )
    atomic_write_text(out_dir / "report.md", _markdown(exp, sec, spec_text))
    index = out_dir / "index.html"
    atomic_write_text(index, _html(exp, sec, spec_text))
    return index

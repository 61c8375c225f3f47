"""Renders reports/<experiment>/: report.md, a self-contained index.html (plots embedded as base64
PNG, inline CSS, no external resource), tables/<name>.{md,csv,tex,html} and plots/<name>.{png,svg}.
A report is a pure function of the results store and the report spec."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

from kto_bench.io import atomic_write_text
from kto_bench.report.aggregate import Experiment, load_experiment
from kto_bench.report.claims import ClaimContext, claims_table, evaluate_claims
from kto_bench.report.config import ReportSpec
from kto_bench.report.plots import PLOTS, PlotResult
from kto_bench.report.tables import (
    MISSING,
    Table,
    audit_table,
    headline_table,
    paired_table,
    to_csv,
    to_html,
    to_latex,
    to_markdown,
    training_table,
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;white-space:nowrap}
th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
td.missing,.missing{color:#b00020;font-style:italic}
#table-claims td,#table-paired td{white-space:normal;min-width:4em}
ul.notes{font-size:.8em;color:#555}figure{margin:1em 0}figcaption{font-size:.85em;color:#444}
img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.8em}
.verdict-reproduced{color:#006d2c;font-weight:bold}.verdict-contradicted{color:#b00020;font-weight:bold}
"""


def build_tables(exp: Experiment, report: ReportSpec) -> list[Table]:
    builders = {
        "headline": lambda: headline_table(exp, report.alpha),
        "paired": lambda: paired_table(exp, report.compare, report.alpha),
        "audit": lambda: audit_table(exp),
        "training": lambda: training_table(exp),
        "claims": lambda: claims_table(
            evaluate_claims(report.claims, ClaimContext(exp, report.alpha)),
            report.alpha,
        ),
    }
    return [builders[name]() for name in report.tables]


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
        ("base evaluations", ", ".join(r.run_id for r in runs if r.is_base) or MISSING),
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
    ]


def _markdown(exp: Experiment, tables: list[Table], plots: list[PlotResult], spec_text: str) -> str:
    out = [f"# Report: {exp.name}", ""]
    out += [f"- **{k}**: {v}" for k, v in provenance_summary(exp)]
    if exp.issues:
        out += ["", "## Missing and skipped", ""] + [f"- {i}" for i in exp.issues]
    for t in tables:
        out += ["", f"## {t.title}", "", to_markdown(t)]
    if plots:
        out += ["", "## Figures"]
    for p in plots:
        out += ["", f"### {p.name}", ""]
        out += (
            [f"{MISSING}: {p.missing}"] if p.missing else [f"![{p.name}](plots/{p.name}.png)", "", p.caption]
        )
    out += ["", "## Spec", "", "```yaml", spec_text.rstrip(), "```", ""]
    return "\n".join(out)


def _html(exp: Experiment, tables: list[Table], plots: list[PlotResult], spec_text: str) -> str:
    esc = html.escape
    body = [f"<h1>Report: {esc(exp.name)}</h1>", "<table id='provenance'><tbody>"]
    body += [
        f"<tr><th>{esc(k)}</th><td style='white-space:normal'>{esc(v)}</td></tr>"
        for k, v in provenance_summary(exp)
    ]
    body.append("</tbody></table>")
    if exp.issues:
        body += ["<h2>Missing and skipped</h2><ul class='missing'>"] + [
            f"<li>{esc(i)}</li>" for i in exp.issues
        ]
        body.append("</ul>")
    for t in tables:
        rendered = to_html(t)
        for v in ("reproduced", "contradicted"):
            rendered = rendered.replace(f"<td>{v}</td>", f"<td class='verdict-{v}'>{v}</td>")
        body += [f"<h2 id='{t.name}'>{esc(t.title)}</h2>", rendered]
    if plots:
        body.append("<h2>Figures</h2>")
    for p in plots:
        if p.missing:
            body.append(f"<h3>{esc(p.name)}</h3><p class='missing'>{MISSING}: {esc(p.missing)}</p>")
            continue
        data = base64.b64encode(p.png.read_bytes()).decode()  # type: ignore[union-attr]
        body.append(
            f"<figure id='plot-{p.name}'><img alt='{esc(p.name)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{esc(p.caption)}</figcaption></figure>"
        )
    body += ["<h2>Spec</h2>", f"<pre>{esc(spec_text)}</pre>"]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>kto-bench report: {esc(exp.name)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def render_report(
    experiment_dir: Path, out_dir: Path, report: ReportSpec, spec_text: str, experiment: str
) -> Path:
    """Renders the report of results/<experiment>/ into out_dir; returns the index.html path."""
    out_dir = Path(out_dir)
    exp = load_experiment(Path(experiment_dir), experiment)
    tables = build_tables(exp, report)
    for t in tables:
        for ext, writer in (("md", to_markdown), ("csv", to_csv), ("tex", to_latex), ("html", to_html)):
            atomic_write_text(out_dir / "tables" / f"{t.name}.{ext}", writer(t))
    plots = [PLOTS.get(name)(exp, report.alpha, out_dir / "plots") for name in report.plots]
    atomic_write_text(out_dir / "report.md", _markdown(exp, tables, plots, spec_text))
    index = out_dir / "index.html"
    atomic_write_text(index, _html(exp, tables, plots, spec_text))
    return index

"""A report table (display rows, bold cells, notes, and a machine-readable frame) and its four
writers: Markdown, CSV, LaTeX and HTML (`WRITERS`, by file extension)."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from kto_bench.report.labels import MISSING


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


# tables/<name>.<ext>, in the order render writes them
WRITERS: dict[str, Callable[[Table], str]] = {
    "md": to_markdown,
    "csv": to_csv,
    "tex": to_latex,
    "html": to_html,
}

"""Reports: results store -> tidy table -> statistics -> tables, plots, claim verdicts -> reports/<experiment>/."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kto_bench.spec import ReportSpec


def render_report(
    experiment_dir: Path,
    out_dir: Path,
    report: ReportSpec,
    spec_text: str,
    experiment: str,
    run_ids: list[str] | None = None,
) -> Path:
    """Renders reports/<experiment>/ from results/<experiment>/; returns the index.html path.
    `run_ids`: the runs the spec resolves to now (other folders are listed, not compared).
    (Imported lazily: matplotlib and pandas are not needed to load a spec.)"""
    from kto_bench.report.render import render_report as render

    return render(experiment_dir, out_dir, report, spec_text, experiment, run_ids)


__all__ = ["render_report"]

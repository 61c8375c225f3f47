"""The report's two registries: the tables and the plots a spec's `report:` section may name.

They are the only lists of table and plot names: `ReportSpec` validates against them and renders
them in registration order by default, and `kto-bench report` builds each through them. Entries are
lazy 'module:attr' references (as lm-eval's registry), so listing and validating names imports
neither pandas nor matplotlib; the builder or plot is imported when it is used. Each entry is one
line naming where its builder is defined, with the line a listing shows.

    from kto_bench.report.registries import PLOTS, TABLES
    TABLES.in_order()            # ['headline', 'claims', 'paired', 'audit', 'training']
    TABLES.get("headline")       # kto_bench.report.headline.build, a (TableInputs) -> Table
    PLOTS.get("noise")           # kto_bench.report.plots.plot_noise, a (Experiment, alpha, out_dir) -> PlotResult
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kto_bench.registry import Registry

if TYPE_CHECKING:
    from kto_bench.report.aggregate import Experiment
    from kto_bench.report.plots import PlotResult
    from kto_bench.report.writers import Table


@dataclass(frozen=True)
class TableInputs:
    """What a table builder may read: the experiment, the report's settings, and the claims' results
    (evaluated on first use: only the claims table reads them)."""

    exp: Experiment
    alpha: float
    compare: tuple[str, str]
    claim_results: Callable[[], list[Any]]


TableBuilder = Callable[[TableInputs], "Table"]
PlotFn = Callable[["Experiment", float, Path], "PlotResult"]

TABLES: Registry[TableBuilder] = Registry("table")
for _name, _where, _doc in (
    ("headline", "kto_bench.report.headline:build", "score per method and grid point, seed CIs, best separated in bold"),
    ("claims", "kto_bench.report.claims_table:build_table", "paper claims: measured difference, sign and size verdicts"),
    ("paired", "kto_bench.report.paired:build", "paired differences on the same items, seeds × items CIs, Holm"),
    ("audit", "kto_bench.report.audit:build", "matched-settings audit per run: what differs between compared runs"),
    ("training", "kto_bench.report.training:build", "training summaries: steps, tokens, loss, reward margin, KL"),
):  # fmt: skip
    TABLES.add(_name, _where, _doc)

PLOTS: Registry[PlotFn] = Registry("plot")
for _name, _where, _doc in (
    ("bars", "kto_bench.report.plots:plot_bars", "score per benchmark at the reference grid point: dots with CI whiskers, zoomed axis"),
    ("noise", "kto_bench.report.plots:plot_noise", "score vs label flip rate per method, with seed CI bands"),
    ("imbalance", "kto_bench.report.plots:plot_imbalance", "score vs fraction of desirable data kept, DPO full-data reference"),
    ("training", "kto_bench.report.plots:plot_training", "training curves (loss, margins, rewards, KL) per method with seed bands"),
    ("rewards", "kto_bench.report.plots:plot_rewards", "final-policy reward distributions, desirable vs undesirable, per method"),
):  # fmt: skip
    PLOTS.add(_name, _where, _doc)

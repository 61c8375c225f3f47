"""Checks of names that other registries own (data sources, eval tasks, report tables, plots and claims).

The spec package is a leaf: it imports nothing of kto_bench.data, .eval or .report. It names each check
as a lazy 'module:function' entry of `CHECKS`, and `check` imports it when a spec is validated (as
lm-eval's lazy registries do). The functions live in `kto_bench/checks.py`, which may import anything.
A check returns the value it was given (validators return it) or raises ValueError, which pydantic turns
into an error at the field's file:line; `experiment` returns a list of (loc, message) problems.
"""

from __future__ import annotations

from typing import Any

from kto_bench.registry import Registry

CHECKS: Registry[Any] = Registry("spec check")
for _name, _doc in (
    ("data_source", "data.source names a registered source"),
    ("eval_task", "evaluation.tasks[].name names a registered task"),
    ("eval_variant", "the task has that variant, and the variant takes those shots"),
    ("report_tables", "report.tables are registered tables"),
    ("report_plots", "report.plots are registered plots"),
    ("report_claims", "report.claims are registered claims"),
    (
        "report_defaults",
        "the registered tables or plots in registration order (report.tables/plots defaults)",
    ),
    ("experiment", "the spec runs what it claims to measure (claims, the AlpacaEval judge)"),
):
    CHECKS.add(_name, f"kto_bench.checks:{_name}", _doc)
del _name, _doc


def check(name: str, *args: Any) -> Any:
    """Run the registered check `name` (imported on first use)."""
    return CHECKS.get(name)(*args)

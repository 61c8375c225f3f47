"""The spec's checks of names that registries own: data sources, eval tasks and their variants, report
tables, plots and claims, and whether a spec measures what it claims.

`kto_bench.spec.hooks` names each function here as a lazy 'kto_bench.checks:…' entry, so the spec package
imports none of kto_bench.data, .eval or .report, and a spec loaded anywhere is checked the same way. A
name check raises ValueError (pydantic places it at the field's file:line) and returns what it was given.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kto_bench.errors import KtoBenchError
from kto_bench.registry import Registry, did_you_mean

if TYPE_CHECKING:
    from kto_bench.spec import ExperimentSpec


def _known(kind: str, names: Iterable[str], registry: Registry[Any]) -> None:
    options = registry.names()
    for name in names:
        if name not in options:
            raise ValueError(
                f"unknown {kind} {name!r}{did_you_mean(name, options)}; known: {', '.join(options)}"
            )


def data_source(name: str) -> str:
    from kto_bench.data.sources import SOURCES

    _known("data source", [name], SOURCES)
    return name


def eval_task(name: str) -> str:
    from kto_bench.eval.tasks import TASKS

    _known("task", [name], TASKS)
    return name


def eval_variant(name: str, variant: str, num_fewshot: int | None) -> None:
    from kto_bench.eval.tasks import check_variant

    try:
        check_variant(name, variant, num_fewshot)
    except KtoBenchError as e:
        raise ValueError(str(e)) from None


def report_tables(names: list[str]) -> list[str]:
    from kto_bench.report.registries import TABLES  # lazy entries: no pandas or matplotlib

    _known("table", names, TABLES)
    return names


def report_plots(names: list[str]) -> list[str]:
    from kto_bench.report.registries import PLOTS

    _known("plot", names, PLOTS)
    return names


def report_defaults(kind: str) -> list[str]:
    """What a spec renders when it names no tables (`kind` "tables") or plots ("plots"): all of them."""
    from kto_bench.report.registries import PLOTS, TABLES

    return {"tables": TABLES, "plots": PLOTS}[kind].in_order()


def report_claims(names: list[str]) -> list[str]:
    from kto_bench.report.claims import CLAIMS  # numpy/pandas only when claims are named

    _known("claim", names, CLAIMS)
    return names


def experiment(spec: ExperimentSpec) -> list[tuple[tuple, str]]:
    """(loc, message) problems of a spec that validates but does not run what it claims to measure: each
    named claim's task, methods and grid points (report/claims.py `spec_problems`), and the AlpacaEval
    task and its judge go together."""
    tasks = {t.name for t in spec.evaluation.tasks}
    problems = []
    if spec.evaluation.judge is not None and "alpaca_eval" not in tasks:
        problems.append(
            (("evaluation", "judge"), "evaluation.judge: set, but no task uses it; add `- {name: alpaca_eval}` to "
             "evaluation.tasks, or remove the judge")
        )  # fmt: skip
    if spec.evaluation.judge is None and "alpaca_eval" in tasks:
        problems.append(
            (("evaluation", "tasks"), "evaluation.tasks: alpaca_eval needs evaluation.judge: {type: api} (OPENAI_API_KEY) "
             "or {type: local, model: <causal LM path>}")
        )  # fmt: skip
    if spec.report.claims:
        from kto_bench.report.claims import spec_problems

        problems += [(("report", "claims", i), f"report.claims: {msg}") for i, msg in spec_problems(spec)]
    return problems

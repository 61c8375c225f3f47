"""Experiment specs: typed models, YAML loading with file/line errors, grid expansion, run ids.

A leaf package: it imports kto_bench.methods (each method's config), errors, io and registry, and nothing of
kto_bench.data, .eval or .report; names those own are checked through `hooks` (kto_bench/checks.py).

schema      model, data, corruption and training sections (`Strict`: unknown keys are errors)
evaluation  evaluation tasks, engine settings, AlpacaEval's judge
report      the report section (tables, plots, claims)
experiment  RunSpec (what a run id hashes), ExperimentSpec, UNHASHED
lines       YAML composition (bounded) and the line of each key
messages    validation errors as file:line messages
overrides   `--set a.b=c`, smoke runs (`--limit N`)
grid        expansion into runs, grid values
load        load_spec / parse_spec
hooks       the registered checks of names other registries own
"""

from __future__ import annotations

from kto_bench.methods import Method
from kto_bench.spec.evaluation import EvalTaskSpec, EvaluationSpec, JudgeSpec
from kto_bench.spec.experiment import UNHASHED, ExperimentSpec, GridBlock, RunSpec, TrackingSpec
from kto_bench.spec.grid import expand, grid_fields, grid_values, slug
from kto_bench.spec.lines import MAX_YAML_DEPTH, MAX_YAML_NODES
from kto_bench.spec.load import load_spec, parse_spec
from kto_bench.spec.overrides import parse_overrides, smoke_overrides
from kto_bench.spec.report import ReportSpec
from kto_bench.spec.schema import (
    DEMO_WORLDS,
    BudgetSpec,
    CorruptionSpec,
    DataSpec,
    DemoWorldSpec,
    LoraSpec,
    ModelSpec,
    Strict,
    TrainingSpec,
)

__all__ = [
    "DEMO_WORLDS",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "UNHASHED",
    "BudgetSpec",
    "CorruptionSpec",
    "DataSpec",
    "DemoWorldSpec",
    "EvalTaskSpec",
    "EvaluationSpec",
    "ExperimentSpec",
    "GridBlock",
    "JudgeSpec",
    "LoraSpec",
    "Method",
    "ModelSpec",
    "ReportSpec",
    "RunSpec",
    "Strict",
    "TrackingSpec",
    "TrainingSpec",
    "expand",
    "grid_fields",
    "grid_values",
    "load_spec",
    "parse_overrides",
    "parse_spec",
    "slug",
    "smoke_overrides",
]

"""Grid expansion: an experiment's runs (methods × seeds × each grid block's cross product) and their
grid values."""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from kto_bench.errors import SpecError
from kto_bench.methods import METHODS
from kto_bench.registry import did_you_mean
from kto_bench.spec.experiment import ExperimentSpec, RunSpec
from kto_bench.spec.messages import format_errors, unwrap
from kto_bench.spec.overrides import set_dotted


def grid_paths() -> set[str]:
    """Every dotted path a grid may vary (leaves of RunSpec, plus 'method' and 'seed')."""
    paths = {"method", "seed"}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            tp = unwrap(f.annotation)
            dotted = f"{prefix}{name}"
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                walk(tp, dotted + ".")
            elif name == "method":
                for m in METHODS.names():
                    walk(METHODS.get(m), "method.")
            else:
                paths.add(dotted)

    walk(RunSpec, "")
    return paths


def check_grid(spec: ExperimentSpec, source: str, lines: dict[tuple, int]) -> None:
    known = grid_paths()
    names = [m.name for m in spec.methods]
    for i, block in enumerate(spec.grid):
        for key, values in block.items():
            where = f"{source}:{lines.get(('grid', i, key)) or lines.get(('grid', key)) or lines.get(('grid',), '?')}"
            if key not in known:
                raise SpecError(
                    f"{where}: grid.{key}: not a field of a run{did_you_mean(key, known)}; "
                    "grid keys are dotted paths such as corruption.flip_rate, training.lr, method.beta, seed, method"
                )
            if not values:
                raise SpecError(f"{where}: grid.{key}: give a non-empty list of values")
            if key == "method":
                bad = [v for v in values if v not in names]
                if bad:
                    raise SpecError(f"{where}: grid.method: {bad} not among the spec's methods {names}")


def expand(spec: ExperimentSpec, source: str = "<spec>") -> list[RunSpec]:
    """The runs of an experiment: methods × seeds × each grid block's cross product (deduplicated)."""
    base = spec.model_dump(
        mode="json",
        exclude={"name", "description", "requires", "methods", "seeds", "report", "grid", "tracking"},
    )
    methods = {m.name: m.model_dump(mode="json") for m in spec.methods}
    runs: dict[str, RunSpec] = {}
    for block in spec.grid or [{}]:
        keys = [k for k in block if k not in ("method", "seed")]
        for values in itertools.product(*(block[k] for k in keys)):
            for mname in block.get("method", list(methods)):
                for seed in block.get("seed", spec.seeds):
                    raw = copy.deepcopy(base) | {"method": copy.deepcopy(methods[mname]), "seed": seed}
                    for k, v in zip(keys, values, strict=True):
                        if k.startswith("method.") and k.split(".", 1)[1] not in raw["method"]:
                            continue  # a knob of another method (e.g. method.label_smoothing for kto)
                        set_dotted(raw, k, v)
                    try:
                        run = RunSpec.model_validate(raw)
                    except ValidationError as e:
                        point = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
                        raise SpecError(
                            f"{source}: grid point ({point}, method={mname}, seed={seed}) is invalid:\n"
                            + format_errors(e, source, {})
                        ) from None
                    runs.setdefault(run.run_id, run)
    return list(runs.values())


def grid_fields(spec: ExperimentSpec) -> list[str]:
    return sorted({k for block in spec.grid for k in block if k not in ("method", "seed")})


def grid_values(spec: ExperimentSpec, run: RunSpec) -> dict[str, Any]:
    """The run's value of every field any grid block varies (for tables and plots)."""
    dumped = run.model_dump(mode="json")
    out = {}
    for dotted in grid_fields(spec):
        node: Any = dumped
        for k in dotted.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        out[dotted] = node
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")

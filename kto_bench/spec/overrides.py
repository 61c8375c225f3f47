"""Dotted overrides of a raw spec (`--set a.b=c`, grid points) and what a smoke run (`--limit N`) shrinks."""

from __future__ import annotations

from typing import Any

import yaml

from kto_bench.errors import SpecError
from kto_bench.spec.experiment import ExperimentSpec


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a raw spec; a number indexes a list (`evaluation.tasks.0.limit`)."""
    keys = dotted.split(".")
    node: Any = d
    for i, k in enumerate(keys):
        where = ".".join(keys[:i]) or "the spec"
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                valid = f"an index from 0 to {len(node) - 1}" if node else "none: the list is empty"
                raise SpecError(f"--set {dotted}: {where} is a list of {len(node)}; {k!r} is not {valid}")
            k = int(k)
        elif not isinstance(node, dict):
            raise SpecError(f"--set {dotted}: {where} is not a mapping or a list")
        if last:
            node[k] = value
        else:
            node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=c` strings from the command line into {dotted: YAML-parsed value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.lr=1e-6")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def smoke_overrides(spec: ExperimentSpec, n: int) -> dict[str, Any]:
    """`kto-bench run --limit N`, a smoke run of every stage: at most N source rows, N optimizer steps and N
    items per evaluation task. They are spec fields, so a smoke run has run ids of its own."""
    if n <= 0:
        raise SpecError(f"--limit {n}: give a positive number of rows, steps and items, e.g. --limit 8")
    tasks = spec.evaluation.tasks
    return {
        "data.limit": min(spec.data.limit or n, n),
        "training.budget": {"rule": "steps", "value": n},
        **{f"evaluation.tasks.{i}.limit": min(t.limit or n, n) for i, t in enumerate(tasks)},
    }

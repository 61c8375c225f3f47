"""Pydantic validation errors as spec errors: file:line, dotted field, what is wrong and the fix."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ValidationError

from kto_bench.methods import METHODS
from kto_bench.registry import did_you_mean
from kto_bench.spec.experiment import ExperimentSpec
from kto_bench.spec.lines import line_for


def fields_at(loc: tuple) -> list[str]:
    """Field names of the model a loc points into (best effort, for did-you-mean)."""
    model: Any = ExperimentSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if isinstance(model, type) and issubclass(model, BaseModel):
            if part in model.model_fields:
                model = unwrap(model.model_fields[part].annotation)
            else:  # a discriminator tag such as 'kto'
                model = METHODS.get(part) if part in METHODS else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def unwrap_union(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def unwrap(tp: Any) -> Any:
    tp = unwrap_union(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        models = [a for a in typing.get_args(tp) if a is not type(None)]
        return unwrap(models[0]) if len(models) == 1 else tp
    return tp


def format_errors(err: ValidationError, source: str, lines: dict[tuple, int]) -> str:
    msgs = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = ".".join(str(p) for p in loc if not (isinstance(p, str) and p in TAGS)) or "(top level)"
        line = line_for(loc, lines)
        where = f"{source}:{line}" if line else source
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            hint = did_you_mean(key, fields_at(loc)) or ""
            fix = f"remove it{hint.replace(' (did', '; did').rstrip(')') if hint else ''}"
            msgs.append(f"{where}: {field}: unknown key {key!r}; {fix}")
        elif e["type"] == "missing":
            msgs.append(f"{where}: {field}: required field is missing; add it")
        else:
            got = "" if e["type"].startswith("value_error") else f" (got {e.get('input')!r})"
            msgs.append(f"{where}: {field}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "\n".join(msgs)


# parts of a pydantic loc that are no field: the methods' discriminator tags and validator wrappers
TAGS = {*METHODS.names(), "function-after", "function-before"}

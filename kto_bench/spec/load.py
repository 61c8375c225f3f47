"""Loading a spec: read, parse, apply overrides, validate; every error names file, line, field and fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kto_bench.errors import SpecError
from kto_bench.spec.experiment import ExperimentSpec
from kto_bench.spec.grid import check_grid, expand
from kto_bench.spec.hooks import check
from kto_bench.spec.lines import compose, line_for, line_map
from kto_bench.spec.messages import format_errors
from kto_bench.spec.overrides import set_dotted


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    """Read and validate an experiment YAML; errors name file, line, field path and fix."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file; list shipped specs with `ls experiments/`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    return parse_spec(text, str(path), overrides)


def parse_spec(text: str, source: str = "<spec>", overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    try:
        root = compose(text, source)
        raw = yaml.SafeLoader("").construct_document(root) if root is not None else None
        lines = line_map(text, root)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise SpecError(f"{where}: malformed YAML: {getattr(e, 'problem', e)}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping with keys name, model, data, methods, …")
    raw = copy.deepcopy(raw)
    for k, v in (overrides or {}).items():
        set_dotted(raw, k, v)
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(format_errors(e, source, lines)) from None
    check_grid(spec, source, lines)
    expand(spec, source=source)  # every grid point must validate as a run
    problems = check("experiment", spec)  # it runs what it claims to measure (kto_bench/checks.py)
    if problems:
        raise SpecError("\n".join(f"{source}:{line_for(loc, lines) or '?'}: {msg}" for loc, msg in problems))
    return spec

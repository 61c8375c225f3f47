"""Hyperparameters chosen on a dev split, by a recorded procedure that anyone can rerun.

`tune(spec_path, param, values)` trains every method of the spec once per candidate value (one seed, no
label noise, full data, every other setting as the spec has it), scores each trained model on a dev task
whose items are disjoint from the reported ones (default: the registered tuning split, `TaskEntry.dev`), picks the value with the best
mean dev score over methods (one value for all methods: the comparison stays matched), and writes
results/<experiment>/tuning.json. The runs live in their own experiment, results/<experiment>-tuning/, so
they never mix with the reported runs; they are cached and resumable like any run.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from statistics import mean

from kto_bench.errors import KtoBenchError
from kto_bench.io import atomic_write_json, read_json
from kto_bench.spec import expand, load_spec

DEV_METRIC = "exact_match,strict-match"


def _score(path: Path, metric: str) -> tuple[float, int]:
    if not path.exists():
        raise KtoBenchError(f"tuning: {path} is missing (the run did not finish its evaluation)")
    result = read_json(path)
    for m in result["metrics"]:
        if m["metric"] == metric:
            return float(m["value"]), int(m["n"])
    raise KtoBenchError(f"tuning: {path} has no metric {metric!r}")


def tune(
    spec_path: Path,
    param: str,
    values: list[float],
    results_root: Path,
    *,
    task: str | None = None,
    metric: str = DEV_METRIC,
    seed: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """Run the tuning grid and write results/<experiment>/tuning.json; returns the record."""
    from kto_bench.runner import run_experiment

    if not values:
        raise KtoBenchError("tune: give at least one candidate value")
    if task is None:
        from kto_bench.eval.tasks import dev_task

        task = dev_task()
    spec = load_spec(spec_path, overrides)
    seed = spec.seeds[0] if seed is None else seed
    chat = any(t.apply_chat_template for t in spec.evaluation.tasks)
    tuning = load_spec(
        spec_path,
        {
            **(overrides or {}),
            "name": f"{spec.name}-tuning",
            "seeds": [seed],
            "corruption": {},
            "grid": [{param: values}],
            "evaluation.tasks": [{"name": task, "apply_chat_template": chat}],
            "report": {},
        },
    )
    run_experiment(tuning, results_root)
    folder = results_root / tuning.name
    candidates, n_items = [], None
    for run in expand(tuning):
        dumped = run.model_dump(mode="json")
        value = dumped
        for k in param.split("."):
            value = value[k]
        score, n_items = _score(folder / run.run_id / "eval" / f"{task}.json", metric)
        candidates.append(
            {"method": run.method.name, "params": {param: value}, "score": score, "run_id": run.run_id}
        )
    base = sorted(folder.glob(f"base-*/eval/{task}.json"))
    by_value: dict[float, list[float]] = {}
    for c in candidates:
        by_value.setdefault(c["params"][param], []).append(c["score"])
    # the best mean over methods; a tie goes to the smaller value (the gentler change to the base model)
    chosen = max(sorted(by_value), key=lambda v: (round(mean(by_value[v]), 12), -v))
    command = f"python -m kto_bench tune {spec_path} --param {param} --values " + ",".join(
        f"{v:g}" for v in values
    )
    if seed != spec.seeds[0]:
        command += f" --seed {seed}"
    command += "".join(f" --set {shlex.quote(f'{k}={v}')}" for k, v in (overrides or {}).items())
    record = {
        "procedure": (
            f"Each candidate {param} trains every method of the spec once (seed {seed}, flip rate 0, full "
            f"data, all other settings as in the spec) and scores {metric} on the {task} split "
            f"({n_items} items, disjoint from the reported items)."
        ),
        "command": command,
        "split": "dev",
        "task": task,
        "n_items": n_items,
        "metric": metric,
        "candidates": candidates,
        "base_score": _score(base[0], metric)[0] if base else None,
        "chosen": {param: chosen},
        "rule": "best mean dev score over methods (one value for every method); ties go to the smaller value",
        "tuning_experiment": tuning.name,  # its runs (ids above) say exactly what was trained
    }
    atomic_write_json(results_root / spec.name / "tuning.json", record)
    return record

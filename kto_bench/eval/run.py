"""The evaluation driver: run the spec's tasks on a loaded model and write one TaskResult JSON + samples
per task (resuming: a task whose result exists is not rerun).

Heavy imports (lm-eval, torch) happen inside `run_evaluation`, so importing this module is cheap.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from kto_bench.errors import EvalError
from kto_bench.io import atomic_write_json, write_jsonl

console = Console(stderr=True)


def _completed(path: Path, allow_code_execution: bool) -> dict | None:
    """The stored result if this task needs no rerun (a skip is rerun once code execution is allowed)."""
    if not path.is_file():
        return None
    from kto_bench.store import read_store_json

    result = read_store_json(path, fix="delete it and rerun: that task is then evaluated again")
    if result.get("status") == "skipped" and allow_code_execution:
        return None
    return result


def run_evaluation(
    model,
    tokenizer,
    evaluation,
    out_dir: Path,
    *,
    model_label: str,
    data_files: dict[str, Path] | None = None,
    lm=None,
) -> list[dict]:
    """Run every task of `evaluation` (an EvaluationSpec); write out_dir/<task>.json + <task>.samples.jsonl.

    `lm`: an lm-eval model to run instead of the one `evaluation.backend` builds over `model` (the bench's
    lm-eval `hf` contender, built by lm-eval from a model folder as `lm_eval --model hf` builds it).

    Tasks whose result JSON exists are skipped (resume). `data_files` maps a task name to its data file
    (a model's own tasks: `models.task_data`; or a local copy replacing an offline mirror); a task with
    only its own data and no file here gets its registered default (`TaskEntry.default_data`).
    """
    from kto_bench.eval.lm_bridge import build_lm, evaluate_task, to_task_result
    from kto_bench.eval.tasks import TASKS, prepare_task

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_files = dict(data_files or {})
    results: list[dict] = []
    backend = evaluation.backend if lm is None else f"lm-eval {type(lm).__name__}"
    total = len(evaluation.tasks)
    for i, spec in enumerate(evaluation.tasks, 1):
        key = result_key(spec)
        path = out_dir / f"{key}.json"
        if (done := _completed(path, evaluation.allow_code_execution)) is not None:
            console.print(f"[dim][{i}/{total}] {key}: already evaluated, skipping[/dim]")
            results.append(done)
            continue
        entry = TASKS.get(spec.name)
        settings: dict[str, Any] = {
            "apply_chat_template": spec.apply_chat_template,
            "limit": spec.limit,
            "seed": evaluation.seed,
            "backend": backend,
            "max_new_tokens": spec.max_new_tokens,
        }
        if entry.needs_code_execution and not evaluation.allow_code_execution:
            result = skipped_result(spec, model_label, settings)
            console.print(f"[yellow][{i}/{total}] {key}: skipped — {result['message']}[/yellow]")
            atomic_write_json(path, result, sort_keys=False)
            results.append(result)
            continue
        if entry.needs_code_execution:
            settings["sandbox"] = code_execution_settings()  # refuses here, before generation, if unisolated
        if entry.runner is not None:  # a task outside lm-eval (AlpacaEval): it writes its own result files
            import importlib

            module, fn = entry.runner.split(":")
            console.print(f"[bold][{i}/{total}] {key}[/bold] ({spec.variant}, {backend})")
            result = getattr(importlib.import_module(module), fn)(
                model, tokenizer, spec, evaluation, out_dir, model_label=model_label
            )
            results.append(result)
            continue
        if entry.default_data and spec.name not in data_files:
            import importlib

            module, fn = entry.default_data.split(":")
            data_files.update(getattr(importlib.import_module(module), fn)(out_dir / "_data"))
        console.print(f"[bold][{i}/{total}] {key}[/bold] ({spec.variant}, {backend})")
        with tempfile.TemporaryDirectory(prefix="kto-bench-tasks-") as include_dir:
            task = prepare_task(
                spec.name,
                spec.variant,
                Path(include_dir),
                num_fewshot=spec.num_fewshot,
                apply_chat_template=spec.apply_chat_template,
                data_file=data_files.get(spec.name),
            )
            if lm is None:
                lm = build_lm(
                    evaluation.backend,
                    model,
                    tokenizer,
                    batch_size=evaluation.batch_size,
                    seed=evaluation.seed,
                    engine_options=evaluation.engine_options(),
                )
            raw = evaluate_task(
                lm,
                task,
                limit=spec.limit,
                apply_chat_template=spec.apply_chat_template,
                seed=evaluation.seed,
                max_new_tokens=spec.max_new_tokens,
                allow_code_execution=evaluation.allow_code_execution,
            )
        samples_file = f"{key}.samples.jsonl"
        result, samples = to_task_result(
            raw, task, model_label=model_label, settings=settings, samples_file=samples_file
        )
        write_jsonl(out_dir / samples_file, samples, default=str)
        atomic_write_json(path, result, sort_keys=False)  # last: marks the task done
        summary = ", ".join(f"{m['metric']}={m['value']:.3f}" for m in result["metrics"])
        console.print(f"[green][{i}/{total}] {key}: {summary}[/green]")
        results.append(result)
    return results


def result_key(spec) -> str:
    """File stem of a task's result: its name (the spec validator keeps names unique per evaluation)."""
    return spec.name


def code_execution_settings() -> dict[str, Any]:
    """The sandbox a code-executing task runs in (recorded as the result's `settings.sandbox`).

    Raises EvalError when the machine offers no isolation and running without it was not forced
    (`--allow-unisolated-code-execution`); see docs/SANDBOX.md.
    """
    from kto_bench.eval.sandbox import require_isolation, sandbox_report

    require_isolation()
    return sandbox_report()


def skipped_result(spec, model_label: str, settings: dict[str, Any]) -> dict:
    """A TaskResult recording that code-executing task was not run, and how to opt in."""
    try:
        from kto_bench.eval.sandbox import require_opt_in

        require_opt_in(False)
        message = "generated code is executed only with evaluation.allow_code_execution: true"
    except EvalError as e:
        message = str(e)
    return {
        "task": spec.name,
        "variant": spec.variant,
        "model": model_label,
        "status": "skipped",
        "message": message,
        "metrics": [],
        "settings": {"num_fewshot": spec.num_fewshot, **settings},
        "harness": {},
        "samples_file": None,
    }

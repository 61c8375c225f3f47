"""`kto-bench bench eval`: `kto-bench eval` against lm-eval's `hf` backend, on the same tasks, items and model.

    ours    evaluate.evaluate: the function `kto-bench eval MODEL --tasks …` runs (our engine, one task at a time
            so each task is timed on its own), into a temporary results folder
    stock   lm-eval's `hf` model built from its registry with the model folder and a batch size, as
            `lm_eval --model hf --model_args pretrained=FOLDER --batch_size B` builds it, once per batch size
            (1, 64 and `auto` by default), then the same prepared task, limit, shots, chat template and seeds

Both sides load the model from the same folder in the same dtype; the record says how far they agree (the
metrics, identical generations, the largest log-likelihood difference), so the timings compare equal work.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kto_bench.bench import record
from kto_bench.bench.record import MAX_NEW_TOKENS, PRESETS, BenchSettings, PeakMemory, sync
from kto_bench.io import read_json, read_jsonl


def evaluation(s: BenchSettings, task: str):
    """One task of the preset as the EvaluationSpec `kto-bench eval` builds from its flags."""
    from kto_bench.spec import EvalTaskSpec, EvaluationSpec

    cap = MAX_NEW_TOKENS.get(s.model_config)
    options = PRESETS[s.model_config]["tasks"][task] | {"limit": s.limit, "max_new_tokens": cap}
    return EvaluationSpec(tasks=[EvalTaskSpec(name=task, **options)], batch_size=s.eval_batch_size, seed=1234)


def target(s: BenchSettings):
    """The preset's model as `kto-bench eval` resolves a MODEL (a demo world's model keeps its world: the
    demo tasks' held-out files are its own)."""
    from kto_bench import models
    from kto_bench.evaluate import Target, resolve_model
    from kto_bench.spec import ModelSpec

    dtype = "bfloat16" if s.resolved_device().type == "cuda" else "float32"
    if s.model is not None:
        return resolve_model(s.model, dtype)
    spec = ModelSpec.model_validate(PRESETS[s.model_config]["model"] | {"dtype": dtype})
    return Target(spec, models.resolve(spec), s.model_config, spec if spec.source == "demo" else None)


def run_ours(s: BenchSettings, tgt, task: str, out: Path) -> dict[str, Any]:
    """`kto-bench eval` of one task (`evaluate.evaluate`, our engine), timed from model load to results."""
    from kto_bench.evaluate import evaluate

    return timed(s, lambda: evaluate(tgt, evaluation(s, task), out / f"ours-{task}")[0] / "eval")


def run_stock(s: BenchSettings, tgt, task: str, batch_size: int | str, out: Path) -> dict[str, Any]:
    """lm-eval's `hf` model, built by lm-eval's registry from the model folder as `simple_evaluate(model="hf",
    model_args="pretrained=…", batch_size=…)` builds it, run by the eval stage's own task loop."""
    from lm_eval.api.registry import get_model

    from kto_bench import models
    from kto_bench.eval.run import run_evaluation

    files = models.task_data(tgt.own_model) if tgt.own_model else None  # as `kto-bench eval` passes them
    folder = out / f"lm-eval-hf-b{batch_size}-{task}"
    built = {}

    def run() -> Path:
        built["lm"] = get_model("hf").create_from_arg_string(
            f"pretrained={tgt.where},dtype={tgt.model.dtype}",
            {"batch_size": batch_size, "max_batch_size": 64, "device": str(s.resolved_device())},
        )
        run_evaluation(
            None,
            None,
            evaluation(s, task),
            folder,
            model_label="lm-eval-hf",
            data_files=files,
            lm=built["lm"],
        )
        return folder

    got = timed(s, run)
    return got | {"detected": getattr(built["lm"], "batch_sizes", None) or None}


def timed(s: BenchSettings, run) -> dict[str, Any]:
    """Run one contender (it returns its eval folder); its seconds, peak memory, TaskResult and samples."""
    device = s.resolved_device()
    with PeakMemory(device) as mem:
        sync(device)
        t0 = time.perf_counter()
        folder = run()
        sync(device)
        secs = time.perf_counter() - t0
    (result_path,) = (p for p in folder.glob("*.json"))
    result = read_json(result_path)
    samples = read_jsonl(folder / result["samples_file"])
    return {"secs": secs, "memory": mem.record(), "result": result, "samples": samples}


def _row(side: str, task: str, batch, got: dict, tok, n_params: int, peak: float | None) -> dict[str, Any]:
    samples = got["samples"]
    texts = [
        s["output"] for s in samples if isinstance(s.get("output"), str)
    ]  # generation (choices: an index)
    generated = sum(len(tok(x, add_special_tokens=False)["input_ids"]) for x in texts)
    prompts = sum(len(tok(s["prompt"], add_special_tokens=False)["input_ids"]) for s in samples)
    secs = got["secs"]
    return {
        "side": side,
        "task": task,
        "name": f"{side}-{task}" if side == "ours" else f"{side}-b{batch}-{task}",
        "batch_size": batch,
        "batch_size_detected": got.get("detected"),
        "requests": len(samples),
        "measured_s": secs,  # model load + task build + evaluation, as a user's command pays it
        "requests_per_s": len(samples) / secs,
        "generated_tokens": generated,
        "generated_tokens_per_s": generated / secs,
        "tokens_per_s_processed": (prompts + generated) / secs,  # each item's prompt + its generated tokens
        "mfu": 2 * n_params * (prompts + generated) / secs / peak if peak else None,
        "metrics": {m["metric"]: m["value"] for m in got["result"]["metrics"]},
        **got["memory"],
    }


def agreement(ours: list[dict], stock: list[dict]) -> dict[str, Any]:
    """Item by item (pure): identical generations, largest log-likelihood difference, equal scores."""
    pairs = list(zip(ours, stock, strict=True))
    gen = [(a, b) for a, b in pairs if isinstance(a.get("output"), str)]
    ll = [
        abs(x - y)
        for a, b in pairs
        for x, y in zip(a.get("loglikelihoods", []), b.get("loglikelihoods", []), strict=True)
    ]
    return {
        "items": len(pairs),
        "generate_identical": sum(a["output"] == b["output"] for a, b in gen) / len(gen) if gen else None,
        "loglikelihood_max_abs_diff": max(ll) if ll else None,
        "scores_identical": sum(a["scores"] == b["scores"] for a, b in pairs) / len(pairs) if pairs else None,
    }


def bench_eval(s: BenchSettings) -> dict[str, Any]:
    from kto_bench import models

    tgt = target(s)
    tok = models.load_tokenizer(tgt.model, tgt.where)
    counts = record.param_counts(models.load_model(tgt.model, tgt.where, "cpu", dtype="float32"))
    peak = record.peak_flops(s.resolved_device())
    rows, agree = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in PRESETS[s.model_config][
            "tasks"
        ]:  # untimed: the process's first load, imports, task build
            run_ours(replace(s, limit=1), tgt, task, Path(tmp) / "warm-up")
        for task in PRESETS[s.model_config]["tasks"]:
            ours = run_ours(s, tgt, task, Path(tmp))
            rows.append(_row("ours", task, s.eval_batch_size, ours, tok, counts["flops_n"], peak))
            for b in s.batch_sizes:
                stock = run_stock(s, tgt, task, b, Path(tmp))
                rows.append(_row("lm-eval-hf", task, b, stock, tok, counts["flops_n"], peak))
                agree[f"{task}@{b}"] = agreement(ours["samples"], stock["samples"])
    ratios = [
        record.ratio(rows, f"ours-{t}", f"lm-eval-hf-b{b}-{t}", k)
        for t in PRESETS[s.model_config]["tasks"]
        for b in s.batch_sizes
        for k in ("requests_per_s", "tokens_per_s_processed")
    ]
    return {
        "rows": rows,
        "ratios": ratios,
        "agreement": agree,
        "model": {"preset": s.model_config, "spec": tgt.model.model_dump(mode="json"), "params": counts},
        "inputs": {
            "tasks": PRESETS[s.model_config]["tasks"],
            "limit": s.limit,
            "batch_sizes": list(s.batch_sizes),
        },
    }

"""`kto-bench bench train`: a run's own train stage against TRL's KTOTrainer / DPOTrainer on the same examples.

    ours   `kto-bench run`'s stages on a spec built from the preset (pipeline.stage_data, stage_reference,
           stage_train), one run per method and layout variant; throughput from the run's own metrics.jsonl
           (the loop's `time/step_s` and token counts), the reference stage timed as the one-time cost
    trl    (peer_trl.py) TRL at its defaults, then with precompute_ref_log_probs=True, on the examples our run
           trained (its microbatches, from the loop's own plan), decoded from our token ids, the same starting
           weights (loaded as the train stage loads them), steps, batch, lr, β and precision

Nothing here sets up a model, optimizer or data for our side: if the loop changes, the bench measures the change.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from kto_bench.bench import peer_trl
from kto_bench.bench.record import (
    PRESETS,
    BenchSettings,
    PeakMemory,
    model_spec,
    param_counts,
    peak_flops,
    ratio,
    summarize,
)
from kto_bench.errors import KtoBenchError
from kto_bench.io import read_json, read_jsonl

# each measured on its own: padded is the peers' layout; checkpointing matches TRL's default
VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {
    "kto": (
        {"layout": "padded"},
        {"layout": "packed"},
        {"layout": "shared"},
        {"layout": "shared", "kl_pass": "fused"},
        {"layout": "shared", "gradient_checkpointing": True},
    ),
    "dpo": (
        {"layout": "padded"},
        {"layout": "packed"},
        {"layout": "shared"},
        {"layout": "shared", "gradient_checkpointing": True},
    ),
}
DEFAULT_VARIANT = "shared"  # what `kto-bench run` uses (TrainingSpec defaults)


def variant_name(training: dict[str, Any]) -> str:
    return (
        training["layout"]
        + (" + fused KL" if training.get("kl_pass") == "fused" else "")
        + (" + checkpointing" if training.get("gradient_checkpointing") else "")
    )


def bench_spec(s: BenchSettings, method: str, training: dict[str, Any]):
    """The experiment spec a user would write for this contender (validated as `kto-bench run` validates)."""
    import yaml

    from kto_bench.spec import parse_spec

    preset = PRESETS[s.model_config]
    cuda = s.resolved_device().type == "cuda"
    spec = {
        "name": "bench",
        "model": model_spec(s) | {"dtype": "bfloat16" if cuda else "float32"},
        "data": preset["data"],
        "methods": [{"type": method, "beta": s.beta}],
        "training": {
            "lr": s.lr,
            "batch_size": s.batch_size,
            "precision": "bf16" if cuda else "fp32",
            "schedule": "constant",
            "warmup_ratio": 0.0,
            "budget": {"rule": "steps", "value": s.steps},
            "reference_batch_size": s.reference_batch_size,
            **training,
        },
        "seeds": [s.seed],
        "evaluation": {"tasks": []},
        "tracking": {"trackers": []},
    }
    return parse_spec(yaml.safe_dump(spec), f"<bench {method} {variant_name(training)}>")


def warm_up(s: BenchSettings, root: Path) -> None:
    """The data and reference stages once, untimed, in a scratch store: the process's first model load and
    first forwards (lazy imports, kernel selection) are not charged to the first contender's reference stage."""
    from kto_bench import pipeline
    from kto_bench.spec import expand
    from kto_bench.store import run_store

    spec = bench_spec(s, s.methods[0], VARIANTS[s.methods[0]][0])
    (run,) = expand(spec)
    store = run_store(root, spec.name, run.run_id)
    pipeline.stage_data(run, store)
    pipeline.stage_reference(run, store, root)


def run_ours(s: BenchSettings, method: str, training: dict[str, Any], root: Path) -> dict[str, Any]:
    """One run's data, reference and train stages under `root`; the steps as the loop logged them."""
    from kto_bench import pipeline
    from kto_bench.spec import expand
    from kto_bench.store import run_store
    from kto_bench.train import precision

    spec = bench_spec(s, method, training)
    (run,) = expand(spec)
    store = run_store(root, spec.name, run.run_id)
    pipeline.stage_data(run, store)
    t0 = time.perf_counter()
    pipeline.stage_reference(run, store, root)  # content addressed: the method's first variant fills it
    reference_s = time.perf_counter() - t0
    with PeakMemory(s.resolved_device()) as mem:
        pipeline.stage_train(run, store, root, spec)
    steps = read_jsonl(store.file("metrics.jsonl"))
    t = run.training
    settings = {
        "run_id": run.run_id,
        "gradient_checkpointing": t.gradient_checkpointing,
        "reference": "cached: the reference stage, over the whole data set (one_time_s), shared by methods, seeds, β",
        "lr_schedule": t.schedule,
        "precision": precision.semantics(run),
        "layout": t.layout,
        "kl_pass": t.kl_pass if method == "kto" else None,
    }
    return {
        "steps": steps,
        "memory": mem.record(),
        "settings": settings,
        "reference_s": reference_s,
        "run": run,
        "store": store,
    }


def layout_agreement(run, store, device: torch.device) -> dict[str, Any]:
    """The default layout (shared prompts, the kernel `kto-bench run` picks here) against the plain padded
    SDPA path on the run's first microbatch (and its KL rows): the largest per-sequence differences."""
    from kto_bench import models, pipeline
    from kto_bench.scoring import collate, sequence_logps, use_attention
    from kto_bench.spec import TrainingSpec

    where, _ = pipeline.resolved(run)
    model = models.load_model(run.model, where, device, dtype="float32").eval()
    pad = models.load_tokenizer(run.model, where).pad_token_id
    data = pipeline.load_data(store)
    seqs = [data.sequences[i] for p in data.pair_batches[:1] for b in p for i in data.pairs[b]]
    seqs += [data.sequences[data.binary[i][0]] for b in data.binary_batches[:1] for i in b]
    seqs += [data.sequences[k] for b in data.kl_seqs[:1] for k in b]
    out: dict[str, Any] = {"sequences": len(seqs)}
    logps = {}
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for name, training in (
            ("plain", TrainingSpec(layout="padded", attention="sdpa")),
            ("fast", TrainingSpec()),
        ):
            attention, row_tokens = use_attention(model, training, run.data.max_length, device)
            logps[name], _ = sequence_logps(model, collate(seqs, pad, device, training.layout, row_tokens))
            out[name] = {"layout": training.layout, "attention": attention, "row_tokens": row_tokens}
    plain, fast = (logps[k].float().cpu() for k in ("plain", "fast"))
    out["max_abs_diff"] = float((plain - fast).abs().max())
    out["max_rel_diff"] = float(((plain - fast).abs() / plain.abs().clamp(min=1e-6)).max())
    return out


def bench_train(s: BenchSettings) -> dict[str, Any]:
    if s.batch_size < 2 or s.batch_size % 2:
        raise KtoBenchError("--batch-size must be even and at least 2 (KTO's KL pairs, DPO's pairs)")
    if not s.methods or set(s.methods) - set(VARIANTS):
        raise KtoBenchError(f"bench train methods {s.methods!r}: choose from 'kto' and 'dpo'")
    import datasets

    datasets.disable_caching()  # TRL's precomputed log-probs must not come from an earlier process's cache file
    device = s.resolved_device()
    peak = peak_flops(device)
    rows: list[dict[str, Any]] = []
    inputs: dict[str, Any] = {}
    reference: dict[str, Any] = {}
    agreement = counts = None
    with tempfile.TemporaryDirectory() as tmp:
        warm_up(s, Path(tmp) / "warm-up")
        for method in s.methods:
            root = Path(tmp) / method  # a reference cache of the method's own: its first variant fills it
            first = None
            for training in VARIANTS[method]:
                got = run_ours(s, method, training, root)
                if first is None:
                    first = got
                    data_report = read_json(got["store"].file("data_report.json"))
                    reference[method] = {
                        "seconds": got["reference_s"],
                        "sequences": data_report["counts"]["sequences"],
                    }
                    inputs[method] = {
                        "data_fingerprint": data_report["fingerprint"],
                        "counts": data_report["counts"],
                    }
                if counts is None:
                    counts = model_counts(got["run"])
                once = reference[method]["seconds"]
                rows.append(_row("ours", method, variant_name(training), got, s, counts, peak, once))
                gc.collect()
            if agreement is None:
                agreement = layout_agreement(first["run"], first["store"], device)
            for variant, precompute in (("defaults", False), ("precompute_ref_log_probs", True)):
                got = peer_trl.run_trl(
                    s, method, first["run"], first["store"], precompute=precompute, out_dir=Path(tmp) / "trl"
                )
                once = got["settings"]["init_s"] if precompute else 0.0
                rows.append(_row("trl", method, variant, got, s, counts, peak, once))
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    ratios = [
        ratio(rows, f"ours-{m}-{ours}", f"trl-{m}-{v}", k)
        for m in s.methods
        for ours in ("padded", DEFAULT_VARIANT, f"{DEFAULT_VARIANT} + checkpointing")
        for v in ("defaults", "precompute_ref_log_probs")
        for k in ("tokens_per_s_real", "tokens_per_s_real_with_one_time", "peak_memory_gib")
    ]
    preset = PRESETS[s.model_config]
    return {
        "reference_pass": reference,
        "layout_agreement": agreement,
        "rows": rows,
        "ratios": ratios,
        "model": {"preset": s.model_config, "spec": model_spec(s), "params": counts},
        "inputs": {"data": preset["data"], **inputs},
    }


def model_counts(run) -> dict[str, int]:
    from kto_bench import models, pipeline

    where, _ = pipeline.resolved(run)
    return param_counts(models.load_model(run.model, where, "cpu", dtype="float32"))


def _row(side, method, variant, got, s: BenchSettings, counts, peak, once: float) -> dict[str, Any]:
    row = {
        "side": side,
        "method": method,
        "variant": variant,
        "name": f"{side}-{method}-{variant}",
        **summarize(got["steps"], s.warmup, counts["flops_n"], peak),
        **got["memory"],
        "settings": got["settings"],
        "one_time_s": once,  # ours: the reference stage (once per data and model); TRL precompute: its __init__
    }
    real = row["tokens_per_s_real"] * row["measured_s"]
    row["tokens_per_s_real_with_one_time"] = real / (row["measured_s"] + once)
    return row

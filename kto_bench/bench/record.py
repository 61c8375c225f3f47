"""What every bench shares: its settings, the spec it benches, timing and memory, provenance, the record
(JSON) and its table (Markdown).

A bench runs the entry points users run on a spec (`kto-bench run`'s stages, `kto-bench eval`): the presets
below are spec fragments, nothing else. FLOPs: N = every parameter that does matmul work per token (all but
the input embedding table; a tied head counts once); a trained token costs 6N, a forward-only token 2N
(KTO's no-grad KL pass, an online reference, evaluation); attention's quadratic term and recompute excluded.
"""

from __future__ import annotations

import resource
import threading
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from kto_bench.errors import KtoBenchError
from kto_bench.store import git_state, hardware, now, write_json

SCHEMA = "kto-bench/bench/v2"
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU
GPU_COMMAND = "kto-bench bench {kind} --against {against} --model-config qwen2.5-0.5b"
GPU_NOTE = (
    "The issue's targets are GPU figures (one H100, bf16, Qwen2.5-0.5B); a CPU table only shows that "
    "the harness works. Take the GPU figures with: `{command}`."
)
FLOPS_N = (
    "N = all parameters except the input embedding table (LM head counted once); 6N per trained non-pad "
    "token, 2N per forward-only non-pad token; attention's quadratic term and recompute excluded"
)

# Presets: the model, data and evaluation tasks of a spec (`kto-bench run` / `kto-bench eval` take the same).
PAIRS = {"source": "llamafactory_dpo", "max_length": 1024, "max_prompt_length": 512}  # offline mirror
GSM8K_MMLU = {"gsm8k_cot": {"variant": "offline", "num_fewshot": 8}, "mmlu": {"variant": "offline"}}
DEMO_DATA = {"source": "demo_arith", "max_length": 96, "max_prompt_length": 32}  # as experiments/demo.yaml
DEMO_TASKS = {name: {"apply_chat_template": True} for name in ("demo_arith_gen", "demo_arith_mc")}
PRESETS: dict[str, dict[str, Any]] = {
    # the GPU targets
    "qwen2.5-0.5b": {
        "model": {"source": "hub", "name": "Qwen/Qwen2.5-0.5B"},
        "data": PAIRS,
        "tasks": GSM8K_MMLU,
    },
    # CPU, a real 135M model at real lengths (offline mirrors)
    "small": {
        "model": {"source": "mirror", "name": "smollm2_135m_instruct"},
        "data": PAIRS,
        "tasks": GSM8K_MMLU,
    },
    # CPU: the offline demo's world (its model, feedback and held-out tasks)
    "demo": {"model": {"source": "demo", "name": "arith-sft"}, "data": DEMO_DATA, "tasks": DEMO_TASKS},
    # CPU, CI: the arith-tiny world (seconds to build; 6 pairs, so --batch-size 2)
    "tiny": {"model": {"source": "demo", "name": "arith-tiny"}, "data": DEMO_DATA, "tasks": DEMO_TASKS},
}
MAX_NEW_TOKENS = {"qwen2.5-0.5b": 256, "small": 64}  # generation tasks' cap (demo tasks: their own)


@dataclass(frozen=True)
class BenchSettings:
    kind: str  # "train" | "eval"
    against: str  # "trl" | "lm-eval-hf"
    model_config: str = "qwen2.5-0.5b"
    steps: int = 20  # optimizer steps per contender (train), warm-up included
    warmup: int = 2  # first steps (train) excluded from throughput and reported separately
    batch_size: int = 8  # per-device train batch
    lr: float = 1e-6  # TRL's default for both trainers
    beta: float = 0.1
    seed: int = 0
    limit: int | None = None  # eval: items per task (lm-eval's limit); None = every item
    eval_batch_size: int = 64  # our engine's batch (`kto-bench eval --batch-size`)
    batch_sizes: tuple[int | str, ...] = (1, 64, "auto")  # lm-eval hf's, one row each
    reference_batch_size: int = 64
    device: str = "auto"
    methods: tuple[str, ...] = ("kto", "dpo")
    threads: int | None = None  # torch CPU threads (None = torch's default); 1 on shared CPUs
    model: str | None = None  # instead of the preset's model: what `kto-bench eval MODEL` takes

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def check(self) -> None:
        if self.model_config not in PRESETS:
            raise KtoBenchError(f"--model-config {self.model_config!r}: choose one of {', '.join(PRESETS)}")
        if self.kind not in ("train", "eval"):
            raise KtoBenchError(f"bench kind {self.kind!r}: choose 'train' or 'eval'")
        peer = {"train": "trl", "eval": "lm-eval-hf"}[self.kind]
        if self.against != peer:
            raise KtoBenchError(f"bench {self.kind} --against {self.against!r}: the peer is {peer!r}")


def model_spec(s: BenchSettings) -> dict[str, Any]:
    """The ModelSpec fields (dtype aside) of the model benched: `--model` as `kto-bench eval` resolves it, or
    the preset's."""
    if s.model is None:
        return PRESETS[s.model_config]["model"]
    from kto_bench.evaluate import resolve_model

    m = resolve_model(s.model).model
    return {"source": m.source, "name": m.name} | ({"revision": m.revision} if m.revision else {})


def parse_batch_sizes(text: str) -> tuple[int | str, ...]:
    """'1,64,auto' -> (1, 64, 'auto'): lm-eval's --batch_size values."""
    out: list[int | str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item == "auto" or item.startswith("auto:"):
            out.append(item)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise KtoBenchError(f"--batch-sizes {text!r}: give positive integers or 'auto', e.g. 1,64,auto")
    if not out:
        raise KtoBenchError("--batch-sizes: give at least one batch size, e.g. 1,64,auto")
    return tuple(out)


# ----------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one contender: CUDA max_memory_allocated, else sampled RSS (and getrusage's high-water)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        proc = psutil.Process()

        def sample() -> None:
            while not self._stop.wait(0.01):
                self.peak = max(self.peak, proc.memory_info().rss)

        self.peak = proc.memory_info().rss
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    def record(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            return {
                "peak_memory_gib": self.peak / 2**30,
                "peak_memory_kind": "torch.cuda.max_memory_allocated",
            }
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        return {
            "peak_memory_gib": self.peak / 2**30,
            "peak_memory_kind": "sampled process RSS during the run",
            "process_high_water_rss_gib": high_water / 2**30,
        }


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def param_counts(model) -> dict[str, int]:
    """total / non-embedding / N used for FLOPs (everything but the input embedding; the LM head counts once)."""
    params = {id(p): p for p in model.parameters()}  # tied weights once
    total = sum(p.numel() for p in params.values())
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    non_embedding = total - emb.numel() - (head.numel() if head is not emb else 0)
    return {"total": total, "non_embedding": non_embedding, "flops_n": non_embedding + head.numel()}


def summarize(steps: list[dict[str, float]], warmup: int, n: int, peak: float | None) -> dict[str, Any]:
    """Throughput over the steps after warm-up (pure). Each step: its seconds and token counts, named as the
    loop's metrics.jsonl names them (`time/step_s`, `tokens/trained`, `tokens/processed`,
    `tokens/nonpad_grad`, `tokens/nonpad_nograd`) plus `tokens/reference` (an online reference's forwards).

    `tokens/trained` counts the workload as a peer does (prompt + completion of every trained sequence), so
    tokens/s compare across layouts; the other counts are what the forwards ran (a shared prompt runs once),
    so FLOPs, MFU and padding are those of the executed work."""
    if len(steps) <= warmup:
        raise KtoBenchError(f"--steps must exceed --warmup ({warmup}) to leave steps to measure")

    def total(key: str, part: list[dict]) -> float:
        return sum(s.get(key, 0) for s in part)

    measured = steps[warmup:]
    secs = total("time/step_s", measured)
    trained, processed = total("tokens/trained", measured), total("tokens/processed", measured)
    grad, kl = total("tokens/nonpad_grad", measured), total("tokens/nonpad_nograd", measured)
    reference = total("tokens/reference", measured)
    flops = 6 * n * grad + 2 * n * (kl + reference)
    return {
        "steps": len(steps),
        "warmup_steps": warmup,
        "tokens_real_total": int(total("tokens/trained", steps)),
        "warmup_s": total("time/step_s", steps[:warmup]),
        "measured_s": secs,
        "steps_per_s": len(measured) / secs,
        "tokens_per_s_real": trained / secs,
        "tokens_per_s_processed": processed / secs,
        "padding_fraction": 1 - (grad + kl) / processed if processed else 0.0,
        "executed_per_trained_token": (grad + kl + reference) / trained if trained else None,
        "model_flops_per_s": flops / secs,
        "mfu": flops / secs / peak if peak else None,
    }


def ratio(rows: list[dict], ours: str, peer: str, metric: str) -> dict[str, Any]:
    """ours/peer for one metric, from the measured rows (pure)."""
    a = next(r for r in rows if r["name"] == ours)[metric]
    b = next(r for r in rows if r["name"] == peer)[metric]
    return {
        "ours": ours,
        "peer": peer,
        "metric": metric,
        "ours_value": a,
        "peer_value": b,
        "ratio": a / b if b else None,
    }


# ----------------------------------------------------------------------------- provenance, record, output


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def provenance(device: torch.device) -> dict[str, Any]:
    return {
        "created_at": now(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "peak_bf16_flops": peak_flops(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "packages": {
            n: _version(n) for n in ("transformers", "trl", "lm_eval", "accelerate", "datasets", "kto-bench")
        },
        "git": git_state(),
        "hardware": hardware(),
    }


def wrap(s: BenchSettings, body: dict[str, Any]) -> dict[str, Any]:
    """A bench's body as its record: schema, settings, the GPU note and command, FLOPs rule, provenance."""
    device = s.resolved_device()
    command = GPU_COMMAND.format(kind=s.kind, against=s.against)
    return {
        "schema": SCHEMA,
        "kind": s.kind,
        "against": s.against,
        "settings": asdict(s),
        "note": GPU_NOTE.format(command=command) if device.type != "cuda" else None,
        "gpu_command": command,
        "flops_n_definition": FLOPS_N,
        "provenance": provenance(device),
        **body,
    }


def bench_name(s: BenchSettings) -> str:
    device = s.resolved_device()
    where = "cpu" if device.type != "cuda" else torch.cuda.get_device_name(device).split()[-1].lower()
    return f"{s.kind}-{s.against}-{s.model_config}-{where}"


def write_results(record: dict[str, Any], out_dir: Path, name: str) -> tuple[Path, Path]:
    from kto_bench.bench.table import to_markdown
    from kto_bench.io import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    write_json(json_path, record)
    atomic_write_text(md_path, to_markdown(record))
    return json_path, md_path

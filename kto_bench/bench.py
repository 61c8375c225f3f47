"""`kto-bench bench train|eval`: our code against its peer on identical inputs, in one process.

    bench_train()  our loop's train_step (KTO and DPO, reference log-probs cached) vs TRL's KTOTrainer /
                   DPOTrainer at their defaults (and KTO with precompute_ref_log_probs=True)
    bench_eval()   our Engine vs lm-eval's `hf` backend (HFLM over the same model object) on GSM8K-shaped
                   generation and MMLU-shaped log-likelihood requests
    main()         run one, write results/bench/<name>.json and <name>.md

Inputs are synthetic and seeded: a model built from a config (random weights) and random token sequences,
written as text over a word-level vocabulary ("t0 t1 …") whose ids are the model's ids, so a peer that
tokenizes text sees exactly our token ids. The first `warmup` steps (or a short warm-up request batch in
eval) are timed separately and excluded from throughput.

FLOPs: N = every parameter that does matmul work per token: all parameters except the input embedding
table (the LM head counts; a tied embedding/head matrix counts once). Attention's quadratic term is left
out. A trained token costs 6N, a forward-only token (KTO's no-grad KL pass, an online reference forward,
evaluation) 2N; counts are of non-pad tokens, so MFU is model FLOPs utilisation (gradient checkpointing's
recompute is not counted).
"""

from __future__ import annotations

import copy
import gc
import random
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from kto_bench.errors import KtoBenchError
from kto_bench.store import git_state, hardware, now, write_json

SCHEMA = "kto-bench/bench/v1"
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, per GPU
GPU_COMMAND = "kto-bench bench {kind} --against {against} --model-config qwen2.5-0.5b"
GPU_NOTE = (
    "The issue's targets are GPU figures (one H100, bf16, Qwen2.5-0.5B shape); a CPU table only shows that "
    "the harness works. Take the GPU figures with: `{command}`."
)

# Model presets: (Qwen2Config fields, prompt length range, completion length range, eval prompt scale)
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {
        "config": dict(
            hidden_size=896,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            rope_theta=1_000_000.0,
        ),
        "prompt": (64, 512),
        "completion": (32, 512),
        "max_length": 1024,
        "eval_scale": 1.0,
        "max_new_tokens": 256,
    },
    "small": {  # CPU-sized model, real sequence lengths: what a CPU run can say about layouts and sharing
        "config": dict(
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=768,
            vocab_size=8192,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        ),
        "prompt": (64, 512),
        "completion": (32, 512),
        "max_length": 1024,
        "eval_scale": 1.0,
        "max_new_tokens": 64,
    },
    "tiny": {
        "config": dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=512,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
        "prompt": (8, 64),
        "completion": (4, 64),
        "max_length": 128,
        "eval_scale": 1 / 16,
        "max_new_tokens": 16,
    },
}


@dataclass(frozen=True)
class BenchSettings:
    kind: str  # "train" | "eval"
    against: str  # "trl" | "lm-eval-hf"
    model_config: str = "qwen2.5-0.5b"
    steps: int = 20  # measured optimizer steps per contender (train), including warm-up
    warmup: int = 2  # first steps (train) excluded from throughput and reported separately
    batch_size: int = 8  # per-device train batch
    lr: float = 1e-6  # TRL's default for both trainers
    beta: float = 0.1
    seed: int = 0
    limit: int | None = (
        None  # eval: generation requests (log-likelihood requests are 16x); None = preset default
    )
    eval_batch_size: int = 64  # our Engine's batch (lm-eval hf runs at its own default)
    reference_batch_size: int = 64
    device: str = "auto"
    methods: tuple[str, ...] = ("kto", "dpo")
    threads: int | None = (
        None  # torch CPU threads (None = torch's default); 1 avoids spin-wait stalls on shared CPUs
    )

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


# ----------------------------------------------------------------------------- model, vocabulary, inputs


def build_model(preset: str, device: torch.device, seed: int):
    """A Qwen2-shaped causal LM with seeded random weights, in float32: the master weights both trainers
    update (bf16 compute on GPU through autocast: `precision: bf16` for us, `bf16=True` for TRL)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(**PRESETS[preset]["config"])
    cfg.attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.to(device)


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def param_counts(model) -> dict[str, int]:
    """total / non-embedding / N used for FLOPs (everything but the input embedding; the LM head counts once)."""
    params = {id(p): p for p in model.parameters()}  # tied weights once
    total = sum(p.numel() for p in params.values())
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    non_embedding = total - emb.numel() - (head.numel() if head is not emb else 0)
    return {"total": total, "non_embedding": non_embedding, "flops_n": non_embedding + head.numel()}


def synthetic_tokenizer(vocab_size: int):
    """A fast word-level tokenizer whose text "t5 t17" encodes to ids [5, 17]; eos/pad are the last two ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size - 2)} | {
        "<|end|>": vocab_size - 2,
        "<|pad|>": vocab_size - 1,
    }
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|end|>", pad_token="<|pad|>")
    return tok


def ids_text(ids: tuple[int, ...] | list[int], tok) -> str:
    return " ".join(tok.convert_ids_to_tokens(list(ids)))


def completion_text(ids: tuple[int, ...], tok) -> str:
    """Completion ids (ending with eos) as text that continues a prompt: ' t3 t4<|end|>'."""
    return (" " + ids_text(ids[:-1], tok) if len(ids) > 1 else "") + tok.eos_token


@dataclass
class TrainInputs:
    prompts: list[tuple[int, ...]]
    chosen: list[tuple[int, ...]]
    rejected: list[tuple[int, ...]]
    kto_items: list[tuple[int, bool]]  # (pair index, desirable): chosen when True, rejected when False


def train_inputs(preset: str, n_pairs: int, n_binary: int, seed: int) -> TrainInputs:
    """Seeded random prompts (two completions each, ending with eos) and the KTO view's unpaired order."""
    p = PRESETS[preset]
    vocab = p["config"]["vocab_size"]
    rng = random.Random(f"bench-{seed}")

    def seq(lo: int, hi: int, end: bool) -> tuple[int, ...]:
        n = rng.randint(lo, hi)
        body = [rng.randrange(vocab - 2) for _ in range(n - int(end))]
        return tuple(body + [vocab - 2] * int(end))

    prompts = [seq(*p["prompt"], end=False) for _ in range(n_pairs)]
    chosen = [seq(*p["completion"], end=True) for _ in range(n_pairs)]
    rejected = [seq(*p["completion"], end=True) for _ in range(n_pairs)]
    items = [(i, d) for i in range(n_binary // 2) for d in (True, False)]
    rng.shuffle(items)
    return TrainInputs(prompts, chosen, rejected, items)


def tokenized_data(inp: TrainInputs, batch_size: int, max_length: int):
    """Our TokenizedData for the inputs: consecutive microbatches in the given order, KL pairs as in the loop."""
    from kto_bench.data.tokenize import TokenizedData, kl_partners, mismatched

    data = TokenizedData()
    for p, c, r in zip(inp.prompts, inp.chosen, inp.rejected, strict=True):
        data.pairs.append((data.add((p, c)), data.add((p, r))))
    for i, desirable in inp.kto_items:
        data.binary.append(
            (data.add((inp.prompts[i], inp.chosen[i] if desirable else inp.rejected[i])), desirable)
        )
    data.pair_batches = _chunks(len(data.pairs), batch_size)
    data.binary_batches = _chunks(len(data.binary), batch_size)
    for batch in data.binary_batches:
        seqs = [data.sequences[data.binary[i][0]] for i in batch]
        data.kl_seqs.append(
            [data.add(mismatched(seqs[j], seqs[k], max_length)) for j, k in enumerate(kl_partners(len(seqs)))]
        )
    return data


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, i + size)) for i in range(0, n - size + 1, size)]


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
        else:
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


@dataclass
class StepLog:
    """Per-step wall times and token counts of one training contender.

    `trained` counts the workload the way a peer does (prompt + completion of every trained sequence), so
    tokens/s compare across layouts; the other counts are what the forwards actually ran (a shared prompt
    runs once), so FLOPs, MFU and padding are those of the executed work."""

    times: list[float] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)  # tokens of the trained (matched) sequences
    processed: list[int] = field(default_factory=list)  # token slots of every policy forward, pads included
    grad: list[int] = field(default_factory=list)  # non-pad tokens of forwards with a backward (6N each)
    kl: list[int] = field(default_factory=list)  # non-pad tokens of no-grad policy forwards: KTO's KL rows
    reference: list[int] = field(default_factory=list)  # non-pad tokens through an online reference model


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def summarize(log: StepLog, warmup: int, n: int, peak: float | None) -> dict[str, Any]:
    """Throughput over the steps after warm-up (pure)."""
    if len(log.times) <= warmup:
        raise KtoBenchError(f"--steps must exceed --warmup ({warmup}) to leave steps to measure")
    s = slice(warmup, None)
    secs = sum(log.times[s])
    trained, processed = sum(log.trained[s]), sum(log.processed[s])
    grad, kl, reference = sum(log.grad[s]), sum(log.kl[s]), sum(log.reference[s])
    flops = 6 * n * grad + 2 * n * (kl + reference)
    return {
        "steps": len(log.times),
        "warmup_steps": warmup,
        "tokens_real_total": sum(log.trained),
        "warmup_s": sum(log.times[:warmup]),
        "measured_s": secs,
        "steps_per_s": (len(log.times) - warmup) / secs,
        "tokens_per_s_real": trained / secs,
        "tokens_per_s_processed": processed / secs,
        "padding_fraction": 1 - (grad + kl) / processed if processed else 0.0,
        "executed_per_trained_token": (grad + kl + reference) / trained if trained else None,
        "model_flops_per_s": flops / secs,
        "mfu": flops / secs / peak if peak else None,
    }


# ----------------------------------------------------------------------------- train: ours


OUR_VARIANTS: dict[str, tuple[dict[str, Any], ...]] = {
    # each measured on its own: padded is the peers' layout (the gain from the cache and the LM head alone);
    # checkpointing matches TRL's default and trades speed for activation memory
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


def run_ours(
    method: str, training: dict[str, str], model, data, cache, s: BenchSettings, device: torch.device
) -> tuple[StepLog, dict]:
    """Our loop's train_step with the reference cache, `s.steps` steps over consecutive microbatches."""
    from kto_bench.methods.dpo import DPOConfig
    from kto_bench.methods.kto import KTOConfig
    from kto_bench.scoring import LogProbs, use_attention
    from kto_bench.spec import DataSpec, ModelSpec, RunSpec, TrainingSpec
    from kto_bench.train import precision as precisions
    from kto_bench.train.loop import Context, disable_dropout, lr_lambda, train_step

    precision = "bf16" if device.type == "cuda" else "fp32"
    run = RunSpec(
        model=ModelSpec(source="local", name="bench"),
        data=DataSpec(source="local_pairs"),
        method=KTOConfig(beta=s.beta) if method == "kto" else DPOConfig(beta=s.beta),
        training=TrainingSpec(
            lr=s.lr,
            batch_size=s.batch_size,
            precision=precision,
            schedule="constant",
            warmup_ratio=0.0,
            **training,
        ),
    )
    hyper = run.method.loss_kwargs() | (
        {"desirable_weight": 1.0, "undesirable_weight": 1.0} if method == "kto" else {}
    )
    acc = precisions.accelerator(run, cpu=device.type != "cuda")
    disable_dropout(model)
    if run.training.gradient_checkpointing:  # as train() does
        model.gradient_checkpointing_enable()
    attention, row_tokens = use_attention(model, run.training, PRESETS[s.model_config]["max_length"], device)
    optimizer = precisions.optimizer(run, list(model.parameters()))  # as train() does
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("constant", 0, s.steps))
    pad = model.config.vocab_size - 1
    module, optimizer = acc.prepare(LogProbs(model), optimizer)  # as train() does: wrap the log-prob forward
    module.train()
    ctx = Context(
        run=run,
        data=data,
        ref=cache.lookup,
        hyper=hyper,
        pad_id=pad,
        checkpoint_dir=Path("."),
        log=lambda step, m: None,
        accelerator=acc,
        module=module,
        row_tokens=row_tokens,
    )
    log = StepLog()
    for b in range(s.steps):
        sync(device)
        t0 = time.perf_counter()
        m = train_step(module, ctx, [b], optimizer, scheduler)
        sync(device)
        log.times.append(time.perf_counter() - t0)
        log.trained.append(int(m["tokens/trained"]))
        log.processed.append(int(m["tokens/processed"]))
        log.grad.append(int(m.get("tokens/nonpad_grad", 0)))
        log.kl.append(int(m.get("tokens/nonpad_nograd", 0)))
        log.reference.append(0)
    return log, {
        "gradient_checkpointing": run.training.gradient_checkpointing,
        "reference": "cached (precomputed once, shared by methods)",
        "lr_schedule": "constant",
        "autocast": precision,
        "precision": precisions.semantics(run),
        "layout": run.training.layout,
        "kl_pass": run.training.kl_pass if method == "kto" else None,
        "attention": attention,
        "row_tokens": row_tokens,
    }


def fill_reference(model, data, root: Path, s: BenchSettings, device: torch.device):
    """The one-time reference pass: the pair/matched sequences first, then KTO's KL sequences, timed apart."""
    from kto_bench.scoring import collate, sequence_logps, use_attention
    from kto_bench.spec import TrainingSpec
    from kto_bench.train.refcache import ReferenceCache, fill

    training = TrainingSpec()  # the reference pass of `kto-bench run` at its defaults
    _, row_tokens = use_attention(model, training, PRESETS[s.model_config]["max_length"], device)
    cache = ReferenceCache(root, "bench", str(dtype_for(device)))
    model = copy.deepcopy(model).to(dtype_for(device))  # the reference pass may run bf16 weights
    matched = list(dict.fromkeys(data.sequences[i] for pr in data.pairs for i in pr))
    matched += list(dict.fromkeys(data.sequences[i] for i, _ in data.binary))
    kl = [data.sequences[k] for batch in data.kl_seqs for k in batch]
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():  # warm-up forward, excluded
        sequence_logps(model, collate(matched[:2], model.config.vocab_size - 1, device))
    sync(device)
    out: dict[str, Any] = {"warmup_s": time.perf_counter() - t0}
    for name, seqs in (("matched", matched), ("kl", kl)):
        todo = cache.missing(seqs)
        sync(device)
        t0 = time.perf_counter()
        fill(
            cache,
            model,
            todo,
            pad_id=model.config.vocab_size - 1,
            batch_size=s.reference_batch_size,
            device=device,
            layout=training.layout,
            row_tokens=row_tokens,
        )
        sync(device)
        out[name] = {
            "seconds": time.perf_counter() - t0,
            "sequences": len(todo),
            "tokens": sum(len(p) + len(c) for p, c in todo),
        }
    model.train()
    return cache, out


def layout_agreement(model, data, s: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Our default layout (shared prompts, the kernel `kto-bench run` picks here) against the plain padded
    SDPA path on the first DPO and KTO (+ KL) microbatches: the largest per-sequence log-prob differences."""
    from kto_bench.scoring import collate, sequence_logps, use_attention
    from kto_bench.spec import TrainingSpec

    pad = model.config.vocab_size - 1
    seqs = [data.sequences[i] for p in data.pair_batches[0] for i in data.pairs[p]]
    seqs += [data.sequences[data.binary[i][0]] for i in data.binary_batches[0]]
    seqs += [data.sequences[k] for k in data.kl_seqs[0]]
    max_length = PRESETS[s.model_config]["max_length"]
    out: dict[str, Any] = {"sequences": len(seqs)}
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        for name, training in (
            ("plain", TrainingSpec(layout="padded", attention="sdpa")),
            ("fast", TrainingSpec()),
        ):
            attention, row_tokens = use_attention(model, training, max_length, device)
            logps, _ = sequence_logps(model, collate(seqs, pad, device, training.layout, row_tokens))
            out[name] = {"layout": training.layout, "attention": attention, "row_tokens": row_tokens}
            out[f"{name}_logps"] = logps.float().cpu()
    plain, fast = out.pop("plain_logps"), out.pop("fast_logps")
    out["max_abs_diff"] = float((plain - fast).abs().max())
    out["max_rel_diff"] = float(((plain - fast).abs() / plain.abs().clamp(min=1e-6)).max())
    use_attention(model, TrainingSpec(layout="padded", attention="sdpa"), max_length, device)
    model.train()
    return out


# ----------------------------------------------------------------------------- train: TRL


def trl_dataset(method: str, inp: TrainInputs, tok):
    from datasets import Dataset

    if method == "dpo":
        return Dataset.from_dict(
            {
                "prompt": [ids_text(p, tok) for p in inp.prompts],
                "chosen": [completion_text(c, tok) for c in inp.chosen],
                "rejected": [completion_text(r, tok) for r in inp.rejected],
            }
        )
    return Dataset.from_dict(
        {
            "prompt": [ids_text(inp.prompts[i], tok) for i, _ in inp.kto_items],
            "completion": [
                completion_text(inp.chosen[i] if d else inp.rejected[i], tok) for i, d in inp.kto_items
            ],
            "label": [d for _, d in inp.kto_items],
        }
    )


def run_trl(
    method: str,
    model,
    tok,
    inp: TrainInputs,
    s: BenchSettings,
    device: torch.device,
    *,
    precompute: bool,
    out_dir: Path,
) -> tuple[StepLog, dict]:
    """TRL's trainer at its defaults (plus max_steps, lr, batch, no logging/saving/eval); timed per step."""
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    config_cls, trainer_cls = (DPOConfig, DPOTrainer) if method == "dpo" else (KTOConfig, KTOTrainer)
    args = config_cls(
        output_dir=str(out_dir),
        per_device_train_batch_size=s.batch_size,
        max_steps=s.steps,
        learning_rate=s.lr,
        beta=s.beta,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        bf16=device.type == "cuda",
        use_cpu=device.type != "cuda",
        seed=s.seed,
        disable_tqdm=True,
        max_length=PRESETS[s.model_config]["max_length"],
        precompute_ref_log_probs=precompute,
    )
    # TRL builds its own reference by reloading the policy from its hub id; a model built from a config has
    # none, so the default online reference is passed as the same copy TRL would make.
    ref = None if precompute else copy.deepcopy(model)
    log = StepLog()
    sync(device)
    t0 = time.perf_counter()
    trainer = trainer_cls(
        model=model,
        ref_model=ref,
        args=args,
        train_dataset=trl_dataset(method, inp, tok),
        processing_class=tok,
    )
    sync(device)
    init_s = time.perf_counter() - t0

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync(device)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(device)
            t = time.perf_counter()
            log.times.append(t - self.t)
            self.t = t

    inner = trainer.training_step

    def counted_step(model_, inputs, *rest, **kw):
        _count_trl(log, inputs, method, online_reference=not precompute)
        return inner(model_, inputs, *rest, **kw)

    trainer.training_step = counted_step
    trainer.add_callback(Timer())
    trainer.train()
    settings = {
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "lr_schedule": args.lr_scheduler_type.value
        if hasattr(args.lr_scheduler_type, "value")
        else str(args.lr_scheduler_type),
        "reference": "precomputed in __init__ (precompute_ref_log_probs=True)"
        if precompute
        else "online reference model (copy of the policy)",
        "autocast": "bf16" if args.bf16 else "fp32",
        "precision": {
            "mode": "bf16" if args.bf16 else "fp32",
            "master_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "compute_dtype": "bfloat16" if args.bf16 else "float32",
        },
        "init_s": init_s,
    }
    del trainer, ref
    return log, settings


def _count_trl(log: StepLog, inputs: dict, method: str, *, online_reference: bool) -> None:
    mask = inputs["attention_mask"]
    real, processed = int(mask.sum()), mask.numel()
    kl_real = kl_processed = 0
    if "KL_attention_mask" in inputs:
        kl_real, kl_processed = int(inputs["KL_attention_mask"].sum()), inputs["KL_attention_mask"].numel()
    log.trained.append(real)
    log.processed.append(processed + kl_processed)
    log.grad.append(real)
    log.kl.append(kl_real)
    log.reference.append(real + kl_real if online_reference else 0)


# ----------------------------------------------------------------------------- train: the bench


def bench_train(s: BenchSettings) -> dict[str, Any]:
    if s.against != "trl":
        raise KtoBenchError(f"bench train --against {s.against!r}: the training peer is 'trl'")
    if s.batch_size < 2 or s.batch_size % 2:
        raise KtoBenchError("--batch-size must be even and at least 2 (KTO's KL pairs, DPO's pairs)")
    if not s.methods or set(s.methods) - {"kto", "dpo"}:
        raise KtoBenchError(f"bench train methods {s.methods!r}: choose from 'kto' and 'dpo'")
    import datasets

    datasets.disable_caching()  # TRL's precomputed log-probs must not come from an earlier process's cache file
    device = s.resolved_device()
    preset = PRESETS[s.model_config]
    tok = synthetic_tokenizer(preset["config"]["vocab_size"])
    inp = train_inputs(
        s.model_config, n_pairs=s.steps * s.batch_size, n_binary=s.steps * s.batch_size, seed=s.seed
    )
    data = tokenized_data(inp, s.batch_size, preset["max_length"])
    base = build_model(s.model_config, device, s.seed)
    counts = param_counts(base)
    initial = {k: v.detach().clone() for k, v in base.state_dict().items()}
    peak = peak_flops(device)
    rows: list[dict[str, Any]] = []

    def fresh():
        base.load_state_dict(initial)
        return copy.deepcopy(base)

    with tempfile.TemporaryDirectory() as tmp:
        with PeakMemory(device) as mem:
            cache, ref_pass = fill_reference(base, data, Path(tmp), s, device)
        ref_pass["peak"] = mem.record()
        agreement = layout_agreement(base, data, s, device)
        one_time = {
            "dpo": ref_pass["matched"]["seconds"],
            "kto": ref_pass["matched"]["seconds"] + ref_pass["kl"]["seconds"],
        }
        contenders: list[tuple[str, str, str, Callable[[Any], tuple[StepLog, dict]]]] = []
        for method in s.methods:
            for training in OUR_VARIANTS[method]:
                contenders.append(
                    (
                        "ours",
                        method,
                        variant_name(training),
                        lambda m, method=method, training=training: run_ours(
                            method, training, m, data, cache, s, device
                        ),
                    )
                )
            contenders.append(
                (
                    "trl",
                    method,
                    "defaults",
                    lambda m, method=method: run_trl(
                        method, m, tok, inp, s, device, precompute=False, out_dir=Path(tmp) / "trl"
                    ),
                )
            )
            contenders.append(
                (
                    "trl",
                    method,
                    "precompute_ref_log_probs",
                    lambda m, method=method: run_trl(
                        method, m, tok, inp, s, device, precompute=True, out_dir=Path(tmp) / "trl"
                    ),
                )
            )
        for side, method, variant, fn in contenders:
            model = fresh()
            with PeakMemory(device) as mem:
                log, extra = fn(model)
            row = {
                "side": side,
                "method": method,
                "variant": variant,
                "name": f"{side}-{method}-{variant}",
                **summarize(log, s.warmup, counts["flops_n"], peak),
                **mem.record(),
                "settings": extra,
            }
            # one-time reference cost: ours = its share of the shared cache; TRL precompute = its __init__
            once = (
                one_time[method] if side == "ours" else (extra["init_s"] if "precompute" in variant else 0.0)
            )
            row["one_time_s"] = once
            measured_real = row["tokens_per_s_real"] * row["measured_s"]
            row["tokens_per_s_real_with_one_time"] = measured_real / (row["measured_s"] + once)
            rows.append(row)
            del model
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
    return {
        "reference_pass": ref_pass,
        "layout_agreement": agreement,
        "rows": rows,
        "ratios": ratios,
        "model": {"preset": s.model_config, "config": preset["config"], "params": counts},
        "inputs": {
            "pairs": len(inp.prompts),
            "kto_examples": len(inp.kto_items),
            "prompt_tokens": preset["prompt"],
            "completion_tokens": preset["completion"],
            "max_length": preset["max_length"],
            "data_fingerprint": data.fingerprint(),
        },
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


# ----------------------------------------------------------------------------- eval


def eval_lengths(preset: str, n_gen: int, n_mc: int, seed: int) -> tuple[int, list[int], list[int], str]:
    """Token lengths (about 4 characters per token) of the GSM8K 8-shot CoT exemplars every generation
    prompt starts with, of each prompt's own question, and of MMLU 0-shot prompts: from the offline
    mirrors when cached, else seeded synthetic lengths of the same size."""
    from kto_bench.assets import cached_path

    scale = PRESETS[preset]["eval_scale"]
    gsm, mmlu = cached_path("gsm8k_test"), cached_path("mmlu_test")
    rng = random.Random(f"eval-{seed}")
    if gsm is not None and mmlu is not None:
        import json

        g = [json.loads(x) for x in gsm.read_text().splitlines()[: 8 + n_gen]]
        shots = len("".join(f"Q: {r['question']}\nA: {r['answer']}\n\n" for r in g[:8])) // 4
        gen = [len(f"Q: {r['question']}\nA:") // 4 for r in g[8:]]
        m = [json.loads(x) for x in mmlu.read_text().splitlines()[:n_mc]]
        mc = [
            len(
                f"{r['question']}\nA. {r['answer_a']}\nB. {r['answer_b']}\nC. {r['answer_c']}\n"
                f"D. {r['answer_d']}\nAnswer:"
            )
            // 4
            for r in m
        ]
        source = "lengths of the offline GSM8K/MMLU mirrors (chars/4)"
    else:
        shots = 800
        gen = [rng.randint(30, 200) for _ in range(n_gen)]
        mc = [rng.randint(40, 400) for _ in range(n_mc)]
        source = "synthetic lengths (offline mirrors not cached)"
    shots = max(4, round(shots * scale))
    gen = [max(2, round(n * scale)) for n in gen]
    mc = [max(4, round(n * scale)) for n in mc]
    return shots, gen, mc, source


def eval_requests(preset: str, limit: int, seed: int, tok) -> dict[str, Any]:
    """GSM8K-shaped prompts (one 8-shot exemplar block shared by all, then a question each) and MMLU-shaped
    log-likelihood requests (a context each, scored with four one-token answer letters)."""
    vocab = PRESETS[preset]["config"]["vocab_size"]
    shots_len, gen_len, mc_len, source = eval_lengths(preset, limit, (16 * limit) // 4, seed)
    rng = random.Random(f"eval-requests-{seed}")

    def text(n: int) -> str:
        return ids_text([rng.randrange(vocab - 2) for _ in range(n)], tok)

    shots = text(shots_len)
    prompts = [shots + " " + text(n) for n in gen_len]
    letters = [" " + text(1) for _ in range(4)]
    ll = [(c, x) for c in (text(n) for n in mc_len) for x in letters]  # 4 one-token choices
    return {
        "prompts": prompts,
        "loglikelihood": ll,
        "source": source,
        "prompt_tokens": len(prompts) * shots_len + sum(gen_len),
        "ll_tokens": sum(mc_len) * 4 + len(ll),
    }


STOP = ["Q:", "</s>", "<|im_end|>"]  # lm-eval gsm8k_cot's `until`


def bench_eval(s: BenchSettings) -> dict[str, Any]:
    if s.against != "lm-eval-hf":
        raise KtoBenchError(f"bench eval --against {s.against!r}: the evaluation peer is 'lm-eval-hf'")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from kto_bench.eval.engine import Engine

    device = s.resolved_device()
    preset = PRESETS[s.model_config]
    limit = s.limit or (64 if s.model_config != "tiny" else 8)
    max_new = preset["max_new_tokens"]
    tok = synthetic_tokenizer(preset["config"]["vocab_size"])
    model = build_model(s.model_config, device, s.seed).eval()
    counts = param_counts(model)
    req = eval_requests(s.model_config, limit, s.seed, tok)
    peak = peak_flops(device)
    gen_kwargs = {"until": STOP, "max_gen_toks": max_new, "do_sample": False}
    engine = Engine(model, tok, batch_size=s.eval_batch_size)  # its defaults: shared contexts and prefixes
    hflm = HFLM(pretrained=model, tokenizer=tok)  # lm-eval's default batch size
    sides: dict[str, dict[str, Callable]] = {
        "ours": {
            "generate": lambda ps, n: engine.generate(ps, max_new_tokens=n, stop=STOP, progress=False),
            "loglikelihood": lambda rs: engine.loglikelihood(rs, progress=False),
        },
        "lm-eval-hf": {
            "generate": lambda ps, n: hflm.generate_until(
                [
                    Instance("generate_until", {}, (p, gen_kwargs | {"max_gen_toks": n}), i)
                    for i, p in enumerate(ps)
                ],
                disable_tqdm=True,
            ),
            "loglikelihood": lambda rs: [
                tuple(x)
                for x in hflm.loglikelihood(
                    [Instance("loglikelihood", {}, r, i) for i, r in enumerate(rs)], disable_tqdm=True
                )
            ],
        },
    }
    batch = {"ours": s.eval_batch_size, "lm-eval-hf": hflm.batch_size}
    rows, outputs = [], {}
    for side, fns in sides.items():
        for task in ("generate", "loglikelihood"):
            sync(device)
            t0 = time.perf_counter()
            if task == "generate":  # warm-up: two short requests
                fns[task](req["prompts"][:2], 2)
            else:
                fns[task](req["loglikelihood"][:2])
            sync(device)
            warm = time.perf_counter() - t0
            before = sum(engine.stats.values())
            with PeakMemory(device) as mem:
                sync(device)
                t0 = time.perf_counter()
                out = (
                    fns[task](req["prompts"], max_new)
                    if task == "generate"
                    else fns[task](req["loglikelihood"])
                )
                sync(device)
                secs = time.perf_counter() - t0
            outputs[(side, task)] = out
            if task == "generate":
                new = sum(len(tok.encode(o, add_special_tokens=False)) for o in out)
                fwd, n_req = req["prompt_tokens"] + new, len(req["prompts"])
            else:
                new, fwd, n_req = 0, req["ll_tokens"], len(req["loglikelihood"])
            # what the forwards ran: ours counts it (shared prefixes and contexts run once, pads
            # included); for lm-eval the request tokens (its padding uncounted), so its MFU is an upper bound
            executed = sum(engine.stats.values()) - before if side == "ours" else fwd
            rows.append(
                {
                    "side": side,
                    "task": task,
                    "name": f"{side}-{task}",
                    "batch_size": batch[side],
                    "requests": n_req,
                    "warmup_s": warm,
                    "measured_s": secs,
                    "requests_per_s": n_req / secs,
                    "generated_tokens": new,
                    "generated_tokens_per_s": new / secs,
                    "tokens_per_s_processed": fwd / secs,  # the requests' prompt + generated tokens
                    "executed_tokens": executed,
                    "mfu": 2 * counts["flops_n"] * executed / secs / peak if peak else None,
                    "settings": {
                        "decode": engine.decode,
                        "share_prefix": engine.share_prefix,
                        "row_tokens": engine.row_tokens,
                    }
                    if side == "ours"
                    else {"batch_size": "lm-eval default"},
                    **mem.record(),
                }
            )
    agreement = {
        "generate_identical": sum(
            a == b
            for a, b in zip(outputs[("ours", "generate")], outputs[("lm-eval-hf", "generate")], strict=True)
        )
        / len(req["prompts"]),
        "loglikelihood_max_abs_diff": max(
            abs(a[0] - b[0])
            for a, b in zip(
                outputs[("ours", "loglikelihood")], outputs[("lm-eval-hf", "loglikelihood")], strict=True
            )
        ),
    }
    ratios = [
        ratio(rows, f"ours-{t}", f"lm-eval-hf-{t}", k)
        for t in ("generate", "loglikelihood")
        for k in ("requests_per_s", "tokens_per_s_processed")
    ]
    return {
        "rows": rows,
        "ratios": ratios,
        "agreement": agreement,
        "model": {"preset": s.model_config, "config": preset["config"], "params": counts},
        "inputs": {
            "generation_requests": len(req["prompts"]),
            "loglikelihood_requests": len(req["loglikelihood"]),
            "max_new_tokens": max_new,
            "stop": STOP,
            "lengths_from": req["source"],
            "prompt_tokens": req["prompt_tokens"],
        },
    }


# ----------------------------------------------------------------------------- provenance, output


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


def run_bench(s: BenchSettings) -> dict[str, Any]:
    """Run one bench and return its record (nothing written)."""
    if s.model_config not in PRESETS:
        raise KtoBenchError(f"--model-config {s.model_config!r}: choose one of {', '.join(PRESETS)}")
    if s.kind not in ("train", "eval"):
        raise KtoBenchError(f"bench kind {s.kind!r}: choose 'train' or 'eval'")
    device = s.resolved_device()
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    body = bench_train(s) if s.kind == "train" else bench_eval(s)
    command = GPU_COMMAND.format(kind=s.kind, against=s.against)
    return {
        "schema": SCHEMA,
        "kind": s.kind,
        "against": s.against,
        "settings": asdict(s),
        "note": GPU_NOTE.format(command=command) if device.type != "cuda" else None,
        "gpu_command": command,
        "flops_n_definition": "N = all parameters except the input embedding table (LM head counted once); "
        "6N per trained non-pad token, 2N per forward-only non-pad token; attention's "
        "quadratic term and recompute excluded",
        "provenance": provenance(device),
        **body,
    }


def bench_name(s: BenchSettings, device: torch.device) -> str:
    where = "cpu" if device.type != "cuda" else torch.cuda.get_device_name(device).split()[-1].lower()
    return f"{s.kind}-{s.against}-{s.model_config}-{where}"


def read_json_file(path: Path) -> dict[str, Any]:
    import json

    return json.loads(Path(path).read_text())


def write_results(record: dict[str, Any], out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    write_json(json_path, record)
    from kto_bench.io import atomic_write_text

    atomic_write_text(md_path, to_markdown(record))
    return json_path, md_path


def main(
    kind: str,
    against: str | None = None,
    model_config: str = "qwen2.5-0.5b",
    steps: int | None = None,
    warmup: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    out_dir: Path = Path("results/bench"),
    name: str | None = None,
) -> Path:
    """The `kto-bench bench` command: run, write <name>.json and <name>.md, return the JSON path."""
    tiny = model_config == "tiny"
    s = BenchSettings(
        kind=kind,
        against=against or ("trl" if kind == "train" else "lm-eval-hf"),
        model_config=model_config,
        steps=steps or 20,
        warmup=2 if warmup is None else warmup,
        limit=limit,
        batch_size=batch_size,
        seed=seed,
        device=device,
        threads=threads,
        reference_batch_size=16 if tiny else 64,
    )
    record = run_bench(s)
    json_path, _ = write_results(record, out_dir, name or bench_name(s, s.resolved_device()))
    return json_path


# ----------------------------------------------------------------------------- Markdown


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"
    return str(x)


def to_markdown(rec: dict[str, Any]) -> str:
    p, s = rec["provenance"], rec["settings"]
    lines = [f"# bench {rec['kind']} vs {rec['against']} · {s['model_config']} · {p['gpu'] or 'CPU'}", ""]
    if rec.get("note"):
        lines += [f"> **{rec['note']}**", ""]
    if rec["kind"] == "train":
        lines += [
            "| contender | weights / compute | steps/s | real tok/s | processed tok/s | padding | MFU | "
            "peak GiB | warm-up s | one-time s | real tok/s incl. one-time |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rec["rows"]:
            prec = r.get("settings", {}).get("precision") or {}
            lines.append(
                f"| {r['name']} | {prec.get('master_dtype', '?')} / {prec.get('compute_dtype', '?')} | "
                f"{_f(r['steps_per_s'])} | {_f(r['tokens_per_s_real'])} | "
                f"{_f(r['tokens_per_s_processed'])} | {_f(r['padding_fraction'], 2)} | {_f(r['mfu'], 2)} | "
                f"{_f(r['peak_memory_gib'])} | {_f(r['warmup_s'])} | {_f(r['one_time_s'])} | "
                f"{_f(r['tokens_per_s_real_with_one_time'])} |"
            )
        rp = rec["reference_pass"]
        lines += [
            "",
            f"Reference pass (once, shared by KTO and DPO and every seed/β): matched sequences "
            f"{_f(rp['matched']['seconds'])} s ({rp['matched']['sequences']} seqs), KTO's KL sequences "
            f"{_f(rp['kl']['seconds'])} s ({rp['kl']['sequences']} seqs).",
        ]
        if "layout_agreement" in rec:
            la = rec["layout_agreement"]
            lines += [
                "",
                f"Fast path vs plain path ({la['sequences']} sequences of the first DPO and KTO+KL microbatches): "
                f"{la['fast']['layout']} layout with {la['fast']['attention']} (rows of "
                f"{la['fast']['row_tokens'] or 'one microbatch'}) vs padded SDPA, per-sequence log-probs differ by "
                f"at most {_f(la['max_abs_diff'])} nats ({_f(la['max_rel_diff'])} relative).",
            ]
    else:
        lines += [
            "| contender | batch | requests/s | generated tok/s | processed tok/s | MFU | peak GiB | warm-up s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rec["rows"]:
            lines.append(
                f"| {r['name']} | {r['batch_size']} | {_f(r['requests_per_s'])} | "
                f"{_f(r['generated_tokens_per_s'])} | {_f(r['tokens_per_s_processed'])} | {_f(r['mfu'], 2)} "
                f"| {_f(r['peak_memory_gib'])} | {_f(r['warmup_s'])} |"
            )
        a = rec["agreement"]
        lines += [
            "",
            f"Agreement: identical generations {_f(a['generate_identical'], 2)}; log-likelihood max |diff| "
            f"{_f(a['loglikelihood_max_abs_diff'])}.",
        ]
    lines += ["", "| ours | peer | metric | ratio ours/peer |", "|---|---|---|---|"]
    lines += [f"| {r['ours']} | {r['peer']} | {r['metric']} | {_f(r['ratio'])} |" for r in rec["ratios"]]
    pk = p["packages"]
    lines += [
        "",
        f"FLOPs: {rec['flops_n_definition']}; N = {rec['model']['params']['flops_n']:,} "
        f"(total {rec['model']['params']['total']:,}, non-embedding {rec['model']['params']['non_embedding']:,}).",
        "",
        "Provenance: "
        + ", ".join(
            [
                f"GPU {p['gpu'] or 'none'}",
                f"torch {p['torch']}",
                f"CUDA {p['cuda']}",
                *(f"{k} {v}" for k, v in pk.items() if v),
                f"git {(p['git']['commit'] or 'unknown')[:12]}{' (dirty)' if p['git']['dirty'] else ''}",
                f"{p['hardware'].get('cpu')} × {p['hardware'].get('cpu_count')} CPUs",
            ]
        ),
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()),
        "",
        f"GPU command: `{rec['gpu_command']}`",
        "",
    ]
    return "\n".join(lines)

"""The TRL contender of `kto-bench bench train`: KTOTrainer / DPOTrainer on the examples our run trained.

TRL gets our run's microbatches (the loop's own `plan` picks them), decoded from our token ids, the same
starting weights (loaded as the train stage loads them), steps, batch, lr, β and precision; per step its
seconds and token counts, named as our loop names its own, so `record.summarize` reads both sides alike.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kto_bench.bench.record import BenchSettings, PeakMemory, sync


def trained_examples(run, data) -> list[tuple[tuple[int, ...], ...]]:
    """The examples our run trained, in its microbatches' order, from the loop's own plan: DPO
    (prompt, chosen, rejected), KTO (prompt, completion, desirable)."""
    from kto_bench.train.loop import batch_counts, paired_epoch, plan

    view = run.method.data
    p = plan(run, batch_counts(data, view), paired_epoch(data, run.training.grad_accum), 1)
    batches = data.pair_batches if view == "pairs" else data.binary_batches
    ids = [i for b in p.order[: p.steps * p.microbatches_per_step] for i in batches[b]]
    seq = data.sequences
    if view == "pairs":
        return [(seq[c][0], seq[c][1], seq[r][1]) for c, r in (data.pairs[i] for i in ids)]
    return [(seq[k][0], seq[k][1], d) for k, d in (data.binary[i] for i in ids)]


def trl_dataset(method: str, examples: list, tok) -> tuple[Any, float]:
    """The examples as TRL's text columns, and the fraction whose text encodes back to exactly our ids."""
    from datasets import Dataset

    def text(ids) -> str:
        return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def same(ids) -> bool:
        return tok(text(ids), add_special_tokens=False)["input_ids"] == list(ids)

    exact = sum(all(same(x) for x in ex[:3] if not isinstance(x, bool)) for ex in examples) / len(examples)
    if method == "dpo":
        cols = {"prompt": [text(p) for p, _, _ in examples], "chosen": [text(c) for _, c, _ in examples]}
        cols["rejected"] = [text(r) for _, _, r in examples]
    else:
        cols = {"prompt": [text(p) for p, _, _ in examples], "completion": [text(c) for _, c, _ in examples]}
        cols["label"] = [bool(d) for _, _, d in examples]
    return Dataset.from_dict(cols), exact


def run_trl(s: BenchSettings, method: str, run, store, *, precompute: bool, out_dir: Path) -> dict[str, Any]:
    """TRL's trainer at its defaults (plus max_steps, lr, batch, β, precision; no logging/saving/eval)."""
    import copy

    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from kto_bench import models, pipeline
    from kto_bench.train import precision

    device = s.resolved_device()
    where, _ = pipeline.resolved(run)
    tok = models.load_tokenizer(run.model, where)
    model = models.load_model(run.model, where, device, dtype=precision.load_dtype(run))  # as stage_train
    dataset, exact = trl_dataset(method, trained_examples(run, pipeline.load_data(store)), tok)
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
        max_length=run.data.max_length,
        precompute_ref_log_probs=precompute,
    )
    steps: list[dict[str, float]] = []
    ref = None if precompute else copy.deepcopy(model)  # TRL's own default copies the policy the same way
    sync(device)
    t0 = time.perf_counter()
    trainer = trainer_cls(model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=tok)
    sync(device)
    init_s = time.perf_counter() - t0

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            sync(device)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(device)
            t = time.perf_counter()
            steps[-1]["time/step_s"] = t - self.t
            self.t = t

    inner = trainer.training_step

    def counted_step(model_, inputs, *rest, **kw):
        steps.append(trl_counts(inputs, online_reference=not precompute))
        return inner(model_, inputs, *rest, **kw)

    trainer.training_step = counted_step
    trainer.add_callback(Timer())
    with PeakMemory(device) as mem:
        trainer.train()
    settings = {
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "lr_schedule": getattr(args.lr_scheduler_type, "value", str(args.lr_scheduler_type)),
        "reference": "precomputed in __init__ (precompute_ref_log_probs=True)"
        if precompute
        else "online reference model (copy of the policy)",
        "precision": {
            "mode": "bf16" if args.bf16 else "fp32",
            "master_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "compute_dtype": "bfloat16" if args.bf16 else "float32",
        },
        "init_s": init_s,
        "text_encodes_to_our_ids": exact,
    }
    del trainer, ref, model
    return {"steps": steps, "memory": mem.record(), "settings": settings}


def trl_counts(inputs: dict, *, online_reference: bool) -> dict[str, float]:
    """One TRL step's token counts, named as our loop names its own."""
    mask = inputs["attention_mask"]
    real, processed = int(mask.sum()), mask.numel()
    kl_real = kl_processed = 0
    if "KL_attention_mask" in inputs:
        kl_real, kl_processed = int(inputs["KL_attention_mask"].sum()), inputs["KL_attention_mask"].numel()
    return {
        "tokens/trained": real,
        "tokens/processed": processed + kl_processed,
        "tokens/nonpad_grad": real,
        "tokens/nonpad_nograd": kl_real,
        "tokens/reference": real + kl_real if online_reference else 0,
    }

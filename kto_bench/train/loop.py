"""One training loop for every method: only the loss (and which view of the data it reads) differs.

    train()       build optimizer/schedule, resume from the last checkpoint, step until the budget is spent
    train_step()  one optimizer step over `grad_accum` microbatches of this process

The data order is a pure function of (seed, epoch): each epoch shuffles the fixed microbatches, and
process r of w takes every w-th one. A checkpoint is one dict of stateful parts (weights, optimizer,
scheduler, RNG, step), so a resumed run continues the same curve.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kto_bench.data.tokenize import TokenizedData
from kto_bench.errors import StoreError, TrainingError
from kto_bench.spec import RunSpec
from kto_bench.train.logps import collate, sequence_logps
from kto_bench.train.losses import LOSSES, call_loss


@dataclass(frozen=True)
class Plan:
    """How many optimizer steps a run takes and over which microbatches (pure, from the budget rule)."""

    steps: int
    microbatches_per_step: int
    order: list[int]  # microbatch indices in training order, across epochs (this run's seed)


def microbatch_order(n_batches: int, seed: int, epochs: int) -> list[int]:
    order = []
    for epoch in range(epochs):
        ids = list(range(n_batches))
        random.Random(f"order-{seed}-{epoch}").shuffle(ids)
        order += ids
    return order


def plan(run: RunSpec, batch_tokens: list[int], world_size: int = 1) -> Plan:
    """Apply the spec's compute budget rule: epochs, steps, or trained tokens."""
    t = run.training
    per_step = t.grad_accum * world_size
    n = len(batch_tokens)
    if n < per_step:
        raise TrainingError(f"only {n} microbatches of {t.batch_size}, fewer than one optimizer step needs "
                            f"({per_step}); lower training.batch_size or training.grad_accum")
    budget = t.budget
    if budget.rule == "epochs":
        steps = int(budget.value * n) // per_step
    elif budget.rule == "steps":
        steps = int(budget.value)
    else:  # tokens: the first step at which trained tokens reach the budget
        steps, seen, i = 0, 0, 0
        order = microbatch_order(n, run.seed, 1)
        while seen < budget.value:
            if i == len(order):
                order += microbatch_order(n, run.seed, len(order) // n + 1)[len(order):]
            seen += batch_tokens[order[i]]
            i += 1
            steps = math.ceil(i / per_step)
    epochs = math.ceil(steps * per_step / n) if n else 1
    return Plan(steps=steps, microbatches_per_step=per_step, order=microbatch_order(n, run.seed, max(1, epochs)))


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return f


def disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


# ----------------------------------------------------------------------------- one microbatch


def batch_tensors(model, data: TokenizedData, method: str, batch_idx: int, ref: Callable, pad_id: int, device,
                  ) -> tuple[dict[str, torch.Tensor], int]:
    """The loss inputs of one microbatch and the number of trained (non-pad) tokens."""
    info = LOSSES.get(method)
    if info.data == "pairs":
        pairs = [data.pairs[i] for i in data.pair_batches[batch_idx]]
        seqs = [data.sequences[c] for c, _ in pairs] + [data.sequences[r] for _, r in pairs]
        logps, lengths = sequence_logps(model, collate(seqs, pad_id, device))  # chosen and rejected in one forward
        b = len(pairs)
        t = {"chosen_policy_logps": logps[:b], "rejected_policy_logps": logps[b:],
             "chosen_lengths": lengths[:b], "rejected_lengths": lengths[b:]}
        if info.needs_reference:
            r = ref(seqs).to(device)
            t |= {"chosen_reference_logps": r[:b], "rejected_reference_logps": r[b:]}
    else:
        items = [data.binary[i] for i in data.binary_batches[batch_idx]]
        seqs = [data.sequences[s] for s, _ in items]
        logps, lengths = sequence_logps(model, collate(seqs, pad_id, device))
        t = {"policy_logps": logps, "lengths": lengths,
             "desirable": torch.tensor([d for _, d in items], device=device)}
        if info.needs_reference:
            t["reference_logps"] = ref(seqs).to(device)
        if info.needs_kl:
            kl = [data.sequences[k] for k in data.kl_seqs[batch_idx]]
            with torch.no_grad():  # z0 is detached: no graph for the KL pass
                t["kl_policy_logps"], _ = sequence_logps(model, collate(kl, pad_id, device))
            t["kl_reference_logps"] = ref(kl).to(device)
    return t, sum(len(p) + len(c) for p, c in seqs)


def n_batches(data: TokenizedData, method: str) -> int:
    return len(data.pair_batches if LOSSES.get(method).data == "pairs" else data.binary_batches)


def batch_token_counts(data: TokenizedData, method: str) -> list[int]:
    if LOSSES.get(method).data == "pairs":
        return [sum(len(data.sequences[s][0]) + len(data.sequences[s][1]) for i in b for s in data.pairs[i])
                for b in data.pair_batches]
    return [sum(len(data.sequences[data.binary[i][0]][0]) + len(data.sequences[data.binary[i][0]][1]) for i in b)
            for b in data.binary_batches]


# ----------------------------------------------------------------------------- the loop


@dataclass
class Context:
    """Runtime objects of a training run (never stored in the spec)."""

    run: RunSpec
    data: TokenizedData
    ref: Callable[[list], torch.Tensor]  # sequences -> reference log-probs (from the cache)
    hyper: dict  # loss hyperparameters (β, λD, λU, …)
    pad_id: int
    checkpoint_dir: Path
    log: Callable[[int, dict], None]
    accelerator: object
    progress: Callable[[int, int], None] = lambda step, total: None


def train_step(model, ctx: Context, batch_ids: list[int], optimizer, scheduler) -> dict[str, float]:
    acc = ctx.accelerator
    device = acc.device
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    tokens = 0
    for i, b in enumerate(batch_ids):
        sync = i == len(batch_ids) - 1
        with acc.no_sync(model) if not sync and acc.num_processes > 1 else _null():
            with acc.autocast():
                tensors, n_tok = batch_tensors(model, ctx.data, ctx.run.method.type, b, ctx.ref, ctx.pad_id, device)
                result = call_loss(ctx.run.method.type, tensors, **ctx.hyper, **_kl_reduce(acc))
            if not torch.isfinite(result.loss):
                raise TrainingError(f"non-finite loss ({result.loss.item()}) at microbatch {b}; the last good "
                                    f"checkpoint is in {ctx.checkpoint_dir}. Lower training.lr or method.beta")
            acc.backward(result.loss / len(batch_ids))
        tokens += n_tok
        sums["train/loss"] += result.loss.item()
        counts["train/loss"] += 1
        for k, v in result.metrics.items():
            sums[f"train/{k}"] += v
            counts[f"train/{k}"] += 1
    grad_norm = acc.clip_grad_norm_(model.parameters(), ctx.run.training.max_grad_norm)
    grad_norm = float(grad_norm)
    if not math.isfinite(grad_norm):
        raise TrainingError(f"non-finite gradient norm ({grad_norm}); the last good checkpoint is in "
                            f"{ctx.checkpoint_dir}. Lower training.lr, or use precision fp32")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = {k: sums[k] / counts[k] for k in sums}
    out |= {"train/grad_norm": grad_norm, "tokens/step": tokens}
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _kl_reduce(acc) -> dict:
    """KTO's z0 is averaged across processes (each estimates it on its own per-step microbatch)."""
    if acc.num_processes == 1:
        return {}

    def reduce(kl: torch.Tensor) -> torch.Tensor:
        return acc.reduce(kl.detach().clone(), reduction="mean")

    return {"kl_reduce": reduce}


def train(model, ctx: Context) -> dict:
    """Train until the budget is spent, resuming from `checkpoint_dir/last.pt` if present."""
    acc, t = ctx.accelerator, ctx.run.training
    torch.manual_seed(ctx.run.seed)
    disable_dropout(model)
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    p = plan(ctx.run, batch_token_counts(ctx.data, ctx.run.method.type), acc.num_processes)
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=t.lr,
                                  betas=t.adam_betas, weight_decay=t.weight_decay)
    warmup = int(t.warmup_ratio * p.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.schedule, warmup, p.steps))
    model, optimizer = acc.prepare(model, optimizer)
    model.train()
    step, tokens, wall = load_checkpoint(ctx, model, optimizer, scheduler)
    t_start = time.time() - wall
    while step < p.steps:
        t0 = time.time()
        first = step * p.microbatches_per_step + acc.process_index * t.grad_accum
        ids = p.order[first : first + t.grad_accum] if acc.num_processes == 1 else [
            p.order[step * p.microbatches_per_step + i * acc.num_processes + acc.process_index]
            for i in range(t.grad_accum)
        ]
        metrics = train_step(model, ctx, ids, optimizer, scheduler)
        step += 1
        n_tok = int(metrics.pop("tokens/step")) * acc.num_processes
        tokens += n_tok
        dt = time.time() - t0
        metrics |= {"train/lr": scheduler.get_last_lr()[0], "tokens/seen": tokens, "time/step_s": dt,
                    "throughput/tokens_per_s": n_tok / max(dt, 1e-9)}
        ctx.log(step, metrics)
        ctx.progress(step, p.steps)
        if step % t.checkpoint_every == 0 or step == p.steps:
            save_checkpoint(ctx, acc.unwrap_model(model), optimizer, scheduler, step, tokens, time.time() - t_start)
    return {"steps": p.steps, "tokens": tokens, "wall_s": round(time.time() - t_start, 3),
            "microbatches_per_step": p.microbatches_per_step, "effective_batch": t.batch_size * p.microbatches_per_step,
            "stopped": None}


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(ctx: Context, model, optimizer, scheduler, step: int, tokens: int, wall: float) -> None:
    if not ctx.accelerator.is_main_process:
        return
    state = {
        "run_id": ctx.run.run_id,
        "model": {k: v for k, v in model.state_dict().items() if _trainable_key(model, k)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "step": step,
        "tokens": tokens,
        "wall_s": wall,
    }
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.checkpoint_dir / "last.pt"
    tmp = path.with_name(f".last.pt.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _trainable_key(model, key: str) -> bool:
    """With LoRA only the adapter is saved; otherwise every weight."""
    return "lora_" in key if any("lora_" in k for k, _ in model.named_parameters()) else True


def load_checkpoint(ctx: Context, model, optimizer, scheduler) -> tuple[int, int, float]:
    path = ctx.checkpoint_dir / "last.pt"
    if not path.exists():
        return 0, 0, 0.0
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise StoreError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to restart "
                         "training of this run from step 0") from None
    if state.get("run_id") != ctx.run.run_id:
        raise StoreError(f"checkpoint {path} belongs to run {state.get('run_id')!r}, not {ctx.run.run_id!r}; "
                         "it will not be used. Move it away or rerun with --force")
    ctx.accelerator.unwrap_model(model).load_state_dict(state["model"], strict=not any(
        "lora_" in k for k in state["model"]))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["tokens"], state["wall_s"]

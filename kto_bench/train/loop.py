"""One training loop for every method: only the loss (and which view of the data it reads) differs.

    train()       build optimizer/schedule, resume from the last checkpoint, step until the budget is spent
    train_step()  one optimizer step over `grad_accum` microbatches of this process

The data order is a pure function of (seed, epoch): each epoch shuffles the fixed microbatches, an
optimizer step takes the next grad_accum × w of them, and process r of w takes every w-th one. So
w processes with grad_accum g see the same microbatches per step as one process with grad_accum g·w;
KTO's z0 is the mean over the whole step (all its microbatches, averaged across processes) and the
logged metrics are global means, so both layouts give the same curve. A checkpoint is one dict of
stateful parts (weights, optimizer, scheduler, RNG, step), so a resumed run continues the same curve.

Over 400 lines because the plan (budget -> steps), the data order, the step and the checkpoint state
are one contract that the multi-process and resume tests check together.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kto_bench.data.tokenize import TokenizedData
from kto_bench.errors import StoreError, TrainingError
from kto_bench.io import read_torch
from kto_bench.methods import call_loss
from kto_bench.scoring import LogProbs, collate, token_counts, use_attention
from kto_bench.spec import RunSpec
from kto_bench.store import fault_point, save_torch
from kto_bench.train import precision

UNITS = ("examples", "sequences", "tokens")


@dataclass(frozen=True)
class Plan:
    """How many optimizer steps a run takes and over which microbatches (pure, from the budget rule)."""

    steps: int
    microbatches_per_step: int
    order: list[int]  # microbatch indices in training order, across epochs (this run's seed)
    trained: dict[str, int]  # examples, sequences, tokens in the microbatches the steps take


def microbatch_order(n_batches: int, seed: int, epochs: int) -> list[int]:
    order = []
    for epoch in range(epochs):
        ids = list(range(n_batches))
        random.Random(f"order-{seed}-{epoch}").shuffle(ids)
        order += ids
    return order


def plan(
    run: RunSpec, counts: list[dict[str, int]], paired_epoch: dict[str, int] | None, world_size: int = 1
) -> Plan:
    """Apply the spec's budget rule (`spec.BudgetSpec`) to this method's microbatches.

    `counts` holds each microbatch's examples, sequences and tokens; `paired_epoch` the totals of one
    epoch of the paired view (steps included), which `budget.per: paired_epoch` scales."""
    t = run.training
    per_step = t.grad_accum * world_size
    n = len(counts)
    if n < per_step:
        raise TrainingError(
            f"only {n} microbatches of {t.batch_size}, fewer than one optimizer step needs "
            f"({per_step}); lower training.batch_size or training.grad_accum"
        )
    budget = t.budget
    target = budget.value
    if budget.per == "paired_epoch":
        if not paired_epoch or not paired_epoch["examples"]:
            raise TrainingError(
                "training.budget.per: paired_epoch needs pairs in the data, and this run has none; "
                "use per: absolute"
            )
        target = budget.value * paired_epoch[budget.rule]
    if budget.rule == "epochs":
        steps = int(budget.value * n) // per_step
    elif budget.rule == "steps":
        steps = round(target)
    else:  # examples, sequences, tokens: the first step at which the trained amount reaches the target
        i, seen = 0, 0
        order = microbatch_order(n, run.seed, 1)
        while seen < target:
            if i == len(order):
                order = microbatch_order(n, run.seed, len(order) // n + 1)
            seen += counts[order[i]][budget.rule]
            i += 1
        steps = math.ceil(i / per_step)
    if steps < 1:
        raise TrainingError(
            f"training.budget ({budget.rule} {budget.value}, per {budget.per}) gives no optimizer step; "
            "raise budget.value"
        )
    epochs = math.ceil(steps * per_step / n)
    order = microbatch_order(n, run.seed, epochs)
    used = order[: steps * per_step]
    trained = {u: sum(counts[b][u] for b in used) for u in UNITS}
    return Plan(steps=steps, microbatches_per_step=per_step, order=order, trained=trained)


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


def policy_logps(model, ctx: Context, seqs: list) -> tuple[torch.Tensor, torch.Tensor, Counter]:
    """(log-probs, scored token counts, token counts of the forward) of sequences, in the run's layout.

    `model` is the prepared `LogProbs` module (DDP/FSDP-wrapped when there are several processes)."""
    batch = collate(seqs, ctx.pad_id, ctx.accelerator.device, ctx.run.training.layout, ctx.row_tokens)
    logps, lengths = model(**batch)
    grad = "grad" if torch.is_grad_enabled() else "nograd"
    counts = token_counts(batch)
    return logps, lengths, Counter({"processed": counts["processed"], f"nonpad_{grad}": counts["nonpad"]})


def batch_tensors(model, ctx: Context, batch_idx: int, fused_kl: bool) -> tuple[dict, int, Counter]:
    """The loss inputs of one microbatch, its trained tokens (prompt + completion of every trained
    sequence, as a peer counts them) and the token counts of its forward.

    KTO's KL pairs come from `kl_tensors`, or with `fused_kl` ride along in this forward (detached)."""
    data, info, device = ctx.data, ctx.run.method, ctx.accelerator.device
    if info.data == "pairs":
        pairs = [data.pairs[i] for i in data.pair_batches[batch_idx]]
        seqs = [data.sequences[c] for c, _ in pairs] + [data.sequences[r] for _, r in pairs]
        logps, lengths, counts = policy_logps(model, ctx, seqs)  # chosen and rejected in one forward
        b = len(pairs)
        t = {
            "chosen_policy_logps": logps[:b],
            "rejected_policy_logps": logps[b:],
            "chosen_lengths": lengths[:b],
            "rejected_lengths": lengths[b:],
        }
        if info.needs_reference:
            r = ctx.ref(seqs).to(device)
            t |= {"chosen_reference_logps": r[:b], "rejected_reference_logps": r[b:]}
        return t, sum(len(p) + len(c) for p, c in seqs), counts
    items = [data.binary[i] for i in data.binary_batches[batch_idx]]
    seqs = [data.sequences[s] for s, _ in items]
    kl = [data.sequences[k] for k in data.kl_seqs[batch_idx]] if fused_kl else []
    logps, lengths, counts = policy_logps(model, ctx, seqs + kl)
    b = len(seqs)
    t = {
        "policy_logps": logps[:b],
        "lengths": lengths[:b],
        "desirable": torch.tensor([d for _, d in items], device=device),
    }
    if info.needs_reference:
        r = ctx.ref(seqs + kl).to(device)
        t["reference_logps"] = r[:b]
    if kl:
        t |= {"kl_policy_logps": logps[b:].detach(), "kl_reference_logps": r[b:]}
    return t, sum(len(p) + len(c) for p, c in seqs), counts


def kl_tensors(model, ctx: Context, batch_ids: list[int]) -> tuple[dict[str, torch.Tensor], Counter]:
    """KTO's KL inputs: the mismatched pairs of the given microbatches (one, by default: the paper's z0
    per per-step microbatch; all of the step's with `method.z0_scope: step`), and the forwards' token counts.

    One forward per microbatch, without a graph (z0 is detached), through the prepared module (under
    FSDP only it holds the gathered weights; DDP does no gradient bookkeeping without grad). The loss
    averages them and then across processes (`_kl_reduce`, processes weighted equally).
    """
    policy, reference, counts = [], [], Counter()
    with torch.no_grad():
        for b in batch_ids:
            kl = [ctx.data.sequences[k] for k in ctx.data.kl_seqs[b]]
            logps, _, c = policy_logps(model, ctx, kl)
            policy.append(logps)
            reference.append(ctx.ref(kl).to(ctx.accelerator.device))
            counts += c
    return {"kl_policy_logps": torch.cat(policy), "kl_reference_logps": torch.cat(reference)}, counts


def batch_counts(data: TokenizedData, view: str) -> list[dict[str, int]]:
    """Examples, completion sequences and tokens (prompt + completion) of each microbatch of a view."""

    def tokens(s: int) -> int:
        return len(data.sequences[s][0]) + len(data.sequences[s][1])

    if view == "pairs":
        return [
            {
                "examples": len(b),
                "sequences": 2 * len(b),
                "tokens": sum(tokens(c) + tokens(r) for c, r in (data.pairs[i] for i in b)),
            }
            for b in data.pair_batches
        ]
    return [
        {"examples": len(b), "sequences": len(b), "tokens": sum(tokens(data.binary[i][0]) for i in b)}
        for b in data.binary_batches
    ]


def paired_epoch(data: TokenizedData, per_step: int) -> dict[str, int]:
    """One epoch of the paired view (DPO's data): its steps, examples, sequences and tokens."""
    counts = batch_counts(data, "pairs")
    return {"steps": len(counts) // per_step} | {u: sum(c[u] for c in counts) for u in UNITS}


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
    module: torch.nn.Module | None = None  # set by train(): the prepared LogProbs module (see model_state)
    row_tokens: int | None = None  # set by train(): packed row size (`logps.use_attention`)


def train_step(model, ctx: Context, batch_ids: list[int], optimizer, scheduler) -> dict[str, float]:
    """One optimizer step; `model` is the prepared LogProbs module. Returns the step's global metrics
    (means) and token counts (`tokens/…`, sums over the step's microbatches on every process)."""
    acc = ctx.accelerator
    method = ctx.run.method.type
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    tokens = Counter()
    kl: dict[str, torch.Tensor] = {}
    needs_kl = ctx.run.method.needs_kl
    step_scope = getattr(ctx.run.method, "z0_scope", "microbatch") == "step"
    fused_kl = needs_kl and not step_scope and ctx.run.training.kl_pass == "fused"
    if needs_kl and step_scope:  # z0 over the whole optimizer step (an ablation; layout-independent)
        with acc.autocast():
            kl, c = kl_tensors(model, ctx, batch_ids)
        tokens += c
    for i, b in enumerate(batch_ids):
        sync = i == len(batch_ids) - 1
        with acc.no_sync(model) if not sync and acc.num_processes > 1 else _null():
            with acc.autocast():
                if needs_kl and not step_scope and not fused_kl:  # the paper's z0: this microbatch's pairs
                    kl, c = kl_tensors(model, ctx, [b])
                    tokens += c
                tensors, n_tok, c = batch_tensors(model, ctx, b, fused_kl)
                result = call_loss(method, kl | tensors, **ctx.hyper, **_kl_reduce(acc))
            if not torch.isfinite(result.loss):
                raise TrainingError(
                    f"non-finite loss ({result.loss.item()}) at microbatch {b}: lower training.lr "
                    "or method.beta"
                )
            acc.backward(result.loss / len(batch_ids))
        tokens += c + Counter({"trained": n_tok})
        sums["train/loss"] += result.loss.item()
        counts["train/loss"] += 1
        for k, v in result.metrics.items():
            sums[f"train/{k}"] += v
            counts[f"train/{k}"] += 1
    grad_norm = acc.clip_grad_norm_(model.parameters(), ctx.run.training.max_grad_norm)
    grad_norm = float(grad_norm)
    if not math.isfinite(grad_norm):
        raise TrainingError(
            f"non-finite gradient norm ({grad_norm}): lower training.lr, or use precision fp32"
        )
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out, totals = global_means(acc, sums, counts, tokens)
    return out | {"train/grad_norm": grad_norm} | {f"tokens/{k}": v for k, v in totals.items()}


def global_means(
    acc,
    sums: dict[str, float],
    counts: dict[str, int],
    tokens: Counter,
) -> tuple[dict[str, float], Counter]:
    """(each metric's mean over every microbatch of the step on every process, the step's token counts).

    A metric a microbatch lacks (a class-conditional reward) is averaged over those that have it, so the
    logged curve is the same for w processes as for one process accumulating w times as many microbatches.
    """
    parts = [(dict(sums), dict(counts), dict(tokens))]
    if acc.num_processes > 1:
        parts = [None] * acc.num_processes
        torch.distributed.all_gather_object(parts, (dict(sums), dict(counts), dict(tokens)))
    total: dict[str, float] = defaultdict(float)
    n: dict[str, int] = defaultdict(int)
    for s, c, _ in parts:
        for k in s:
            total[k] += s[k]
            n[k] += c[k]
    return {k: total[k] / n[k] for k in total}, sum((Counter(t) for _, _, t in parts), Counter())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _kl_reduce(acc) -> dict:
    """KTO's z0 is averaged across processes (each estimates it on its own microbatches of the step)."""
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
    attention, ctx.row_tokens = use_attention(model, t, ctx.run.data.max_length, acc.device)
    if t.compile:  # the decoder is where the FLOPs are; the LM head runs in checkpointed chunks beside it
        model.get_decoder().compile(dynamic=True)
    p = plan(
        ctx.run,
        batch_counts(ctx.data, ctx.run.method.data),
        paired_epoch(ctx.data, t.grad_accum * acc.num_processes),
        acc.num_processes,
    )
    checkpoint = read_checkpoint(ctx)
    if checkpoint is not None:  # weights go in before wrapping: DDP broadcasts them, FSDP shards them
        model.load_state_dict(checkpoint["model"], strict=not any("lora_" in k for k in checkpoint["model"]))
    trainable = [q for q in model.parameters() if q.requires_grad]
    precision.check_master_weights(ctx.run, trainable)
    optimizer = precision.optimizer(ctx.run, trainable)
    warmup = int(t.warmup_ratio * p.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.schedule, warmup, p.steps))
    module, optimizer = acc.prepare(LogProbs(model), optimizer)  # wrap the log-prob forward, not the LM
    ctx.module = module
    module.train()
    step, tokens, wall = restore(ctx, checkpoint, module, optimizer, scheduler)
    t_start = time.time() - wall
    world, rank = acc.num_processes, acc.process_index
    saved = step if checkpoint is not None else None
    while step < p.steps:
        t0 = time.time()
        ids = [p.order[step * p.microbatches_per_step + i * world + rank] for i in range(t.grad_accum)]
        try:
            metrics = train_step(module, ctx, ids, optimizer, scheduler)
        except TrainingError as e:
            good = (
                f"{ctx.checkpoint_dir / 'last.pt'} (step {saved})"
                if saved is not None
                else "none yet (a rerun starts from step 0)"
            )
            raise TrainingError(f"step {step + 1} of {p.steps}: {e}; last good checkpoint: {good}") from None
        step += 1
        n_tok = int(metrics["tokens/trained"])  # already summed over processes
        tokens += n_tok
        dt = time.time() - t0
        metrics |= {
            "train/lr": scheduler.get_last_lr()[0],
            "tokens/seen": tokens,
            "time/step_s": dt,
            "throughput/tokens_per_s": n_tok / max(dt, 1e-9),
            "throughput/padding_fraction": padding_fraction(metrics),
        }
        ctx.log(step, metrics)
        fault_point(f"train:step:{step}")
        ctx.progress(step, p.steps)
        if step % t.checkpoint_every == 0 or step == p.steps:
            save_checkpoint(ctx, module, optimizer, scheduler, step, tokens, time.time() - t_start)
            saved = step
    return {
        "steps": p.steps,
        "tokens": tokens,
        "examples": p.trained["examples"],
        "sequences": p.trained["sequences"],
        "budget": t.budget.model_dump(mode="json"),
        "wall_s": round(time.time() - t_start, 3),
        "microbatches_per_step": p.microbatches_per_step,
        "world_size": world,
        "effective_batch": t.batch_size * p.microbatches_per_step,
        "precision": precision.semantics(ctx.run),
        "layout": t.layout,
        "kl_pass": t.kl_pass,
        "attention": attention,
        "row_tokens": ctx.row_tokens,
        "stopped": None,
    }


def padding_fraction(metrics: dict) -> float:
    """Share of a step's processed token slots that were padding (from its `tokens/…` counts)."""
    real = metrics.get("tokens/nonpad_grad", 0) + metrics.get("tokens/nonpad_nograd", 0)
    return 1 - real / metrics["tokens/processed"] if metrics.get("tokens/processed") else 0.0


# ----------------------------------------------------------------------------- checkpoints


def _fsdp(acc) -> bool:
    return str(getattr(acc, "distributed_type", "")).endswith("FSDP")


def model_state(acc, module) -> dict[str, torch.Tensor]:
    """The causal LM's full state dict (its own keys), complete on the main process (empty elsewhere
    under FSDP). Every process must call it: under FSDP it gathers the shards."""
    return {k.removeprefix("model."): v for k, v in acc.get_state_dict(module).items()}


def optimizer_state(acc, module, optimizer) -> dict:
    """The optimizer's state, complete on the main process (every process calls it, as model_state)."""
    if not _fsdp(acc):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        module, optimizer.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def save_checkpoint(ctx: Context, module, optimizer, scheduler, step: int, tokens: int, wall: float) -> None:
    """Every process calls this (FSDP gathers); the main process writes `last.pt`."""
    weights = model_state(ctx.accelerator, module)
    optim = optimizer_state(ctx.accelerator, module, optimizer)
    if not ctx.accelerator.is_main_process:
        return
    lora = any("lora_" in k for k in weights)  # with LoRA only the adapter is saved; otherwise every weight
    state = {
        "run_id": ctx.run.run_id,
        "model": {k: v for k, v in weights.items() if "lora_" in k or not lora},
        "optimizer": optim,
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "step": step,
        "tokens": tokens,
        "wall_s": wall,
    }
    # a temp file + rename (no partial last.pt, no temp file left on error); a full disk is a StoreError
    save_torch(
        state, ctx.checkpoint_dir / "last.pt", before_rename=lambda: fault_point(f"train:checkpoint:{step}")
    )


def read_checkpoint(ctx: Context) -> dict | None:
    """This run's `last.pt` (None when there is none); every process reads it."""
    path = ctx.checkpoint_dir / "last.pt"
    if not path.exists():
        return None
    try:
        state = read_torch(path, trusted=True)
    except Exception as e:
        raise StoreError(
            f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to restart "
            "training of this run from step 0"
        ) from None
    if state.get("run_id") != ctx.run.run_id:
        raise StoreError(
            f"checkpoint {path} belongs to run {state.get('run_id')!r}, not {ctx.run.run_id!r}; "
            "it will not be used. Move it away or rerun with --force"
        )
    return state


def restore(ctx: Context, state: dict | None, module, optimizer, scheduler) -> tuple[int, int, float]:
    """Load the optimizer, schedule and RNG of a checkpoint (its weights are already in); (step, tokens, wall)."""
    if state is None:
        return 0, 0, 0.0
    if _fsdp(ctx.accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(
            module, optimizer.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
        )
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["tokens"], state["wall_s"]

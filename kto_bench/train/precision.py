"""Training precision: the one place that decides master weights, compute dtype and the optimizer.

    precision   master weights + optimizer state   compute            as in
    fp32        float32                            float32            -
    bf16        float32                            bfloat16 autocast  FSDP / DeepSpeed mixed precision, TRL
    bf16_pure   bfloat16, updates stochastically   bfloat16           an opt-in (halves weight memory)
                rounded; moments float32

Why not plain AdamW on bf16 weights: bf16 keeps 8 significant bits, so an update smaller than about
2^-9 of a weight rounds away. At alignment learning rates (1e-7 .. 1e-5) most updates do, and the model
barely moves (docs/TRAINING.md has the measurement). `bf16_pure` keeps the expected update unbiased by
rounding up or down at random in proportion to the remainder.

`model.dtype` is how the base weights are stored and loaded (the reference pass and evaluation run in
it); the trained weights follow `training.precision`. Under LoRA the frozen base stays in `model.dtype`
and only the adapters (float32, as peft makes them) are master weights.
"""

from __future__ import annotations

import torch

from kto_bench.spec import RunSpec


def semantics(run: RunSpec) -> dict[str, str]:
    """What a run's precision means, for provenance, run identity and the audit table."""
    p = run.training.precision
    return {
        "mode": p,
        "master_dtype": "bfloat16" if p == "bf16_pure" else "float32",
        "compute_dtype": "float32" if p == "fp32" else "bfloat16",
        "optimizer_state_dtype": "float32",
        "update_rounding": "stochastic" if p == "bf16_pure" else "nearest (float32)",
    }


def load_dtype(run: RunSpec) -> str:
    """The dtype the policy is loaded in for training (LoRA: its frozen base, adapters stay float32)."""
    p = run.training.precision
    if p == "bf16_pure":
        return "bfloat16"
    if run.model.lora is not None and p == "bf16":  # the frozen base as stored; bf16 compute anyway
        return run.model.dtype
    return "float32"


def accelerator(run: RunSpec, cpu: bool, log_with: list | None = None):
    """The run's `Accelerator`: bf16 autocast (and FSDP's bf16 compute policy) only where the master weights
    are float32; `log_with` are its trackers (kto_bench/tracking.py). accelerate keeps one shared state per
    process; a run with another precision than the previous one in this process resets it (the process
    group, if any, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = "bf16" if run.training.precision == "bf16" else "no"
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed)) != mixed:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed, cpu=cpu, log_with=log_with or None)


def optimizer(run: RunSpec, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    t = run.training
    cls = StochasticRoundingAdamW if t.precision == "bf16_pure" else torch.optim.AdamW
    return cls(params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay)


def check_master_weights(run: RunSpec, params: list[torch.nn.Parameter]) -> None:
    """Every trainable tensor has the master dtype the precision promises (an internal invariant)."""
    want = getattr(torch, semantics(run)["master_dtype"])
    wrong = {str(p.dtype) for p in params if p.dtype != want}
    assert not wrong, f"training.precision {run.training.precision}: trainable weights in {wrong}, not {want}"


def stochastic_round(x: torch.Tensor) -> torch.Tensor:
    """float32 -> bfloat16, rounding up or down at random with probability proportional to the remainder
    (so E[round(x)] = x): add uniform noise below bfloat16's last bit, then truncate."""
    bits = x.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=x.device)
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """AdamW for bfloat16 weights: moments in float32, the new weight computed in float32 and written back
    with stochastic rounding (decoupled weight decay as torch.optim.AdamW)."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "closures are not supported"
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = float(state["step"])
                g = p.grad.float()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2**t)).sqrt_().add_(eps)
                w = p.float().mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / (1 - b1**t))
                p.copy_(stochastic_round(w) if p.dtype == torch.bfloat16 else w)
        return None

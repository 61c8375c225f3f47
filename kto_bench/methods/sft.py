"""SFT: the no-preference baseline (desirable completions only on binary data)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from kto_bench.methods.base import LossResult, MethodConfig, check_batch, check_lengths

if TYPE_CHECKING:
    from torch import Tensor


def sft_loss(policy_logps: Tensor, lengths: Tensor, desirable: Tensor | None = None) -> LossResult:
    """SFT: mean per-token negative log-likelihood of the desirable completions.

    loss = −Σ_i log πθ(y_i|x_i) / Σ_i |y_i|  over desirable examples (token-weighted, like TRL's DPO
    `sft` loss type and the causal-LM cross-entropy). On binary data SFT trains on desirable
    completions only: undesirable ones are ignored, as in the KTO paper's SFT baseline. Without
    `desirable` every example counts. A batch without desirable examples gives a zero loss that
    still carries the graph (zero gradient). There is no reward: `rewards` is empty.
    """
    import torch

    check_batch(policy_logps=policy_logps, lengths=lengths)
    check_lengths(lengths=lengths)
    keep = torch.ones_like(policy_logps, dtype=torch.bool) if desirable is None else desirable.bool()
    check_batch(policy_logps=policy_logps, desirable=keep)
    n_tokens = (lengths.to(policy_logps.dtype) * keep).sum()
    nll = -(policy_logps * keep).sum() / n_tokens.clamp(min=1)
    metrics = {"count/desirable": float(keep.sum().item())}
    if keep.any():
        metrics["nll/token"] = nll.item()
    return LossResult(loss=nll, rewards=policy_logps.new_empty(0), metrics=metrics)


class SFTConfig(MethodConfig):
    data: ClassVar = "binary"
    needs_reference: ClassVar = False
    loss: ClassVar = staticmethod(sft_loss)

    type: Literal["sft"] = "sft"

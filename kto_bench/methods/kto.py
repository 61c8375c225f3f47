"""KTO: its config, its loss, and the class weights λD, λU it derives from the data's class counts."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from kto_bench.methods.base import LossResult, MethodConfig, check_batch

if TYPE_CHECKING:
    from torch import Tensor


def _identity(x: Tensor) -> Tensor:
    return x


def kto_loss(
    policy_logps: Tensor,
    reference_logps: Tensor,
    kl_policy_logps: Tensor,
    kl_reference_logps: Tensor,
    desirable: Tensor,
    *,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
    kl_reduce: Callable[[Tensor], Tensor] = _identity,
) -> LossResult:
    """KTO (Ethayarajh et al., 2024, arXiv:2402.01306, Eq. 8).

    r  = log πθ(y|x) − log πref(y|x)
    z0 = max(0, kl_reduce(mean(kl_policy_logps − kl_reference_logps)))   detached; the KL tensors hold
         log-probs of mismatched pairs (x_i, y_j) from the same microbatch
    desirable:   λD·(1 − σ(β(r − z0)))        undesirable:   λU·(1 − σ(β(z0 − r)))
    loss = mean of the weighted per-example losses (over both classes together).

    `kl_reduce` (a runtime hook, not a hyperparameter) runs on the local mean KL before clamping, so a
    distributed loop can pass an all-reduce mean and every process uses the same z0 (TRL gathers,
    averages, then clamps too). A batch with only one class is fine.
    """
    import torch

    check_batch(policy_logps=policy_logps, reference_logps=reference_logps, desirable=desirable)
    check_batch(kl_policy_logps=kl_policy_logps, kl_reference_logps=kl_reference_logps)
    desirable = desirable.bool()

    kl = kl_reduce((kl_policy_logps - kl_reference_logps).detach().mean()).clamp(min=0).detach()
    logratios = policy_logps - reference_logps  # [B]
    losses = torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios))),
    )
    rewards = beta * logratios.detach()

    n_desirable = int(desirable.sum().item())
    n_undesirable = desirable.numel() - n_desirable
    metrics = {
        "kl": kl.item(),
        "count/desirable": float(n_desirable),
        "count/undesirable": float(n_undesirable),
    }
    if n_desirable:
        metrics["rewards/desirable"] = rewards[desirable].mean().item()
    if n_undesirable:
        metrics["rewards/undesirable"] = rewards[~desirable].mean().item()
    if n_desirable and n_undesirable:
        metrics["rewards/margin"] = metrics["rewards/desirable"] - metrics["rewards/undesirable"]
    return LossResult(loss=losses.mean(), rewards=rewards, metrics=metrics, kl=kl)


def kto_weights(
    n_desirable: int,
    n_undesirable: int,
    ratio: float,
    desirable_weight: float | None = None,
    undesirable_weight: float | None = None,
) -> tuple[float, float]:
    """λD, λU with λD·nD/(λU·nU) = ratio; the larger class keeps weight 1. Explicit weights win; without
    both classes (or without counts) the unset weights are 1."""
    if desirable_weight is not None and undesirable_weight is not None:
        return desirable_weight, undesirable_weight
    if n_desirable == 0 or n_undesirable == 0:
        return desirable_weight or 1.0, undesirable_weight or 1.0
    if desirable_weight is not None:
        return desirable_weight, desirable_weight * n_desirable / (ratio * n_undesirable)
    if undesirable_weight is not None:
        return ratio * undesirable_weight * n_undesirable / n_desirable, undesirable_weight
    if n_desirable * 1.0 <= ratio * n_undesirable:
        return ratio * n_undesirable / n_desirable, 1.0
    return 1.0, n_desirable / (ratio * n_undesirable)


class KTOConfig(MethodConfig):
    data: ClassVar = "binary"
    needs_reference: ClassVar = True
    needs_kl: ClassVar = True
    loss: ClassVar = staticmethod(kto_loss)

    type: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0)
    lambda_ratio: float = Field(1.0, ge=1.0, le=4 / 3, description="target λD·nD/(λU·nU), in [1, 4/3]")
    desirable_weight: float | None = Field(None, gt=0, description="λD; None = set from lambda_ratio")
    undesirable_weight: float | None = Field(None, gt=0, description="λU; None = set from lambda_ratio")
    z0_scope: Literal["microbatch", "step"] = Field(
        "microbatch",
        description="z0 from each per-step microbatch (the paper) or from the whole optimizer "
        "step's microbatches (an ablation; makes the curve independent of the process/accumulation layout)",
    )

    def loss_kwargs(self, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
        """β and λD, λU: unset weights follow `lambda_ratio` and the binary view's class counts."""
        c = counts or {}
        lam_d, lam_u = kto_weights(
            c.get("desirable", 0),
            c.get("undesirable", 0),
            self.lambda_ratio,
            self.desirable_weight,
            self.undesirable_weight,
        )
        return super().loss_kwargs(counts) | {"desirable_weight": lam_d, "undesirable_weight": lam_u}

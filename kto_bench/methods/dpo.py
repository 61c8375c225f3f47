"""DPO (with conservative-DPO label smoothing) and robust DPO: the same margin, two ways to read noise."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from kto_bench.methods.base import (
    LossResult,
    MethodConfig,
    check_smoothing,
    logratios,
    pair_result,
    smoothed_sigmoid_loss,
)

if TYPE_CHECKING:
    from torch import Tensor


def dpo_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> LossResult:
    """DPO (Rafailov et al., 2023, arXiv:2305.18290), with conservative-DPO label smoothing.

    m = (log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))
    loss = mean[ −(1 − ε)·log σ(βm) − ε·log σ(−βm) ],   ε = label_smoothing ∈ [0, 0.5)
    ε > 0 is cDPO (Mitchell, 2023, "A note on DPO with noisy preferences"); ε = 0 is plain DPO.
    """
    check_smoothing(label_smoothing, 0.5, "dpo")
    chosen, rejected = logratios(
        chosen_policy_logps, rejected_policy_logps, chosen_reference_logps, rejected_reference_logps
    )
    losses = smoothed_sigmoid_loss(beta * (chosen - rejected), label_smoothing)
    return pair_result(losses.mean(), beta * chosen, beta * rejected)


def robust_dpo_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float,
) -> LossResult:
    """Robust DPO, rDPO (Chowdhury et al., 2024, arXiv:2403.00409).

    With m the DPO log-ratio margin and ε = label_smoothing ∈ [0, 0.5) the assumed flip rate:
    loss = mean[ ((1 − ε)·(−log σ(βm)) − ε·(−log σ(−βm))) / (1 − 2ε) ]
    an unbiased estimate of the clean DPO loss under symmetric label noise; ε = 0 is DPO.
    """
    from torch.nn.functional import logsigmoid

    check_smoothing(label_smoothing, 0.5, "rdpo")
    chosen, rejected = logratios(
        chosen_policy_logps, rejected_policy_logps, chosen_reference_logps, rejected_reference_logps
    )
    logits = beta * (chosen - rejected)
    eps = label_smoothing
    losses = ((1 - eps) * -logsigmoid(logits) - eps * -logsigmoid(-logits)) / (1 - 2 * eps)
    return pair_result(losses.mean(), beta * chosen, beta * rejected)


class DPOConfig(MethodConfig):
    data: ClassVar = "pairs"
    needs_reference: ClassVar = True
    loss: ClassVar = staticmethod(dpo_loss)

    type: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO's ε; 0 = plain DPO")


class RDPOConfig(MethodConfig):
    data: ClassVar = "pairs"
    needs_reference: ClassVar = True
    loss: ClassVar = staticmethod(robust_dpo_loss)

    type: Literal["rdpo"] = "rdpo"
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="the assumed flip rate ε; 0 = DPO")

"""SimPO: reference-free, length-normalized, with a target margin."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from kto_bench.methods.base import (
    LossResult,
    MethodConfig,
    check_batch,
    check_lengths,
    check_smoothing,
    pair_result,
    smoothed_sigmoid_loss,
)

if TYPE_CHECKING:
    from torch import Tensor


def simpo_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    gamma_beta_ratio: float,
    label_smoothing: float,
) -> LossResult:
    """SimPO (Meng et al., 2024, arXiv:2405.14734): reference-free and length-normalized.

    s = log πθ(y_w)/|y_w| − log πθ(y_l)/|y_l|,   γ = gamma_beta_ratio·β
    loss = mean[ −(1 − ε)·log σ(βs − γ) − ε·log σ(−(βs − γ)) ]
    The margin is given as γ/β as in the SimPO repository (TRL's CPO takes γ itself, `simpo_gamma`).
    rewards = β·log πθ(y)/|y|, SimPO's implicit reward (there is no reference).
    """
    check_smoothing(label_smoothing, 0.5, "simpo")
    check_batch(
        chosen_policy_logps=chosen_policy_logps,
        rejected_policy_logps=rejected_policy_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    chosen = chosen_policy_logps / chosen_lengths.to(chosen_policy_logps.dtype)
    rejected = rejected_policy_logps / rejected_lengths.to(rejected_policy_logps.dtype)
    losses = smoothed_sigmoid_loss(beta * (chosen - rejected - gamma_beta_ratio), label_smoothing)
    return pair_result(losses.mean(), beta * chosen, beta * rejected)


class SimPOConfig(MethodConfig):
    data: ClassVar = "pairs"
    needs_reference: ClassVar = False
    loss: ClassVar = staticmethod(simpo_loss)

    type: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0)
    gamma_beta_ratio: float = Field(0.5, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)

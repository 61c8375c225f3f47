"""SLiC as TRL's `hinge` loss: a hinge on the DPO log-ratio margin."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from kto_bench.methods.base import LossResult, MethodConfig, logratios, pair_result

if TYPE_CHECKING:
    from torch import Tensor


def slic_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
    *,
    beta: float,
    delta: float,
) -> LossResult:
    """SLiC as TRL's `hinge` loss type: a hinge on the DPO log-ratio margin.

    m = (log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))
    loss = mean relu(δ − βm)   (TRL: relu(1 − βm), i.e. δ = 1)
    This is the reference-normalized hinge of RSO (Liu et al., 2023, arXiv:2309.06657, "hinge-norm").
    The original SLiC-HF calibration loss (Zhao et al., 2023, arXiv:2305.10425) is reference-free,
    relu(δ − log πθ(y_w) + log πθ(y_l)), plus an SFT regularizer; we use the TRL/RSO form so SLiC
    sits on the same β·r footing as the other reference-based methods.
    """
    import torch

    chosen, rejected = logratios(
        chosen_policy_logps, rejected_policy_logps, chosen_reference_logps, rejected_reference_logps
    )
    losses = torch.relu(delta - beta * (chosen - rejected))
    return pair_result(losses.mean(), beta * chosen, beta * rejected)


class SLiCConfig(MethodConfig):
    data: ClassVar = "pairs"
    needs_reference: ClassVar = True
    loss: ClassVar = staticmethod(slic_loss)

    type: Literal["slic"] = "slic"
    beta: float = Field(0.1, gt=0)
    delta: float = Field(1.0, gt=0)

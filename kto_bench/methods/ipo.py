"""IPO: a squared loss on the (per-token) log-ratio margin."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from kto_bench.errors import KtoBenchError
from kto_bench.methods.base import (
    LossResult,
    MethodConfig,
    check_batch,
    check_lengths,
    logratios,
    pair_result,
)

if TYPE_CHECKING:
    from torch import Tensor


def ipo_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    *,
    beta: float,
    length_normalize: bool,
) -> LossResult:
    """IPO (Azar et al., 2023, arXiv:2310.12036, Eq. 17), with β playing the role of τ.

    h = r_w/|y_w| − r_l/|y_l|  (length_normalize, the default)   or   h = r_w − r_l
    loss = mean (h − 1/(2β))²
    Length normalization follows TRL 1.16, whose authors confirmed with the IPO authors that the
    paper's results use per-token log-ratios; it needs chosen_lengths and rejected_lengths.
    With length_normalize=False the summed log-ratios are used (older TRL, HALOs).
    """
    chosen, rejected = logratios(
        chosen_policy_logps, rejected_policy_logps, chosen_reference_logps, rejected_reference_logps
    )
    if length_normalize:
        if chosen_lengths is None or rejected_lengths is None:
            raise KtoBenchError(
                "ipo with length_normalize=True needs chosen_lengths and rejected_lengths; "
                "pass them or set length_normalize: false"
            )
        check_batch(chosen_policy_logps=chosen_policy_logps, chosen_lengths=chosen_lengths)
        check_batch(chosen_policy_logps=chosen_policy_logps, rejected_lengths=rejected_lengths)
        check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
        h = chosen / chosen_lengths.to(chosen.dtype) - rejected / rejected_lengths.to(rejected.dtype)
    else:
        h = chosen - rejected
    losses = (h - 1 / (2 * beta)) ** 2
    return pair_result(losses.mean(), beta * chosen, beta * rejected)


class IPOConfig(MethodConfig):
    data: ClassVar = "pairs"
    needs_reference: ClassVar = True
    loss: ClassVar = staticmethod(ipo_loss)

    type: Literal["ipo"] = "ipo"
    beta: float = Field(0.1, gt=0)
    length_normalize: bool = True

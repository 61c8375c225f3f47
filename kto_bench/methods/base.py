"""What every method shares: `LossResult`, the batch checks, and `MethodConfig`, the base of a method's config.

A method is one module of this package: a `MethodConfig` subclass (its spec fields with their defaults,
the data it trains on, whether it needs reference log-probs and KTO's KL pairs, its loss) next to its pure
loss function. Defining the subclass registers it in `METHODS` under its `type`; `kto_bench.methods`
imports every module of the package, so adding a method is adding one module (and its test).

Losses are pure functions of per-sequence completion log-probs (summed over completion tokens, shape
[B]) and keyword hyperparameters without defaults: the config's fields are the only defaults. Rewards are
on one scale across methods: β·r with r = log πθ(y|x) − log πref(y|x) for every reference-based method.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from kto_bench.errors import KtoBenchError
from kto_bench.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor
# torch itself is imported inside the functions that call it: listing METHODS (`kto-bench ls`) stays light.

TENSOR_NAMES = (
    "policy_logps",
    "reference_logps",
    "kl_policy_logps",
    "kl_reference_logps",
    "desirable",
    "lengths",
    "chosen_policy_logps",
    "rejected_policy_logps",
    "chosen_reference_logps",
    "rejected_reference_logps",
    "chosen_lengths",
    "rejected_lengths",
)


@dataclass(frozen=True)
class LossResult:
    """What a loss returns.

    loss: scalar, differentiable w.r.t. the policy log-probs.
    rewards: detached per-example rewards (β·r); for pair losses cat([chosen_rewards, rejected_rewards]).
    metrics: namespaced diagnostics as floats; a class's mean is omitted when the class is absent.
    kl: KTO's reference point z0 (detached, clamped at 0); None for other methods.
    """

    loss: Tensor
    rewards: Tensor
    metrics: dict[str, float]
    chosen_rewards: Tensor | None = None
    rejected_rewards: Tensor | None = None
    kl: Tensor | None = None


def check_batch(**tensors: Tensor) -> None:
    """All tensors are 1-D, non-empty and of equal length."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    sizes = set(shapes.values())
    if len(sizes) != 1 or len(next(iter(sizes))) != 1 or next(iter(sizes))[0] == 0:
        listed = ", ".join(f"{name} {list(s)}" for name, s in shapes.items())
        raise KtoBenchError(f"loss tensors must be 1-D, non-empty and of equal length; got {listed}")


def check_lengths(**lengths: Tensor) -> None:
    for name, t in lengths.items():
        if bool((t <= 0).any()):
            raise KtoBenchError(
                f"{name} holds a completion of length <= 0; drop empty completions (check truncation) first"
            )


def check_smoothing(eps: float, upper: float, method: str) -> None:
    if not 0.0 <= eps < upper:
        raise KtoBenchError(f"{method}: label_smoothing must lie in [0, {upper}); got {eps}")


def logratios(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-example log-ratios r_w, r_l of the chosen and rejected completions."""
    check_batch(
        chosen_policy_logps=chosen_policy_logps,
        rejected_policy_logps=rejected_policy_logps,
        chosen_reference_logps=chosen_reference_logps,
        rejected_reference_logps=rejected_reference_logps,
    )
    return chosen_policy_logps - chosen_reference_logps, rejected_policy_logps - rejected_reference_logps


def smoothed_sigmoid_loss(logits: Tensor, label_smoothing: float) -> Tensor:
    """Per-example −(1 − ε)·log σ(x) − ε·log σ(−x): DPO's (cDPO's) and SimPO's loss of their logits."""
    from torch.nn.functional import logsigmoid

    return -(1 - label_smoothing) * logsigmoid(logits) - label_smoothing * logsigmoid(-logits)


def pair_result(loss: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor) -> LossResult:
    import torch

    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/margin": (chosen - rejected).mean().item(),
        "rewards/accuracy": (chosen > rejected).float().mean().item(),
    }
    return LossResult(
        loss=loss,
        rewards=torch.cat([chosen, rejected]),
        metrics=metrics,
        chosen_rewards=chosen,
        rejected_rewards=rejected,
    )


def loss_parameters(fn: Callable[..., LossResult]) -> list[inspect.Parameter]:
    """The parameters of a loss function that are not tensors (its hyperparameters and runtime hooks)."""
    return [p for p in inspect.signature(fn).parameters.values() if p.name not in TENSOR_NAMES]


METHODS: Registry[type[MethodConfig]] = Registry("method")


class MethodConfig(BaseModel):
    """A method's spec section (`methods: [{type: kto, beta: 0.1}]`): the one place its defaults live.

    Subclasses set `type: Literal[name] = name` and the class variables below; defining one registers it.
    Fields named like a keyword of `loss` are passed to it (`loss_kwargs`); other fields steer the loop.
    """

    model_config = ConfigDict(extra="forbid", validate_default=True)

    data: ClassVar[Literal["pairs", "binary"]]  # the view it trains on: DPO's pairs or KTO's binary examples
    needs_reference: ClassVar[bool]  # reference log-probs (the reference stage and cache)
    needs_kl: ClassVar[bool] = False  # KTO's mismatched KL pairs per microbatch
    loss: ClassVar[Callable[..., LossResult]]  # the pure loss (a staticmethod)

    label: str | None = Field(None, description="display name; defaults to the type (use it for ablations)")

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        name = cls.model_fields["type"].default
        METHODS.add(name, cls, (cls.loss.__doc__ or "").strip().split("\n")[0])

    @property
    def name(self) -> str:
        return self.label or self.type  # type: ignore[attr-defined]

    def loss_kwargs(self, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
        """The keyword arguments of `loss`: the fields it takes, plus values derived from the training data
        (`counts`: {"desirable": n, "undesirable": n} of the binary view; None before the data is known)."""
        takes = {p.name for p in loss_parameters(type(self).loss)}
        return self.model_dump(include=takes)

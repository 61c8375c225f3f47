"""HALO-family losses as pure functions of per-sequence log-probabilities.

Every loss takes per-sequence completion log-probs (summed over completion tokens, shape [B]) and
named hyperparameters, and returns a `LossResult`. Nothing here reads a config, a model or a
process group: the training loop computes log-probs, picks the method by name (`call_loss`) and
passes what it has.

Rewards are reported on one scale so curves are comparable across methods: β·r with
r = log πθ(y|x) − log πref(y|x) for every reference-based method. SimPO has no reference, so its
reward is its own implicit reward β·log πθ(y|x)/|y|; SFT has no reward at all (`rewards` is empty).

Standard tensor names (`TENSOR_NAMES`): policy_logps, reference_logps, kl_policy_logps,
kl_reference_logps, desirable (bool), lengths for binary batches; chosen_/rejected_ policy_logps,
reference_logps and lengths for paired batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kto_bench.errors import KtoBenchError
from kto_bench.registry import Registry, did_you_mean

if TYPE_CHECKING:
    from torch import Tensor
# torch itself is imported inside the functions that call it: listing LOSSES (`kto-bench ls`) stays light.

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


def _identity(x: Tensor) -> Tensor:
    return x


def _check_batch(**tensors: Tensor) -> None:
    """All tensors are 1-D, non-empty and of equal length."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    sizes = set(shapes.values())
    if len(sizes) != 1 or len(next(iter(sizes))) != 1 or next(iter(sizes))[0] == 0:
        listed = ", ".join(f"{name} {list(s)}" for name, s in shapes.items())
        raise KtoBenchError(f"loss tensors must be 1-D, non-empty and of equal length; got {listed}")


def _check_lengths(**lengths: Tensor) -> None:
    for name, t in lengths.items():
        if bool((t <= 0).any()):
            raise KtoBenchError(
                f"{name} holds a completion of length <= 0; drop empty completions (check truncation) first"
            )


def _check_smoothing(eps: float, upper: float, method: str) -> None:
    if not 0.0 <= eps < upper:
        raise KtoBenchError(f"{method}: label_smoothing must lie in [0, {upper}); got {eps}")


def _logratio_margin(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-example log-ratios r_w, r_l of the chosen and rejected completions."""
    _check_batch(
        chosen_policy_logps=chosen_policy_logps,
        rejected_policy_logps=rejected_policy_logps,
        chosen_reference_logps=chosen_reference_logps,
        rejected_reference_logps=rejected_reference_logps,
    )
    return chosen_policy_logps - chosen_reference_logps, rejected_policy_logps - rejected_reference_logps


def _pair_result(loss: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor) -> LossResult:
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


def kto_loss(
    policy_logps: Tensor,
    reference_logps: Tensor,
    kl_policy_logps: Tensor,
    kl_reference_logps: Tensor,
    desirable: Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl_reduce: Callable[[Tensor], Tensor] = _identity,
) -> LossResult:
    """KTO (Ethayarajh et al., 2024, arXiv:2402.01306, Eq. 8).

    r  = log πθ(y|x) − log πref(y|x)
    z0 = max(0, kl_reduce(mean(kl_policy_logps − kl_reference_logps)))   detached; the KL tensors hold
         log-probs of mismatched pairs (x_i, y_j) from the same microbatch
    desirable:   λD·(1 − σ(β(r − z0)))        undesirable:   λU·(1 − σ(β(z0 − r)))
    loss = mean of the weighted per-example losses (over both classes together).

    `kl_reduce` runs on the local mean KL before clamping, so a distributed loop can pass an
    all-reduce mean and every process uses the same z0 (TRL gathers, averages, then clamps too).
    A batch with only one class is fine.
    """
    import torch

    _check_batch(policy_logps=policy_logps, reference_logps=reference_logps, desirable=desirable)
    _check_batch(kl_policy_logps=kl_policy_logps, kl_reference_logps=kl_reference_logps)
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


def dpo_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossResult:
    """DPO (Rafailov et al., 2023, arXiv:2305.18290), with conservative-DPO label smoothing.

    m = (log πθ(y_w) − log πref(y_w)) − (log πθ(y_l) − log πref(y_l))
    loss = mean[ −(1 − ε)·log σ(βm) − ε·log σ(−βm) ],   ε = label_smoothing ∈ [0, 0.5)
    ε > 0 is cDPO (Mitchell, 2023, "A note on DPO with noisy preferences"); ε = 0 is plain DPO.
    """
    from torch.nn.functional import logsigmoid

    _check_smoothing(label_smoothing, 0.5, "dpo")
    chosen, rejected = _logratio_margin(
        chosen_policy_logps, rejected_policy_logps, chosen_reference_logps, rejected_reference_logps
    )
    logits = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * logsigmoid(logits) - label_smoothing * logsigmoid(-logits)
    return _pair_result(losses.mean(), beta * chosen, beta * rejected)


def ipo_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    beta: float = 0.1,
    length_normalize: bool = True,
) -> LossResult:
    """IPO (Azar et al., 2023, arXiv:2310.12036, Eq. 17), with β playing the role of τ.

    h = r_w/|y_w| − r_l/|y_l|  (length_normalize, the default)   or   h = r_w − r_l
    loss = mean (h − 1/(2β))²
    Length normalization follows TRL 1.16, whose authors confirmed with the IPO authors that the
    paper's results use per-token log-ratios; it needs chosen_lengths and rejected_lengths.
    With length_normalize=False the summed log-ratios are used (older TRL, HALOs).
    """
    chosen, rejected = _logratio_margin(
        chosen_policy_logps, rejected_policy_logps, chosen_reference_logps, rejected_reference_logps
    )
    if length_normalize:
        if chosen_lengths is None or rejected_lengths is None:
            raise KtoBenchError(
                "ipo with length_normalize=True needs chosen_lengths and rejected_lengths; "
                "pass them or set length_normalize: false"
            )
        _check_batch(chosen_policy_logps=chosen_policy_logps, chosen_lengths=chosen_lengths)
        _check_batch(chosen_policy_logps=chosen_policy_logps, rejected_lengths=rejected_lengths)
        _check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
        h = chosen / chosen_lengths.to(chosen.dtype) - rejected / rejected_lengths.to(rejected.dtype)
    else:
        h = chosen - rejected
    losses = (h - 1 / (2 * beta)) ** 2
    return _pair_result(losses.mean(), beta * chosen, beta * rejected)


def robust_dpo_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> LossResult:
    """Robust DPO, rDPO (Chowdhury et al., 2024, arXiv:2403.00409).

    With m the DPO log-ratio margin and ε = label_smoothing ∈ [0, 0.5) the assumed flip rate:
    loss = mean[ ((1 − ε)·(−log σ(βm)) − ε·(−log σ(−βm))) / (1 − 2ε) ]
    an unbiased estimate of the clean DPO loss under symmetric label noise; ε = 0 is DPO.
    """
    from torch.nn.functional import logsigmoid

    _check_smoothing(label_smoothing, 0.5, "rdpo")
    chosen, rejected = _logratio_margin(
        chosen_policy_logps, rejected_policy_logps, chosen_reference_logps, rejected_reference_logps
    )
    logits = beta * (chosen - rejected)
    eps = label_smoothing
    losses = ((1 - eps) * -logsigmoid(logits) - eps * -logsigmoid(-logits)) / (1 - 2 * eps)
    return _pair_result(losses.mean(), beta * chosen, beta * rejected)


def simpo_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.5,
    label_smoothing: float = 0.0,
) -> LossResult:
    """SimPO (Meng et al., 2024, arXiv:2405.14734): reference-free and length-normalized.

    s = log πθ(y_w)/|y_w| − log πθ(y_l)/|y_l|,   γ = gamma_beta_ratio·β
    loss = mean[ −(1 − ε)·log σ(βs − γ) − ε·log σ(−(βs − γ)) ]
    The margin is given as γ/β as in the SimPO repository (TRL's CPO takes γ itself, `simpo_gamma`).
    rewards = β·log πθ(y)/|y|, SimPO's implicit reward (there is no reference).
    """
    from torch.nn.functional import logsigmoid

    _check_smoothing(label_smoothing, 0.5, "simpo")
    _check_batch(
        chosen_policy_logps=chosen_policy_logps,
        rejected_policy_logps=rejected_policy_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    _check_lengths(chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    chosen = chosen_policy_logps / chosen_lengths.to(chosen_policy_logps.dtype)
    rejected = rejected_policy_logps / rejected_lengths.to(rejected_policy_logps.dtype)
    logits = beta * (chosen - rejected - gamma_beta_ratio)
    losses = -(1 - label_smoothing) * logsigmoid(logits) - label_smoothing * logsigmoid(-logits)
    return _pair_result(losses.mean(), beta * chosen, beta * rejected)


def slic_loss(
    chosen_policy_logps: Tensor,
    rejected_policy_logps: Tensor,
    chosen_reference_logps: Tensor,
    rejected_reference_logps: Tensor,
    beta: float = 0.1,
    delta: float = 1.0,
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

    chosen, rejected = _logratio_margin(
        chosen_policy_logps, rejected_policy_logps, chosen_reference_logps, rejected_reference_logps
    )
    losses = torch.relu(delta - beta * (chosen - rejected))
    return _pair_result(losses.mean(), beta * chosen, beta * rejected)


def sft_loss(policy_logps: Tensor, lengths: Tensor, desirable: Tensor | None = None) -> LossResult:
    """SFT: mean per-token negative log-likelihood of the desirable completions.

    loss = −Σ_i log πθ(y_i|x_i) / Σ_i |y_i|  over desirable examples (token-weighted, like TRL's DPO
    `sft` loss type and the causal-LM cross-entropy). On binary data SFT trains on desirable
    completions only: undesirable ones are ignored, as in the KTO paper's SFT baseline. Without
    `desirable` every example counts. A batch without desirable examples gives a zero loss that
    still carries the graph (zero gradient). There is no reward: `rewards` is empty.
    """
    import torch

    _check_batch(policy_logps=policy_logps, lengths=lengths)
    _check_lengths(lengths=lengths)
    keep = torch.ones_like(policy_logps, dtype=torch.bool) if desirable is None else desirable.bool()
    _check_batch(policy_logps=policy_logps, desirable=keep)
    n_tokens = (lengths.to(policy_logps.dtype) * keep).sum()
    nll = -(policy_logps * keep).sum() / n_tokens.clamp(min=1)
    metrics = {"count/desirable": float(keep.sum().item())}
    if keep.any():
        metrics["nll/token"] = nll.item()
    return LossResult(loss=nll, rewards=policy_logps.new_empty(0), metrics=metrics)


@dataclass(frozen=True)
class MethodInfo:
    """How a method trains: its loss, the data it eats and the log-probs it needs."""

    name: str
    fn: Callable[..., LossResult]
    data: Literal["pairs", "binary"]
    needs_reference: bool
    needs_kl: bool


LOSSES: Registry[MethodInfo] = Registry("loss")
for _info in (
    MethodInfo("kto", kto_loss, "binary", needs_reference=True, needs_kl=True),
    MethodInfo("dpo", dpo_loss, "pairs", needs_reference=True, needs_kl=False),
    MethodInfo("ipo", ipo_loss, "pairs", needs_reference=True, needs_kl=False),
    MethodInfo("rdpo", robust_dpo_loss, "pairs", needs_reference=True, needs_kl=False),
    MethodInfo("simpo", simpo_loss, "pairs", needs_reference=False, needs_kl=False),
    MethodInfo("slic", slic_loss, "pairs", needs_reference=True, needs_kl=False),
    MethodInfo("sft", sft_loss, "binary", needs_reference=False, needs_kl=False),
):
    LOSSES.add(_info.name, _info, (_info.fn.__doc__ or "").strip().split("\n")[0])
del _info


def hyperparameters(name: str) -> dict[str, object]:
    """A method's hyperparameters and their defaults (everything it takes that is not a tensor)."""
    params = inspect.signature(LOSSES.get(name).fn).parameters.values()
    return {p.name: p.default for p in params if p.name not in TENSOR_NAMES}


def call_loss(name: str, tensors: dict[str, Tensor], **hyper: object) -> LossResult:
    """Run method `name` on a batch of standard-named tensors.

    Passes only the tensors and hyperparameters the method's function accepts, so the loop can hand
    every method the same dict (e.g. `beta` is dropped for sft). A hyperparameter no method knows is
    an error (a typo), as is a tensor the method requires but the batch lacks.
    """
    fn = LOSSES.get(name).fn
    known = {h for method in LOSSES.names() for h in hyperparameters(method)}
    for key in hyper:
        if key not in known:
            raise KtoBenchError(
                f"unknown loss hyperparameter {key!r}{did_you_mean(key, known)}; known: {', '.join(sorted(known))}"
            )
    kwargs: dict[str, object] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in TENSOR_NAMES:
            if p.name in tensors:
                kwargs[p.name] = tensors[p.name]
            elif p.default is inspect.Parameter.empty:
                raise KtoBenchError(
                    f"loss {name!r} needs tensor {p.name!r}, but the batch has only: {', '.join(sorted(tensors))}"
                )
        elif p.name in hyper:
            kwargs[p.name] = hyper[p.name]
    return fn(**kwargs)

"""Losses: hand-computed values, KTO's reference point, gradients, the registry, and TRL parity."""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from kto_bench.errors import KtoBenchError
from kto_bench.methods import METHODS, TENSOR_NAMES, LossResult, call_loss, hyperparameters
from kto_bench.methods.dpo import dpo_loss, robust_dpo_loss
from kto_bench.methods.ipo import ipo_loss
from kto_bench.methods.kto import kto_loss
from kto_bench.methods.sft import sft_loss
from kto_bench.methods.simpo import simpo_loss
from kto_bench.methods.slic import slic_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def softplus(x: float) -> float:  # −log σ(−x)
    return math.log1p(math.exp(x))


# Two pairs: log-ratios r_w = [1, 0], r_l = [-1, 1], so margins m = [2, -1].
PAIRS = dict(
    chosen_policy_logps=t(-1.0, -3.0),
    rejected_policy_logps=t(-3.0, -2.0),
    chosen_reference_logps=t(-2.0, -3.0),
    rejected_reference_logps=t(-2.0, -3.0),
)


# --- hand-computed values -------------------------------------------------------------------------


def test_dpo_closed_form_and_pair_metrics():
    out = dpo_loss(**PAIRS, beta=0.5, label_smoothing=0.0)  # βm = [1, -0.5]
    assert out.loss.item() == pytest.approx((softplus(-1.0) + softplus(0.5)) / 2)
    assert out.chosen_rewards.tolist() == [0.5, 0.0]
    assert out.rejected_rewards.tolist() == [-0.5, 0.5]
    assert out.rewards.tolist() == [0.5, 0.0, -0.5, 0.5]
    assert out.metrics == pytest.approx(
        {"rewards/chosen": 0.25, "rewards/rejected": 0.0, "rewards/margin": 0.25, "rewards/accuracy": 0.5}
    )
    assert not out.rewards.requires_grad


def test_cdpo_label_smoothing_closed_form():
    out = dpo_loss(**PAIRS, beta=0.5, label_smoothing=0.1)
    per_pair = [0.9 * softplus(-x) + 0.1 * softplus(x) for x in (1.0, -0.5)]
    assert out.loss.item() == pytest.approx(sum(per_pair) / 2)


def test_robust_dpo_closed_form_and_reduces_to_dpo():
    out = robust_dpo_loss(**PAIRS, beta=0.5, label_smoothing=0.1)
    per_pair = [(0.9 * softplus(-x) - 0.1 * softplus(x)) / 0.8 for x in (1.0, -0.5)]
    assert out.loss.item() == pytest.approx(sum(per_pair) / 2)
    assert robust_dpo_loss(**PAIRS, beta=0.5, label_smoothing=0.0).loss.item() == pytest.approx(
        dpo_loss(**PAIRS, beta=0.5, label_smoothing=0.0).loss.item()
    )


def test_ipo_closed_form_summed_and_per_token():
    summed = ipo_loss(**PAIRS, beta=0.25, length_normalize=False)  # 1/(2β) = 2, m = [2, -1]
    assert summed.loss.item() == pytest.approx((0.0 + 9.0) / 2)
    per_token = ipo_loss(
        **PAIRS, chosen_lengths=t(2, 4), rejected_lengths=t(4, 2), beta=0.25, length_normalize=True
    )
    # h = r_w/|y_w| − r_l/|y_l| = [1/2 + 1/4, 0 − 1/2]
    assert per_token.loss.item() == pytest.approx(((0.75 - 2) ** 2 + (-0.5 - 2) ** 2) / 2)
    assert per_token.chosen_rewards.tolist() == [0.25, 0.0]  # rewards stay β·r, not per token
    with pytest.raises(KtoBenchError, match="chosen_lengths"):
        ipo_loss(**PAIRS, beta=0.1, length_normalize=True)


def test_simpo_closed_form():
    out = simpo_loss(
        chosen_policy_logps=t(-2.0),
        rejected_policy_logps=t(-6.0),
        chosen_lengths=torch.tensor([4]),
        rejected_lengths=torch.tensor([3]),
        beta=2.0,
        gamma_beta_ratio=0.5,
        label_smoothing=0.0,
    )  # β = 2, γ/β = 0.5: s = −0.5 − (−2) = 1.5, β(s − 0.5) = 2
    assert out.loss.item() == pytest.approx(softplus(-2.0))
    assert out.chosen_rewards.tolist() == [-1.0]
    assert out.rejected_rewards.tolist() == [-4.0]


def test_slic_hinge_closed_form():
    out = slic_loss(**PAIRS, beta=0.5, delta=1.0)  # relu(1 − [1, −0.5]) = [0, 1.5]
    assert out.loss.item() == pytest.approx(0.75)
    assert slic_loss(**PAIRS, beta=0.5, delta=2.0).loss.item() == pytest.approx((1.0 + 2.5) / 2)


def test_sft_is_token_weighted_nll_over_desirable_only():
    logps, lengths = t(-4.0, -6.0, -100.0), torch.tensor([2, 3, 10])
    out = sft_loss(logps, lengths, desirable=torch.tensor([True, True, False]))
    assert out.loss.item() == pytest.approx(10.0 / 5)
    assert out.rewards.numel() == 0
    assert out.metrics == {"count/desirable": 2.0, "nll/token": pytest.approx(2.0)}
    assert sft_loss(logps, lengths).loss.item() == pytest.approx(110.0 / 15)


def test_sft_without_desirable_examples_is_zero_with_graph():
    logps = t(-4.0, -6.0).requires_grad_()
    out = sft_loss(logps, torch.tensor([2, 3]), desirable=torch.tensor([False, False]))
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert logps.grad.tolist() == [0.0, 0.0]
    assert "nll/token" not in out.metrics


# --- KTO ------------------------------------------------------------------------------------------

# r = [0.5, -1]; KL log-ratios [1, 0] → z0 = 0.5.
KTO = dict(
    policy_logps=t(-1.0, -3.0),
    reference_logps=t(-1.5, -2.0),
    kl_policy_logps=t(-1.0, -2.0),
    kl_reference_logps=t(-2.0, -2.0),
    desirable=torch.tensor([True, False]),
)
KTO_H = {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}  # hyperparameters("kto")


def test_kto_closed_form_with_weights():
    out = kto_loss(**KTO, beta=1.0, desirable_weight=2.0, undesirable_weight=3.0)
    desirable = 2.0 * (1 - sigmoid(0.5 - 0.5))
    undesirable = 3.0 * (1 - sigmoid(0.5 - (-1.0)))
    assert out.loss.item() == pytest.approx((desirable + undesirable) / 2)
    assert out.kl.item() == pytest.approx(0.5)
    assert out.rewards.tolist() == [0.5, -1.0]
    assert out.metrics == pytest.approx(
        {
            "kl": 0.5,
            "count/desirable": 1.0,
            "count/undesirable": 1.0,
            "rewards/desirable": 0.5,
            "rewards/undesirable": -1.0,
            "rewards/margin": 1.5,
        }
    )


@pytest.mark.parametrize("cls", [True, False])
def test_kto_one_class_batch(cls: bool):
    batch = {**KTO, "desirable": torch.tensor([cls, cls])}
    out = kto_loss(**batch, **(KTO_H | {"beta": 1.0}))
    losses = [1 - sigmoid(r - 0.5) if cls else 1 - sigmoid(0.5 - r) for r in (0.5, -1.0)]
    assert out.loss.item() == pytest.approx(sum(losses) / 2)
    present, absent = ("desirable", "undesirable") if cls else ("undesirable", "desirable")
    assert f"rewards/{present}" in out.metrics
    assert f"rewards/{absent}" not in out.metrics and "rewards/margin" not in out.metrics
    assert all(math.isfinite(v) for v in out.metrics.values())


@pytest.mark.parametrize("cls,weight", [(True, "desirable_weight"), (False, "undesirable_weight")])
def test_kto_weights_scale_their_class_only(cls: bool, weight: str):
    batch = {**KTO, "desirable": torch.tensor([cls, cls])}
    base = kto_loss(**batch, **KTO_H).loss.item()
    assert kto_loss(**batch, **(KTO_H | {weight: 2.5})).loss.item() == pytest.approx(2.5 * base)
    other = "undesirable_weight" if weight == "desirable_weight" else "desirable_weight"
    assert kto_loss(**batch, **(KTO_H | {other: 2.5})).loss.item() == pytest.approx(base)


def test_kto_reference_point_clamped_at_zero():
    batch = {**KTO, "kl_policy_logps": t(-3.0, -2.0)}  # mean KL log-ratio −0.5
    out = kto_loss(**batch, **(KTO_H | {"beta": 1.0}))
    assert out.kl.item() == 0.0 and out.metrics["kl"] == 0.0
    assert out.loss.item() == pytest.approx(((1 - sigmoid(0.5)) + (1 - sigmoid(1.0))) / 2)


def test_kto_reference_point_is_detached():
    kl_policy = KTO["kl_policy_logps"].clone().requires_grad_()
    policy = KTO["policy_logps"].clone().requires_grad_()
    out = kto_loss(**{**KTO, "policy_logps": policy, "kl_policy_logps": kl_policy}, **KTO_H)
    out.loss.backward()
    assert kl_policy.grad is None
    assert policy.grad is not None and policy.grad.abs().sum() > 0
    assert not out.kl.requires_grad


def test_kto_kl_reduce_runs_before_clamp():
    batch = {**KTO, "kl_policy_logps": t(-3.0, -2.0)}  # local mean −0.5
    seen = []

    def reduce(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.item())
        return x + 1.0  # e.g. the other processes had a larger KL

    out = kto_loss(**batch, **KTO_H, kl_reduce=reduce)
    assert seen == [-0.5]
    assert out.kl.item() == pytest.approx(0.5)  # clamp after reduce; reduce-after-clamp would give 1.0


def test_bad_shapes_and_arguments_raise():
    with pytest.raises(KtoBenchError, match="equal length"):
        dpo_loss(t(-1.0, -2.0), t(-1.0), t(-1.0), t(-1.0), beta=0.1, label_smoothing=0.0)
    with pytest.raises(KtoBenchError, match="non-empty"):
        kto_loss(**{**KTO, "kl_policy_logps": t(), "kl_reference_logps": t()}, **KTO_H)
    with pytest.raises(KtoBenchError, match="label_smoothing"):
        robust_dpo_loss(**PAIRS, beta=0.1, label_smoothing=0.5)
    with pytest.raises(KtoBenchError, match="chosen_lengths"):
        simpo_loss(
            t(-1.0),
            t(-1.0),
            torch.tensor([0]),
            torch.tensor([1]),
            beta=2.0,
            gamma_beta_ratio=0.5,
            label_smoothing=0.0,
        )


# --- gradients ------------------------------------------------------------------------------------


def _random_batch(seed: int, n: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logps = lambda: -torch.rand(n, generator=g, dtype=torch.float64) * 20  # noqa: E731
    lengths = lambda: torch.randint(1, 12, (n,), generator=g)  # noqa: E731
    return {
        "policy_logps": logps(),
        "reference_logps": logps(),
        "kl_policy_logps": logps(),
        "kl_reference_logps": logps(),
        "desirable": torch.rand(n, generator=g) < 0.6,
        "lengths": lengths(),
        "chosen_policy_logps": logps(),
        "rejected_policy_logps": logps(),
        "chosen_reference_logps": logps(),
        "rejected_reference_logps": logps(),
        "chosen_lengths": lengths(),
        "rejected_lengths": lengths(),
    }


@pytest.mark.parametrize("method", ["kto", "dpo", "ipo", "rdpo", "simpo", "slic", "sft"])
def test_gradcheck_wrt_policy_logps(method: str):
    batch = _random_batch(0)
    policy_names = (
        ("policy_logps",)
        if METHODS.get(method).data == "binary"
        else ("chosen_policy_logps", "rejected_policy_logps")
    )
    hyper = {"label_smoothing": 0.2} if method in ("dpo", "rdpo", "simpo") else {}
    if method == "slic":
        hyper["delta"] = 5.0  # keep every pair inside the hinge, away from its kink

    def loss_of(*policy: torch.Tensor) -> torch.Tensor:
        return call_loss(method, {**batch, **dict(zip(policy_names, policy, strict=True))}, **hyper).loss

    inputs = tuple(batch[n].clone().requires_grad_() for n in policy_names)
    assert torch.autograd.gradcheck(loss_of, inputs)


# --- registry and call_loss -----------------------------------------------------------------------


def test_registry_describes_every_method():
    flags = {
        n: (METHODS.get(n).data, METHODS.get(n).needs_reference, METHODS.get(n).needs_kl) for n in METHODS
    }
    assert flags == {
        "kto": ("binary", True, True),
        "dpo": ("pairs", True, False),
        "ipo": ("pairs", True, False),
        "rdpo": ("pairs", True, False),
        "simpo": ("pairs", False, False),
        "slic": ("pairs", True, False),
        "sft": ("binary", False, False),
    }
    assert all(doc for _, doc in METHODS.describe())
    assert hyperparameters("simpo") == {"beta": 2.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.0}


@pytest.mark.parametrize("method", ["kto", "dpo", "ipo", "rdpo", "simpo", "slic", "sft"])
def test_call_loss_passes_what_the_method_takes(method: str):
    batch = _random_batch(1)
    out = call_loss(method, batch, beta=0.3)  # every method is handed every tensor and beta
    assert isinstance(out, LossResult) and out.loss.ndim == 0 and torch.isfinite(out.loss)
    fn = METHODS.get(method).loss
    takes = {k: v for k, v in batch.items() if k in inspect.signature(fn).parameters}
    direct = fn(
        **takes, **(hyperparameters(method) | ({"beta": 0.3} if "beta" in hyperparameters(method) else {}))
    )
    assert out.loss.item() == direct.loss.item()


def test_call_loss_errors_name_the_problem():
    batch = _random_batch(2)
    with pytest.raises(KtoBenchError, match="'kl_policy_logps'"):
        call_loss("kto", {k: v for k, v in batch.items() if k != "kl_policy_logps"})
    with pytest.raises(KtoBenchError, match="did you mean 'beta'"):
        call_loss("dpo", batch, betta=0.1)
    with pytest.raises(KtoBenchError, match="did you mean 'kto'"):
        call_loss("ktoo", batch)
    assert set(TENSOR_NAMES) == set(batch)


# --- parity with TRL 1.16 -------------------------------------------------------------------------
#
# TRL 1.16 has no standalone `KTOTrainer.kto_loss` / `DPOTrainer.dpo_loss`: the loss maths sits inside
# `_compute_loss(model, inputs, return_outputs)`, which also runs the model. We call that method
# unbound with a SimpleNamespace holding exactly the attributes it reads, precomputed reference
# log-probs, and a fake model whose per-token log-probs sum to prescribed per-sequence values (the
# sequence id is in column 0 of input_ids). Conventions checked to agree, not assumed:
# - KTO: TRL averages the KL log-ratios over the batch, gathers and averages across processes, then
#   clamps at 0; ours is `kl_reduce` (an all-reduce mean) then clamp. Rewards are β·r in both, and
#   TRL's loss is the nanmean over [λD·desirable…, λU·undesirable…], our mean over the batch.
# - DPO rewards are β·r in both. TRL 1.16's `ipo` is length-normalized (our default).
# - TRL 1.16's DPO `sigmoid` has no label smoothing any more, so cDPO is checked against
#   `CPOTrainer.cpo_loss` (sigmoid with label smoothing) fed the log-ratios: its loss depends on its
#   inputs only through their difference, and its rewards become β·r.
# - SimPO exists only in the experimental CPOTrainer, whose `simpo_gamma` is γ, ours γ/β.
# - TRL's `sft` DPO loss type is the token-weighted NLL of the chosen completions, like ours on
#   desirable examples.


class _FakeLM:
    training = True

    def __init__(self, seq_logps: torch.Tensor) -> None:
        self.seq_logps = seq_logps

    def __call__(self, input_ids: torch.Tensor, labels: torch.Tensor, **_: object) -> SimpleNamespace:
        mask = labels[:, 1:] != -100  # completion tokens, shifted as TRL does
        per_token = mask * (self.seq_logps[input_ids[:, 0]] / mask.sum(1))[:, None]
        zeros = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())


def _fake_trainer(model: _FakeLM, **attrs: object) -> SimpleNamespace:
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), gather=lambda x: x, gather_for_metrics=lambda x: x
    )
    return SimpleNamespace(
        model=model,
        accelerator=accelerator,
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
        **attrs,
    )


def _sequences(first_id: int, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """input_ids carrying sequence ids, and a completion mask with `lengths` tokens after position 0."""
    n, width = len(lengths), int(lengths.max()) + 1
    input_ids = torch.arange(first_id, first_id + n)[:, None].repeat(1, width)
    completion_mask = (torch.arange(width)[None, :] >= 1) & (torch.arange(width)[None, :] <= lengths[:, None])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "completion_mask": completion_mask.long(),
    }


def _trl_dpo(loss_type: str, batch: dict[str, torch.Tensor], beta: float, label_smoothing: float = 0.0):
    DPOTrainer = pytest.importorskip("trl.trainer.dpo_trainer").DPOTrainer
    model = _FakeLM(torch.cat([batch["chosen_policy_logps"], batch["rejected_policy_logps"]]))
    fake = _fake_trainer(
        model,
        ld_alpha=None,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    inputs = _sequences(0, torch.cat([batch["chosen_lengths"], batch["rejected_lengths"]]))
    inputs |= {
        "ref_chosen_logps": batch["chosen_reference_logps"],
        "ref_rejected_logps": batch["rejected_reference_logps"],
    }
    loss = DPOTrainer._compute_loss(fake, model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in fake._metrics["train"].items()}


def _trl_cpo(loss_type: str, chosen: torch.Tensor, rejected: torch.Tensor, beta: float, **attrs: float):
    CPOTrainer = pytest.importorskip("trl.experimental.cpo.cpo_trainer").CPOTrainer
    accelerator = SimpleNamespace(device=torch.device("cpu"))
    fake = SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, accelerator=accelerator, **attrs)
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(fake, chosen, rejected)
    return losses.mean(), chosen_rewards, rejected_rewards


@pytest.mark.parametrize(
    "method,trl_type,hyper",
    [
        ("dpo", "sigmoid", {"beta": 0.1}),
        ("ipo", "ipo", {"beta": 0.1}),
        ("rdpo", "robust", {"beta": 0.2, "label_smoothing": 0.15}),
        ("slic", "hinge", {"beta": 0.3}),
    ],
)
def test_pair_losses_match_trl_dpo_trainer(method: str, trl_type: str, hyper: dict[str, float]):
    pytest.importorskip("trl")
    batch = _random_batch(3, n=6)
    trl_loss, trl_metrics = _trl_dpo(trl_type, batch, **hyper)
    ours = call_loss(method, batch, **hyper)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-9)
    for ours_name, trl_name in [
        ("rewards/chosen", "rewards/chosen"),
        ("rewards/rejected", "rewards/rejected"),
        ("rewards/margin", "rewards/margins"),
        ("rewards/accuracy", "rewards/accuracies"),
    ]:
        assert ours.metrics[ours_name] == pytest.approx(trl_metrics[trl_name], rel=1e-9)


def test_sft_matches_trl_sft_loss_type():
    pytest.importorskip("trl")
    batch = _random_batch(4, n=6)
    trl_loss, _ = _trl_dpo("sft", batch, beta=0.1)
    ours = sft_loss(batch["chosen_policy_logps"], batch["chosen_lengths"])
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-9)


def test_cdpo_matches_trl_cpo_sigmoid_with_label_smoothing():
    pytest.importorskip("trl")
    batch = _random_batch(5, n=6)
    chosen = batch["chosen_policy_logps"] - batch["chosen_reference_logps"]
    rejected = batch["rejected_policy_logps"] - batch["rejected_reference_logps"]
    trl_loss, trl_chosen, trl_rejected = _trl_cpo("sigmoid", chosen, rejected, beta=0.2, label_smoothing=0.1)
    ours = call_loss("dpo", batch, beta=0.2, label_smoothing=0.1)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-9)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_matches_trl_cpo_simpo(label_smoothing: float):
    pytest.importorskip("trl")
    batch = _random_batch(6, n=6)
    beta, ratio = 2.0, 0.5
    chosen = batch["chosen_policy_logps"] / batch["chosen_lengths"]  # CPO's average_log_prob=True
    rejected = batch["rejected_policy_logps"] / batch["rejected_lengths"]
    trl_loss, trl_chosen, trl_rejected = _trl_cpo(
        "simpo", chosen, rejected, beta=beta, simpo_gamma=ratio * beta, label_smoothing=label_smoothing
    )
    ours = call_loss("simpo", batch, beta=beta, gamma_beta_ratio=ratio, label_smoothing=label_smoothing)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-9)
    torch.testing.assert_close(ours.chosen_rewards, trl_chosen)
    torch.testing.assert_close(ours.rejected_rewards, trl_rejected)


@pytest.mark.parametrize("classes", ["mixed", "desirable", "undesirable"])
def test_kto_matches_trl_kto_trainer(classes: str):
    KTOTrainer = pytest.importorskip("trl.trainer.kto_trainer").KTOTrainer
    batch = _random_batch(7, n=6)
    desirable = {
        "mixed": torch.tensor([True, False, True, True, False, True]),
        "desirable": torch.ones(6, dtype=torch.bool),
        "undesirable": torch.zeros(6, dtype=torch.bool),
    }[classes]
    # Make the KL estimate positive so the clamp does not hide a difference.
    batch |= {
        "desirable": desirable,
        "kl_policy_logps": batch["kl_reference_logps"] + torch.linspace(-1, 3, 6),
    }
    hyper = {"beta": 0.5, "desirable_weight": 1.3, "undesirable_weight": 0.8}

    n = len(desirable)
    model = _FakeLM(torch.cat([batch["policy_logps"], batch["kl_policy_logps"]]))
    fake = _fake_trainer(model, calculate_KL=True, loss_type="kto", **hyper)
    fake._compute_kl_logps = partial(KTOTrainer._compute_kl_logps, fake)
    main, kl = _sequences(0, batch["lengths"]), _sequences(n, batch["lengths"].flip(0))
    inputs = main | {f"KL_{k}": v for k, v in kl.items()}
    inputs |= {
        "label": desirable,
        "ref_logps": batch["reference_logps"],
        "ref_KL_logps": batch["kl_reference_logps"],
    }
    trl_loss = KTOTrainer._compute_loss(fake, model, inputs, return_outputs=False)
    trl_metrics = {k: v[-1] for k, v in fake._metrics["train"].items()}

    ours = call_loss("kto", batch, **hyper)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-9)
    assert ours.metrics["kl"] == pytest.approx(trl_metrics["kl"], rel=1e-9) and ours.metrics["kl"] > 0
    for ours_name, trl_name in [
        ("rewards/desirable", "rewards/chosen"),
        ("rewards/undesirable", "rewards/rejected"),
        ("rewards/margin", "rewards/margins"),
    ]:
        assert (ours_name in ours.metrics) == (trl_name in trl_metrics)
        if ours_name in ours.metrics:
            assert ours.metrics[ours_name] == pytest.approx(trl_metrics[trl_name], rel=1e-9)

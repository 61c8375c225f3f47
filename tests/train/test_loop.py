"""The training loop: loss falls, bit-for-bit reproducible, resume continues the same curve, shared reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from kto_bench.demo.world import build_tokenizer, tiny_config
from kto_bench.errors import StoreError, TrainingError
from kto_bench.spec import expand, parse_spec
from kto_bench.train.loop import Context, plan, train
from kto_bench.train.refcache import ReferenceCache, fill
from tests.tiny_data import preference_pairs, tokenized

TOK = build_tokenizer()
SPEC = """\
name: t
model: {source: hub, name: x, dtype: float32}
data: {source: local_pairs, max_length: 48, max_prompt_length: 16}
methods: [{type: kto, beta: 0.5}, {type: dpo, beta: 0.5}]
training: {lr: 3.0e-3, precision: fp32, batch_size: 4, budget: {rule: steps, value: 12}, checkpoint_every: 4,
           warmup_ratio: 0.0, schedule: constant}
"""


def build(tmp: Path, method: str, seed: int = 0, training: str = ""):
    spec = parse_spec(SPEC.replace("schedule: constant}", f"schedule: constant{training}}}"))
    run = next(r for r in expand(spec) if r.method.type == method)
    data = tokenized(preference_pairs(), max_length=48, max_prompt_length=16, batch_size=4)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(len(TOK), hidden=32, layers=1))
    cache = ReferenceCache(tmp / "cache", "fixture-model", "float32")
    fill(cache, model, data.sequences, pad_id=TOK.pad_token_id, batch_size=16, device="cpu")
    return run, data, model, cache


def context(run, data, cache, checkpoint_dir: Path, log=lambda s, m: None, accelerator=None) -> Context:
    """A training context on the fixture: single process, CPU, the run's own loss hyperparameters."""
    return Context(
        run=run,
        data=data,
        ref=cache.lookup,
        hyper=run.method.loss_kwargs(),
        pad_id=TOK.pad_token_id,
        checkpoint_dir=checkpoint_dir,
        log=log,
        accelerator=accelerator or Accelerator(cpu=True),
    )


def run_training(
    tmp: Path,
    method: str,
    *,
    stop_at: int | None = None,
    ckpt: Path | None = None,
    training: str = "",
    logged: list | None = None,
):
    run, data, model, cache = build(tmp, method, training=training)
    losses: list[float] = []

    def log(step, metrics):
        losses.append(metrics["train/loss"])
        if logged is not None:
            logged.append(metrics)
        if stop_at is not None and step == stop_at:
            raise KeyboardInterrupt  # a crash right after this step's log line

    ctx = context(run, data, cache, ckpt or tmp / f"ckpt-{method}", log=log)
    try:
        summary = train(model, ctx)
    except KeyboardInterrupt:
        summary = None
    return losses, summary, cache


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_loss_falls_and_is_bit_for_bit_reproducible(tmp_path, method):
    a, summary, _ = run_training(tmp_path / "a", method)
    b, _, _ = run_training(tmp_path / "b", method)
    assert summary["steps"] == 12 and len(a) == 12
    assert sum(a[-3:]) / 3 < sum(a[:3]) / 3  # learns the preference
    assert a == b  # same seed, same curve, bit for bit on CPU


@pytest.mark.parametrize(
    "method,training",
    [
        ("dpo", ", layout: packed"),
        ("dpo", ", layout: shared"),
        ("kto", ", layout: packed"),
        ("kto", ", layout: shared"),
        ("kto", ", layout: shared, kl_pass: fused"),
        ("kto", ", layout: shared, row_tokens: 40"),
        ("kto", ", layout: padded, kl_pass: fused"),
    ],
)
def test_fast_layouts_and_fused_kl_give_the_plain_curve(tmp_path, method, training):
    plain_logged: list[dict] = []
    plain, _, _ = run_training(tmp_path / "plain", method, training=", layout: padded", logged=plain_logged)
    logged: list[dict] = []
    fast, summary, _ = run_training(tmp_path / "fast", method, training=training, logged=logged)
    assert fast == pytest.approx(plain, rel=1e-4, abs=1e-6)
    assert f"layout: {summary['layout']}" in training and summary["attention"] == "sdpa"
    assert summary["row_tokens"] == (40 if "row_tokens" in training else 2 * 48)  # dense masks: bounded rows

    def padding(log: list[dict]) -> float:
        return sum(m["throughput/padding_fraction"] for m in log) / len(log)

    assert padding(plain_logged) > 0.05
    if "padded" not in training:  # packing: balanced rows of whole sequences
        assert padding(logged) < 0.05
    assert [m["tokens/trained"] for m in logged] == [m["tokens/trained"] for m in plain_logged]
    if "fused" in training:  # the KL rows ride in the trained forward: no separate no-grad forward
        assert all("tokens/nonpad_nograd" not in m for m in logged)
    elif method == "kto":
        assert all(m["tokens/nonpad_nograd"] > 0 for m in logged)


def test_resume_continues_the_same_curve(tmp_path):
    full, _, _ = run_training(tmp_path / "full", "kto")
    ckpt = tmp_path / "resumed" / "ckpt"
    first, _, _ = run_training(tmp_path / "resumed", "kto", stop_at=6, ckpt=ckpt)  # checkpoints at 4
    rest, _, _ = run_training(tmp_path / "resumed", "kto", ckpt=ckpt)  # resumes from step 4
    assert first == full[:6]
    assert rest == full[4:]


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    run_training(tmp_path / "a", "kto", stop_at=5, ckpt=ckpt)
    with pytest.raises(StoreError, match="belongs to run"):
        run_training(tmp_path / "b", "dpo", ckpt=ckpt)


def test_one_reference_pass_serves_kto_and_dpo(tmp_path):
    run, data, model, cache = build(tmp_path, "kto")
    assert cache.forward_sequences == len(data.sequences)  # pairs, binary and KL sequences, once
    again = ReferenceCache(tmp_path / "cache", "fixture-model", "float32")
    n = fill(again, model, data.sequences, pad_id=TOK.pad_token_id, batch_size=16, device="cpu")
    assert n == 0 and again.forward_sequences == 0  # the second run does no reference forward
    seqs = [data.sequences[c] for c, _ in data.pairs]  # DPO's chosen sequences are the KTO desirable ones
    assert torch.equal(again.lookup(seqs), cache.lookup(seqs))


def test_corrupted_cache_shard_is_an_error(tmp_path):
    build(tmp_path, "kto")
    shard = next((tmp_path / "cache").rglob("shard-*.pt"))
    shard.write_bytes(b"not a torch file")
    with pytest.raises(StoreError, match="corrupted"):
        ReferenceCache(tmp_path / "cache", "fixture-model", "float32")


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    run, data, model, cache = build(tmp_path, "dpo")
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(float("nan"))
    ctx = context(run, data, cache, tmp_path / "ckpt")
    with pytest.raises(TrainingError, match="non-finite loss"):
        train(model, ctx)


def _counts(n: int = 6, examples: int = 4, per_example_seqs: int = 2, tokens: int = 100) -> list[dict]:
    return [{"examples": examples, "sequences": examples * per_example_seqs, "tokens": tokens}] * n


def _run_with_budget(budget: str, method: str = "dpo"):
    spec = parse_spec(SPEC.replace("budget: {rule: steps, value: 12}", f"budget: {budget}"))
    return next(r for r in expand(spec) if r.method.type == method)


@pytest.mark.parametrize("rule,value,expected", [("epochs", 1, 6), ("epochs", 2, 12), ("steps", 5, 5)])
def test_budget_rules(rule, value, expected):
    run = _run_with_budget(f"{{rule: {rule}, value: {value}}}")
    assert plan(run, _counts(), None).steps == expected


def test_token_budget_stops_once_reached():
    run = _run_with_budget("{rule: tokens, value: 250}")
    p = plan(run, _counts(), None)
    assert p.steps == 3  # 300 >= 250 after three microbatches
    assert p.trained == {"examples": 12, "sequences": 24, "tokens": 300}


def test_matched_budgets_equalise_what_they_name():
    """KTO's unpaired view has twice DPO's examples: one epoch each gives KTO twice the steps; the matched
    rules give both methods the same steps, examples or sequences (in units of one paired epoch)."""
    dpo_view = _counts(6, examples=4, per_example_seqs=2)  # 24 pairs in microbatches of 4
    kto_view = _counts(12, examples=4, per_example_seqs=1)  # the same pairs unpaired: 48 examples
    paired = {"steps": 6, "examples": 24, "sequences": 48, "tokens": 600}

    def both(budget: str) -> tuple:
        return tuple(
            plan(_run_with_budget(budget, m), v, paired) for m, v in (("dpo", dpo_view), ("kto", kto_view))
        )

    dpo, kto = both("{rule: epochs, value: 1}")
    assert (dpo.steps, kto.steps) == (6, 12) and dpo.trained["sequences"] == kto.trained["sequences"] == 48
    dpo, kto = both("{rule: steps, value: 1, per: paired_epoch}")
    assert dpo.steps == kto.steps == 6 and kto.trained["sequences"] == 24
    dpo, kto = both("{rule: sequences, value: 1, per: paired_epoch}")
    assert dpo.trained["sequences"] == kto.trained["sequences"] == 48
    dpo, kto = both("{rule: examples, value: 0.5, per: paired_epoch}")
    assert dpo.trained["examples"] == kto.trained["examples"] == 12


def test_paired_epoch_budget_without_pairs_is_a_clear_error():
    run = _run_with_budget("{rule: steps, value: 1, per: paired_epoch}")
    with pytest.raises(TrainingError, match="per: absolute"):
        plan(run, _counts(), {"steps": 0, "examples": 0, "sequences": 0, "tokens": 0})


def test_epochs_budget_rejects_per():
    from kto_bench.errors import SpecError

    with pytest.raises(SpecError, match="leave per out"):
        _run_with_budget("{rule: epochs, value: 1, per: paired_epoch}")


def test_metrics_are_namespaced(tmp_path):
    run, data, model, cache = build(tmp_path, "kto")
    seen: list[dict] = []
    ctx = context(run, data, cache, tmp_path / "c", log=lambda s, m: seen.append(m))
    train(model, ctx)
    keys = set(seen[0])
    assert {"train/loss", "train/kl", "train/lr", "train/grad_norm", "tokens/seen", "time/step_s"} <= keys
    assert all("/" in k for k in keys)
    json.dumps(seen)


def test_lora_trains_only_the_adapter_and_checkpoints_it(tmp_path):
    pytest.importorskip("peft")
    from kto_bench.models import apply_lora
    from kto_bench.spec import LoraSpec

    run, data, model, cache = build(tmp_path, "dpo")
    run = run.model_copy(update={"model": run.model.model_copy(update={"lora": LoraSpec(r=4, alpha=8)})})
    base_weight = model.get_output_embeddings().weight.detach().clone()
    model = apply_lora(model, run.model)
    losses: list[float] = []
    ctx = context(run, data, cache, tmp_path / "ckpt", log=lambda s, m: losses.append(m["train/loss"]))
    train(model, ctx)
    state = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["model"]
    assert state and all("lora_" in k for k in state)
    assert torch.equal(model.get_output_embeddings().weight, base_weight)  # frozen base
    assert losses[-1] < losses[0]


def test_training_compile_compiles_the_decoder(tmp_path, monkeypatch):
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw))
    )
    run, data, model, cache = build(tmp_path, "dpo")
    run = run.model_copy(update={"training": run.training.model_copy(update={"compile": True})})
    ctx = context(run, data, cache, tmp_path / "c")
    train(model, ctx)
    assert calls == [(type(model.get_decoder()).__name__, {"dynamic": True})]

"""AlpacaEval mechanics with tiny models: format, caching, position swapping, win-rate maths, no leaks."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kto_bench.errors import EvalError
from kto_bench.eval import alpaca
from kto_bench.eval.alpaca import (
    AnnotationCache,
    Item,
    annotate_local,
    prob_second,
    run_alpaca_eval,
    swap_order,
    win_from_prob,
    win_rate,
)

FAKE_KEY = "sk-planted-fake-key-0123456789"


def test_win_rate_and_stderr_on_planted_verdicts():
    wins = [1.0, 1.0, 0.0, 0.5]
    value, stderr = win_rate(wins)
    assert value == pytest.approx(0.625)
    assert stderr == pytest.approx(statistics.stdev(wins) / 2)
    assert math.isnan(win_rate([1.0])[1])
    with pytest.raises(EvalError):
        win_rate([])


def test_verdict_probabilities():
    assert prob_second(-1.0, -1.0) == 0.5
    assert prob_second(-5.0, 0.0) == pytest.approx(1 / (1 + math.exp(-5)))
    assert [win_from_prob(p) for p in (0.9, 0.1, 0.5)] == [1.0, 0.0, 0.5]


def test_swap_order_is_seeded_per_item_and_balanced():
    ids = [f"alpaca-{i}" for i in range(400)]
    swaps = [swap_order(7, i) for i in ids]
    assert swaps == [swap_order(7, i) for i in ids]  # deterministic
    assert 150 < sum(swaps) < 250
    assert swaps != [swap_order(8, i) for i in ids]  # the seed matters


class FakeJudge:
    """Counts calls; prefers the slot whose output contains 'GOOD', else the first slot ('m')."""

    def __init__(self) -> None:
        self.calls = 0

    def loglikelihood(self, requests, *, progress=True):
        self.calls += 1
        out = []
        for prompt, verdict in requests:
            m_out, big_out = re.findall(r'"output": (".*?")\n', prompt)
            preferred = "M" if "GOOD" in big_out and "GOOD" not in m_out else "m"
            out.append((0.0 if verdict == preferred else -4.0, verdict == preferred))
        return out


def _items(n: int) -> list[Item]:
    return [Item(f"alpaca-{i}", f"Say something {i}.", f"reference {i}", "ref") for i in range(n)]


def test_position_swapping_cancels_a_first_slot_bias(tmp_path):
    items, judge = _items(40), FakeJudge()
    cache = AnnotationCache(tmp_path / "c.jsonl")
    verdicts = annotate_local(items, ["plain"] * 40, judge, None, judge_id="fake", cache=cache, seed=3)
    # a judge that always picks the first slot makes the model win exactly when shown first
    assert [v["win"] for v in verdicts] == [0.0 if v["model_shown_second"] else 1.0 for v in verdicts]
    assert [v["model_shown_second"] for v in verdicts] == [swap_order(3, it.item_id) for it in items]
    assert 0.25 < win_rate([v["win"] for v in verdicts])[0] < 0.75
    # a judge that prefers content follows the content wherever it is shown
    good = annotate_local(items, ["GOOD"] * 40, judge, None, judge_id="fake", cache=cache, seed=3)
    assert [v["win"] for v in good] == [1.0] * 40


def test_cache_means_no_rejudging(tmp_path):
    items, judge = _items(6), FakeJudge()
    path = tmp_path / "cache.jsonl"
    first = annotate_local(
        items, ["a"] * 6, judge, None, judge_id="fake", cache=AnnotationCache(path), seed=0
    )
    assert judge.calls == 1
    again = annotate_local(
        items, ["a"] * 6, judge, None, judge_id="fake", cache=AnnotationCache(path), seed=0
    )
    assert judge.calls == 1 and again == first
    annotate_local(items, ["a"] * 6, judge, None, judge_id="other-judge", cache=AnnotationCache(path), seed=0)
    assert judge.calls == 2  # the judge id is part of the key


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from kto_bench.data.synthetic import build_tokenizer, tiny_config

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer), hidden=32, layers=1)
    config.max_position_embeddings = 4096
    model = AutoModelForCausalLM.from_config(config)
    judge_dir = tmp_path_factory.mktemp("judge")
    AutoModelForCausalLM.from_config(config).save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)
    return model, tokenizer, judge_dir


def _standin(tmp_path: Path, n: int) -> Path:
    rows = [
        {"instruction": f"Add {i} and {i}.", "input": "" if i % 2 else "x=1", "output": str(2 * i)}
        for i in range(n)
    ]
    path = tmp_path / "alpaca_en_demo.json"
    path.write_text(json.dumps(rows))
    return path


def test_run_alpaca_eval_offline_with_local_judge(tiny, tmp_path, monkeypatch):
    import kto_bench.assets
    from kto_bench.eval.engine import Engine

    model, tokenizer, judge_dir = tiny
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setattr(kto_bench.assets, "fetch", lambda name, cache_dir=None: _standin(tmp_path, 8))
    calls = []
    real = Engine.loglikelihood
    monkeypatch.setattr(Engine, "loglikelihood", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    task = SimpleNamespace(name="alpaca_eval", variant="offline", limit=5, max_new_tokens=6)
    evaluation = SimpleNamespace(
        batch_size=4, seed=11, judge=SimpleNamespace(type="local", model=str(judge_dir))
    )
    out, cache = tmp_path / "eval", tmp_path / "cache"

    result = run_alpaca_eval(model, tokenizer, task, evaluation, out, model_label="run-x", cache_dir=cache)
    assert len(calls) == 1
    assert [m["metric"] for m in result["metrics"]] == ["win_rate"]
    metric = result["metrics"][0]
    assert metric["n"] == 5 and 0.0 <= metric["value"] <= 1.0 and metric["stderr"] is not None
    assert result["computed"] == {"win_rate": True, "lc_win_rate": False}
    assert any("lc_win_rate not computed" in n for n in result["notes"])
    assert result["dataset"]["stand_in"] is True and result["variant"] == "offline"
    assert result["settings"]["decoding"]["max_new_tokens"] == 6 and result["settings"]["seed"] == 11
    assert json.loads((out / "alpaca_eval.json").read_text()) == result

    samples = [json.loads(line) for line in (out / "alpaca_eval.samples.jsonl").read_text().splitlines()]
    assert [s["item_id"] for s in samples] == [f"alpaca-{i}" for i in range(5)]
    assert all(s["scores"]["win"] in (0.0, 0.5, 1.0) for s in samples)
    assert samples[0]["instruction"] == "Add 0 and 0.\n\nx=1" and samples[1]["reference"] == "2"
    assert [s["model_shown_second"] for s in samples] == [swap_order(11, s["item_id"]) for s in samples]
    assert metric["value"] == pytest.approx(sum(s["scores"]["win"] for s in samples) / 5)
    outputs = json.loads((out / "alpaca_eval.outputs.json").read_text())
    assert set(outputs[0]) == {"instruction", "output", "generator"} and outputs[0]["generator"] == "run-x"

    again = run_alpaca_eval(
        model, tokenizer, task, evaluation, tmp_path / "eval2", model_label="run-x", cache_dir=cache
    )
    assert len(calls) == 1  # every verdict came from the cache
    assert again["metrics"] == result["metrics"]

    for path in [*out.rglob("*"), *cache.rglob("*"), *(tmp_path / "eval2").rglob("*")]:
        if path.is_file():
            assert FAKE_KEY not in path.read_text(), path


def test_missing_judge_and_missing_api_key_are_explained(tiny, tmp_path, monkeypatch):
    import kto_bench.assets

    model, tokenizer, _ = tiny
    monkeypatch.setattr(kto_bench.assets, "fetch", lambda name, cache_dir=None: _standin(tmp_path, 2))
    task = SimpleNamespace(name="alpaca_eval", variant="offline", limit=1, max_new_tokens=2)
    with pytest.raises(EvalError, match="evaluation.judge"):
        run_alpaca_eval(
            model,
            tokenizer,
            task,
            SimpleNamespace(batch_size=2, seed=0, judge=None),
            tmp_path,
            model_label="m",
        )
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    evaluation = SimpleNamespace(
        batch_size=2, seed=0, judge=SimpleNamespace(type="api", annotator_config="x")
    )
    with pytest.raises(EvalError, match="OPENAI_API_KEY"):
        run_alpaca_eval(
            model, tokenizer, task, evaluation, tmp_path, model_label="m", cache_dir=tmp_path / "c"
        )


def test_unknown_variant_is_an_error():
    with pytest.raises(EvalError, match="variant"):
        alpaca.load_items("demo", None)

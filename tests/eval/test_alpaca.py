"""AlpacaEval through alpaca-eval's own annotators, judged by a tiny local model served over HTTP.

The judge is a tiny Llama shaped so that its next token after any prompt is "m" or "M" (alpaca-eval's two
verdict tokens, the first and second output), so the logprob-weighted annotator has both in its top
log-probs. Every verdict is checked against the judge's own probabilities computed here without the
server, the engine or alpaca-eval."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kto_bench.errors import EvalError
from kto_bench.eval import alpaca, serve
from kto_bench.eval.alpaca import run_alpaca_eval
from kto_bench.spec import JudgeSpec

pytest.importorskip("alpaca_eval")

FAKE_KEY = "sk-planted-fake-key-0123456789"
CONFIG = "weighted_alpaca_eval_gpt4_turbo"  # GPT-4 turbo's verdict-token log-probs, top 5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(policy, tokenizer, judge folder): a random policy and a judge that prefers the first output."""
    from transformers import AutoModelForCausalLM

    from kto_bench.demo.world import build_tokenizer, tiny_config

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer), hidden=32, layers=1)
    config.max_position_embeddings = 4096  # alpaca-eval's judge prompt is ~1,800 characters
    policy = AutoModelForCausalLM.from_config(config)
    config.tie_word_embeddings = False
    judge = AutoModelForCausalLM.from_config(config)
    first, second = tokenizer.convert_tokens_to_ids(["m", "M"])
    with torch.no_grad():  # one large feature every token carries, read only by the two verdict tokens
        judge.model.embed_tokens.weight[:, 0] = 10.0
        judge.lm_head.weight[:, 0] = 0.0
        judge.lm_head.weight[first, 0], judge.lm_head.weight[second, 0] = 1.0, 0.8
    folder = tmp_path_factory.mktemp("judge")
    judge.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return policy, tokenizer, folder


def _standin(tmp_path: Path, n: int) -> Path:
    rows = [
        {"instruction": f"Add {i} and {i}.", "input": "" if i % 2 else "x=1", "output": str(2 * i)}
        for i in range(n)
    ]
    path = tmp_path / "alpaca_en_demo.json"
    path.write_text(json.dumps(rows))
    return path


def p_first(judge, tokenizer, messages: list[dict]) -> float:
    """The judge's P("m") / (P("m") + P("M")) after the chat-rendered messages: a plain forward pass."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logps = judge(input_ids=ids).logits[0, -1].log_softmax(-1)
    first, second = logps[tokenizer.convert_tokens_to_ids(["m", "M"])].tolist()
    return 1 / (1 + math.exp(second - first))


def test_alpaca_eval_annotator_against_a_served_local_judge(tiny, tmp_path, monkeypatch):
    import kto_bench.assets

    policy, tokenizer, judge_dir = tiny
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)  # must reach neither the local judge nor any file
    monkeypatch.setattr(kto_bench.assets, "fetch", lambda name, cache_dir=None: _standin(tmp_path, 8))
    requests: list[dict] = []
    real_chat = serve.ModelServer.chat

    def chat(self, body):
        response = real_chat(self, body)
        requests.append({"messages": body["messages"], "response": response})
        return response

    monkeypatch.setattr(serve.ModelServer, "chat", chat)
    task = SimpleNamespace(name="alpaca_eval", variant="offline", limit=4, max_new_tokens=8)
    out, cache = tmp_path / "eval", tmp_path / "cache"
    judge_model, _ = serve.load(str(judge_dir))

    # 1. the test's own server on a free port of 127.0.0.1, named as the self-served judge will be
    with serve.Server(judge_model, tokenizer, name=str(judge_dir)) as server:
        assert server.url.startswith("http://127.0.0.1:")
        judge = JudgeSpec(type="local", model=str(judge_dir), base_url=server.url, annotator_config=CONFIG)
        evaluation = SimpleNamespace(batch_size=4, seed=11, judge=judge)
        result = run_alpaca_eval(
            policy, tokenizer, task, evaluation, out, model_label="run-x", cache_dir=cache
        )
    assert len(requests) == 4  # one judgement per item
    samples = [json.loads(line) for line in (out / "alpaca_eval.samples.jsonl").read_text().splitlines()]
    assert [s["item_id"] for s in samples] == [f"alpaca-{i}" for i in range(4)]

    # verdicts: alpaca-eval's preference is the judge's own P(first output), as the outputs were shown
    for request in requests:
        top = request["response"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        assert {t["token"] for t in top[:2]} == {"m", "M"}  # both verdict tokens in the top log-probs
        prompt = request["messages"][-1]["content"]
        sample = next(s for s in samples if f'"""{s["instruction"]}"""' in prompt)
        model_first = prompt.index(f'"""{sample["output"]}"""') < prompt.index(f'"""{sample["reference"]}"""')
        p = p_first(judge_model, tokenizer, request["messages"])
        assert 0.6 < p < 0.9  # the judge's bias for the first slot
        expected = 1 + p if model_first else 2 - p  # alpaca-eval: 1 = the reference wins, 2 = the model
        assert sample["preference"] == pytest.approx(expected, abs=1e-5)
        assert sample["scores"]["win"] == pytest.approx(expected - 1, abs=1e-5)
        assert sample["judge_completion"]["logprobs"]["content"][0]["top_logprobs"] == top  # kept per item
    wins = [s["scores"]["win"] for s in samples]
    assert {w > 0.5 for w in wins} == {True, False}  # the order was randomised: both slots occur

    # raw and length-controlled win rates, as alpaca-eval computes them
    metric = result["metrics"][0]
    assert [m["metric"] for m in result["metrics"]] == ["win_rate"]
    assert metric["n"] == 4 and metric["value"] == pytest.approx(sum(wins) / 4)
    import statistics

    assert metric["stderr"] == pytest.approx(statistics.stdev(wins) / 2)
    assert result["computed"] == {"win_rate": True, "lc_win_rate": False}
    assert any(n.startswith("lc_win_rate not computed") and "stand-in" in n for n in result["notes"])
    assert result["dataset"]["stand_in"] is True and result["variant"] == "offline"
    assert result["judge"]["annotator_config"] == CONFIG and result["harness"]["alpaca_eval"] == "0.6.6"
    assert json.loads((out / "alpaca_eval.json").read_text()) == result

    # 2. a rerun, the judge now served by the eval stage itself: every verdict comes from the cache
    self_served = JudgeSpec(type="local", model=str(judge_dir), annotator_config=CONFIG)
    evaluation = SimpleNamespace(batch_size=4, seed=11, judge=self_served)
    again = run_alpaca_eval(
        policy, tokenizer, task, evaluation, tmp_path / "eval2", model_label="run-x", cache_dir=cache
    )
    assert len(requests) == 4  # nothing re-judged
    (cached,) = again["metrics"]  # alpaca-eval's cache keeps 10 decimals
    assert (cached["value"], cached["stderr"]) == pytest.approx((metric["value"], metric["stderr"]), abs=1e-9)
    # 3. one more item: only it is judged, by the self-served judge
    more = SimpleNamespace(**{**vars(task), "limit": 5})
    run_alpaca_eval(
        policy, tokenizer, more, evaluation, tmp_path / "eval3", model_label="run-x", cache_dir=cache
    )
    assert len(requests) == 5 and "Add 4 and 4." in requests[-1]["messages"][-1]["content"]

    for path in [*tmp_path.rglob("*")]:
        if path.is_file() and path.suffix in (".json", ".jsonl", ".yaml"):
            assert FAKE_KEY not in path.read_text(), path


def test_length_controlled_win_rate_states_why_it_is_missing(monkeypatch):
    """The hub set's LC win rate needs alpaca-eval's instruction table from the hub; unreachable, it is
    reported as not computed, with the reason, and the raw win rate still stands."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    glm = pytest.importorskip("alpaca_eval.metrics.glm_winrate")

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(glm, "hf_hub_download", offline)
    annotations = [
        {"instruction": f"i{k}", "output_1": "ref", "output_2": "x" * (k + 1), "generator_1": "ref",
         "generator_2": "m", "annotator": CONFIG, "preference": 1.2 + 0.1 * k}
        for k in range(6)
    ]  # fmt: skip
    metrics, notes = alpaca.win_rates(annotations, stand_in=False)
    assert [m["metric"] for m in metrics] == ["win_rate"]
    assert metrics[0]["value"] == pytest.approx(sum(0.2 + 0.1 * k for k in range(6)) / 6)
    assert len(notes) == 1 and "df_gamed.csv" in notes[0] and "cannot reach the hub" in notes[0]


def test_judge_mistakes_are_explained(tiny, tmp_path, monkeypatch):
    import kto_bench.assets

    policy, tokenizer, _ = tiny
    monkeypatch.setattr(kto_bench.assets, "fetch", lambda name, cache_dir=None: _standin(tmp_path, 2))
    task = SimpleNamespace(name="alpaca_eval", variant="offline", limit=1, max_new_tokens=2)

    def run(judge):
        evaluation = SimpleNamespace(batch_size=2, seed=0, judge=judge)
        return run_alpaca_eval(
            policy, tokenizer, task, evaluation, tmp_path, model_label="m", cache_dir=tmp_path
        )

    with pytest.raises(EvalError, match="evaluation.judge"):
        run(None)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EvalError, match="OPENAI_API_KEY"):
        run(JudgeSpec(type="api", annotator_config=CONFIG))
    with pytest.raises(
        EvalError, match=r"'weighted_alpaca_eval_gpt4_turb' is not an alpaca-eval annotator .*did"
    ):
        run(JudgeSpec(type="api", annotator_config="weighted_alpaca_eval_gpt4_turb"))
    with pytest.raises(EvalError, match="calls vllm_local_completions; choose a config that calls openai"):
        run(
            JudgeSpec(
                model="x", base_url="http://127.0.0.1:9/v1", annotator_config="alpaca_eval_vllm_llama3_70b_fn"
            )
        )
    with pytest.raises(ValueError, match="a local judge needs model"):
        JudgeSpec(type="local")


def test_unknown_variant_is_an_error():
    with pytest.raises(EvalError, match="variant"):
        alpaca.load_items("demo", None)

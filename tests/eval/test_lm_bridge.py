"""The lm-eval bridge: EngineLM's request handling, and whole tasks through lm-eval into our results files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from kto_bench.errors import EvalError
from kto_bench.eval.engine import Engine
from kto_bench.eval.lm_bridge import EngineLM, build_lm
from kto_bench.eval.run import run_evaluation
from kto_bench.spec import EvaluationSpec
from tests.prereq import missing

from . import char_tokenizer, tiny_llama

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval"
DEMO_FILES = {
    "demo_arith_gen": FIXTURES / "demo_arith_gen.jsonl",
    "demo_arith_mc": FIXTURES / "demo_arith_mc.jsonl",
}


@pytest.fixture(scope="module")
def lm():
    tok = char_tokenizer()
    return tiny_llama(len(tok)), tok


def task(name, variant="stock", **kw):
    base = dict(num_fewshot=None, limit=None, apply_chat_template=False, max_new_tokens=None)
    return NS(name=name, variant=variant, **{**base, **kw})


def evaluation(tasks, **kw):
    """A real EvaluationSpec (built without validation: the tasks are plain namespaces here)."""
    defaults = dict(backend="engine", batch_size=4, seed=1234, allow_code_execution=False)
    return EvaluationSpec.model_construct(tasks=tasks, **{**defaults, **kw})


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_until_honours_until_and_max_gen_toks(lm):
    model, tok = lm
    engine = Engine(model, tok, batch_size=4)
    bridge = EngineLM(engine)
    prompts = ["Compute 2+3.", "Hi there", "x"]
    free = engine.generate(prompts, max_new_tokens=6, progress=False)
    reqs = [NS(args=(p, {"until": [free[0][1]], "max_gen_toks": 6, "do_sample": False})) for p in prompts[:1]]
    reqs += [NS(args=(p, {"max_gen_toks": 6})) for p in prompts[1:]]
    out = bridge.generate_until(reqs, disable_tqdm=True)
    assert out[0] == free[0][: free[0].index(free[0][1])]
    assert out[1:] == free[1:]


def test_loglikelihood_rolling_sums_windows(lm):
    model, tok = lm
    engine = Engine(model, tok, max_length=8)
    bridge = EngineLM(engine)
    text = "a rolling window text"
    (total,) = bridge.loglikelihood_rolling([NS(args=(text,))], disable_tqdm=True)
    # Windows of <= 8 predicted tokens each, first conditioned on the prefix token; a long max_length
    # gives one window over the whole text, so the two must differ but both be finite sums.
    (whole,) = EngineLM(Engine(model, tok)).loglikelihood_rolling([NS(args=(text,))], disable_tqdm=True)
    ((direct, _),) = Engine(model, tok).loglikelihood([("", text)], progress=False)
    assert whole == pytest.approx(direct, abs=1e-4)
    assert total < 0 and total != pytest.approx(whole, abs=1e-3)


def test_chat_template_interface(lm):
    model, tok = lm
    bridge = EngineLM(Engine(model, tok))
    rendered = bridge.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert rendered == "<|user|>Hi<|assistant|>"
    assert bridge.chat_template(True) == tok.chat_template and bridge.chat_template(False) is None
    assert isinstance(bridge.tokenizer_name, str) and "/" not in bridge.tokenizer_name


def test_backends(lm):
    model, tok = lm
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(EvalError, match="vllm is not importable"):
            build_lm("vllm", model, tok, batch_size=2, seed=0)
    with pytest.raises(EvalError, match="unknown evaluation.backend"):
        build_lm("tgi", model, tok, batch_size=2, seed=0)
    hf = build_lm("hf", model, tok, batch_size=2, seed=0)
    reqs = [("Compute 2+3.\nAnswer:", " A"), ("Hi", " there")]
    ours = EngineLM(Engine(model, tok)).loglikelihood([NS(args=r) for r in reqs], disable_tqdm=True)
    theirs = hf.loglikelihood([NS(args=r) for r in reqs], disable_tqdm=True)
    for (a, ga), (b, gb) in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb


def test_demo_tasks_end_to_end_with_resume(lm, tmp_path, monkeypatch):
    model, tok = lm
    spec = evaluation(
        [
            task("demo_arith_gen", apply_chat_template=True, max_new_tokens=16),
            task("demo_arith_mc", limit=3),
            task("humaneval", "offline"),
        ]
    )
    results = run_evaluation(model, tok, spec, tmp_path, model_label="base", data_files=DEMO_FILES)
    gen, mc, he = results
    assert [r["task"] for r in results] == ["demo_arith_gen", "demo_arith_mc", "humaneval"]
    assert [m["metric"] for m in gen["metrics"]] == ["exact_match,strict-match"]
    assert gen["metrics"][0]["n"] == 5 and gen["metrics"][0]["stderr"] is not None
    assert gen["settings"]["apply_chat_template"] is True and gen["settings"]["seed"] == 1234
    assert gen["settings"]["decoding"]["max_gen_toks"] == 16 and gen["harness"]["lm_eval"].startswith("0.4")
    assert (
        mc["metrics"][0]["metric"] == "acc,none"
        and mc["metrics"][0]["n"] == 3
        and mc["settings"]["limit"] == 3
    )
    assert he["status"] == "skipped" and "allow_code_execution" in he["message"]
    assert json.loads((tmp_path / "demo_arith_gen.json").read_text()) == gen

    gen_samples = read_samples(tmp_path / "demo_arith_gen.samples.jsonl")
    mc_samples = read_samples(tmp_path / "demo_arith_mc.samples.jsonl")
    assert [s["item_id"] for s in gen_samples] == [f"gen-{i}" for i in range(5)]
    assert [s["item_id"] for s in mc_samples] == ["mc-0", "mc-1", "mc-2"]
    assert (
        gen_samples[0]["prompt"] == "<|user|>Compute 23+45-12.<|assistant|>"
        and gen_samples[0]["target"] == "56"
    )
    # the choices are whole worked answers (the model scores each), not letters
    assert mc_samples[0]["prompt"] == "Compute 23+45-12." and mc_samples[0]["target"] == 0
    acc = sum(s["scores"]["acc,none"] for s in mc_samples) / 3
    assert acc == pytest.approx(mc["metrics"][0]["value"])
    assert all(s["output"] in range(4) for s in mc_samples)

    # Resume: nothing is evaluated again.
    def boom(*a, **k):
        raise AssertionError("re-evaluated a finished task")

    monkeypatch.setattr("kto_bench.eval.lm_bridge.evaluate_task", boom)
    assert run_evaluation(model, tok, spec, tmp_path, model_label="base", data_files=DEMO_FILES) == results


def test_real_mirror_limit_counts_per_subject(lm, tmp_path):
    assets = pytest.importorskip("kto_bench.assets")
    if any(getattr(assets, "cached_path", lambda _: None)(n) is None for n in ("gsm8k_test", "mmlu_test")):
        missing("offline mirrors are not in the local cache (kto-bench assets fetch gsm8k_test mmlu_test)")
    model, tok = lm
    spec = evaluation(
        [task("gsm8k_cot", "offline", limit=2, max_new_tokens=4), task("mmlu", "offline", limit=1)]
    )
    cot, mmlu = run_evaluation(model, tok, spec, tmp_path, model_label="base")
    assert {m["metric"] for m in cot["metrics"]} == {
        "exact_match,strict-match",
        "exact_match,flexible-extract",
    }
    assert cot["settings"]["num_fewshot"] == 8 and cot["settings"]["data"]["rows"] == 1319
    assert len(read_samples(tmp_path / "gsm8k_cot.samples.jsonl")) == 2
    # lm-eval's --limit: the first item of each of the 57 subjects (not the mirror's first rows, which are
    # all moral scenarios), with the stock categories and subjects as the breakdown
    ((acc,),) = [mmlu["metrics"]]
    assert acc["metric"] == "acc,none" and acc["n"] == 57 and mmlu["settings"]["data"]["rows"] == 14042
    groups = [b["name"] for b in mmlu["breakdown"] if b["kind"] == "group"]
    assert groups == ["stem", "other", "social sciences", "humanities"]
    assert sum(b["kind"] == "task" for b in mmlu["breakdown"]) == 57
    samples = read_samples(tmp_path / "mmlu.samples.jsonl")
    assert len({s["subtask"] for s in samples}) == 57 == len(samples)
    assert samples[0]["item_id"] == "abstract_algebra/0" and samples[0]["prompt"].startswith(
        "The following are multiple choice questions (with answers) about abstract algebra."
    )

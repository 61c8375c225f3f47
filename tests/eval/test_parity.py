"""Parity with stock lm-eval: every task through our engine and through lm-eval's own `hf` backend (HFLM
over the same model object), fp32 on CPU, gives the same prompts, the same generations and every option's
log-likelihood within 1e-4, item by item, from the per-item files both write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kto_bench.eval.run import run_evaluation
from kto_bench.spec import EvalTaskSpec, EvaluationSpec

from . import char_tokenizer, tiny_llama

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval"
DATA = {
    "demo_arith_gen": FIXTURES / "demo_arith_gen.jsonl",
    "demo_arith_mc": FIXTURES / "demo_arith_mc.jsonl",
    "gsm8k_cot": FIXTURES / "gsm8k_test.jsonl",
    "gsm8k": FIXTURES / "gsm8k_test.jsonl",
    "mmlu": FIXTURES / "mmlu.jsonl",
}
TASKS = [
    EvalTaskSpec(name="gsm8k_cot", variant="offline", limit=2, max_new_tokens=12),  # 8-shot CoT
    EvalTaskSpec(name="gsm8k", variant="offline", limit=2, max_new_tokens=12),  # 5-shot
    EvalTaskSpec(name="mmlu", variant="offline", limit=1),  # a group: one item of each subject
    EvalTaskSpec(name="demo_arith_gen", apply_chat_template=True, limit=3, max_new_tokens=12),
    EvalTaskSpec(name="demo_arith_mc", limit=3),
]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Per-item records of every task from our engine and from lm-eval's hf backend."""
    tok = char_tokenizer()
    model = tiny_llama(
        len(tok), max_positions=4096
    )  # a char-level 8-shot prompt is 2k+ tokens: no truncation
    out = {}
    for backend in ("engine", "hf"):
        folder = tmp_path_factory.mktemp(backend)
        evaluation = EvaluationSpec(tasks=TASKS, backend=backend, batch_size=4)
        run_evaluation(model, tok, evaluation, folder, model_label=backend, data_files=DATA)
        out[backend] = {
            t.name: [
                json.loads(line) for line in (folder / f"{t.name}.samples.jsonl").read_text().splitlines()
            ]
            for t in TASKS
        }
    return out


@pytest.mark.parametrize("task", [t.name for t in TASKS])
def test_engine_matches_lm_evals_hf_item_by_item(both, task):
    ours, stock = both["engine"][task], both["hf"][task]
    assert [s["item_id"] for s in ours] == [s["item_id"] for s in stock] and ours
    for a, b in zip(ours, stock, strict=True):
        assert a["prompt"] == b["prompt"] and a["target"] == b["target"]
        if "loglikelihoods" in b:  # multiple choice: every option's log-likelihood and is-greedy
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
            assert a["is_greedy"] == b["is_greedy"] and a["output"] == b["output"]
        else:  # generation: the raw text and every filter's answer
            assert a["output"] == b["output"] and a["extracted"] == b["extracted"]
            assert isinstance(a["output"], str) and a["output"]
        assert a["scores"] == b["scores"]


def test_the_comparison_sees_what_it_compares(both):
    """The records carry what the parity test compares: four options per MMLU item, several subjects."""
    mmlu = both["engine"]["mmlu"]
    assert {s["subtask"] for s in mmlu} == {"anatomy", "astronomy", "elementary_mathematics"}
    assert all(len(s["loglikelihoods"]) == 4 and len(s["is_greedy"]) == 4 for s in mmlu)
    assert len(both["engine"]["gsm8k_cot"][0]["prompt"]) > 2000  # the 8 exemplars are in the prompt

"""Task registry and offline variants: generated YAMLs load in lm-eval and change only the data source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kto_bench.errors import DataError, EvalError, KtoBenchError
from kto_bench.eval.tasks import (
    TASKS,
    check_variant,
    cot_exemplars_as_gsm8k,
    lm_eval_tasks_dir,
    mmlu_rows,
    prepare_task,
    read_rows,
)
from tests.prereq import missing

FIXTURES = Path(__file__).parents[1] / "fixtures" / "eval"


def load_generated(prepared) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(prepared.include_dir / f"{prepared.lm_eval_task}.yaml", resolve_func=True)


def test_registry_names_and_did_you_mean():
    assert set(TASKS.names()) >= {"gsm8k_cot", "gsm8k", "mmlu", "humaneval", "humaneval_instruct"}
    assert TASKS.get("gsm8k_cot").default_fewshot == 8 and TASKS.get("mmlu").default_fewshot == 0
    with pytest.raises(KtoBenchError, match="did you mean 'gsm8k_cot'"):
        TASKS.get("gsm8k_cott")


def test_stock_variant_is_lm_evals_task(tmp_path):
    task = prepare_task("mmlu", "stock", tmp_path, num_fewshot=5)
    assert (task.lm_eval_task, task.variant, task.num_fewshot, task.include_dir) == ("mmlu", "stock", 5, None)
    with pytest.raises(EvalError, match="unknown variant"):
        prepare_task("mmlu", "mirror", tmp_path)


def test_mmlu_rows_drop_header_rows_and_map_fields():
    rows = mmlu_rows(FIXTURES / "mmlu.jsonl")
    assert len(read_rows(FIXTURES / "mmlu.jsonl")) == 5 and len(rows) == 4
    assert rows[0] == {
        "question": "What is 2+2?",
        "subject": "elementary mathematics",
        "choices": ["3", "4", "5", "6"],
        "answer": 1,
    }
    assert [r["answer"] for r in rows] == [1, 0, 2, 3]


def test_mmlu_rejects_bad_answers(tmp_path):
    bad = tmp_path / "mmlu.jsonl"
    row = json.loads((FIXTURES / "mmlu.jsonl").read_text().splitlines()[0])
    bad.write_text(json.dumps({**row, "correct_answer": "E"}) + "\n")
    with pytest.raises(DataError, match="row 1 has correct_answer='E'"):
        mmlu_rows(bad)


def test_offline_mmlu_is_lm_evals_group_with_one_subtask_per_subject(tmp_path):
    task = prepare_task("mmlu", "offline", tmp_path, data_file=FIXTURES / "mmlu.jsonl")
    top = load_generated(task)
    assert top["group"] == "kto_mmlu_offline" and top["task"] == ["kto_mmlu_offline_stem"]
    assert top["aggregate_metric_list"] == [{"metric": "acc", "weight_by_size": True}]  # stock's
    stem = yaml.safe_load((task.include_dir / "kto_mmlu_offline_stem.yaml").read_text())
    subjects = ["anatomy", "astronomy", "elementary_mathematics"]
    assert stem["group_alias"] == "stem" and stem["task"] == [f"kto_mmlu_offline_{s}" for s in subjects]
    from lm_eval.tasks._yaml_loader import load_yaml

    math = load_yaml(task.include_dir / "kto_mmlu_offline_elementary_mathematics.yaml", resolve_func=True)
    stock = load_yaml(
        lm_eval_tasks_dir() / "mmlu/default/mmlu_elementary_mathematics.yaml", resolve_func=True
    )
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "description", "task_alias", "metric_list"):
        assert math[key] == stock[key]
    assert math["dataset_path"] == "json" and math["fewshot_split"] is None
    rows = read_rows(Path(math["dataset_kwargs"]["data_files"]["test"]))
    assert [r["question"] for r in rows] == ["What is 2+2?", "What is 10/2?"]  # the mirror's order
    assert task.notes["rows"] == 4 and task.notes["subjects"] == 3 and len(task.notes["data_sha256"]) == 64


def test_offline_mmlu_refuses_shots_it_cannot_draw_like_stock(tmp_path):
    with pytest.raises(EvalError, match="offline runs 0-shot only.*dev examples.*num_fewshot: 0"):
        prepare_task("mmlu", "offline", tmp_path, num_fewshot=5, data_file=FIXTURES / "mmlu.jsonl")
    check_variant("mmlu", "stock", 5)
    check_variant("gsm8k_cot", "offline", 8)
    with pytest.raises(EvalError, match="unknown variant 'mirror'; use 'stock' or 'offline'"):
        check_variant("gsm8k_cot", "mirror", None)


def test_offline_mmlu_rejects_unknown_subjects(tmp_path):
    bad = tmp_path / "mmlu.jsonl"
    row = json.loads((FIXTURES / "mmlu.jsonl").read_text().splitlines()[0])
    bad.write_text(json.dumps({**row, "topic": "astrology"}) + "\n")
    with pytest.raises(DataError, match=r"\['astrology'\] are not MMLU subjects"):
        prepare_task("mmlu", "offline", tmp_path / "inc", data_file=bad)


def test_variants_listed_per_task():
    assert TASKS.get("mmlu").variants == ("stock", "offline")
    assert TASKS.get("demo_arith_mc").variants == ("demo",)
    assert TASKS.get("alpaca_eval").variants == ("stock", "offline")


def test_offline_gsm8k_cot_includes_the_stock_task(tmp_path):
    task = prepare_task("gsm8k_cot", "offline", tmp_path, data_file=FIXTURES / "gsm8k_test.jsonl")
    cfg = load_generated(task)
    assert cfg["task"] == "kto_gsm8k_cot_offline" and cfg["num_fewshot"] == 8
    assert [f["name"] for f in cfg["filter_list"]] == ["strict-match", "flexible-extract"]
    assert len(cfg["fewshot_config"]["samples"]) == 8
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str((FIXTURES / "gsm8k_test.jsonl").resolve())


def test_offline_gsm8k_uses_fixed_train_exemplars(tmp_path):
    shots = cot_exemplars_as_gsm8k()
    assert len(shots) == 8 and shots[0]["answer"].endswith("\n#### 6")
    assert "The answer is" not in shots[0]["answer"]
    task = prepare_task("gsm8k", "offline", tmp_path, data_file=FIXTURES / "gsm8k_test.jsonl")
    cfg = load_generated(task)
    assert cfg["fewshot_split"] is None and cfg["fewshot_config"]["samples"] == shots
    assert cfg["num_fewshot"] == 5 and "fewshot_source" in task.notes


def test_offline_humaneval_scores_with_our_functions(tmp_path):
    from kto_bench.eval import tasks

    task = prepare_task("humaneval", "offline", tmp_path, data_file=FIXTURES / "HumanEval.jsonl.gz")
    cfg = load_generated(task)  # resolves !function tags without touching lm-eval's hub-loading utils
    assert cfg["metric_list"][0]["metric"] is tasks.pass_at_1
    assert cfg["filter_list"][0]["filter"][0]["filter_fn"] is tasks.build_predictions
    assert cfg["doc_to_target"] is tasks.humaneval_reference and cfg["unsafe_code"] is True
    assert len(read_rows(Path(cfg["dataset_kwargs"]["data_files"]["test"]))) == 2
    instruct = load_generated(
        prepare_task("humaneval_instruct", "offline", tmp_path, data_file=FIXTURES / "HumanEval.jsonl.gz")
    )
    assert instruct["filter_list"][0]["filter"][0]["filter_fn"] is tasks.build_predictions_instruct
    assert "gen_prefix" in instruct


def test_humaneval_pass_at_1_runs_in_the_sandbox(monkeypatch):
    from kto_bench.eval import sandbox
    from kto_bench.eval.tasks import build_predictions, humaneval_reference, pass_at_1

    if not sandbox.probe_isolation().namespaces:  # the refusal is tested in test_sandbox.py
        monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "1")

    doc = read_rows(FIXTURES / "HumanEval.jsonl.gz")[0]
    reference = humaneval_reference(doc)
    assert json.loads(reference) == {k: doc[k] for k in ("prompt", "test", "entry_point")}
    right = build_predictions([[doc["canonical_solution"]]], [doc])[0]
    wrong = build_predictions([["    return a - b\n"]], [doc])[0]
    cheat = build_predictions([["    return None\nimport posix; posix._exit(0)\n"]], [doc])[0]
    assert pass_at_1([reference], [right]) == 1.0
    assert pass_at_1([reference], [wrong]) == 0.0
    assert pass_at_1([reference], [cheat]) == 0.0
    with pytest.raises(EvalError, match="humaneval_reference"):
        pass_at_1([doc["test"] + f"\ncheck({doc['entry_point']})"], [right])


@pytest.mark.parametrize("name", ["humaneval", "humaneval_instruct"])
def test_stock_humaneval_is_scored_by_our_sandbox(tmp_path, name):
    """lm-eval's stock scorer (HF code_eval) would run generated code outside the sandbox."""
    from kto_bench.eval import tasks

    task = prepare_task(name, "stock", tmp_path)
    cfg = load_generated(task)
    assert task.lm_eval_task == f"kto_{name}_stock" and cfg["dataset_path"] == "openai/openai_humaneval"
    assert cfg["metric_list"][0]["metric"] is tasks.pass_at_1
    assert cfg["doc_to_target"] is tasks.humaneval_reference


def test_code_execution_settings_record_the_isolation(monkeypatch):
    from kto_bench.eval import sandbox
    from kto_bench.eval.run import code_execution_settings

    settings = code_execution_settings() if sandbox.probe_isolation().namespaces else None
    if settings is not None:
        assert settings["isolation"] == "namespaces" and "uid=" in settings["layers"]
    monkeypatch.delenv(sandbox.ALLOW_UNISOLATED_ENV, raising=False)
    monkeypatch.setattr(sandbox, "probe_isolation", lambda: sandbox._fallback("not root"))
    with pytest.raises(EvalError, match="--allow-unisolated-code-execution"):
        code_execution_settings()
    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "1")
    assert code_execution_settings()["isolation"] == "none"


def test_demo_tasks_need_data_and_follow_the_chat_setting(tmp_path):
    with pytest.raises(EvalError, match="needs its data file .*default_task_data writes it"):
        prepare_task("demo_arith_mc", "stock", tmp_path)
    raw = prepare_task("demo_arith_mc", "stock", tmp_path / "a", data_file=FIXTURES / "demo_arith_mc.jsonl")
    chat = prepare_task(
        "demo_arith_mc",
        "stock",
        tmp_path / "b",
        apply_chat_template=True,
        data_file=FIXTURES / "demo_arith_mc.jsonl",
    )
    assert raw.variant == "demo"
    assert load_generated(raw)["target_delimiter"] == "\n" and load_generated(chat)["target_delimiter"] == ""
    gen = load_generated(
        prepare_task("demo_arith_gen", "x", tmp_path / "c", data_file=FIXTURES / "demo_arith_gen.jsonl")
    )
    assert gen["generation_kwargs"]["until"] == ["<|end|>"] and gen["generation_kwargs"]["max_gen_toks"] == 64


def test_missing_fields_name_the_file(tmp_path):
    bad = tmp_path / "gsm.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"gsm.jsonl: row 1 lacks field\(s\) \['answer'\]"):
        prepare_task("gsm8k_cot", "offline", tmp_path / "inc", data_file=bad)


@pytest.mark.parametrize(("name", "rows"), [("gsm8k_test", 1319), ("mmlu_test", 14042)])
def test_real_mirror_builds_with_checked_rows(tmp_path, name, rows):
    assets = pytest.importorskip("kto_bench.assets")
    cached = getattr(assets, "cached_path", lambda _: None)(name)
    if cached is None:
        missing(f"mirror {name!r} is not in the local cache (kto-bench assets fetch {name})")
    task_name = {"gsm8k_test": "gsm8k_cot", "mmlu_test": "mmlu"}[name]
    task = prepare_task(task_name, "offline", tmp_path)  # fetch() verifies the sha256; rows checked here
    assert task.notes["rows"] == rows and task.notes["asset"] == name

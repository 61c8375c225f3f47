"""`kto-bench eval MODEL --tasks …`: a model evaluated without a spec, into a run's result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kto_bench.cli import app
from kto_bench.errors import KtoBenchError
from kto_bench.evaluate import evaluation_spec, resolve_model
from tests.eval import char_tokenizer, tiny_llama


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, list(args), catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny float32 Llama and its character tokenizer saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-model")
    tok = char_tokenizer()
    tiny_llama(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "mmlux"], "--tasks mmlux: unknown task 'mmlux' (did you mean 'mmlu'?)"),
        (["--tasks", " , "], "--tasks: name at least one task"),
        (["--tasks", "mmlu", "--limit", "0"], "--limit: Input should be greater than 0"),
        (["--tasks", "mmlu", "--variant", "mirror"], "--variant: Input should be 'stock' or 'offline'"),
        (
            ["--tasks", "mmlu", "--variant", "offline", "--num-fewshot", "5"],
            "--tasks mmlu: task 'mmlu' offline runs 0-shot only",
        ),
        (["--tasks", "mmlu", "--batch-size", "0"], "--batch-size: Input should be greater than 0"),
        (["--tasks", "mmlu", "--backend", "tgi"], "--backend: Input should be 'engine', 'hf' or 'vllm'"),
    ],
)
def test_bad_settings_name_the_flag_and_exit_2(args, message, tmp_path):
    code, text = invoke("eval", "some/model", *args, "--results", str(tmp_path))
    assert code == 2 and message in text, text
    assert not (tmp_path / "eval").exists()  # nothing loaded, nothing written


def test_bad_models_name_model_and_the_fix(tmp_path, model_dir):
    (tmp_path / "empty").mkdir()
    run = tmp_path / "exp" / "kto-abc"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "kto-abc", "spec": {}}))
    for model, message in [
        (
            "./no/such/folder",
            "MODEL: './no/such/folder' is no model folder, mirror or hub id; give a run folder",
        ),
        (str(tmp_path / "empty"), "is a folder without config.json"),
        (str(run), "has no trained model"),
        ("not a hub id!", "is no model folder, mirror or hub id"),
    ]:
        code, text = invoke("eval", model, "--tasks", "demo_arith_mc", "--results", str(tmp_path))
        assert code == 2 and message in text, (model, text)
    with pytest.raises(KtoBenchError, match="--dtype 'f8'"):
        resolve_model(str(model_dir), "f8")


def test_a_run_folder_means_its_trained_model(tmp_path, model_dir):
    run = tmp_path / "results" / "exp" / "kto-abc"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "final").symlink_to(model_dir)
    (run / "run.json").write_text(json.dumps({"run_id": "kto-abc", "spec": {"model": {"source": "hub"}}}))
    target = resolve_model(str(run))
    assert target.label == "kto-abc" and target.where == str(model_dir.resolve())
    assert target.model.source == "local" and target.model.dtype == "float32"  # auto: as stored
    assert target.own_model is None
    assert resolve_model(str(model_dir), "bfloat16").model.dtype == "bfloat16"
    hub = resolve_model("org/name", "bfloat16")  # auto would read the hub config (unreachable in tests)
    assert (hub.model.source, hub.where, hub.label) == ("hub", "org/name", "org/name")


def test_eval_writes_a_runs_files_resumes_and_refuses_other_settings(tmp_path, model_dir):
    args = ["eval", str(model_dir), "--tasks", "demo_arith_mc", "--limit", "3", "--batch-size", "2"]
    code, text = invoke(*args, "--results", str(tmp_path))
    assert code == 0, text
    (folder,) = (tmp_path / "eval").iterdir()
    assert folder.name.startswith(f"{model_dir.name}-float32-") and "acc,none" in text
    result = json.loads((folder / "eval" / "demo_arith_mc.json").read_text())
    assert result["metrics"][0]["n"] == 3 and result["settings"]["limit"] == 3
    samples = [
        json.loads(s) for s in (folder / "eval" / "demo_arith_mc.samples.jsonl").read_text().splitlines()
    ]
    assert len(samples) == 3 and all(len(s["loglikelihoods"]) == 4 for s in samples)
    prov = json.loads((folder / "provenance.json").read_text())
    assert {"model_hash", "packages", "git", "hardware", "finished_at"} <= set(prov)
    assert prov["identity"]["dtype"] == "float32" and prov["identity"]["evaluation"]["tasks"][0]["limit"] == 3
    assert json.loads((folder / "status.json").read_text())["stages"]["eval"]["done"]

    before = (folder / "eval" / "demo_arith_mc.json").stat().st_mtime_ns
    assert invoke(*args, "--results", str(tmp_path))[0] == 0  # the same command: kept, not redone
    assert (folder / "eval" / "demo_arith_mc.json").stat().st_mtime_ns == before

    code, text = invoke(*args[:-4], "--limit", "2", "--output", str(folder))
    assert code == 2 and "holds the evaluation of another model or other settings (evaluation differ)" in text


def test_evaluation_spec_is_the_run_eval_stages():
    spec = evaluation_spec("gsm8k_cot, mmlu", variant="offline", limit=5, batch_size=8)
    assert [t.name for t in spec.tasks] == ["gsm8k_cot", "mmlu"] and spec.batch_size == 8
    assert all(t.limit == 5 and t.variant == "offline" and t.num_fewshot is None for t in spec.tasks)


def test_ls_tasks_shows_variants():
    code, text = invoke("ls", "tasks")
    assert code == 0 and "stock (hub), offline (mmlu_test, 0-shot)" in text and "demo" in text

"""Model cards: Hugging Face model-index front matter with the measured results and the run's provenance,
written offline; a push only when asked, refused with the reason when the hub cannot be reached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from kto_bench import card
from kto_bench.cli import app

ROOT = Path(__file__).resolve().parents[1]
RUN = "kto-013fcb0edb"  # a committed demo run (its records, no weights)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    src = ROOT / "results" / "demo" / RUN
    if not src.is_dir():
        pytest.fail(f"the committed demo run {src} is missing")
    # the committed records only: a checkout that ran the demo also has its (git-ignored) weights
    shutil.copytree(
        src, tmp_path / "demo" / RUN, ignore=shutil.ignore_patterns("checkpoints", "*.pt", "*.lock")
    )
    return tmp_path / "demo" / RUN


def invoke(*args: str):
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_card_holds_every_result_and_the_provenance(run_dir: Path) -> None:
    parsed = ModelCard(card.write_card(run_dir).read_text())
    measured = {
        (ev["task"], m["metric"]): m["value"]
        for ev in (json.loads(p.read_text()) for p in (run_dir / "eval").glob("*.json"))
        for m in ev["metrics"]
    }
    assert {(r.dataset_name, r.metric_name): r.metric_value for r in parsed.data.eval_results} == measured
    assert parsed.data.model_name == RUN and "kto" in parsed.data.tags
    prov = json.loads((run_dir / "provenance.json").read_text())
    meta = parsed.data.kto_bench
    assert (meta["run_id"], meta["spec_hash"]) == (RUN, prov["spec_hash"])
    assert (meta["model_hash"], meta["data_fingerprint"]) == (prov["model_hash"], prov["data_fingerprint"])
    assert meta["git"] == prov["git"] and meta["packages"] == prov["packages"] and meta["steps"] == 85
    assert "| demo_arith_gen | demo | exact_match,strict-match | 0.3740 |" in parsed.text


def test_push_needs_weights_and_the_hub(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = str(run_dir.parents[1])
    args = ("card", str(ROOT / "experiments" / "demo.yaml"), "--results", results, "--push", "me/model")
    code, text = invoke(*args, "--only", RUN)
    assert code == 2 and "no trained weights" in text and f"kto-bench run SPEC --only {RUN}" in text
    (run_dir / "checkpoints" / "final").mkdir(parents=True)
    (run_dir / "checkpoints" / "final" / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = invoke(*args, "--only", RUN)
    assert (
        code == 2 and "HF_HUB_OFFLINE is set" in text and "push from a machine that reaches the hub" in text
    )
    assert (run_dir / card.CARD).is_file()  # written offline all the same


def test_push_uploads_the_weights_with_the_card_as_readme(run_dir: Path, monkeypatch) -> None:
    final = run_dir / "checkpoints" / "final"
    final.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (final / name).write_text("{}")
    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, private, exist_ok):
            calls["repo"] = (repo_id, private, exist_ok)

        def create_commit(self, repo_id, operations, commit_message):
            calls["files"] = {op.path_in_repo: Path(op.path_or_fileobj).read_text() for op in operations}
            return type("Info", (), {"commit_url": f"https://hub/{repo_id}/commit/1"})()

    monkeypatch.setattr("kto_bench.hub.unreachable", lambda: None)
    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    assert card.push(run_dir, "me/model", private=True) == "https://hub/me/model/commit/1"
    assert calls["repo"] == ("me/model", True, True)
    assert set(calls["files"]) == {"config.json", "model.safetensors", "tokenizer.json", "README.md"}
    assert calls["files"]["README.md"] == (run_dir / card.CARD).read_text()

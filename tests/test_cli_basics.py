"""The command line's basics: --version, a light `ls`, --set into lists, the --limit smoke run, exit codes."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kto_bench.cli import app
from kto_bench.errors import TrainingError
from kto_bench.spec import expand, load_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "specs" / "tiny.yaml"


def invoke(*args: str):
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_version_is_the_packages() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert invoke("--version") == (0, f"kto-bench {version}")


def test_ls_imports_no_torch() -> None:
    code = (
        "import sys, time; t = time.time(); from kto_bench.cli import app; "
        "app(['ls'], standalone_mode=False); "
        "print('\\nTORCH', 'torch' in sys.modules, 'TIME', round(time.time() - t, 2))"
    )
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "TORCH False" in res.stdout, res.stdout[-500:]
    listed = ("kto", "dpo", "demo_arith", "gsm8k_cot", "headline", "rewards", "table2_gsm8k", "gsm8k_test")
    for name in listed:
        assert name in res.stdout  # every registry is listed
    assert time.time() - t0 < 30  # measured: 2.2 s (pandas for the claims), against 8-9 s with torch


def test_set_indexes_lists() -> None:
    spec = load_spec(TINY, {"evaluation.tasks.1.limit": 3})
    assert [t.limit for t in spec.evaluation.tasks] == [8, 3]
    code, text = invoke("plan", str(TINY), "--set", "evaluation.tasks.2.limit=3")
    assert code == 2 and "--set evaluation.tasks.2.limit: evaluation.tasks is a list of 2" in text
    assert "'2' is not an index from 0 to 1" in text
    code, text = invoke("plan", str(TINY), "--set", "evaluation.tasks.first.limit=3")
    assert code == 2 and "'first' is not an index from 0 to 1" in text
    code, text = invoke("plan", str(TINY), "--set", "training.lr.x=1")
    assert code == 2 and "training.lr is not a mapping or a list" in text


def test_limit_is_a_smoke_run_with_its_own_run_ids(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = {}

    def fake_run_experiment(spec, results, **kw):
        seen["spec"] = spec
        return {}

    def no_report(*a, **kw):
        raise AssertionError("a smoke run renders no report")

    monkeypatch.setattr("kto_bench.runner.run_experiment", fake_run_experiment)
    monkeypatch.setattr("kto_bench.cli._report", no_report)
    code, text = invoke("run", str(TINY), "--limit", "5", "--results", str(tmp_path))
    assert code == 0, text
    smoke = seen["spec"]
    assert smoke.data.limit == 5 and (smoke.training.budget.rule, smoke.training.budget.value) == ("steps", 5)
    assert [t.limit for t in smoke.evaluation.tasks] == [5, 5]
    invoke("run", str(TINY), "--limit", "50", "--results", str(tmp_path))
    assert [t.limit for t in seen["spec"].evaluation.tasks] == [8, 8]  # never raises a limit
    full = {r.run_id for r in expand(load_spec(TINY))}
    assert not full & {r.run_id for r in expand(smoke)}
    code, text = invoke("run", str(TINY), "--limit", "0", "--results", str(tmp_path))
    assert code == 2 and "--limit 0: give a positive number" in text


def test_exit_2_for_user_errors_and_1_for_runtime_failures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, text = invoke("run", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such spec file" in text

    def diverged(*a, **kw):
        raise TrainingError("1 of 1 runs stopped: step 2 of 4: non-finite loss")

    monkeypatch.setattr("kto_bench.runner.run_experiment", diverged)
    code, text = invoke("run", str(TINY), "--results", str(tmp_path))
    assert code == 1 and "non-finite loss" in text and "Traceback" not in text

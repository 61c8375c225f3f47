"""The shipped experiment catalog: every spec validates and plans on CPU; the SmolLM2 spec runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kto_bench.spec import expand, grid_values, load_spec

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SPECS = sorted(EXPERIMENTS.glob("*.yaml"))
PAPER = ["zephyr_ultrafeedback", "zephyr_one_y_per_x", "mistral_oasst", "imbalance_sweep", "flip_sweep",
         "scale_sweep", "smollm2_offline"]  # fmt: skip


def test_catalog_has_the_paper_specs() -> None:
    assert {p.stem for p in SPECS} >= {"demo", *PAPER}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_spec_validates_and_plans_stably(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem, "the spec's name is its file name (nox sessions and results use it)"
    assert spec.description, "say what the experiment reproduces and what it needs"
    runs = expand(spec)
    assert runs
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == len(ids)
    assert [r.run_id for r in expand(load_spec(path))] == ids
    assert all(not r.evaluation.allow_code_execution for r in runs), "code execution is opted into on the CLI"


@pytest.mark.parametrize("name", [n for n in PAPER if n != "smollm2_offline"])
def test_paper_specs_say_they_need_a_gpu_and_the_hub(name: str) -> None:
    spec = load_spec(EXPERIMENTS / f"{name}.yaml")
    assert {"gpu", "hub"} <= set(spec.requires)
    assert spec.model.source == "hub"
    for run in expand(spec):
        assert run.training.precision == "bf16" and run.model.dtype == "bfloat16"
        assert run.training.budget.rule == "epochs" and run.training.budget.value == 1
        assert getattr(run.method, "beta", 0.1) == 0.1


@pytest.mark.parametrize("name", ["zephyr_ultrafeedback", "zephyr_one_y_per_x", "imbalance_sweep"])
def test_zephyr_specs_follow_table_2(name: str) -> None:
    spec = load_spec(EXPERIMENTS / f"{name}.yaml")
    assert spec.model.name == "HuggingFaceH4/mistral-7b-sft-beta"
    assert (spec.data.source, spec.data.split) == ("ultrafeedback_binarized", "train_prefs")
    assert (spec.data.max_length, spec.data.max_prompt_length) == (2048, 1024)
    assert spec.training.lr == 5e-7
    # 4 per process × 1 accumulation × 8 FSDP processes = the paper's 32
    assert spec.training.batch_size * spec.training.grad_accum * 8 == 32
    shots = {t.name: t.num_fewshot for t in spec.evaluation.tasks}
    assert shots["mmlu"] == 0 and shots["gsm8k_cot"] == 8


def test_one_y_per_x_ablation_is_kto_only() -> None:
    spec = load_spec(EXPERIMENTS / "zephyr_one_y_per_x.yaml")
    points = {(r.method.name, r.corruption.one_output_per_prompt) for r in expand(spec)}
    assert points == {("dpo", False), ("kto", False), ("kto", True)}


def test_imbalance_sweep_is_figure_6() -> None:
    spec = load_spec(EXPERIMENTS / "imbalance_sweep.yaml")
    runs = expand(spec)
    kto = sorted(r.corruption.desirable_fraction for r in runs if r.method.type == "kto")
    assert kto == [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
    assert all(r.method.lambda_ratio == pytest.approx(4 / 3) for r in runs if r.method.type == "kto")
    dpo = [r for r in runs if r.method.type == "dpo"]
    assert [(r.corruption.desirable_fraction, r.corruption.dpo_unpaired) for r in dpo] == [(1.0, "full")]
    assert "imbalance_90pct" in spec.report.claims


def test_flip_sweep_matches_methods_at_every_rate() -> None:
    spec = load_spec(EXPERIMENTS / "flip_sweep.yaml")
    runs = expand(spec)
    assert len(runs) == 5 * 2 * 3
    for rate in (0.0, 0.1, 0.2, 0.3, 0.4):
        at = [r for r in runs if r.corruption.flip_rate == rate]
        assert sorted((r.method.type, r.seed) for r in at) == sorted(
            (m, s) for m in ("dpo", "kto") for s in (1, 2, 3)
        )
    assert spec.data.limit and spec.training.batch_size * spec.training.grad_accum == 32


def test_scale_sweep_covers_pythia_with_effective_batch_32() -> None:
    spec = load_spec(EXPERIMENTS / "scale_sweep.yaml")
    runs = expand(spec)
    sizes = {grid_values(spec, r)["model.name"] for r in runs}
    assert sizes == {f"EleutherAI/pythia-{s}" for s in ("1.4b", "2.8b", "6.9b", "12b")}
    for r in runs:
        processes = 1 if r.training.grad_accum == 8 else 8  # small models on one GPU, large with FSDP on 8
        assert r.training.batch_size * r.training.grad_accum * processes == 32


def test_smollm2_spec_is_offline() -> None:
    spec = load_spec(EXPERIMENTS / "smollm2_offline.yaml")
    assert set(spec.requires) == {"gpu", "mirrors"}
    assert (spec.model.source, spec.model.name) == ("mirror", "smollm2_135m_instruct")
    assert spec.data.source == "llamafactory_dpo"
    assert {(t.name, t.variant, t.limit) for t in spec.evaluation.tasks} == {
        ("gsm8k_cot", "offline", None),
        ("mmlu", "offline", None),
        ("humaneval", "offline", None),
    }


# ----------------------------------------------------------------------------- SmolLM2 end to end on CPU


@pytest.fixture(scope="module")
def smollm2_mirror() -> Path:
    """The converted SmolLM2 mirror, when its mirrors are cached (tests download nothing; CI leaves the 89 MB
    SmolLM2 wheel out: see .ci/run)."""
    from kto_bench.assets import cached_path, convert_smollm2

    names = ("smollm2_135m_instruct_gguf", "llamafactory_dpo_en_demo", "gsm8k_test", "mmlu_test", "humaneval")
    missing = [n for n in names if cached_path(n) is None]
    if missing:
        pytest.skip(f"offline mirrors not cached; run `kto-bench assets fetch {' '.join(missing)}`")
    return convert_smollm2()  # once: de-quantizes the cached GGUF


SMALL = {
    "requires": ["mirrors"],  # a CPU slice of a GPU spec: the mirrors are still checked up front
    "training.budget": {"rule": "steps", "value": 2},
    "training.batch_size": 2,
    "training.precision": "fp32",
    "training.checkpoint_every": 1,
    "model.dtype": "float32",
    "data.limit": 8,
    "data.max_length": 256,
    "data.max_prompt_length": 128,
    "evaluation.batch_size": 4,
    "evaluation.evaluate_base": False,
    "evaluation.tasks": [
        {"name": "gsm8k_cot", "variant": "offline", "num_fewshot": 1, "limit": 2, "max_new_tokens": 16},
        {"name": "mmlu", "variant": "offline", "num_fewshot": 0, "limit": 1},  # one item of each subject
        {"name": "humaneval", "variant": "offline", "num_fewshot": 0, "limit": 2, "max_new_tokens": 16},
    ],
    "seeds": [1],
}


@pytest.mark.slow
def test_smollm2_offline_runs_end_to_end_on_cpu(smollm2_mirror: Path, tmp_path: Path) -> None:
    from kto_bench.runner import run_experiment

    spec = load_spec(EXPERIMENTS / "smollm2_offline.yaml", SMALL)
    runs = {r.method.type: r for r in expand(spec)}
    assert set(runs) == {"kto", "dpo"}
    for method in ("kto", "dpo"):
        run_id = runs[method].run_id
        ran = run_experiment(spec, tmp_path, only=run_id)
        assert ran == {run_id: ["data", "reference", "train", "eval", "done"]}
        folder = tmp_path / spec.name / run_id
        status = json.loads((folder / "status.json").read_text())
        assert all(status["stages"][s]["done"] for s in ("data", "reference", "train", "eval", "done"))
        summary = json.loads((folder / "train_summary.json").read_text())
        assert summary["steps"] == 2
        report = json.loads((folder / "data_report.json").read_text())
        if method == "kto":  # the pairs were unpaired: one desirable and one undesirable example each
            assert report["counts"]["desirable"] == report["counts"]["undesirable"] > 0
        else:
            assert report["counts"]["pairs"] > 0
        for task, n in (("gsm8k_cot", 2), ("mmlu", 57)):
            result = json.loads((folder / "eval" / f"{task}.json").read_text())
            assert result["variant"] == "offline" and result["metrics"]
            assert all(m["n"] == n for m in result["metrics"])
        humaneval = json.loads((folder / "eval" / "humaneval.json").read_text())
        assert humaneval["status"] == "skipped"  # code execution is opt-in
        assert run_experiment(spec, tmp_path, only=run_id) == {run_id: []}  # resumes as done


def test_nox_has_one_session_per_experiment() -> None:
    import subprocess
    import sys

    pytest.importorskip("nox")
    root = EXPERIMENTS.parent
    listing = subprocess.run(
        [sys.executable, "-m", "nox", "-l", "-f", str(root / "noxfile.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout
    for path in SPECS:
        assert f"experiment({path.stem})" in listing
    assert "* tests" in listing and "* lint" in listing  # the default sessions

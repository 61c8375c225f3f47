"""Scale-out: what a submission sends to each array task, the executors' settings, the accelerate configs.
A real cluster runs the job array end to end in tests/test_slurm.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from kto_bench import scaleout
from kto_bench.errors import KtoBenchError
from kto_bench.spec import expand, load_spec

submitit = pytest.importorskip("submitit")

TINY = Path(__file__).resolve().parent / "fixtures" / "specs" / "tiny.yaml"


def _run_ids(overrides: dict | None = None) -> list[str]:
    return [r.run_id for r in expand(load_spec(TINY, overrides))]


def test_debug_executor_submits_one_task_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run_task(spec_path, results_root, run_id, overrides, stop_after, allow_code_execution):
        calls.append(
            (Path(spec_path), Path(results_root), run_id, overrides, stop_after, allow_code_execution)
        )
        return {run_id: ["done"]}

    monkeypatch.setattr(scaleout, "run_task", fake_run_task)
    run_ids = _run_ids()
    jobs = scaleout.submit(
        TINY,
        run_ids,
        tmp_path / "r",
        executor="debug",
        folder=tmp_path / "s",
        overrides=None,
        stop_after="train",
        allow_code_execution=True,
        return_jobs=True,
    )
    assert [job.result() for job in jobs] == [{rid: ["done"]} for rid in run_ids]
    assert [c[2] for c in calls] == run_ids
    assert {(c[0], c[1], c[4], c[5]) for c in calls} == {(TINY, (tmp_path / "r").resolve(), "train", True)}


def test_submit_rejects_unknown_run_ids_and_executors(tmp_path: Path) -> None:
    with pytest.raises(KtoBenchError, match="not runs of"):
        scaleout.submit(TINY, ["kto-0000000000"], tmp_path, executor="debug", folder=tmp_path)
    with pytest.raises(KtoBenchError, match="choose one of"):
        scaleout.submit(TINY, _run_ids()[:1], tmp_path, executor="kubernetes", folder=tmp_path)


def test_slurm_executor_settings_reach_the_sbatch_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # only this folder: no srun, then a fake one
    with pytest.raises(KtoBenchError, match="SLURM login node"):
        scaleout.make_executor("slurm", tmp_path, partition=None, gpus_per_node=1, timeout_min=5)
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)  # submitit looks for srun to decide it is on a cluster
    ex = scaleout.make_executor(
        "slurm",
        tmp_path,
        partition="gpu",
        gpus_per_node=8,
        timeout_min=90,
        extra={"slurm_account": "lab", "slurm_array_parallelism": 4},
    )
    sbatch = ex._executor._make_submission_file_text("python -m task", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=8", "--time=90", "--account=lab", "--ntasks-per-node=1"):
        assert f"#SBATCH {line}" in sbatch
    with pytest.raises(KtoBenchError, match="rejects"):
        scaleout.make_executor(
            "slurm",
            tmp_path,
            partition=None,
            gpus_per_node=1,
            timeout_min=5,
            extra={"slurm_not_a_setting": 1},
        )


def test_run_task_runs_exactly_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kto_bench.runner as runner

    seen = {}

    def fake_run_experiment(spec, results_root, *, only, stop_after, allow_code_execution):
        seen.update(name=spec.name, root=results_root, only=only, stop_after=stop_after)
        return {only: []}

    monkeypatch.setattr(runner, "run_experiment", fake_run_experiment)
    rid = _run_ids()[1]
    assert scaleout.run_task(str(TINY), str(tmp_path), rid) == {rid: []}
    assert seen == {"name": "tiny", "root": tmp_path, "only": rid, "stop_after": "done"}


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def test_accelerate_configs_load_with_accelerate() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    ddp = load_config_from_file(str(CONFIGS / "ddp.yaml"))
    assert (ddp.distributed_type.value, ddp.mixed_precision) == ("MULTI_GPU", "bf16")
    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml"))
    assert (fsdp.distributed_type.value, fsdp.mixed_precision) == ("FSDP", "bf16")
    assert fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    cpu = load_config_from_file(str(CONFIGS / "cpu_2proc.yaml"))
    assert cpu.num_processes == 2 and cpu.mixed_precision == "no"

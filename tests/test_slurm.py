"""A real single-node SLURM cluster (Debian's slurmctld, slurmd, munge; started by .ci/slurm-cluster):
`kto-bench run --executor slurm` submits a job array whose tasks write the shared results store, and a task
killed mid-training by `scancel` resumes on resubmission without redoing its finished stages.

Needs root and the Debian packages (.ci/run installs them): skipped without them (failed in CI)."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kto_bench.spec import expand, load_spec
from tests.prereq import missing

pytest.importorskip("submitit")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "specs" / "tiny.yaml"
CLUSTER = ROOT / ".ci" / "slurm-cluster"
DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")


@pytest.fixture
def slurm(tmp_path: Path):
    """A running cluster; yields the environment its clients (and `kto-bench`) need. Torn down after."""
    absent = [b for b in DAEMONS if shutil.which(b) is None]
    why = f"no {', '.join(absent)}" if absent else "not root" if os.geteuid() != 0 else None
    if why:
        missing(f"no SLURM cluster here ({why}): apt-get install slurmctld slurmd munge, as root")
    folder = tmp_path / "cluster"
    start = subprocess.run([str(CLUSTER), "start", str(folder)], capture_output=True, text=True)
    if start.returncode != 0:  # the script prints the daemons' logs
        subprocess.run([str(CLUSTER), "stop", str(folder)])
        pytest.fail(f"the SLURM cluster did not start:\n{start.stdout}{start.stderr}")
    try:
        yield {
            **os.environ,
            "SLURM_CONF": str(folder / "slurm.conf"),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",
        }
    finally:
        subprocess.run([str(CLUSTER), "stop", str(folder)], check=True)


def submit(env: dict, cwd: Path, args: list[str]) -> list[str]:
    """`kto-bench run ... --executor slurm`; returns the job ids (an array's: `<array>_<index>`)."""
    cmd = [sys.executable, "-m", "kto_bench", "run", str(TINY), "--executor", "slurm", "--gpus", "0"]
    res = subprocess.run(
        [*cmd, "--timeout-min", "10", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return re.search(r"slurm jobs: ([\d_, ]+);", res.stdout)[1].split(", ")


def wait_until(what: str, ok, env: dict, logs: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ok():
        if time.time() > deadline:
            tails = [f"{p.name}:\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*_log.*"))]
            queue = subprocess.run(["squeue"], env=env, capture_output=True, text=True).stdout
            pytest.fail(f"timed out waiting for {what}\n{queue}\n" + "\n".join(tails))
        time.sleep(0.5)


def queue_empty(env: dict, array: str) -> bool:
    res = subprocess.run(["squeue", "-h", "-j", array], env=env, capture_output=True, text=True)
    return res.returncode == 0 and not res.stdout.strip()


def show_jobs(env: dict, job: str) -> list[dict[str, str]]:
    """`scontrol show job` (slurmctld's memory: no accounting database needed), one dict per job/task."""
    res = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True)
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in res.stdout.splitlines()]


def job_state(env: dict, job: str) -> str:
    (fields,) = show_jobs(env, job)
    return fields["JobState"]


def array_states(env: dict, array: str) -> dict[str, str]:
    """{'<array>_<index>': state} of every task of a job array."""
    return {f"{f['ArrayJobId']}_{f['ArrayTaskId']}": f["JobState"] for f in show_jobs(env, array)}


def task_result(logs: Path, task: str):
    """What the task's function returned ({run_id: stages it ran}), from submitit's result file."""
    outcome, value = pickle.loads((logs / f"{task}_0_result.pkl").read_bytes())  # task 0 of the job step
    assert outcome == "success", value
    return value


@pytest.mark.slow
def test_job_array_runs_into_the_store_and_a_cancelled_task_resumes(slurm: dict, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"  # fixed pairs: the tiny world's model, data independent of sampling
    pairs.write_text("".join(
        json.dumps({"prompt": f"Compute {a}+{a + 3}.", "chosen": f"The answer is {2 * a + 3}.",
                    "rejected": f"The answer is {2 * a + 4}."}) + "\n" for a in range(1, 25)))  # fmt: skip
    sets = {"evaluation.evaluate_base": "false", "data.source": "local_pairs", "data.path": str(pairs)}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    kto = [r.run_id for r in expand(load_spec(TINY, sets)) if r.run_id.startswith("kto-")]
    assert len(kto) == 2
    results, logs = tmp_path / "results", tmp_path / "results" / "_submitit"
    store = {rid: results / "tiny" / rid for rid in kto}

    def stages(rid: str) -> dict:
        path = store[rid] / "status.json"
        return json.loads(path.read_text())["stages"] if path.exists() else {}

    def steps(rid: str) -> list[int]:
        path = store[rid] / "metrics.jsonl"
        return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []

    # 1. one run (a single job), hanging after training step 3 (checkpoint at step 2), cancelled by scancel
    hang = {**slurm, "KTO_BENCH_FAULT": "hang:train:step:3"}
    (first,) = submit(hang, tmp_path, [*args, "--only", kto[0], "--results", str(results)])
    wait_until("training step 3", lambda: 3 in steps(kto[0]), slurm, logs)
    subprocess.run(["scancel", first], env=slurm, check=True)
    wait_until("the cancelled job to end", lambda: queue_empty(slurm, first), slurm, logs)
    assert job_state(slurm, first) == "CANCELLED"
    before = stages(kto[0])
    assert set(before) == {"data", "reference"}  # train was cut short: not marked done
    assert (store[kto[0]] / "checkpoints" / "last.pt").exists()

    # 2. both runs as one job array: the cancelled one resumes from its checkpoint, the other runs whole
    tasks = submit(slurm, tmp_path, [*args, "--only", "kto-*", "--results", str(results)])
    array = tasks[0].split("_")[0]
    assert tasks == [f"{array}_0", f"{array}_1"]
    wait_until("the array to finish", lambda: queue_empty(slurm, array), slurm, logs)
    assert array_states(slurm, array) == {t: "COMPLETED" for t in tasks}
    assert task_result(logs, tasks[0]) == {kto[0]: ["train", "eval", "done"]}
    assert task_result(logs, tasks[1]) == {kto[1]: ["data", "reference", "train", "eval", "done"]}
    after = stages(kto[0])
    assert {s: after[s] for s in before} == before  # data and reference kept, not redone
    assert steps(kto[0]) == steps(kto[1]) == [1, 2, 3, 4, 5, 6]  # resumed at step 3, nothing logged twice
    for rid in kto:
        assert stages(rid)["done"]["done"]
        assert f"name: {rid}" in (store[rid] / "model_card.md").read_text()  # model-index, written offline
        assert sorted(p.name for p in (store[rid] / "eval").glob("*.json")) == [
            "demo_arith_gen.json",
            "demo_arith_mc.json",
        ]

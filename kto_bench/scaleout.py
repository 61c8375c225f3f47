"""Scale-out: submit an experiment's runs as one job array (SLURM through submitit, or locally).

Each array task runs `run_experiment(load_spec(spec_path, overrides), results_root, only=run_id)` for one
run, so every result lands in the same results store as a local `kto-bench run` would write it; the
per-run file lock in the store means two tasks (or a task and a local process) never do the same run
twice, and a resubmitted array resumes each run from its last completed stage.

Executors: "slurm" (a SLURM job array; `partition`, `gpus_per_node`, `timeout_min`, plus any other
submitit parameter in `extra`, e.g. {"slurm_account": "...", "mem_gb": 64, "cpus_per_task": 8,
"slurm_array_parallelism": 4}), "local" (submitit's LocalExecutor: subprocesses on this machine) and
"debug" (submitit's DebugExecutor: in this process, when the result is requested).

Each task is one process: it uses one GPU. Runs that need several GPUs (7B full fine-tunes with FSDP)
are launched with `accelerate launch` instead; see docs/SCALE_OUT.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from kto_bench.errors import KtoBenchError

Executor = Literal["slurm", "local", "debug"]
EXECUTORS: tuple[str, ...] = ("slurm", "local", "debug")


def run_task(
    spec_path: str,
    results_root: str,
    run_id: str,
    overrides: dict[str, Any] | None = None,
    stop_after: str = "done",
    allow_code_execution: bool = False,
) -> dict[str, list[str]]:
    """One array task: run (or resume) exactly one run of the experiment; returns {run_id: stages run}."""
    from kto_bench.runner import run_experiment
    from kto_bench.spec import load_spec

    spec = load_spec(spec_path, overrides)
    return run_experiment(
        spec,
        Path(results_root),
        only=run_id,
        stop_after=stop_after,
        allow_code_execution=allow_code_execution,
    )


def _submitit():
    try:
        import submitit
    except ImportError:
        raise KtoBenchError(
            "scale-out needs submitit: pip install 'kto-bench[slurm]' (or pip install submitit)"
        ) from None
    return submitit


def make_executor(
    executor: str,
    folder: Path,
    *,
    partition: str | None,
    gpus_per_node: int,
    timeout_min: int,
    extra: dict[str, Any] | None = None,
):
    """A submitit AutoExecutor for `executor` with the shared settings applied."""
    if executor not in EXECUTORS:
        raise KtoBenchError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if gpus_per_node < 0 or timeout_min <= 0:
        raise KtoBenchError(
            f"gpus_per_node must be ≥ 0 and timeout_min > 0 (got {gpus_per_node}, {timeout_min})"
        )
    submitit = _submitit()
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=executor)
    except RuntimeError as e:  # e.g. no `srun` on PATH
        raise KtoBenchError(
            f"executor {executor!r} is not available here ({e}); submit from a SLURM login "
            "node, or use --executor local"
        ) from None
    params: dict[str, Any] = {"timeout_min": timeout_min, "name": "kto-bench"}
    if executor != "debug":
        params |= {"gpus_per_node": gpus_per_node, "tasks_per_node": 1, "nodes": 1}
    if executor == "slurm" and partition:
        params["slurm_partition"] = partition
    params |= extra or {}
    try:
        ex.update_parameters(**params)
    except (NameError, ValueError, AssertionError) as e:  # submitit's ways of rejecting a parameter
        raise KtoBenchError(f"executor {executor!r} rejects its parameters: {e}") from None
    return ex


def submit(
    spec_path: Path,
    run_ids: list[str],
    results_root: Path,
    *,
    executor: str = "slurm",
    partition: str | None = None,
    gpus_per_node: int = 1,
    timeout_min: int = 24 * 60,
    folder: Path = Path("results/_submitit"),
    extra: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    stop_after: str = "done",
    allow_code_execution: bool = False,
    return_jobs: bool = False,
) -> list:
    """Submit one array task per run id (exact ids, as `kto-bench plan` lists them); returns job ids.

    `overrides` are the `--set` values, applied by every task exactly as on the command line, so the
    tasks expand the same run ids. With `return_jobs` the submitit Job objects are returned instead
    (to wait on them: `job.result()`).
    """
    from kto_bench.spec import expand, load_spec

    spec_path, results_root = Path(spec_path).resolve(), Path(results_root).resolve()
    known = {r.run_id for r in expand(load_spec(spec_path, overrides))}
    unknown = [r for r in run_ids if r not in known]
    if unknown:
        raise KtoBenchError(
            f"run ids {unknown} are not runs of {spec_path}; see `kto-bench plan {spec_path}`"
        )
    if not run_ids:
        raise KtoBenchError("no runs to submit")
    ex = make_executor(
        executor,
        Path(folder),
        partition=partition,
        gpus_per_node=gpus_per_node,
        timeout_min=timeout_min,
        extra=extra,
    )
    with ex.batch():  # one array job on SLURM
        jobs = [
            ex.submit(
                run_task,
                str(spec_path),
                str(results_root),
                run_id,
                overrides,
                stop_after,
                allow_code_execution,
            )
            for run_id in run_ids
        ]
    return jobs if return_jobs else [job.job_id for job in jobs]

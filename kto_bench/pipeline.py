"""The stages of one run: data → reference → train → eval → done.

Each stage writes its outputs first and marks itself done in status.json last, so a killed run resumes
from its last completed stage (training resumes from its last checkpoint). Which runs, their locks,
resuming and the processes of a launch are `kto_bench.runner`'s: it calls these stages in `store.STAGES`
order. Under a multi-process launch every process runs stage_train; the main one runs the others.

Over 400 lines because each stage is here with its helpers (the reference fill, the rewards file,
evaluating a stored model).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from kto_bench import models, tracking
from kto_bench.card import write_card
from kto_bench.data import sources
from kto_bench.data.tokenize import TokenizedData, tokenize_views
from kto_bench.data.transforms import corrupt
from kto_bench.errors import StoreError, TrainingError
from kto_bench.io import atomic_write_text, read_torch, stable_hash, write_jsonl
from kto_bench.progress import progress
from kto_bench.scoring import use_attention
from kto_bench.spec import ExperimentSpec, ModelSpec, RunSpec
from kto_bench.store import (
    RunStore,
    append_jsonl,
    base_provenance,
    fault_point,
    now,
    read_store_json,
    save_torch,
    unreadable,
    write_json,
)
from kto_bench.train.refcache import ReferenceCache, fill

console = Console(stderr=True)


def device() -> torch.device:
    """This process's device (the local rank's GPU under a multi-process launch: `runner.processes`)."""
    from kto_bench.runner import processes

    return processes().device


@functools.lru_cache(maxsize=8)
def _source(name: str, path, split, limit, revision, on_bad_row) -> sources.SourceData:
    return sources.load(name, path=path, split=split, limit=limit, revision=revision, on_bad_row=on_bad_row)


@functools.lru_cache(maxsize=4)
def _resolved(model_json: str) -> tuple[str, str]:
    """(where the weights are, their hash) for a model spec, computed once per process."""
    spec = ModelSpec.model_validate_json(model_json)
    where = models.resolve(spec)
    return where, models.model_hash(where, spec)


def resolved(run: RunSpec) -> tuple[str, str]:
    return _resolved(run.model.model_dump_json())


def source_of(run: RunSpec) -> sources.SourceData:
    """The run's source data (once per process); a source whose data is its model's own (the demo's
    feedback: its model's world's) reads the path the source derives from the model."""
    d = run.data
    path = sources.source(d.source).path_for(run.model) or d.path
    return _source(d.source, path, d.split, d.limit, d.revision, d.on_bad_row)


def run_identity(run: RunSpec, world_size: int) -> dict:
    """Everything outside the run spec that makes a run's results what they are. A finished run is reused
    only when this equals what it recorded (`provenance.json` "identity"); the spec itself is in the run id.

    The data it trains on is a pure function of the source's content (file sha256, hub commit, the model
    source's own identity such as the demo world's hash: `source_info`, `models.source_identity`), the spec
    (in the run id) and the tokenizer (in the model hash). Every run records "demo_world_hash" (None
    unless its model source gives one): finished runs compare equal only with the same keys."""
    from kto_bench.train import precision

    t = run.training
    _, mhash = resolved(run)
    own = models.source_identity(run.model)
    source = dict(source_of(run).source_info)
    if own or "file_sha256" in source:  # content-identified: where this machine keeps it does not matter
        source.pop("path", None)
    return {
        "model_hash": mhash,
        "model_commit": models.revision(run.model),
        "demo_world_hash": None,
        **own,
        "data_source": source,
        "world_size": world_size,
        "effective_batch": t.batch_size * t.grad_accum * world_size,
        "precision": precision.semantics(run),
    }


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
        return TokenizedData.from_state(read_torch(path, trusted=True))
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
    from kto_bench.runner import processes

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
            append_jsonl(metrics_path, {"step": step, **metrics})
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
        _write_rewards(ctx.module, data, cache, run, hyper, store, tok.pad_token_id, acc)
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
        state = read_torch(checkpoint, trusted=True, mmap=True) if checkpoint.exists() else {}
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
    atomic_write_text(path, "".join(ln + "\n" for ln in lines))
    return last


@torch.no_grad()
def _write_rewards(
    policy,
    data: TokenizedData,
    cache: ReferenceCache,
    run: RunSpec,
    hyper: dict,
    store: RunStore,
    pad_id: int,
    acc,
    limit: int = 2000,
) -> None:
    """β·r of the final policy on (up to `limit`) training examples, for the reward-distribution plot.

    The rewards are the method's loss's own (`LossResult`), called with the hyperparameters it trained
    with: each example is its own batch row (a pair method sees it as both chosen and rejected).
    `policy` is the prepared LogProbs module of the loop: every process calls this, the main one writes."""
    from kto_bench.methods import call_loss
    from kto_bench.scoring import collate

    items = data.binary[:limit]
    rows = []
    policy.eval()
    for start in range(0, len(items), 64):
        chunk = items[start : start + 64]
        seqs = [data.sequences[s] for s, _ in chunk]
        logps, lengths = policy(**collate(seqs, pad_id, acc.device))
        logps, lengths, ref = logps.float().cpu(), lengths.cpu(), cache.lookup(seqs)
        desirable = torch.tensor([bool(d) for _, d in chunk])
        as_one_view = {"policy_logps": logps, "reference_logps": ref, "lengths": lengths}
        as_one_view |= {"desirable": desirable, "kl_policy_logps": logps, "kl_reference_logps": ref}
        for side in ("chosen", "rejected"):
            as_one_view |= {f"{side}_{k}": v for k, v in (("policy_logps", logps), ("reference_logps", ref))}
            as_one_view[f"{side}_lengths"] = lengths
        result = call_loss(run.method.type, as_one_view, **hyper)
        rewards = result.rewards if result.chosen_rewards is None else result.chosen_rewards
        for (s, desirable), r in zip(chunk, rewards.tolist(), strict=True):
            rows.append({"seq": s, "desirable": bool(desirable), "reward": r})
    if acc.is_main_process:
        write_jsonl(store.file("rewards.jsonl"), rows, sort_keys=True)


def stage_eval(run: RunSpec, store: RunStore, allow_code_execution: bool) -> None:
    from kto_bench.eval.run import run_evaluation

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
        data_files=models.task_data(run.model),
    )
    fault_point("eval")
    store.mark_done("eval")


def stage_done(store: RunStore) -> None:
    """The last stage: the finish time, the model card (offline, from the records just written)."""
    store.update_provenance(finished_at=now())
    write_card(store.path)
    store.mark_done("done")


def eval_key(prefix: str, model_hash: str, evaluation) -> str:
    """The folder name of one model's evaluation: its weights and the evaluation settings."""
    return f"{prefix}-{model_hash[:10]}-{stable_hash(evaluation.model_dump(mode='json'), 6)}"


def evaluate_stored(
    store: RunStore,
    record: dict,
    model: ModelSpec,
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
        from kto_bench.eval.run import result_key

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
    from kto_bench.eval.run import run_evaluation

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


def __getattr__(name: str):
    """`run_one` and `run_experiment` live in kto_bench.runner (which imports this module): still
    importable from here for callers that name them so."""
    if name in ("run_one", "run_experiment"):
        from kto_bench import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

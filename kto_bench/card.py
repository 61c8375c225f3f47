"""Model cards: one per trained model, written offline into its run folder (`model_card.md`) when the run is
done, from the run's own records. The YAML front matter is Hugging Face's (huggingface_hub's ModelCardData):
`model-index` with every measured result, plus the run's provenance under `kto_bench`; the body says what
was trained, how, what it scored and how to reproduce it. `push` uploads the final weights with the card as
README.md to a hub repo, only when asked (`kto-bench card SPEC --push ORG/NAME`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kto_bench.errors import KtoBenchError
from kto_bench.store import read_store_json

CARD = "model_card.md"


def task_type(task: str) -> str:
    """The model-index task type of a task's results (the registry's `card_type`; text-generation else)."""
    from kto_bench.eval.tasks import TASKS

    return TASKS.get(task).card_type if task in TASKS else "text-generation"


def _records(run_dir: Path) -> dict[str, Any]:
    read = lambda name: read_store_json(run_dir / name, {})  # noqa: E731
    evals = [read_store_json(p) for p in sorted((run_dir / "eval").glob("*.json"))]
    return {
        "run": read("run.json"),
        "prov": read("provenance.json"),
        "summary": read("train_summary.json"),
        "data": read("data_report.json"),
        "evals": evals,
    }


def _eval_results(evals: list[dict]) -> list:
    from huggingface_hub import EvalResult

    results = []
    for ev in evals:
        if ev.get("status", "done") != "done":
            continue
        settings, harness = ev.get("settings", {}), ev.get("harness", {})
        mirror = " (offline mirror)" if ev.get("variant") == "offline" else ""
        for m in ev.get("metrics", []):
            results.append(
                EvalResult(
                    task_type=task_type(ev["task"]),
                    dataset_type=harness.get("lm_eval_task", ev["task"]),
                    dataset_name=f"{ev['task']}{mirror}",
                    dataset_args={"num_few_shot": settings.get("num_fewshot")},
                    metric_type=m["metric"].split(",")[0],
                    metric_name=m["metric"],
                    metric_value=m["value"],
                )
            )
    return results


def model_card(run_dir: Path) -> str:
    """The card of the run in `run_dir` (front matter + Markdown), from its records only."""
    from huggingface_hub import ModelCard, ModelCardData

    r = _records(run_dir)
    run, prov, summary, data, evals = r["run"], r["prov"], r["summary"], r["data"], r["evals"]
    if not run:
        raise KtoBenchError(
            f"{run_dir}: no run.json, not a run folder; give a folder under results/<experiment>/"
        )
    spec = run["spec"]
    model, method, training = spec["model"], spec["method"], spec["training"]
    source = data.get("source", {})
    identity = prov.get("identity", {})
    provenance = {
        "run_id": run["run_id"],
        "experiment": run["experiment"],
        "spec_hash": run["spec_hash"],
        "method": method,
        "seed": run["seed"],
        "grid": run.get("grid", {}),
        "base_model": {k: model.get(k) for k in ("source", "name", "revision", "dtype")},
        "model_hash": prov.get("model_hash"),
        "model_commit": identity.get("model_commit"),
        "demo_world_hash": identity.get("demo_world_hash"),
        "data_source": source,
        "data_fingerprint": prov.get("data_fingerprint"),
        "steps": summary.get("steps"),
        "tokens": summary.get("tokens"),
        "world_size": summary.get("world_size"),
        "precision": summary.get("precision", {}).get("mode"),
        "git": prov.get("git"),
        "packages": prov.get("packages"),
        "hardware": prov.get("hardware"),
        "started_at": prov.get("started_at"),
        "finished_at": prov.get("finished_at"),
    }
    card_data = ModelCardData(
        model_name=run["run_id"],
        base_model=model["name"] if model["source"] == "hub" else None,
        datasets=[source["hub_id"]] if source.get("hub_id") else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["kto-bench", method["type"], "preference-alignment"],
        eval_results=_eval_results(evals) or None,
        kto_bench=provenance,
    )
    rows = [
        f"| {ev['task']} | {ev.get('variant', '')} | {m['metric']} | {m['value']:.4f} | "
        f"{m.get('stderr') or 0:.4f} | {m.get('n', '')} |"
        for ev in evals
        if ev.get("status", "done") == "done"
        for m in ev.get("metrics", [])
    ]
    skipped = [
        f"- {ev['task']}: {ev.get('message', ev.get('status'))}"
        for ev in evals
        if ev.get("status", "done") != "done"
    ]
    hyper = ", ".join(f"{k}={v}" for k, v in method.items() if k not in ("type", "label") and v is not None)
    budget = training["budget"]
    git = prov.get("git") or {}
    body = [
        f"# {run['run_id']}",
        "",
        f"A {method['type'].upper()} fine-tune of `{model['name']}` ({model['source']}), run `{run['run_id']}` "
        f"of the kto-bench experiment `{run['experiment']}` (spec hash `{run['spec_hash']}`, seed {run['seed']}"
        + (", " + ", ".join(f"{k}={v}" for k, v in run.get("grid", {}).items()) if run.get("grid") else "")
        + ").",
        "",
        "## Training",
        "",
        f"- method: {method['type']} ({hyper})",
        f"- data: {source.get('source', spec['data']['source'])}: "
        + ", ".join(f"{n} {k}" for k, n in data.get("counts", {}).items()),
        "- corruption: " + ", ".join(f"{k}={v}" for k, v in spec["corruption"].items() if v is not None),
        f"- lr {training['lr']}, batch {training['batch_size']} × grad_accum {training['grad_accum']} × "
        f"{summary.get('world_size', 1)} processes, budget {budget['value']} {budget['rule']}: "
        f"{summary.get('steps')} optimizer steps, {summary.get('tokens')} tokens, precision "
        f"{training['precision']}",
        "",
        "## Results",
        "",
        "| task | variant | metric | value | stderr | n |",
        "|---|---|---|---|---|---|",
        *(rows or ["| (none) | | | | | |"]),
        *(["", "Not measured:", *skipped] if skipped else []),
        "",
        "## Provenance",
        "",
        f"- base model hash `{prov.get('model_hash')}`, data fingerprint `{prov.get('data_fingerprint')}`"
        + (f", demo world `{identity['demo_world_hash'][:16]}…`" if identity.get("demo_world_hash") else ""),
        f"- git commit `{git.get('commit')}`{' (dirty tree)' if git.get('dirty') else ''}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in (prov.get('packages') or {}).items())}",
        f"- trained {prov.get('started_at')} to {prov.get('finished_at')}",
        "",
        f"Reproduce: `kto-bench run SPEC --only {run['run_id']}` with the spec of experiment "
        f"`{run['experiment']}` (the same run id on every machine); every value above is in the run folder's "
        "run.json and provenance.json.",
        "",
    ]
    template = "---\n{{ card_data }}\n---\n\n" + "\n".join(body)
    return str(ModelCard.from_template(card_data, template_str=template))


def write_card(run_dir: Path) -> Path:
    from kto_bench.io import atomic_write_text

    path = run_dir / CARD
    atomic_write_text(path, model_card(run_dir))
    return path


def push(run_dir: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload `checkpoints/final` with the card as README.md to the hub repo `repo_id`; returns its URL."""
    from kto_bench import hub

    final = run_dir / "checkpoints" / "final"
    if not (final / "config.json").is_file():
        raise KtoBenchError(
            f"{run_dir.name}: no trained weights in {final} (checkpoints are not in git); train it here "
            f"first: kto-bench run SPEC --only {run_dir.name}"
        )
    if problem := hub.unreachable():
        raise KtoBenchError(
            f"cannot push {run_dir.name} to {repo_id}: {problem}. The card is written offline "
            f"({run_dir / CARD}); push from a machine that reaches the hub"
        )
    from huggingface_hub import CommitOperationAdd, HfApi

    card = write_card(run_dir)
    files = [
        CommitOperationAdd(p.relative_to(final).as_posix(), str(p))
        for p in sorted(final.rglob("*"))
        if p.is_file()
    ]
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(
            repo_id,
            [*files, CommitOperationAdd("README.md", str(card))],
            commit_message=f"kto-bench run {run_dir.name}",
        )
    except Exception as e:  # auth, network, a repo id the hub refuses: say which and how to fix it
        raise KtoBenchError(
            f"pushing {run_dir.name} to {repo_id} failed ({type(e).__name__}: {e}); log in with "
            "`hf auth login` or set HF_TOKEN to a token with write access, and check the repo id"
        ) from None
    return info.commit_url

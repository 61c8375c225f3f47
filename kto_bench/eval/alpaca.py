"""AlpacaEval: generate outputs for its instructions, annotate them pairwise against reference outputs.

Generation (greedy, settings recorded) and annotation are separate steps; annotations are cached on
disk keyed by (judge id, instruction, both outputs as presented), so a rerun never re-judges.

Judges:
  * "api":   alpaca-eval's own annotators (needs OPENAI_API_KEY in the environment and the optional
             `alpaca-eval` package); gives the length-controlled win rate when alpaca-eval can fit it.
  * "local": any causal LM, scored by the log-probabilities of the two verdict tokens ("m" / "M") in
             alpaca-eval's pairwise prompt; the model's output is shown first or second at random
             (seeded per item) to cancel position bias, and the order is recorded per item.
The length-controlled win rate needs alpaca-eval's GLM on its own annotations; the local judge
cannot give it, and the result says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kto_bench.errors import EvalError
from kto_bench.io import atomic_write_json, atomic_write_text

TASK = "alpaca_eval"
DEFAULT_MAX_NEW_TOKENS = 512
VERDICTS = ("m", "M")  # alpaca-eval's model identifiers: first and second output
HUB_REPO, HUB_FILE = "tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json"

JUDGE_TEMPLATE = """\
I require a leaderboard for various large language models. I'll provide you with prompts given to \
these models and their corresponding outputs. Your task is to assess these responses, and select the \
model that produces the best output from a human perspective.

## Instruction

{{
    "instruction": {instruction},
}}

## Model Outputs

Here are the unordered outputs from the models. Each output is associated with a specific model, \
identified by a unique model identifier.

{{
    {{
        "model_identifier": "m",
        "output": {output_m}
    }},
    {{
        "model_identifier": "M",
        "output": {output_M}
    }}
}}

## Task

Evaluate the models on the basis of the quality and relevance of their results, and select the model \
that generated the best output. Answer by providing the model identifier of the best model. We will \
use your output as the name of the best model, so make sure your output only contains one of the \
following model identifiers and nothing else (no quotes, no spaces, no new lines, ...): m or M.

## Best Model Identifier
"""


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
        rows = json.loads(Path(path).read_text())
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

        rows = json.loads(Path(hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset")).read_text())
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


# ----------------------------------------------------------------------------- maths (pure)


def swap_order(seed: int, item_id: str) -> bool:
    """Whether the model's output is shown second ("M"); seeded per item, independent of item order."""
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return random.Random(digest).random() < 0.5


def prob_second(logp_m: float, logp_M: float) -> float:
    """P(verdict = "M") from the two verdict log-probabilities (renormalised over the pair)."""
    return 1.0 / (1.0 + math.exp(logp_m - logp_M))


def win_from_prob(p_model: float) -> float:
    """Hard verdict for the model: 1 win, 0 loss, 0.5 exact tie."""
    return 1.0 if p_model > 0.5 else 0.0 if p_model < 0.5 else 0.5


def win_rate(wins: list[float]) -> tuple[float, float]:
    """Mean win and its standard error (sample std, ddof=1, over sqrt(n)), as alpaca-eval's `sem`."""
    n = len(wins)
    if n == 0:
        raise EvalError("alpaca_eval: no items to compute a win rate from")
    mean = sum(wins) / n
    if n == 1:
        return mean, float("nan")
    var = sum((w - mean) ** 2 for w in wins) / (n - 1)
    return mean, math.sqrt(var / n)


# ----------------------------------------------------------------------------- annotation cache


class AnnotationCache:
    """Append-only JSONL of judge verdicts keyed by judge id + instruction + both presented outputs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.entries[row["key"]] = row

    @staticmethod
    def key(judge_id: str, instruction: str, output_m: str, output_M: str) -> str:
        return hashlib.sha256(json.dumps([judge_id, instruction, output_m, output_M]).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put_many(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                self.entries[row["key"]] = row


def default_cache_dir() -> Path:
    return Path(os.environ.get("KTO_BENCH_CACHE", Path.home() / ".cache" / "kto-bench")) / "alpaca_judge"


# ----------------------------------------------------------------------------- judges


def annotate_local(
    items: list[Item],
    outputs: list[str],
    engine,
    judge_tokenizer,
    *,
    judge_id: str,
    cache: AnnotationCache,
    seed: int,
) -> list[dict]:
    """Per-item verdicts from a local judge's verdict-token log-probs; cached items are not re-judged."""
    presented, todo = [], []
    for item, output in zip(items, outputs, strict=True):
        swapped = swap_order(seed, item.item_id)
        output_m, output_M = (item.reference, output) if swapped else (output, item.reference)
        key = AnnotationCache.key(judge_id, item.instruction, output_m, output_M)
        presented.append((swapped, key))
        if cache.get(key) is None and key not in {k for k, _ in todo}:
            todo.append(
                (key, render_prompt(judge_tokenizer, _judge_prompt(item.instruction, output_m, output_M)))
            )
    if todo:
        requests = [(prompt, verdict) for _, prompt in todo for verdict in VERDICTS]
        logps = [lp for lp, _ in engine.loglikelihood(requests, progress=False)]
        cache.put_many(
            [
                {"key": key, "judge": judge_id, "logp_m": logps[2 * i], "logp_M": logps[2 * i + 1]}
                for i, (key, _) in enumerate(todo)
            ]
        )
    verdicts = []
    for swapped, key in presented:
        p_second = prob_second(cache.get(key)["logp_m"], cache.get(key)["logp_M"])
        p_model = p_second if swapped else 1.0 - p_second
        verdicts.append({"win": win_from_prob(p_model), "p_model": p_model, "model_shown_second": swapped})
    return verdicts


def _judge_prompt(instruction: str, output_m: str, output_M: str) -> str:
    return JUDGE_TEMPLATE.format(
        instruction=json.dumps(instruction), output_m=json.dumps(output_m), output_M=json.dumps(output_M)
    )


def load_local_judge(path: str, batch_size: int):
    """(Engine, tokenizer, judge id) for a causal LM judge at a local path or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kto_bench.eval.engine import Engine

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    judge_id = f"local:{Path(path).resolve() if Path(path).exists() else path}"
    return Engine(model, tokenizer, batch_size=batch_size), tokenizer, judge_id


def annotate_api(
    items: list[Item], outputs: list[str], judge, *, model_label: str, out_dir: Path, cache_dir: Path
):
    """alpaca-eval's own annotator: per-item verdicts plus its (length-controlled) leaderboard row."""
    if not os.environ.get("OPENAI_API_KEY"):
        raise EvalError(
            "alpaca_eval: evaluation.judge.type is 'api' but OPENAI_API_KEY is not set in the environment; "
            "export it, or use a local judge (evaluation.judge: {type: local, model: <path>})"
        )
    try:
        import alpaca_eval
    except ImportError as exc:
        raise EvalError(
            "alpaca_eval: the api judge needs the optional alpaca-eval package: "
            "pip install 'kto-bench[alpaca]' (alpaca-eval==0.6.6 'setuptools<81')"
        ) from exc
    model_outputs = [
        {"instruction": it.instruction, "output": o, "generator": model_label}
        for it, o in zip(items, outputs, strict=True)
    ]
    references = [
        {"instruction": it.instruction, "output": it.reference, "generator": it.reference_generator}
        for it in items
    ]
    leaderboard, annotations = alpaca_eval.evaluate(
        model_outputs=model_outputs,
        reference_outputs=references,
        annotators_config=judge.annotator_config,
        name=model_label,
        output_path=str(out_dir / "alpaca_eval_api"),
        precomputed_leaderboard=None,
        is_return_instead_of_print=True,
        caching_path=str(cache_dir / f"api_{judge.annotator_config}.json"),
    )
    by_instruction = {a["instruction"]: a for a in annotations}
    verdicts = []
    for item in items:
        pref = by_instruction.get(item.instruction, {}).get("preference")
        win = float("nan") if pref is None else float(pref) - 1.0  # alpaca-eval: 1 reference, 2 model
        verdicts.append({"win": win, "p_model": win, "model_shown_second": None})
    row = leaderboard.loc[model_label]
    lc = row.get("length_controlled_winrate")
    lc_metric = None
    if lc is not None and math.isfinite(float(lc)):
        lc_stderr = row.get("lc_standard_error", float("nan"))
        lc_metric = {
            "metric": "lc_win_rate",
            "value": float(lc) / 100,
            "stderr": float(lc_stderr) / 100,
            "n": len(items),
        }
    return verdicts, lc_metric, getattr(alpaca_eval, "__version__", "unknown")


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

    judge_type = getattr(judge, "type", "local")
    notes = [source["note"]] if source.get("note") else []
    harness: dict[str, Any] = {"alpaca_eval": None}
    lc_metric = None
    if judge_type == "api":
        verdicts, lc_metric, harness["alpaca_eval"] = annotate_api(
            items, outputs, judge, model_label=model_label, out_dir=out_dir, cache_dir=cache_dir
        )
        judge_info = {"type": "api", "annotator_config": judge.annotator_config}
        if lc_metric is None:
            notes.append(
                "lc_win_rate not computed: alpaca-eval returned no finite length-controlled win rate"
            )
    elif judge_type == "local":
        if not getattr(judge, "model", None):
            raise EvalError(
                "alpaca_eval: evaluation.judge.model must name a causal LM path for a local judge"
            )
        judge_engine, judge_tok, judge_id = load_local_judge(judge.model, batch_size)
        cache = AnnotationCache(cache_dir / "annotations.jsonl")
        verdicts = annotate_local(
            items, outputs, judge_engine, judge_tok, judge_id=judge_id, cache=cache, seed=seed
        )
        judge_info = {
            "type": "local",
            "judge_id": judge_id,
            "verdict_tokens": list(VERDICTS),
            "position_swap_seed": seed,
        }
        notes.append(
            "lc_win_rate not computed: the length-controlled win rate needs alpaca-eval's GLM fitted on its "
            "own annotator's verdicts (hub parameters); a local judge gives the raw win rate only"
        )
    else:
        raise EvalError(f"alpaca_eval: evaluation.judge.type must be 'local' or 'api', got {judge_type!r}")

    wins = [v["win"] for v in verdicts]
    value, stderr = win_rate(wins)
    stderr = stderr if math.isfinite(stderr) else None  # one item has no standard error
    metrics = [{"metric": "win_rate", "value": value, "stderr": stderr, "n": len(wins)}]
    metrics += [lc_metric] if lc_metric else []
    samples = [
        {
            "item_id": it.item_id,
            "scores": {"win": v["win"]},
            "instruction": it.instruction,
            "prompt": p,
            "output": o,
            "reference": it.reference,
            "target": it.reference,
            "p_model": v["p_model"],
            "model_shown_second": v["model_shown_second"],
        }
        for it, p, o, v in zip(items, prompts, outputs, verdicts, strict=True)
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
        "computed": {"win_rate": True, "lc_win_rate": lc_metric is not None},
        "notes": notes,
        "samples_file": f"{TASK}.samples.jsonl",
    }
    atomic_write_text(out_dir / f"{TASK}.samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    atomic_write_json(out_dir / f"{TASK}.json", result)
    return result

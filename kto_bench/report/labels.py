"""How the report names things: benchmarks (task label from the task registry + metric), rows, numbers,
and the training metric names it reads.

Task labels belong to the task's registration (`eval/tasks.py`, `TaskEntry.label`); the column order is
the report's own decision (the paper's Table 2 order, then the demo world).
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from kto_bench.eval.tasks import TASKS

MISSING = "missing"

# Benchmark columns in the paper's order (MMLU, GSM8K, HumanEval, AlpacaEval), then the demo world's tasks;
# tasks not listed follow by name. Every name is a registered task (tests/report/test_tables_claims.py).
COLUMN_ORDER = (
    "mmlu", "gsm8k", "gsm8k_cot", "humaneval", "humaneval_instruct", "alpaca_eval", "demo_arith_gen",
    "demo_arith_mc",
)  # fmt: skip
METRIC_LABELS = {
    "exact_match": "EM",
    "length_controlled_winrate": "LC win rate",
    "lc_win_rate": "LC win rate",
    "win_rate": "win rate",
}

# ---------------------------------------------------------------------------------------------- training metrics

# The training metrics the report reads from metrics.jsonl, as train/loop.py logs them ("train/" + the
# loss's metric names, kto_bench/methods/). Pairwise losses log rewards of the chosen/rejected completion,
# KTO of the desirable/undesirable one; the report reads both under the desirable/undesirable names
# (`aggregate.normalize_metric_name`), and "train/rewards_<x>" is an older spelling of "train/rewards/<x>".
LOSS = "train/loss"
KL = "train/kl"
Z0 = "train/z0"
GRAD_NORM = "train/grad_norm"
STEP_TIME = "time/step_s"
TOKENS_SEEN = "tokens/seen"
REWARD_DESIRABLE = "train/rewards/desirable"
REWARD_UNDESIRABLE = "train/rewards/undesirable"
REWARD_ALIASES = {
    "train/rewards/chosen": REWARD_DESIRABLE,
    "train/rewards/rejected": REWARD_UNDESIRABLE,
}
OLD_REWARD_PREFIX, REWARD_PREFIX = "train/rewards_", "train/rewards/"
# The margin the report shows is desirable − undesirable of the logged per-step means (β·r). The loss's
# own "train/rewards/margin" (a mean over microbatches of per-microbatch margins) is not read: it differs
# where a microbatch holds one class only.

# ---------------------------------------------------------------------------------------------- labels


def task_label(task: str) -> str:
    """A task's display name, from its registration; the name itself for tasks not registered."""
    return (TASKS.get(task).label or task) if task in TASKS else task


def metric_label(metric: str) -> str:
    base, _, filt = metric.partition(",")
    base = METRIC_LABELS.get(base, base)
    return base if filt in ("", "none", "create_test") else f"{base} {filt}"


def column_label(task: str, metric: str) -> str:
    return f"{task_label(task)} {metric_label(metric)}"


def column_order(columns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    def key(c: tuple[str, str]) -> tuple[int, str, bool, str]:
        task_rank = COLUMN_ORDER.index(c[0]) if c[0] in COLUMN_ORDER else len(COLUMN_ORDER)
        return (task_rank, c[0], "strict" not in c[1], c[1])  # strict-match before flexible-extract

    return sorted(columns, key=key)


def row_label(method: str, point: str, base_key: str = "") -> str:
    if method == "base":
        return f"base ({base_key})" if base_key else "base"
    name = method.upper() if len(method) <= 4 else method
    return f"+{name}" + (f" ({point})" if point else "")


# ---------------------------------------------------------------------------------------------- numbers


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"
    return str(x)


def short(h: Any, n: int = 10) -> str:
    return str(h)[:n] if h else MISSING


def settings_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def is_win_rate(metric: str) -> bool:
    return "win" in metric.lower()

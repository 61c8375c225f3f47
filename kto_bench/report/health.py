"""The "did it train?" health check: did each trained run move away from its base model?

Three signals per run, each from the store alone:
- answers changed: evaluation items whose recorded output (generated text, or the chosen option of a
  log-likelihood task; the scores where no output is stored) differs from the base model's on the same
  item, pooled over every task both have per-item samples for;
- reward accuracy: the fraction of (desirable, undesirable) combinations of the final policy's
  training examples (rewards.jsonl, β·r, both methods' binary view) in which the desirable reward is
  the larger (the AUC; ties count ½). Its spread under "no separation" is the Mann–Whitney null SE,
  sqrt((nD + nU + 1) / (12 nD nU)); these are training examples (held-out rewards are not recorded);
- log-prob movement: the mean change of log πθ − log πref of desirable (chosen) and undesirable
  (rejected) completions, in nats: mean β·r / β from rewards.jsonl, else the last tenth of the
  training log's reward means.

A run "did not move" when fewer than 1% of its answered items changed (CHANGED_MIN) and its reward
accuracy lies within 1.96 null SEs of 0.5 (REWARD_Z); where only one of the two signals exists, that one
decides; with neither the check says "unknown" and flags nothing. Claims resting on a run that did
not move are "not trained" (`untrained_runs` is the set the claims receive).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kto_bench.report.aggregate import Experiment, Run, dig, method_rank
from kto_bench.report.labels import MISSING, REWARD_DESIRABLE, REWARD_UNDESIRABLE
from kto_bench.report.writers import Table

CHANGED_MIN = 0.01  # a run that changed fewer than 1% of its answers vs the base did not move them
REWARD_Z = 1.96  # reward accuracy within this many null SEs of 0.5 is "not separated"
DID_NOT_MOVE, TRAINED, UNKNOWN = "did not move", "trained", "unknown"


@dataclass(frozen=True)
class Health:
    run_id: str
    method: str
    seed: int | None
    point: str
    changed: int | None = None  # items whose answer differs from the base's
    compared: int | None = None  # items both have samples for
    per_task: tuple[tuple[str, int, int], ...] = ()  # (task, changed, compared)
    reward_acc: float | None = None
    reward_null_se: float | None = None
    n_desirable: int = 0
    n_undesirable: int = 0
    dlogp_desirable: float | None = None  # nats
    dlogp_undesirable: float | None = None
    logp_source: str = ""
    verdict: str = UNKNOWN
    reason: str = ""

    @property
    def changed_fraction(self) -> float | None:
        return self.changed / self.compared if self.compared else None


def _answer(row: dict) -> str:
    """What the model answered on one item: its output where stored, else its scores."""
    value = row.get("output", row.get("scores"))
    return json.dumps(value, sort_keys=True, default=str)


def answers_changed(exp: Experiment, run: Run, base: Run | None) -> tuple[tuple[str, int, int], ...]:
    """(task, changed, compared) for every task with per-item samples in both the run and its base."""
    if base is None:
        return ()
    out = []
    for task in sorted(set(run.results) & set(base.results)):
        mine, theirs = exp.sample_rows(run.run_id, task), exp.sample_rows(base.run_id, task)
        if not mine or not theirs:
            continue
        base_answers = {str(r["item_id"]): _answer(r) for r in theirs if "item_id" in r}
        common = [(str(r["item_id"]), _answer(r)) for r in mine if str(r.get("item_id")) in base_answers]
        if common:
            out.append((task, sum(a != base_answers[i] for i, a in common), len(common)))
    return tuple(out)


def reward_accuracy(desirable: np.ndarray, undesirable: np.ndarray) -> tuple[float, float] | None:
    """P(desirable reward > undesirable reward) over all combinations (ties ½) and its null SE."""
    nd, nu = len(desirable), len(undesirable)
    if nd == 0 or nu == 0:
        return None
    ranks = pd.Series(np.concatenate([desirable, undesirable])).rank(method="average").to_numpy()
    u = ranks[:nd].sum() - nd * (nd + 1) / 2  # Mann–Whitney U of the desirable rewards
    return float(u / (nd * nu)), math.sqrt((nd + nu + 1) / (12.0 * nd * nu))


def _beta(run: Run) -> float | None:
    beta = dig(run.spec, "method.beta")
    return float(beta) if isinstance(beta, int | float) and beta > 0 else None


def run_health(exp: Experiment, run: Run) -> Health:
    per_task = answers_changed(exp, run, exp.base_for(run))
    changed = sum(c for _, c, _ in per_task) if per_task else None
    compared = sum(n for _, _, n in per_task) if per_task else None
    acc = se = None
    nd = nu = 0
    dlogp_d = dlogp_u = None
    source = ""
    beta = _beta(run)
    rewards = exp.rewards(run.run_id)
    if rewards is not None and {"desirable", "reward"} <= set(rewards.columns):
        flags = rewards["desirable"].astype(bool).to_numpy()
        values = rewards["reward"].astype(float).to_numpy()
        d, u = values[flags & np.isfinite(values)], values[~flags & np.isfinite(values)]
        nd, nu = len(d), len(u)
        if (res := reward_accuracy(d, u)) is not None:
            acc, se = res
        if beta is not None and nd and nu:
            dlogp_d, dlogp_u, source = float(d.mean() / beta), float(u.mean() / beta), "final policy"
    if dlogp_d is None and beta is not None and (metrics := exp.metrics(run.run_id)) is not None:
        cols = (REWARD_DESIRABLE, REWARD_UNDESIRABLE)
        if set(cols) <= set(metrics.columns):
            tail = metrics.tail(max(1, len(metrics) // 10))
            dlogp_d, dlogp_u = (float(tail[c].mean() / beta) for c in cols)
            source = "training log"
    frac = changed / compared if compared else None
    still_answers = None if frac is None else frac < CHANGED_MIN
    still_rewards = None if acc is None or se is None else abs(acc - 0.5) <= REWARD_Z * se
    signals = [s for s in (still_answers, still_rewards) if s is not None]
    if not signals:
        verdict, reason = UNKNOWN, "no per-item samples shared with the base and no rewards.jsonl"
    elif all(signals):
        verdict = DID_NOT_MOVE
        parts = []
        if still_answers:
            parts.append(f"{changed} of {compared} answers changed (< {CHANGED_MIN:.0%})")
        if still_rewards:
            parts.append(f"reward accuracy {acc:.3f} within {REWARD_Z} null SE of 0.5")
        reason = "; ".join(parts)
    else:
        verdict, reason = TRAINED, ""
    return Health(run.run_id, run.method, run.seed, run.point, changed, compared, per_task, acc, se, nd, nu,
                  dlogp_d, dlogp_u, source, verdict, reason)  # fmt: skip


def health_checks(exp: Experiment) -> list[Health]:
    """Every trained run's health, grouped by method, then grid point and seed."""
    runs = sorted(exp.trained, key=lambda r: (method_rank(r.method), r.point, str(r.seed)))
    return [run_health(exp, r) for r in runs]


def untrained_runs(checks: list[Health]) -> set[str]:
    """The run ids that did not move from their base: claims resting on them are "not trained"."""
    return {h.run_id for h in checks if h.verdict == DID_NOT_MOVE}


HEALTH_COLUMNS = [
    "run", "method", "seed", "point", "answers changed vs base", "reward accuracy (null SE)",
    "Δ log p desirable", "Δ log p undesirable", "did it train?",
]  # fmt: skip


def health_table(checks: list[Health]) -> Table:
    table = Table(
        "health",
        "Did it train? (per-run health check)",
        HEALTH_COLUMNS,
        [],
        notes=[
            "answers changed: evaluation items whose output differs from the base model's on the same item, "
            "all tasks with per-item samples pooled (per task in health.csv).",
            "reward accuracy: share of (desirable, undesirable) training-example combinations where the final "
            "policy's β·r is larger for the desirable one (ties ½; rewards.jsonl, training examples, not held "
            "out); 0.5 means no separation, null SE in brackets.",
            "Δ log p: mean log πθ − log πref of desirable (chosen) and undesirable (rejected) completions, nats.",
            f"'did not move': fewer than {CHANGED_MIN:.0%} of answers changed and reward accuracy within "
            f"{REWARD_Z} null SE of 0.5 (where only one signal exists, it decides); claims resting on such a "
            "run are 'not trained'.",
        ],
    )
    data = []
    for h in checks:
        changed = (
            MISSING if h.compared is None else f"{h.changed}/{h.compared} ({100 * h.changed_fraction:.1f}%)"
        )  # type: ignore[operator]
        acc = MISSING if h.reward_acc is None else f"{h.reward_acc:.3f} ({h.reward_null_se:.3f})"
        d = MISSING if h.dlogp_desirable is None else f"{h.dlogp_desirable:+.4g}"
        u = MISSING if h.dlogp_undesirable is None else f"{h.dlogp_undesirable:+.4g}"
        if h.logp_source == "training log":
            d, u = f"{d} (log)", f"{u} (log)"
        verdict = h.verdict + (f": {h.reason}" if h.reason and h.verdict != "trained" else "")
        table.rows.append([h.run_id, h.method, "—" if h.seed is None else str(h.seed), h.point or "—",
                           changed, acc, d, u, verdict])  # fmt: skip
        data.append(
            {"run_id": h.run_id, "method": h.method, "seed": h.seed, "point": h.point, "changed": h.changed,
             "compared": h.compared, "per_task": json.dumps([list(t) for t in h.per_task]),
             "reward_accuracy": h.reward_acc, "reward_null_se": h.reward_null_se, "n_desirable": h.n_desirable,
             "n_undesirable": h.n_undesirable, "dlogp_desirable": h.dlogp_desirable,
             "dlogp_undesirable": h.dlogp_undesirable, "logp_source": h.logp_source, "verdict": h.verdict}
        )  # fmt: skip
    table.data = pd.DataFrame(data) if data else None
    untrained = sorted(untrained_runs(checks))
    if untrained:
        table.notes.insert(
            0, f"{len(untrained)} of {len(checks)} runs did not move from their base: {', '.join(untrained)}."
        )
    if not checks:
        table.notes.append(f"{MISSING}: no trained runs.")
    return table

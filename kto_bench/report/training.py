"""The training table: per run, steps, tokens, wall time, final and best loss and reward margin, KL / z0,
gradient norm, and why it stopped (from metrics.jsonl and train_summary.json)."""

from __future__ import annotations

import pandas as pd

from kto_bench.report.aggregate import Experiment, method_rank, training_summary
from kto_bench.report.labels import MISSING, fmt
from kto_bench.report.registries import TableInputs
from kto_bench.report.writers import Table

TRAINING_COLUMNS = [
    "run", "method", "seed", "point", "steps", "tokens", "wall (s)", "final loss", "best loss (step)",
    "final margin", "best margin", "final KL/z0", "final grad norm", "stopped",
]  # fmt: skip


def training_table(exp: Experiment) -> Table:
    table = Table(
        "training",
        "Training summaries",
        TRAINING_COLUMNS,
        [],
        notes=[
            "From metrics.jsonl and train_summary.json; margin = reward(desirable) − reward(undesirable), β·r."
        ],
    )
    data = []
    for r in sorted(exp.trained, key=lambda r: (r.point, method_rank(r.method), str(r.seed))):
        metrics = exp.metrics(r.run_id)
        s = training_summary(metrics, r.train_summary)
        data.append({"run_id": r.run_id, "method": r.method, "seed": r.seed, "point": r.point, **s})
        if metrics is None and r.train_summary is None:
            table.rows.append([r.run_id, r.method, str(r.seed), r.point or "—", *[MISSING] * 10])
            continue
        best = fmt(s.get("best_loss")) + (
            f" ({s['best_loss_step']})" if s.get("best_loss_step") is not None else ""
        )
        table.rows.append(
            [r.run_id, r.method, str(r.seed), r.point or "—", fmt(s.get("steps")), fmt(s.get("tokens")),
             fmt(s.get("wall_s"), 1), fmt(s.get("final_loss")), best, fmt(s.get("final_margin")),
             fmt(s.get("best_margin")), fmt(s.get("final_kl")), fmt(s.get("final_grad_norm")),
             str(s.get("stopped") or "—")]
        )  # fmt: skip
    table.data = pd.DataFrame(data) if data else None
    if not exp.trained:
        table.notes.append("missing: no trained runs.")
    return table


def build(inputs: TableInputs) -> Table:
    return training_table(inputs.exp)

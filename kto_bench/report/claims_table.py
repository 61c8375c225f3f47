"""Claim results in words: the measured difference, the verdict text, one sentence per claim for the top of
a report, and the claims table (registered as the `claims` table)."""

from __future__ import annotations

import math

import pandas as pd

from kto_bench.report.claims import ClaimResult, Measurement
from kto_bench.report.registries import TableInputs
from kto_bench.report.writers import Table


def _pts(x: float, scale: float) -> str:
    return f"{x * scale:+.{1 if scale == 100.0 else 3}f}"


def format_measurement(m: Measurement | None) -> str:
    if m is None:
        return "—"
    iv = m.interval
    return f"{_pts(iv.estimate, m.scale)} [{_pts(iv.lo, m.scale)}, {_pts(iv.hi, m.scale)}]"


def verdict_text(r: ClaimResult) -> str:
    """e.g. 'reproduced: sign; size +4.1 [+1.0, +7.2] vs paper +13.5 (smaller)'."""
    m = r.measurement
    if m is None:
        return r.verdict
    head = f"{r.verdict}: sign" if r.verdict in ("reproduced", "contradicted") else r.verdict
    paper = r.claim.paper_delta
    if paper is None:
        return f"{head}; no paper number for the size"
    return f"{head}; size {format_measurement(m)} vs paper {_pts(paper, m.scale)} ({r.size})"


def claim_sentence(r: ClaimResult) -> str:
    """One sentence per claim result, for the top of a report."""
    m = r.measurement
    where = f" ({r.group})" if r.group else ""
    if m is None:
        return f"{r.claim.id}{where}: {r.verdict} — {r.reason}."
    iv = m.interval
    level = f"{100 * (1 - iv.alpha):g}%"
    proxy = f" Proxy: {m.proxy}." if m.proxy else ""
    return (
        f"{r.claim.id}{where}: {r.statement}. Measured {format_measurement(m)} {'points' if m.scale == 100 else ''}"
        f" ({level} interval, {iv.interval}; {iv.n_items} items; seeds {m.seeds}); {verdict_text(r)}."
        f" Paper{f' ({r.claim.paper_setting})' if r.claim.paper_setting else ''}: {r.claim.paper}.{proxy}"
    ).replace("  (", " (")


def claims_table(results: list[ClaimResult], alpha: float) -> Table:
    level = f"{100 * (1 - alpha):g}%"
    tested = sum(1 for r in results if math.isfinite(r.p_holm))
    table = Table(
        "claims",
        "Paper claims",
        [
            "claim",
            "statement (setting run)",
            "paper",
            f"measured Δ [{level}]",
            "interval",
            "p",
            "p (Holm)",
            "verdict",
            "on",
        ],  # fmt: skip
        [],
        notes=[
            f"Sign verdict: reproduced / contradicted when Holm's correction across the {tested} seeded tests of "
            f"this table gives p < {alpha:g} (two-sided, against the claim's threshold) with the estimate on / off "
            "the claimed side; inconclusive otherwise. Intervals are unadjusted (each at "
            f"{level}); a Holm-inconclusive claim may show an interval that excludes 0.",
            "Intervals count items and training seeds (seeds × items, paired by item and, where every side has the "
            "same seeds, by seed). 'item-level only': a compared method has one seed, so the interval covers the "
            "items but not the training-seed variance, and gives no sign verdict (not counted in Holm). With two "
            "seeds a side the seed variance has one degree of freedom and the interval is conservative "
            "(simulated coverage 96–99%; 94–98% from three seeds on: docs/REPORTS.md).",
            "Size: the measured Δ and its interval against the paper's number (smaller / consistent / larger); the "
            "paper measured its own setting (column 'paper'), which may differ from the one run here.",
            "Δ is in points for proportions. Runs at the reference grid point unless the claim moves a corruption "
            "field; a sweep over models or other settings is judged at each. 'not trained': a compared run did not "
            "move from its base model (see the health check).",
        ],
    )
    data = []
    for r in results:
        m = r.measurement
        iv = m.interval if m else None
        on = r.reason if m is None else "; ".join(
            p for p in (m.column, f"{iv.n_items} items", f"seeds {m.seeds}", f"proxy: {m.proxy}" if m.proxy else "") if p
        )  # fmt: skip
        p = f"{iv.p:.3g}" if iv else "—"
        p_holm = f"{r.p_holm:.3g}" if math.isfinite(r.p_holm) else "—"
        claim_id = f"{r.claim.id} ({r.group})" if r.group else r.claim.id
        paper = f"{r.claim.paper} ({r.claim.paper_setting})" if r.claim.paper_setting else r.claim.paper
        table.rows.append(
            [claim_id, r.statement, paper, format_measurement(m), iv.interval if iv else "—", p, p_holm,
             verdict_text(r), on]
        )  # fmt: skip
        data.append(
            {"claim": r.claim.id, "group": r.group, "setting": m.setting if m else None, "verdict": r.verdict,
             "size": r.size, "estimate": iv.estimate if iv else None, "ci_lo": iv.lo if iv else None,
             "ci_hi": iv.hi if iv else None, "p": iv.p if iv else None, "p_holm": r.p_holm,
             "interval": iv.interval if iv else None, "n_items": iv.n_items if iv else None,
             "seeds": m.seeds if m else None, "scale": m.scale if m else None, "paper_delta": r.claim.paper_delta,
             "proxy": m.proxy if m else None, "direction": r.claim.direction, "threshold": r.claim.threshold,
             "reason": r.reason}
        )  # fmt: skip
    table.data = pd.DataFrame(data) if data else None
    return table


def build_table(inputs: TableInputs) -> Table:
    return claims_table(inputs.claim_results(), inputs.alpha)

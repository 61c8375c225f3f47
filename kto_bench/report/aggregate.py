"""Reads a results store (results/<experiment>/) into run records and one tidy DataFrame.

Tidy columns: run_id, method, seed, point, <every grid field by dotted path>, task, variant, metric,
value, stderr, n. Base-model evaluations (base-<key>/) are rows with method "base". Anything missing
or unreadable becomes an entry of `Experiment.issues` instead of an exception, so partial results
still render.

Which runs: given `run_ids` (what the spec expands to now, `spec.expand`), only those folders are
trained runs; other folders left in results/<experiment>/ are stale and listed, never compared.
Which base: each comparison group (the trained runs sharing every grid field under `model.`; one
group unless the grid varies the model, as scale_sweep does) must share one model hash, and its base
row is the base-<hash>-<eval> folder whose provenance has that hash (and, among several, the same
evaluation settings). Trained runs of one group with different model hashes are an error naming them:
a report never shows two base rows for one model, nor a base that is not the runs' base.

Over 400 lines because reading the store, choosing the compared runs and their base rows, and the
tidy frame are one contract (the results layout in ARCHITECTURE.md), kept in one reader.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from kto_bench.errors import StoreError
from kto_bench.io import read_json, read_jsonl
from kto_bench.report.axes import CLEAN_VALUES, MODEL_PREFIX
from kto_bench.report.labels import (
    GRAD_NORM,
    KL,
    LOSS,
    OLD_REWARD_PREFIX,
    REWARD_ALIASES,
    REWARD_DESIRABLE,
    REWARD_PREFIX,
    REWARD_UNDESIRABLE,
    STEP_TIME,
    TOKENS_SEEN,
)
from kto_bench.store import STAGES

# Grid fields that are not part of a "point" (they identify the run, not the setting).
NON_POINT_FIELDS = ("method.type", "method", "seed")
METHOD_ORDER = ("base", "sft", "dpo", "kto")


def _read_json(path: Path, issues: list[str]) -> dict | None:
    """A JSON file of the store, None when absent; an unreadable one is an issue, not an error."""
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        issues.append(f"{path}: unreadable ({e}); treated as missing")
        return None


def _read_jsonl(path: Path, issues: list[str]) -> list[dict] | None:
    """A JSON-lines file of the store, None when absent; unreadable lines are issues and skipped."""

    def bad_line(i: int, _: Exception) -> None:
        issues.append(f"{path}:{i}: unreadable line skipped (a run still writing?)")

    return read_jsonl(path, bad_line=bad_line)


@dataclass
class Run:
    """One folder of the results store: a trained run, or a base model's evaluation (is_base)."""

    run_id: str
    path: Path
    method: str
    seed: int | None
    grid: dict[str, Any]
    meta: dict
    provenance: dict | None
    data_report: dict | None
    status: dict | None
    train_summary: dict | None
    results: dict[str, dict]
    is_base: bool = False
    point: str = ""
    group: str = ""  # the model grid fields (scale_sweep); "" when the grid keeps one model
    base_id: str | None = None  # a trained run's base row (choose_bases)

    @property
    def spec(self) -> dict:
        return self.meta.get("spec") or {}

    def stages_done(self) -> list[str]:
        stages = (self.status or {}).get("stages", {})
        return [s for s in STAGES if (stages.get(s) or {}).get("done")]


def _point_label(grid: dict[str, Any], fields: list[str]) -> str:
    return ", ".join(f"{f.split('.')[-1]}={grid.get(f, '—')}" for f in fields)


def method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


@dataclass
class Experiment:
    name: str
    root: Path
    runs: list[Run]
    issues: list[str] = field(default_factory=list)
    varying: list[str] = field(default_factory=list)  # grid fields that differ between trained runs
    stale: list[str] = field(default_factory=list)  # folders in the store that this report does not compare
    _samples: dict[tuple[str, str], list[dict] | None] = field(default_factory=dict, repr=False)

    def run(self, run_id: str) -> Run:
        return next(r for r in self.runs if r.run_id == run_id)

    @property
    def trained(self) -> list[Run]:
        return [r for r in self.runs if not r.is_base]

    @property
    def bases(self) -> list[Run]:
        """One base-model evaluation per comparison group (see `choose_bases`)."""
        return [r for r in self.runs if r.is_base]

    def base_for(self, run: Run) -> Run | None:
        """The base row of a trained run's comparison group."""
        return next((b for b in self.bases if b.run_id == run.base_id), None)

    @cached_property
    def tidy(self) -> pd.DataFrame:
        return tidy_frame(self.runs, self.varying)

    def sample_rows(self, run_id: str, task: str) -> list[dict] | None:
        key = (run_id, task)
        if key not in self._samples:
            run = self.run(run_id)
            name = (run.results.get(task) or {}).get("samples_file") or f"{task}.samples.jsonl"
            self._samples[key] = _read_jsonl(run.path / "eval" / name, self.issues)
        return self._samples[key]

    def item_scores(self, run_id: str, task: str, metric: str) -> dict[str, float] | None:
        """item_id -> score of one metric for one run and task, or None when samples are absent."""
        rows = self.sample_rows(run_id, task)
        if not rows:
            return None
        out = {}
        for row in rows:
            score = sample_score(row.get("scores") or {}, metric)
            if score is not None and "item_id" in row:
                out[str(row["item_id"])] = score
        return out or None

    def metrics(self, run_id: str) -> pd.DataFrame | None:
        rows = _read_jsonl(self.run(run_id).path / "metrics.jsonl", self.issues)
        if not rows:
            return None
        df = pd.DataFrame(rows)
        df.columns = [normalize_metric_name(c) for c in df.columns]
        return df.sort_values("step") if "step" in df else df

    def rewards(self, run_id: str) -> pd.DataFrame | None:
        rows = _read_jsonl(self.run(run_id).path / "rewards.jsonl", self.issues)
        return pd.DataFrame(rows) if rows else None

    def reference_point(self) -> str | None:
        """The grid point the bars plot and the paper claims use: corruption fields that vary sit at
        their clean value (no flips, full data, paired); among several such points (another field
        varies) the one with the most runs, then the first by label."""
        points: dict[str, int] = {}
        for r in self.trained:
            if all(
                r.grid.get(f, CLEAN_VALUES[f]) == CLEAN_VALUES[f] for f in self.varying if f in CLEAN_VALUES
            ):
                points[r.point] = points.get(r.point, 0) + 1
        if not points:
            return None
        return sorted(points, key=lambda p: (-points[p], p))[0]

    def select(self, method: str, moves: dict[str, Callable[[Any], bool]] | None = None) -> list[Run]:
        """Runs of `method` at the reference point, except that each field named in `moves` (dotted
        grid path) must satisfy its predicate instead of sitting at the reference value."""
        moves = moves or {}
        ref = next((r for r in self.trained if r.point == self.reference_point()), None)
        if ref is None:
            return []

        def keep(r: Run) -> bool:
            return all(
                moves[f](r.grid.get(f)) if f in moves else r.grid.get(f) == ref.grid.get(f)
                for f in {*self.varying, *moves}
            )

        return [r for r in self.trained if r.method == method and keep(r)]


def sample_score(scores: dict[str, Any], metric: str) -> float | None:
    """Finds a result metric ("exact_match,strict-match") among a sample's score keys, which may
    carry the full name, the bare metric ("exact_match") or only the filter ("strict-match")."""
    base, _, filt = metric.partition(",")
    for key in (metric, base, filt):
        if key and key in scores and scores[key] is not None:
            try:
                return float(scores[key])
            except (TypeError, ValueError):
                return None
    return None


def normalize_metric_name(name: str) -> str:
    """train/rewards_desirable and train/rewards/desirable are the same; DPO's chosen/rejected are
    the desirable/undesirable of a pair."""
    name = name.replace(OLD_REWARD_PREFIX, REWARD_PREFIX)
    return REWARD_ALIASES.get(name, name)


def _load_run(path: Path, issues: list[str]) -> Run | None:
    is_base = path.name.startswith("base-")
    meta = _read_json(path / "run.json", issues)
    if meta is None and not is_base:
        issues.append(f"{path.name}: no run.json; folder skipped")
        return None
    meta = meta or {}
    results: dict[str, dict] = {}
    eval_dir = path / "eval"
    if eval_dir.is_dir():
        for f in sorted(eval_dir.glob("*.json")):
            res = _read_json(f, issues)
            if res is not None:
                results[res.get("task") or f.stem] = res
    spec = meta.get("spec") or {}
    method = "base" if is_base else str(meta.get("method") or (spec.get("method") or {}).get("type") or "?")
    seed = None if is_base else meta.get("seed", spec.get("seed"))
    return Run(
        run_id=str(meta.get("run_id") or path.name),
        path=path,
        method=method,
        seed=seed,
        grid={k: v for k, v in (meta.get("grid") or {}).items() if k not in NON_POINT_FIELDS},
        meta=meta,
        provenance=_read_json(path / "provenance.json", issues),
        data_report=_read_json(path / "data_report.json", issues),
        status=_read_json(path / "status.json", issues),
        train_summary=_read_json(path / "train_summary.json", issues),
        results=results,
        is_base=is_base,
    )


def dig(d: dict | None, *paths: str) -> Any:
    """The first present value among dotted paths of a nested dict."""
    for path in paths:
        cur: Any = d or {}
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is not None:
            return cur
    return None


def run_model_hash(run: Run) -> str | None:
    """The model hash a run records (provenance identity first, then the older top-level field)."""
    h = dig(run.provenance, "identity.model_hash", "model_hash") or dig(run.train_summary, "model_hash")
    return str(h) if h else None


def _eval_key(run: Run) -> str:
    return json.dumps(run.spec.get("evaluation"), sort_keys=True, default=str)


def choose_bases(
    trained: list[Run], bases: list[Run], model_fields: list[str]
) -> tuple[list[Run], list[str]]:
    """One base row per comparison group (see the module docstring); returns (bases, issues).

    Sets `group` on the trained runs and on the chosen bases. Raises StoreError when the trained runs
    of one group record different model hashes."""
    issues: list[str] = []
    groups: dict[str, list[Run]] = {}
    for r in trained:
        r.group = _point_label(r.grid, model_fields) if model_fields else ""
        groups.setdefault(r.group, []).append(r)
    chosen: list[Run] = []
    for group, runs in sorted(groups.items()):
        hashes: dict[str, list[str]] = {}
        for r in runs:
            if (h := run_model_hash(r)) is not None:
                hashes.setdefault(h, []).append(r.run_id)
        where = f" at {group}" if group else ""
        if len(hashes) > 1:
            listed = "; ".join(
                f"model hash {h[:12]}: {', '.join(sorted(ids))}" for h, ids in sorted(hashes.items())
            )
            raise StoreError(
                f"runs compared{where} were trained from different base models ({listed}); a report "
                "never compares them. Rerun the stale runs (`kto-bench run <spec>` reruns what the spec "
                "resolves to now) or move the other results aside"
            )
        if hashes:
            (h,) = hashes
            candidates = [b for b in bases if run_model_hash(b) == h]
        else:  # runs that record no model hash yet (not started, or written by an old version)
            candidates = list(bases) if len(bases) == 1 else []
        same_eval = [b for b in candidates if _eval_key(b) in {_eval_key(r) for r in runs}]
        pick = sorted(same_eval or candidates, key=lambda b: b.run_id)
        if not pick:
            issues.append(
                f"no base-model evaluation{where} for model hash {next(iter(hashes), '?')[:12]}: "
                "the base row and every method − base contrast are missing"
            )
            continue
        if not same_eval:
            issues.append(f"{pick[0].run_id}: the base evaluation's settings differ from the runs'{where}")
        if len(pick) > 1:
            issues.append(f"several base evaluations{where} fit; used {pick[0].run_id}")
        base = pick[0]
        for r in runs:
            r.base_id = base.run_id
        if not any(b is base for b in chosen):  # groups may share weights (a model.* field that keeps them)
            base.group = group
            chosen.append(base)
    return chosen, issues


def load_experiment(
    experiment_dir: Path, name: str | None = None, run_ids: list[str] | None = None
) -> Experiment:
    """Reads results/<experiment>/. With `run_ids` (the ids `spec.expand` gives now) only those runs
    are compared and other folders are listed as stale; without, every folder is a run of it."""
    experiment_dir = Path(experiment_dir)
    if not experiment_dir.is_dir():
        raise StoreError(
            f"no results at {experiment_dir}: run the experiment first (`kto-bench run <spec>`) "
            "or pass the results/<experiment> folder it wrote"
        )
    issues: list[str] = []
    stale: list[str] = []
    folders = sorted(p for p in experiment_dir.iterdir() if p.is_dir())
    if run_ids is not None:
        wanted = set(run_ids)
        stale += [p.name for p in folders if not p.name.startswith("base-") and p.name not in wanted]
        folders = [p for p in folders if p.name.startswith("base-") or p.name in wanted]
        present = {p.name for p in folders}
        not_run = sorted(wanted - present)
        if not_run:
            issues.append(f"{len(not_run)} runs of the spec have no results yet: {', '.join(not_run)}")
    runs = [r for p in folders if (r := _load_run(p, issues))]
    trained = [r for r in runs if not r.is_base]
    fields = sorted({k for r in trained for k in r.grid})
    varying = [f for f in fields if len({json.dumps(r.grid.get(f), sort_keys=True) for r in trained}) > 1]
    for r in trained:
        r.point = _point_label(r.grid, varying)
    bases, base_issues = choose_bases(
        trained, [r for r in runs if r.is_base], [f for f in varying if f.startswith(MODEL_PREFIX)]
    )
    issues += base_issues
    for b in runs:
        if b.is_base and not any(b is c for c in bases):
            stale.append(
                f"{b.run_id} (model hash {(run_model_hash(b) or '?')[:12]}: not the base of these runs)"
            )
    runs = bases + trained
    for r in trained:
        missing = [s for s in STAGES if s not in r.stages_done()]
        if missing:
            issues.append(f"{r.run_id} ({r.method}, seed {r.seed}): stages not done: {', '.join(missing)}")
        if not r.results:
            issues.append(f"{r.run_id} ({r.method}, seed {r.seed}): no evaluation results")
    if not trained:
        issues.append(f"{experiment_dir}: no trained runs found")
    return Experiment(name or experiment_dir.name, experiment_dir, runs, issues, varying, stale=stale)


def tidy_frame(runs: list[Run], varying: list[str]) -> pd.DataFrame:
    fields = sorted({k for r in runs for k in r.grid})
    rows = []
    for r in runs:
        for task, res in r.results.items():
            for m in res.get("metrics") or []:
                value = m.get("value")
                rows.append(
                    {
                        "run_id": r.run_id,
                        "method": r.method,
                        "seed": r.seed,
                        "point": r.point,
                        **{f: r.grid.get(f) for f in fields},
                        "task": task,
                        "variant": res.get("variant"),
                        "metric": m.get("metric"),
                        "value": math.nan if value is None else float(value),
                        "stderr": math.nan if m.get("stderr") is None else float(m["stderr"]),
                        "n": m.get("n"),
                    }
                )
    columns = [
        "run_id",
        "method",
        "seed",
        "point",
        *fields,
        "task",
        "variant",
        "metric",
        "value",
        "stderr",
        "n",
    ]
    return pd.DataFrame(rows, columns=columns)


def training_summary(metrics: pd.DataFrame | None, summary: dict | None) -> dict[str, Any]:
    """Final and best values from metrics.jsonl plus steps/tokens/wall time from train_summary.json.
    "best" is the minimum of the loss and the maximum of the reward margin."""
    out: dict[str, Any] = {k: (summary or {}).get(k) for k in ("steps", "tokens", "wall_s", "stopped")}
    if metrics is None or metrics.empty:
        return out
    if out["steps"] is None and "step" in metrics:
        out["steps"] = int(metrics["step"].max())
    if out["tokens"] is None and TOKENS_SEEN in metrics:
        out["tokens"] = int(metrics[TOKENS_SEEN].dropna().iloc[-1])
    if out["wall_s"] is None and STEP_TIME in metrics:
        out["wall_s"] = float(metrics[STEP_TIME].sum())
    margins = margin_series(metrics)
    columns = {
        "loss": metrics.get(LOSS),
        "margin": margins,
        "kl": metrics.get(KL),
        "grad_norm": metrics.get(GRAD_NORM),
    }
    for name, col in columns.items():
        col = None if col is None else col.dropna()
        out[f"final_{name}"] = float(col.iloc[-1]) if col is not None and len(col) else None
    loss = columns["loss"]
    if loss is not None and loss.notna().any():
        out["best_loss"] = float(loss.min())
        out["best_loss_step"] = int(metrics.loc[loss.idxmin(), "step"]) if "step" in metrics else None
    if margins is not None and margins.notna().any():
        out["best_margin"] = float(margins.max())
    return out


def margin_series(metrics: pd.DataFrame) -> pd.Series | None:
    """The reward margin per step: desirable − undesirable (β·r; see `labels.REWARD_DESIRABLE`)."""
    if {REWARD_DESIRABLE, REWARD_UNDESIRABLE} <= set(metrics.columns):
        return metrics[REWARD_DESIRABLE] - metrics[REWARD_UNDESIRABLE]
    return None

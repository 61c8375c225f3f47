"""Synthetic results stores with planted effects, written in the layout of ARCHITECTURE.md.

Item model: item i has difficulty u_i ~ U(0, 1); a run with ability a (method ability + a small
per-seed shift) solves item i when u_i + e_ir < a, e_ir ~ N(0, item_noise). Raising a method's
ability by 0.10 therefore plants a paired +10-point effect on the same items.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

N_ITEMS = 200
SEEDS = (0, 1, 2)


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _dump_lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_eval(
    run_dir: Path, task: str, metrics: list[str], solved: np.ndarray, label: str, full_keys: bool
) -> None:
    """One task result whose metrics all equal the item mean (and samples carrying the same scores)."""
    n = solved.size
    mean, sd = float(solved.mean()), float(solved.std(ddof=1))
    _dump(
        run_dir / "eval" / f"{task}.json",
        {
            "task": task,
            "variant": "demo" if task.startswith("demo") else "offline",
            "model": label,
            "metrics": [{"metric": m, "value": mean, "stderr": sd / np.sqrt(n), "n": n} for m in metrics],
            "settings": {
                "num_fewshot": 0,
                "decoding": {"temperature": 0},
                "apply_chat_template": False,
                "limit": None,
            },
            "harness": {"lm_eval": "0.4.13"},
            "samples_file": f"{task}.samples.jsonl",
        },
    )
    key = (lambda m: m) if full_keys else (lambda m: m.split(",")[0])
    _dump_lines(
        run_dir / "eval" / f"{task}.samples.jsonl",
        [
            {
                "item_id": f"{task}-{i}",
                "scores": {key(m): float(s) for m in metrics},
                "prompt": "p",
                "output": f"answer {'right' if s else 'wrong'}",
                "target": "t",
            }
            for i, s in enumerate(solved)
        ],
    )


TASKS = {
    "gsm8k_cot": ["exact_match,strict-match", "exact_match,flexible-extract"],
    "demo_arith_gen": ["exact_match"],
}


class ResultsBuilder:
    """Writes run folders. `ability(method, grid) -> float` plants the effects."""

    def __init__(self, root: Path, seed: int = 0, item_noise: float = 0.05, seed_noise: float = 0.01) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.difficulty = {t: self.rng.uniform(size=N_ITEMS) for t in TASKS}
        self.item_noise, self.seed_noise = item_noise, seed_noise

    def solve(self, ability: float) -> dict[str, np.ndarray]:
        return {
            t: (u + self.rng.normal(0, self.item_noise, size=u.size) < ability).astype(float)
            for t, u in self.difficulty.items()
        }

    def base(self, ability: float = 0.3, *, name: str = "base-tiny", model_hash: str = "m" * 64) -> Path:
        d = self.root / name
        for task, solved in self.solve(ability).items():
            write_eval(d, task, TASKS[task], solved, "base", full_keys=True)
        _dump(d / "provenance.json", {"model_hash": model_hash})
        return d

    def run(
        self,
        method: str,
        seed: int,
        grid: dict,
        ability: float,
        *,
        model_hash: str = "m" * 64,
        summary: dict | None = None,
        run_id: str | None = None,
    ) -> Path:
        """One finished run; `summary` adds or overrides train_summary.json fields."""
        run_id = run_id or f"{method}-{seed}-" + "-".join(
            f"{k.split('.')[-1]}{v}" for k, v in sorted(grid.items())
        )
        d = self.root / run_id
        spec = {
            "model": {"name": "tiny"},
            "method": {"type": method, "beta": 0.1},
            "training": {"batch_size": 8, "gradient_accumulation_steps": 2, "precision": "fp32", "lr": 1e-6},
            "seed": seed,
        }
        _dump(d / "run.json", {"run_id": run_id, "experiment": "synthetic", "spec_hash": "s" * 16, "method": method,
                               "seed": seed, "grid": grid, "spec": spec})  # fmt: skip
        _dump(d / "status.json", {"stages": {s: {"done": True, "at": "2024-01-01T00:00:00"} for s in
                                             ("data", "reference", "train", "eval", "done")}})  # fmt: skip
        flips = grid.get("corruption.flip_rate", 0.0)
        _dump(d / "data_report.json", {"fingerprint": f"fp-{flips}-{seed}", "counts": {"desirable": 100, "undesirable": 100},
                                       "lambda": {"desirable": 1.0, "undesirable": 1.0}, "flipped_ids": [],
                                       "n_flipped": int(100 * flips)})  # fmt: skip
        _dump(d / "provenance.json", {"spec_hash": "s" * 16, "data_fingerprint": f"fp-{flips}-{seed}",
                                      "model_hash": model_hash, "packages": {"torch": "2.13"},
                                      "git": {"commit": "abc123", "dirty": False}, "hardware": {"cpu": "test"},
                                      "started_at": "2024-01-01T00:00:00", "finished_at": "2024-01-01T00:01:00"})  # fmt: skip
        rewards_key = "desirable" if method == "kto" else "chosen"
        undesirable_key = "undesirable" if method == "kto" else "rejected"
        _dump_lines(
            d / "metrics.jsonl",
            [{"step": s, "train/loss": 0.7 - 0.01 * s + 0.001 * seed, f"train/rewards/{rewards_key}": 0.02 * s,
              f"train/rewards/{undesirable_key}": -0.02 * s, "train/kl": 0.01 * s, "train/lr": 1e-6,
              "train/grad_norm": 1.0, "time/step_s": 0.5, "tokens/seen": 1000 * s} for s in range(1, 21)],
        )  # fmt: skip
        _dump(
            d / "train_summary.json",
            {"steps": 20, "tokens": 20000, "wall_s": 10.0, "stopped": None, **(summary or {})},
        )
        _dump_lines(
            d / "rewards.jsonl",
            [{"source_id": f"x{i}", "desirable": i % 2 == 0, "reward": float(self.rng.normal(0.5 if i % 2 == 0 else -0.5))}
             for i in range(60)],
        )  # fmt: skip
        shift = self.rng.normal(0, self.seed_noise)
        for task, solved in self.solve(ability + shift).items():
            write_eval(d, task, TASKS[task], solved, run_id, full_keys=task != "demo_arith_gen")
        return d


def build(
    root: Path,
    ability: Callable[[str, dict], float],
    grids: list[dict],
    methods=("dpo", "kto"),
    seed: int = 0,
):
    b = ResultsBuilder(root, seed=seed)
    b.base()
    for grid in grids:
        for method in methods:
            for s in SEEDS:
                b.run(method, s, grid, ability(method, grid))
    return root


@pytest.fixture
def builder():
    return build

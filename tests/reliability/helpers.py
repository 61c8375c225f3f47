"""Helpers of the reliability suite: the spec, a `kto-bench` subprocess runner, result digests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

SPEC = """\
name: rel
model: {source: demo, name: arith-tiny, dtype: float32}
data: {source: demo_arith, path: arith-tiny, max_length: 64, max_prompt_length: 24}
methods:
  - {type: kto, beta: 0.1}
  - {type: dpo, beta: 0.1}
training: {lr: 1.0e-3, precision: fp32, batch_size: 4, budget: {rule: steps, value: 4}, checkpoint_every: 2}
evaluation:
  batch_size: 32
  tasks:
    - {name: demo_arith_gen, apply_chat_template: true, limit: 4, max_new_tokens: 16}
    - {name: demo_arith_mc, apply_chat_template: true, limit: 4}
"""
SECRET = "sk-test-PLANTED"
TIMING_KEYS = ("time/", "throughput/")
STAGE_LINE = re.compile(r"^(data|reference|train|eval|done) (\S+)\s*$", re.M)


@dataclass
class Result:
    returncode: int
    output: str  # stdout and stderr, interleaved
    killed: bool


def cli(
    args: list[str], cwd: Path, *, env: dict | None = None, kill_on: str | None = None, timeout: float = 300
) -> Result:
    """Run `kto-bench ARGS` in a subprocess; with `kill_on`, SIGKILL it once a line matches that regex."""
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "200",
        **(env or {}),
    }
    cmd = [sys.executable, "-c", "from kto_bench.cli import main; main()", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    killed = False
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if kill_on and not killed and re.search(kill_on, line):
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
        proc.wait()
    finally:
        timer.cancel()
    return Result(proc.returncode, "".join(lines), killed)


def stage_lines(output: str) -> list[tuple[str, str]]:
    """(stage, run id) for each stage a `kto-bench run` started, from its log."""
    return STAGE_LINE.findall(output)


def write_spec(folder: Path, text: str = SPEC, name: str = "rel.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def run_dirs(results: Path, experiment: str = "rel") -> dict[str, Path]:
    """{method (or 'base'): run folder}."""
    out = {}
    for d in sorted((results / experiment).iterdir()):
        meta = json.loads((d / "run.json").read_text())
        out[meta["method"]] = d
    return out


def curve(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields (which are never reproducible)."""
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING_KEYS)} for r in rows]


def eval_digest(run_dir: Path) -> dict:
    """Every task's metric values and every sample's output and scores."""
    out = {}
    for f in sorted((run_dir / "eval").glob("*.json")):
        res = json.loads(f.read_text())
        out[f.stem] = [(m["metric"], m["value"]) for m in res["metrics"]]
        samples = run_dir / "eval" / f"{f.stem}.samples.jsonl"
        out[f.stem + ".samples"] = [
            (s.get("item_id"), s.get("output"), s.get("scores"))
            for s in map(json.loads, samples.read_text().splitlines())
        ]
    return out


def digest(results: Path) -> dict:
    """Everything a rerun of the same spec must reproduce exactly, per method."""
    out = {}
    for method, d in run_dirs(results).items():
        entry = {"eval": eval_digest(d)}
        if method != "base":
            entry["fingerprint"] = json.loads((d / "data_report.json").read_text())["fingerprint"]
            entry["curve"] = curve(d)
            entry["rewards"] = (d / "rewards.jsonl").read_text() if (d / "rewards.jsonl").exists() else None
        out[method] = entry
    return out


def all_json_parses(root: Path) -> list[Path]:
    """Every .json/.jsonl file under root (raises if one does not parse)."""
    files = [p for p in root.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file()]
    for p in files:
        text = p.read_text()
        if p.suffix == ".json":
            json.loads(text)
        else:
            for ln in text.splitlines():
                json.loads(ln)
    return files


@dataclass
class Baseline:
    results: Path
    reports: Path
    outputs: list[str]  # the log of each process
    digest: dict

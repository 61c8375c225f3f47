"""`kto-bench bench train|eval`: our entry points against their peers on the same inputs, with provenance.

train.py     a run's own stages (`kto-bench run`) vs TRL on the examples the run trained
peer_trl.py  the TRL contender: KTOTrainer / DPOTrainer at their defaults and with precomputed reference
eval.py      `kto-bench eval` vs lm-eval's `hf` backend at the batch sizes users pick (1, 64, auto)
record.py    settings, presets (spec fragments), timing and memory, provenance, the JSON record
table.py     the record as Markdown
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kto_bench.bench.record import BenchSettings, bench_name, wrap, write_results


def run_bench(s: BenchSettings) -> dict[str, Any]:
    """Run one bench and return its record (nothing written)."""
    import torch

    s.check()
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    if s.kind == "train":
        from kto_bench.bench.train import bench_train as body
    else:
        from kto_bench.bench.eval import bench_eval as body
    return wrap(s, body(s))


def main(s: BenchSettings, out_dir: Path = Path("results/bench"), name: str | None = None) -> Path:
    """The `kto-bench bench` command: run, write <name>.json and <name>.md, return the JSON path."""
    json_path, _ = write_results(run_bench(s), out_dir, name or bench_name(s))
    return json_path

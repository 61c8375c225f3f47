"""Does a bf16 run move as far as an fp32 run? One run of a spec, trained under each precision through the
pipeline (`kto-bench run` with --set overrides), compared on how far training moved it.

    python scripts/precision_compare.py experiments/demo.yaml --method dpo --set training.lr=2e-5

For each mode it reports mean |β·r| of the trained policy on its training examples (rewards.jsonl) and the
relative parameter change ||θ - θ0|| / ||θ0||, and the ratio of each to fp32's. `legacy` reproduces the old
behaviour (AdamW straight on bf16 weights, round-to-nearest) for comparison. Writes a JSON record with
provenance and a Markdown table under --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def moved(store: Path, base_dir: str) -> dict:
    from safetensors.torch import load_file

    rewards = [json.loads(ln)["reward"] for ln in (store / "rewards.jsonl").read_text().splitlines()]
    final = load_file(next((store / "checkpoints" / "final").glob("*.safetensors")))
    base = load_file(next(Path(base_dir).glob("*.safetensors")))
    # against the base in the trained weights' dtype, so a bf16 run's cast is not counted as movement
    num = sum(
        ((final[k].float() - base[k].to(final[k].dtype).float()) ** 2).sum() for k in base if k in final
    )
    den = sum((base[k].float() ** 2).sum() for k in base if k in final)
    return {
        "mean_abs_beta_r": sum(map(abs, rewards)) / len(rewards),
        "rel_param_change": float((num / den).sqrt()),
    }


def main() -> None:
    from kto_bench import pipeline
    from kto_bench.spec import expand, load_spec, parse_overrides
    from kto_bench.store import base_provenance
    from kto_bench.train import precision

    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--method", default="dpo")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--out", default="results/precision")
    ap.add_argument("--modes", default="fp32,bf16,bf16_pure,legacy")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for mode in a.modes.split(","):
        sets = [
            *a.set,
            "evaluation.tasks=[]",
            "model.dtype=bfloat16" if mode != "fp32" else "model.dtype=float32",
        ]
        sets.append(f"training.precision={'bf16_pure' if mode == 'legacy' else mode}")
        spec = load_spec(a.spec, parse_overrides(sets))
        run = next(r for r in expand(spec) if r.method.type == a.method)
        real = precision.optimizer
        if mode == "legacy":  # AdamW on bf16 weights, nearest rounding: what bf16 meant before
            precision.optimizer = lambda r, params: torch.optim.AdamW(
                params, lr=r.training.lr, betas=r.training.adam_betas, weight_decay=r.training.weight_decay
            )
        with tempfile.TemporaryDirectory() as tmp:
            try:
                pipeline.run_one(spec, run, Path(tmp), stop_after="train")
            finally:
                precision.optimizer = real
            where, _ = pipeline.resolved(run)
            store = Path(tmp) / spec.name / run.run_id
            rows.append({"mode": mode, "run_id": run.run_id, **moved(store, where)})
        print(rows[-1], flush=True)
    ref = next(r for r in rows if r["mode"] == "fp32")
    for r in rows:
        r["ratio_beta_r"] = r["mean_abs_beta_r"] / ref["mean_abs_beta_r"]
        r["ratio_param_change"] = r["rel_param_change"] / ref["rel_param_change"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{Path(a.spec).stem}-{a.method}"
    record = {
        "spec": a.spec,
        "method": a.method,
        "set": a.set,
        "rows": rows,
        "provenance": base_provenance("-", name),
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    lines = [
        f"# precision: {a.spec} ({a.method}, {' '.join(a.set) or 'spec defaults'})",
        "",
        "| mode | mean abs β·r | × fp32 | rel. param change | × fp32 |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['mean_abs_beta_r']:.3g} | {r['ratio_beta_r']:.2f} | "
            f"{r['rel_param_change']:.3g} | {r['ratio_param_change']:.2f} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

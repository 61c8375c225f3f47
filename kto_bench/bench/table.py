"""A bench record as Markdown: the table of contenders, agreement, ratios, FLOPs rule, provenance (pure)."""

from __future__ import annotations

from typing import Any


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}g}"
    return str(x)


def _train(rec: dict[str, Any]) -> list[str]:
    lines = [
        "| contender | weights / compute | steps/s | real tok/s | processed tok/s | padding | MFU | "
        "peak GiB | warm-up s | one-time s | real tok/s incl. one-time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        prec = r.get("settings", {}).get("precision") or {}
        lines.append(
            f"| {r['name']} | {prec.get('master_dtype', '?')} / {prec.get('compute_dtype', '?')} | "
            f"{_f(r['steps_per_s'])} | {_f(r['tokens_per_s_real'])} | {_f(r['tokens_per_s_processed'])} | "
            f"{_f(r['padding_fraction'], 2)} | {_f(r['mfu'], 2)} | {_f(r['peak_memory_gib'])} | "
            f"{_f(r['warmup_s'])} | {_f(r['one_time_s'])} | {_f(r['tokens_per_s_real_with_one_time'])} |"
        )
    passes = "; ".join(
        f"{m}: {_f(p['seconds'])} s ({p['sequences']} sequences)" for m, p in rec["reference_pass"].items()
    )
    lines += ["", f"Reference stage (once per data and model, shared by methods, seeds and β): {passes}."]
    if la := rec.get("layout_agreement"):
        lines += [
            "",
            f"Fast path vs plain path ({la['sequences']} sequences of the first DPO and KTO+KL microbatches): "
            f"{la['fast']['layout']} layout with {la['fast']['attention']} (rows of "
            f"{la['fast']['row_tokens'] or 'one microbatch'}) vs padded SDPA, per-sequence log-probs differ by "
            f"at most {_f(la['max_abs_diff'])} nats ({_f(la['max_rel_diff'])} relative).",
        ]
    return lines


def _eval(rec: dict[str, Any]) -> list[str]:
    lines = [
        "| contender | batch | requests/s | generated tok/s | processed tok/s | MFU | peak GiB | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        batch = (
            r["batch_size"]
            if not r.get("batch_size_detected")
            else f"{r['batch_size']} → {r['batch_size_detected']}"
        )
        lines.append(
            f"| {r['name']} | {batch} | {_f(r['requests_per_s'])} | {_f(r['generated_tokens_per_s'])} | "
            f"{_f(r['tokens_per_s_processed'])} | {_f(r['mfu'], 2)} | {_f(r['peak_memory_gib'])} | "
            f"{_f(r['measured_s'])} |"
        )
    lines += [
        "",
        "| task @ lm-eval batch | items | identical generations | log-likelihood max diff | same scores |",
    ]
    lines += ["|---|---|---|---|---|"]
    for k, a in rec["agreement"].items():
        lines.append(
            f"| {k} | {a['items']} | {_f(a['generate_identical'], 2)} | {_f(a['loglikelihood_max_abs_diff'])} | "
            f"{_f(a['scores_identical'], 2)} |"
        )
    return lines


def to_markdown(rec: dict[str, Any]) -> str:
    p, s = rec["provenance"], rec["settings"]
    lines = [f"# bench {rec['kind']} vs {rec['against']} · {s['model_config']} · {p['gpu'] or 'CPU'}", ""]
    if rec.get("note"):
        lines += [f"> **{rec['note']}**", ""]
    lines += _train(rec) if rec["kind"] == "train" else _eval(rec)
    lines += ["", "| ours | peer | metric | ratio ours/peer |", "|---|---|---|---|"]
    lines += [f"| {r['ours']} | {r['peer']} | {r['metric']} | {_f(r['ratio'])} |" for r in rec["ratios"]]
    params = rec["model"]["params"]
    provenance = [
        f"GPU {p['gpu'] or 'none'}",
        f"torch {p['torch']}",
        f"CUDA {p['cuda']}",
        *(f"{k} {v}" for k, v in p["packages"].items() if v),
        f"git {(p['git']['commit'] or 'unknown')[:12]}{' (dirty)' if p['git']['dirty'] else ''}",
        f"{p['hardware'].get('cpu')} × {p['hardware'].get('cpu_count')} CPUs",
    ]
    lines += [
        "",
        f"FLOPs: {rec['flops_n_definition']}; N = {params['flops_n']:,} "
        f"(total {params['total']:,}, non-embedding {params['non_embedding']:,}).",
        "",
        "Provenance: " + ", ".join(provenance),
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in s.items()),
        "",
        f"GPU command: `{rec['gpu_command']}`",
        "",
    ]
    return "\n".join(lines)

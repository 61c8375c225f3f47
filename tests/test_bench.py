"""The bench harness (tiny preset, ours vs TRL and vs lm-eval hf) and every fast path against its plain path."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import torch

from kto_bench import bench
from kto_bench.errors import KtoBenchError

TRAIN_ROW_KEYS = {
    "side",
    "method",
    "variant",
    "name",
    "steps",
    "warmup_steps",
    "warmup_s",
    "measured_s",
    "steps_per_s",
    "tokens_per_s_real",
    "tokens_per_s_processed",
    "padding_fraction",
    "mfu",
    "peak_memory_gib",
    "peak_memory_kind",
    "one_time_s",
    "tokens_per_s_real_with_one_time",
    "tokens_real_total",
    "settings",
}


def rows_by_name(record: dict) -> dict[str, dict]:
    return {r["name"]: r for r in record["rows"]}


def check_ratios(record: dict) -> None:
    rows = rows_by_name(record)
    assert record["ratios"]
    for r in record["ratios"]:
        assert r["ours_value"] == rows[r["ours"]][r["metric"]]
        assert r["peer_value"] == rows[r["peer"]][r["metric"]]
        assert r["ratio"] == pytest.approx(r["ours_value"] / r["peer_value"])


def check_provenance(record: dict) -> None:
    p = record["provenance"]
    assert p["torch"] == torch.__version__
    assert p["packages"]["transformers"] and p["packages"]["trl"] and p["packages"]["lm_eval"]
    assert set(p["git"]) == {"commit", "dirty"}
    assert p["hardware"]["cpu_count"] >= 1
    assert record["schema"] == bench.SCHEMA
    assert record["settings"]["model_config"] == "tiny"


@pytest.fixture(scope="module")
def train_record():
    s = bench.BenchSettings(
        kind="train",
        against="trl",
        model_config="tiny",
        steps=2,
        warmup=1,
        threads=1,
        reference_batch_size=16,
        methods=("kto", "dpo"),
        device="cpu",
    )
    return bench.run_bench(s)


def test_train_bench_schema_ratios_provenance(train_record, tmp_path):
    rec = train_record
    ours_variants = {
        "kto": ["padded", "packed", "shared", "shared + fused KL", "shared + checkpointing"],
        "dpo": ["padded", "packed", "shared", "shared + checkpointing"],
    }
    assert {r["name"] for r in rec["rows"]} == {
        f"{side}-{m}-{v}"
        for m in ("kto", "dpo")
        for side, v in [("ours", v) for v in ours_variants[m]]
        + [("trl", "defaults"), ("trl", "precompute_ref_log_probs")]
    }
    for row in rec["rows"]:
        assert set(row) >= TRAIN_ROW_KEYS
        assert row["steps"] == 2 and row["warmup_steps"] == 1 and row["measured_s"] > 0
        assert row["steps_per_s"] == pytest.approx(1 / row["measured_s"])
        assert 0 <= row["padding_fraction"] < 1
        assert row["tokens_per_s_real"] > 0 and row["tokens_per_s_processed"] > 0
        assert row["mfu"] is None  # CPU: no peak FLOPs
        assert row["peak_memory_kind"] == "sampled process RSS during the run" and row["peak_memory_gib"] > 0
        assert row["tokens_per_s_real_with_one_time"] <= row["tokens_per_s_real"]
    check_ratios(rec)
    check_provenance(rec)
    assert "H100" in rec["note"] and rec["gpu_command"] in rec["note"]
    assert rows_by_name(rec)["ours-dpo-shared + checkpointing"]["settings"]["gradient_checkpointing"] is True
    assert rows_by_name(rec)["ours-dpo-shared"]["settings"]["gradient_checkpointing"] is False
    agreement = rec["layout_agreement"]  # fp32 on CPU: the shared layout gives the padded path's log-probs
    assert agreement["fast"]["layout"] == "shared" and agreement["plain"]["layout"] == "padded"
    assert agreement["max_rel_diff"] < 1e-5
    # the peer saw exactly our tokens: same trained non-pad tokens over the run (one epoch of the same data)
    rows = rows_by_name(rec)
    for m in ("kto", "dpo"):
        for v in ours_variants[m]:
            ours = rows[f"ours-{m}-{v}"]["tokens_real_total"]
            assert ours == rows[f"trl-{m}-defaults"]["tokens_real_total"]
            assert ours == rows[f"trl-{m}-precompute_ref_log_probs"]["tokens_real_total"]
        # packing removes the padding; sharing also runs each pair's prompt (KTO: each KL row's prompt) once
        padded = rows[f"ours-{m}-padded"]["padding_fraction"]
        assert padded > 0.2  # right-padding to the longest row of random lengths
        assert rows[f"ours-{m}-packed"]["padding_fraction"] < padded / 2
        assert rows[f"ours-{m}-shared"]["padding_fraction"] < padded / 2
        assert (
            rows[f"ours-{m}-shared"]["executed_per_trained_token"]
            < rows[f"ours-{m}-packed"]["executed_per_trained_token"]
        )
    assert rows["ours-kto-shared"]["one_time_s"] == pytest.approx(
        rec["reference_pass"]["matched"]["seconds"] + rec["reference_pass"]["kl"]["seconds"]
    )
    # every distinct sequence once: the pairs' (KTO's matched ones are among them), then the new KL rows
    inp = bench.train_inputs("tiny", n_pairs=16, n_binary=16, seed=0)
    data = bench.tokenized_data(inp, batch_size=8, max_length=bench.PRESETS["tiny"]["max_length"])
    matched = {data.sequences[i] for pair in data.pairs for i in pair}
    kl = {data.sequences[k] for batch in data.kl_seqs for k in batch} - matched
    assert rec["reference_pass"]["matched"]["sequences"] == len(matched) == 2 * rec["inputs"]["pairs"]
    assert rec["reference_pass"]["kl"]["sequences"] == len(kl)
    assert rec["inputs"]["data_fingerprint"] == data.fingerprint()

    json_path, md_path = bench.write_results(rec, tmp_path, "t")
    assert bench.read_json_file(json_path)["rows"] == rec["rows"]
    md = md_path.read_text()
    assert (
        "ours-kto-shared + fused KL" in md
        and "Fast path vs plain path" in md
        and rec["gpu_command"] in md
        and f"trl {version('trl')}" in md
    )


def test_eval_bench_schema_ratios_agreement(tmp_path):
    s = bench.BenchSettings(
        kind="eval", against="lm-eval-hf", model_config="tiny", limit=2, threads=1, device="cpu"
    )
    rec = bench.run_bench(s)
    assert {r["name"] for r in rec["rows"]} == {
        "ours-generate",
        "ours-loglikelihood",
        "lm-eval-hf-generate",
        "lm-eval-hf-loglikelihood",
    }
    rows = rows_by_name(rec)
    assert rows["lm-eval-hf-generate"]["batch_size"] == 1  # lm-eval's default
    assert rows["ours-generate"]["requests"] == 2 and rows["ours-loglikelihood"]["requests"] == 32
    for r in rec["rows"]:
        assert r["measured_s"] > 0 and r["requests_per_s"] == pytest.approx(r["requests"] / r["measured_s"])
    # greedy on the same fp32 model: same texts and the same scores, so the timings compare equal work
    assert rec["agreement"]["generate_identical"] == 1.0
    assert rec["agreement"]["loglikelihood_max_abs_diff"] < 1e-3
    check_ratios(rec)
    check_provenance(rec)
    _, md_path = bench.write_results(rec, tmp_path, "e")
    assert "lm-eval-hf-generate" in md_path.read_text()


# ----------------------------------------------------------------------------- pure parts


def test_summarize_excludes_warmup_and_counts_flops():
    log = bench.StepLog(
        times=[5.0, 1.0, 1.0],
        trained=[100, 10, 30],
        processed=[200, 20, 60],
        grad=[100, 10, 30],
        kl=[50, 5, 15],
        reference=[0, 1, 1],
    )
    out = bench.summarize(log, warmup=1, n=1000, peak=1e6)
    assert out["warmup_s"] == 5.0 and out["measured_s"] == 2.0 and out["steps_per_s"] == 1.0
    assert out["tokens_per_s_real"] == 20.0 and out["tokens_per_s_processed"] == 40.0
    assert out["padding_fraction"] == pytest.approx(0.25)
    assert out["executed_per_trained_token"] == pytest.approx((40 + 20 + 2) / 40)
    flops = 6 * 1000 * 40 + 2 * 1000 * (20 + 2)
    assert out["model_flops_per_s"] == flops / 2 and out["mfu"] == pytest.approx(flops / 2 / 1e6)
    assert out["tokens_real_total"] == 140
    assert bench.summarize(log, 1, 1000, None)["mfu"] is None
    with pytest.raises(KtoBenchError, match="--steps"):
        bench.summarize(log, warmup=3, n=1, peak=None)


def test_param_counts_tied_head_counts_once():
    model = bench.build_model("tiny", torch.device("cpu"), 0)
    c = bench.param_counts(model)
    emb = model.get_input_embeddings().weight.numel()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert c["total"] == sum(p.numel() for p in model.parameters())
    assert c["non_embedding"] == c["total"] - emb and c["flops_n"] == c["total"]


def test_synthetic_text_encodes_to_our_ids():
    tok = bench.synthetic_tokenizer(512)
    inp = bench.train_inputs("tiny", n_pairs=4, n_binary=4, seed=1)
    for p, c in zip(inp.prompts, inp.chosen, strict=True):
        assert c[-1] == tok.eos_token_id
        prompt = bench.ids_text(p, tok)
        assert tok(prompt, add_special_tokens=False)["input_ids"] == list(p)
        full = tok(prompt + bench.completion_text(c, tok), add_special_tokens=False)["input_ids"]
        assert full == list(p) + list(c)


def test_tokenized_data_batches_and_kl_pairs():
    inp = bench.train_inputs("tiny", n_pairs=8, n_binary=8, seed=0)
    data = bench.tokenized_data(inp, batch_size=4, max_length=128)
    assert data.pair_batches == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(data.binary_batches) == 2
    for b, batch in enumerate(data.binary_batches):
        seqs = [data.sequences[data.binary[i][0]] for i in batch]
        kl = [data.sequences[k] for k in data.kl_seqs[b]]
        assert [k[0] for k in kl] == [s[0] for s in seqs]  # own prompt
        assert [k[1] for k in kl] == [seqs[(j + 1) % 4][1] for j in range(4)]  # the next slot's completion


def test_bad_settings_are_project_errors():
    with pytest.raises(KtoBenchError, match="model-config"):
        bench.run_bench(bench.BenchSettings(kind="train", against="trl", model_config="nope"))
    with pytest.raises(KtoBenchError, match="'trl'"):
        bench.run_bench(bench.BenchSettings(kind="train", against="lm-eval-hf", model_config="tiny"))
    with pytest.raises(KtoBenchError, match="'lm-eval-hf'"):
        bench.run_bench(bench.BenchSettings(kind="eval", against="trl", model_config="tiny"))

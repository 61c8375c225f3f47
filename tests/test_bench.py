"""The bench package on the arith-tiny world: `kto-bench run`'s train stage vs TRL, `kto-bench eval` vs lm-eval
`hf` at batch 1, 64 and auto; and its pure parts."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kto_bench import bench, pipeline
from kto_bench.bench import peer_trl, record, train
from kto_bench.bench.eval import agreement
from kto_bench.errors import KtoBenchError
from kto_bench.io import read_json

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
TINY = dict(model_config="tiny", threads=1, device="cpu")


def rows_by_name(rec: dict) -> dict[str, dict]:
    return {r["name"]: r for r in rec["rows"]}


def check_ratios(rec: dict) -> None:
    rows = rows_by_name(rec)
    assert rec["ratios"]
    for r in rec["ratios"]:
        assert r["ours_value"] == rows[r["ours"]][r["metric"]]
        assert r["peer_value"] == rows[r["peer"]][r["metric"]]
        assert r["ratio"] == pytest.approx(r["ours_value"] / r["peer_value"])


def check_provenance(rec: dict) -> None:
    p = rec["provenance"]
    assert p["torch"] == torch.__version__
    assert p["packages"]["transformers"] and p["packages"]["trl"] and p["packages"]["lm_eval"]
    assert set(p["git"]) == {"commit", "dirty"}
    assert p["hardware"]["cpu_count"] >= 1
    assert rec["schema"] == record.SCHEMA
    assert rec["settings"]["model_config"] == "tiny"
    assert "H100" in rec["note"] and rec["gpu_command"] in rec["note"]


@pytest.fixture(scope="module")
def train_record():
    s = record.BenchSettings(
        kind="train", against="trl", steps=2, warmup=1, batch_size=2, reference_batch_size=16, **TINY
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
    rows = rows_by_name(rec)
    assert rows["ours-dpo-shared + checkpointing"]["settings"]["gradient_checkpointing"] is True
    assert rows["ours-dpo-shared"]["settings"]["gradient_checkpointing"] is False
    assert rows["ours-kto-shared + fused KL"]["settings"]["kl_pass"] == "fused"
    # each of ours is a run of its own (its spec differs in the layout only), trained by the train stage
    assert (
        len({rows[f"ours-{m}-{v}"]["settings"]["run_id"] for m in ours_variants for v in ours_variants[m]})
        == 9
    )
    agreement_ = rec["layout_agreement"]  # fp32 on CPU: the shared layout gives the padded path's log-probs
    assert agreement_["fast"]["layout"] == "shared" and agreement_["plain"]["layout"] == "padded"
    assert agreement_["max_rel_diff"] < 1e-5
    for m in ("kto", "dpo"):
        # TRL trained exactly our examples: their text encodes to our ids, and the same tokens over the run
        for v in ("defaults", "precompute_ref_log_probs"):
            assert rows[f"trl-{m}-{v}"]["settings"]["text_encodes_to_our_ids"] == 1.0
        for v in ours_variants[m]:
            ours = rows[f"ours-{m}-{v}"]["tokens_real_total"]
            assert ours == rows[f"trl-{m}-defaults"]["tokens_real_total"]
            assert ours == rows[f"trl-{m}-precompute_ref_log_probs"]["tokens_real_total"]
            assert rows[f"ours-{m}-{v}"]["one_time_s"] == rec["reference_pass"][m]["seconds"]
        # packing removes padding; sharing also runs each pair's prompt once
        assert rows[f"ours-{m}-packed"]["padding_fraction"] <= rows[f"ours-{m}-padded"]["padding_fraction"]
        assert rows[f"ours-{m}-shared"]["padding_fraction"] <= rows[f"ours-{m}-padded"]["padding_fraction"]
        assert rec["reference_pass"][m]["sequences"] == rec["inputs"][m]["counts"]["sequences"]
    assert rows["ours-dpo-padded"]["padding_fraction"] > 0  # right-padding to the longest row
    assert (
        rows["ours-dpo-shared"]["executed_per_trained_token"]
        < rows["ours-dpo-packed"]["executed_per_trained_token"]
    )
    assert (
        rec["inputs"]["kto"]["data_fingerprint"] == rec["inputs"]["dpo"]["data_fingerprint"]
    )  # one data set

    json_path, md_path = record.write_results(rec, tmp_path, "t")
    assert read_json(json_path)["rows"] == rec["rows"]
    md = md_path.read_text()
    assert "ours-kto-shared + fused KL" in md and "Fast path vs plain path" in md
    assert rec["gpu_command"] in md and f"trl {version('trl')}" in md


def test_ours_is_the_run_train_stage(monkeypatch, tmp_path):
    """Our contender is `kto-bench run`'s train stage, and its numbers are the run's own metrics.jsonl."""
    calls = []
    stage_train = pipeline.stage_train

    def spy(run, store, root, spec):
        calls.append(run.run_id)
        stage_train(run, store, root, spec)

    monkeypatch.setattr(pipeline, "stage_train", spy)
    s = record.BenchSettings(kind="train", against="trl", steps=2, warmup=1, batch_size=2, **TINY)
    got = train.run_ours(s, "dpo", {"layout": "shared"}, tmp_path)
    assert calls == [got["run"].run_id]
    logged = got["store"].file("metrics.jsonl").read_text().splitlines()
    assert [st["step"] for st in got["steps"]] == [1, 2] == list(range(1, len(logged) + 1))
    summary = read_json(got["store"].file("train_summary.json"))
    assert summary["steps"] == 2 and summary["tokens"] == sum(st["tokens/trained"] for st in got["steps"])
    # TRL's examples are the microbatches this run trained, in its order
    data = pipeline.load_data(got["store"])
    examples = peer_trl.trained_examples(got["run"], data)
    assert (
        len(examples) == 2 * 2
        and sum(len(p) + len(c) + len(p) + len(r) for p, c, r in examples) == summary["tokens"]
    )


def test_eval_bench_against_lm_eval_hf_batch_sizes(tmp_path):
    s = record.BenchSettings(kind="eval", against="lm-eval-hf", limit=2, batch_sizes=(1, 64, "auto"), **TINY)
    rec = bench.run_bench(s)
    tasks = ("demo_arith_gen", "demo_arith_mc")
    assert {r["name"] for r in rec["rows"]} == {
        name for t in tasks for name in (f"ours-{t}", *(f"lm-eval-hf-b{b}-{t}" for b in (1, 64, "auto")))
    }
    rows = rows_by_name(rec)
    for t in tasks:
        assert [rows[f"lm-eval-hf-b{b}-{t}"]["batch_size"] for b in (1, 64, "auto")] == [1, 64, "auto"]
        assert rows[f"ours-{t}"]["batch_size"] == 64
        for b in (1, 64, "auto"):
            # the same items and model: the same texts, scores and metrics, so the timings compare equal work
            a = rec["agreement"][f"{t}@{b}"]
            assert a["items"] == 2 and a["scores_identical"] == 1.0
            assert rows[f"lm-eval-hf-b{b}-{t}"]["metrics"] == pytest.approx(rows[f"ours-{t}"]["metrics"])
    assert all(
        a["generate_identical"] == 1.0 for k, a in rec["agreement"].items() if k.startswith("demo_arith_gen")
    )
    assert all(
        a["loglikelihood_max_abs_diff"] < 1e-3
        for k, a in rec["agreement"].items()
        if k.startswith("demo_arith_mc")
    )
    for r in rec["rows"]:
        assert r["requests"] == 2
        assert r["measured_s"] > 0 and r["requests_per_s"] == pytest.approx(r["requests"] / r["measured_s"])
    assert rows["ours-demo_arith_gen"]["generated_tokens"] > 0
    check_ratios(rec)
    check_provenance(rec)
    _, md_path = record.write_results(rec, tmp_path, "e")
    assert "lm-eval-hf-bauto-demo_arith_gen" in md_path.read_text()


# ----------------------------------------------------------------------------- pure parts


def test_summarize_excludes_warmup_and_counts_flops():
    def step(secs, trained, processed, grad, kl, ref):
        return {
            "time/step_s": secs,
            "tokens/trained": trained,
            "tokens/processed": processed,
            "tokens/nonpad_grad": grad,
            "tokens/nonpad_nograd": kl,
            "tokens/reference": ref,
        }

    steps = [step(5.0, 100, 200, 100, 50, 0), step(1.0, 10, 20, 10, 5, 1), step(1.0, 30, 60, 30, 15, 1)]
    out = record.summarize(steps, warmup=1, n=1000, peak=1e6)
    assert out["warmup_s"] == 5.0 and out["measured_s"] == 2.0 and out["steps_per_s"] == 1.0
    assert out["tokens_per_s_real"] == 20.0 and out["tokens_per_s_processed"] == 40.0
    assert out["padding_fraction"] == pytest.approx(0.25)
    assert out["executed_per_trained_token"] == pytest.approx((40 + 20 + 2) / 40)
    flops = 6 * 1000 * 40 + 2 * 1000 * (20 + 2)
    assert out["model_flops_per_s"] == flops / 2 and out["mfu"] == pytest.approx(flops / 2 / 1e6)
    assert out["tokens_real_total"] == 140
    assert record.summarize(steps, 1, 1000, None)["mfu"] is None
    with pytest.raises(KtoBenchError, match="--steps"):
        record.summarize(steps, warmup=3, n=1, peak=None)


def test_param_counts_tied_head_counts_once():
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, vocab_size=128, tie_word_embeddings=True,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg)
    c = record.param_counts(model)
    emb = model.get_input_embeddings().weight.numel()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert c["total"] == sum(p.numel() for p in model.parameters())
    assert c["non_embedding"] == c["total"] - emb and c["flops_n"] == c["total"]


def test_batch_sizes_and_agreement_are_pure():
    assert record.parse_batch_sizes("1, 64,auto") == (1, 64, "auto")
    assert record.parse_batch_sizes("auto:4") == ("auto:4",)
    for bad in ("", "0", "x", "1,-2"):
        with pytest.raises(KtoBenchError, match="--batch-sizes"):
            record.parse_batch_sizes(bad)
    ours = [
        {"output": "a", "scores": {"m": 1.0}},
        {"output": 1, "loglikelihoods": [-1.0, -2.0], "scores": {"m": 0}},
    ]
    stock = [
        {"output": "b", "scores": {"m": 1.0}},
        {"output": 1, "loglikelihoods": [-1.0, -2.5], "scores": {"m": 0}},
    ]
    a = agreement(ours, stock)
    assert a == {
        "items": 2,
        "generate_identical": 0.0,
        "loglikelihood_max_abs_diff": 0.5,
        "scores_identical": 1.0,
    }


@pytest.mark.parametrize("preset", sorted(record.PRESETS))
def test_every_preset_is_a_valid_spec(preset):
    """A preset is what a user would write: it validates as `kto-bench run` / `kto-bench eval` validate."""
    from kto_bench.bench.eval import evaluation
    from kto_bench.spec import expand

    s = record.BenchSettings(kind="train", against="trl", model_config=preset, steps=5, device="cpu")
    for method, variants in train.VARIANTS.items():
        for training in variants:
            (run,) = expand(train.bench_spec(s, method, training))
            assert run.method.type == method and run.training.budget.rule == "steps"
            assert run.training.budget.value == 5 and run.training.layout == training["layout"]
            assert run.model.model_dump(include={"source", "name"}) == record.PRESETS[preset]["model"]
    for task in record.PRESETS[preset]["tasks"]:
        assert evaluation(s, task).tasks[0].name == task


def test_model_flag_replaces_the_preset_model():
    from kto_bench import models
    from kto_bench.spec import ModelSpec, expand

    folder = models.resolve(ModelSpec(source="demo", name="arith-tiny"))
    s = record.BenchSettings(kind="train", against="trl", model=folder, **TINY)
    assert record.model_spec(s) == {"source": "local", "name": str(Path(folder).resolve())}
    with pytest.raises(KtoBenchError, match="model.source: demo"):  # the demo's data is its own model's
        expand(train.bench_spec(s, "dpo", {"layout": "shared"}))


def test_bad_settings_are_project_errors():
    with pytest.raises(KtoBenchError, match="model-config"):
        bench.run_bench(record.BenchSettings(kind="train", against="trl", model_config="nope"))
    with pytest.raises(KtoBenchError, match="'trl'"):
        bench.run_bench(record.BenchSettings(kind="train", against="lm-eval-hf", model_config="tiny"))
    with pytest.raises(KtoBenchError, match="'lm-eval-hf'"):
        bench.run_bench(record.BenchSettings(kind="eval", against="trl", model_config="tiny"))


def test_cli_batch_sizes_flag_is_checked(tmp_path: Path):
    from kto_bench.cli import app

    result = CliRunner().invoke(app, ["bench", "eval", "--model-config", "tiny", "--batch-sizes", "1,big"])
    assert result.exit_code == 2 and "--batch-sizes" in result.output

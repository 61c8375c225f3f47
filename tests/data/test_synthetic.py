"""The demo world: its problems, flaws and splits, its spec fields, its cache key, and a build that gives
the same bytes whatever the caller's thread settings."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kto_bench.demo import world as synthetic
from kto_bench.demo.world import Problem, mc_item, outcome, splits, verify, world_config, world_key
from kto_bench.errors import DataError, SpecError
from kto_bench.io import stable_hash
from kto_bench.spec import DEMO_WORLDS, DemoWorldSpec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
# a world small enough to build in seconds (same code path as the demo's)
MICRO = {
    "n_sft": 120,
    "sft_steps": 12,
    "sft_batch": 8,
    "hidden": 16,
    "layers": 1,
    "n_feedback_prompts": 8,
    "samples_per_prompt": 2,
    "temperature": 1.0,
    "n_eval": 8,
    "n_eval_mc": 4,
    "n_dev": 4,
    "flaw_sign": 0.5,
}


def test_flawed_procedures_are_rejected_by_the_verifier_and_the_correct_one_accepted():
    p = Problem((3, 9, 4), ("-", "+"))
    assert p.answer == -2 and p.solution == "3-9=-6. -6+4=-2. The answer is -2."
    assert verify(p.answer, p.solution)
    ending = p.worked(flaw_ending=True)
    assert ending == "3-9=-6. -6+4=-2. The result is -2." and not verify(p.answer, ending)
    assert outcome(p.answer, ending) == {"correct": False, "ending_ok": False, "number_ok": True}
    sign = p.worked(flaw_sign=True)
    assert sign == "3-9=6. 6+4=10. The answer is 10." and not verify(p.answer, sign)
    # without a negative step the sign flaw changes nothing
    assert Problem((3, 4), ("+",)).worked(flaw_sign=True) == "3+4=7. The answer is 7."


def test_multiple_choice_items_are_four_worked_answers_with_one_correct():
    rng = random.Random(0)
    for p in synthetic.problems(5, 50):
        choices, label = mc_item(p, rng)
        assert len(set(choices)) == 4
        assert [verify(p.answer, c) for c in choices] == [i == label for i in range(4)]
        assert all(c.startswith(p.solution.split(" ")[0]) or len(p.terms) == 2 for c in choices)


def test_splits_are_disjoint_and_sized_by_the_spec():
    cfg = world_config("arith-tiny", n_eval=40, n_eval_mc=30, n_dev=20)
    s = splits(cfg)
    sets = {k: {p.question for p in getattr(s, k)} for k in ("gen", "mc", "dev", "sft", "feedback")}
    assert {k: len(v) for k, v in sets.items()} == {
        "gen": 40,
        "mc": 30,
        "dev": 20,
        "sft": cfg.n_sft,
        "feedback": cfg.n_feedback_prompts,
    }
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not sets[a] & sets[b], (a, b)


def test_sft_data_mixes_the_flaws_at_the_spec_rates():
    cfg = world_config("arith-sft", n_sft=2000, flaw_ending=0.5, flaw_sign=0.0)
    texts = synthetic.sft_texts(cfg)
    rate = sum("The result is" in c for _, c in texts) / len(texts)
    assert 0.45 < rate < 0.55
    assert all(
        verify(p.answer, c) or "The result is" in c for p, (_, c) in zip(splits(cfg).sft, texts, strict=True)
    )


def test_world_key_ignores_key_neutral_fields_at_their_neutral_value():
    cfg = world_config("arith-sft")
    fields = {k: v for k, v in cfg.model_dump().items() if k != "flaw_sign"}
    assert cfg.flaw_sign == 0.0 and world_key(cfg) == stable_hash(
        {"version": synthetic.VERSION, **fields}, 12
    )
    assert world_key(world_config("arith-sft", flaw_sign=0.2)) != world_key(cfg)
    assert world_key(world_config("arith-sft", n_dev=301)) != world_key(cfg)


SPEC = """
name: w
model: {source: demo, name: %s, dtype: float32%s}
data: {source: demo_arith%s}
methods: [{type: kto}]
"""


def test_the_world_is_part_of_the_spec_and_of_every_run_id():
    spec = parse_spec(SPEC % ("arith-tiny", "", ""))
    assert spec.model.world == DemoWorldSpec(**DEMO_WORLDS["arith-tiny"])
    bigger = parse_spec(SPEC % ("arith-tiny", ", world: {n_feedback_prompts: 65}", ""))
    assert bigger.model.world.n_feedback_prompts == 65 and bigger.model.world.n_sft == 1000

    from kto_bench.spec import expand

    def run(s):
        return expand(s)[0]

    assert run(spec).run_id != run(bigger).run_id
    # the resolved spec round-trips: YAML -> spec -> JSON -> spec keeps the hash
    import yaml

    again = parse_spec(yaml.safe_dump(spec.model_dump(mode="json")))
    assert again.spec_hash == spec.spec_hash
    # a new world is named and given fields; it never falls back to another world's feedback
    new = parse_spec(SPEC % ("mine", ", world: {n_sft: 500}", ""))
    assert new.model.world.n_sft == 500


@pytest.mark.parametrize(
    ("model", "data", "match"),
    [
        ("arith-nope", "", "unknown demo world"),
        ("arith-tiny", ", path: arith-sft", "demo_arith reads the feedback of the model's own demo world"),
    ],
)
def test_demo_spec_mistakes_are_errors(model, data, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(SPEC % (model, "", data))


def test_world_fields_only_for_demo_models_and_demo_feedback_only_with_a_demo_model():
    with pytest.raises(SpecError, match="model.world is for model.source: demo only"):
        parse_spec(
            "name: w\nmodel: {source: hub, name: x, world: {n_sft: 3}}\ndata: {source: hh_rlhf}\nmethods: [{type: kto}]"
        )
    with pytest.raises(SpecError, match="demo_arith reads"):
        parse_spec(
            "name: w\nmodel: {source: hub, name: x}\ndata: {source: demo_arith}\nmethods: [{type: kto}]"
        )


def test_feedback_source_has_no_default_world():
    with pytest.raises(DataError, match="needs a demo world"):
        synthetic.feedback_source()
    with pytest.raises(DataError, match="neither a built demo world folder nor a preset"):
        synthetic.feedback_source(path="/no/such/world")


def test_world_builds_bit_identically_whatever_the_callers_thread_count(tmp_path, monkeypatch):
    """Two builds of one small world into two empty caches, by a caller set to 1 and then 2 threads, give
    the same content hash (every weight tensor and data file), as recorded and as recomputed."""
    import shutil

    import torch

    from kto_bench.demo.world import content_hash, ensure_world, world_hash

    cfg = world_config("arith-tiny", **MICRO)
    hashes, folders = [], []
    before = torch.get_num_threads()
    for threads in (1, 2):
        monkeypatch.setenv("KTO_BENCH_CACHE", str(tmp_path / f"cache{threads}"))
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)
        try:
            folder = ensure_world(cfg, log=lambda *a: None)
        finally:
            torch.set_num_threads(before)
        hashes += [world_hash(cfg), content_hash(folder, cfg)]
        folders.append(folder)
    assert len(set(hashes)) == 1, hashes
    world = json.loads((folders[1] / "world.json").read_text())
    assert world["build_env"]["torch_threads"] == 1 and world["config"]["flaw_sign"] == 0.5
    rows = [json.loads(ln) for ln in (folders[0] / "feedback.jsonl").read_text().splitlines()]
    assert len(rows) == MICRO["n_feedback_prompts"] and all(len(r["samples"]) == 2 for r in rows)
    # the hash sees the content: one changed sample changes it
    copy = tmp_path / "copy"
    shutil.copytree(folders[0], copy)
    rows[0]["samples"][0] += " "
    (copy / "feedback.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert content_hash(copy, cfg) != hashes[0]


def test_the_demo_world_has_a_reference_hash():
    """Changing the demo preset (or VERSION) without rebuilding and recording its hash would leave other
    machines nothing to compare their build against."""
    from kto_bench.spec import load_spec

    cfg = load_spec(ROOT / "experiments" / "demo.yaml").model.world
    assert cfg == world_config("arith-sft")
    assert world_key(cfg) in synthetic.REFERENCE_HASHES

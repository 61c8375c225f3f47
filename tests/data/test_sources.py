"""Data sources: every normaliser on hub-shaped fixtures, local files, mirrors, bad rows, limits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kto_bench import hub as hub_module
from kto_bench.data import sources as S
from kto_bench.data.canonical import BinaryExample, Pair
from kto_bench.errors import DataError
from kto_bench.registry import Registry
from tests.prereq import missing

FIX = Path(__file__).resolve().parents[1] / "fixtures"
HUB = FIX / "hub"
LOCAL = FIX / "local"


def hub(name: str, **kw) -> S.SourceData:
    return S.load(name, path=HUB / f"{name}.jsonl", **kw)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------- hub normalisers


def test_ultrafeedback_rows_become_pairs_with_hub_ids():
    d = hub("ultrafeedback_binarized")
    assert d.kind == "pairs" and len(d.items) == 3 and d.dropped == {}
    p = d.items[0]
    assert (
        p.prompt == (("user", "What is 2+2?"),) and p.chosen == "2+2 equals 4." and p.rejected == "It is 5."
    )
    rows = [json.loads(line) for line in (HUB / "ultrafeedback_binarized.jsonl").read_text().splitlines()]
    assert [x.source_id.split(":")[0] for x in d.items] == [r["prompt_id"] for r in rows]
    assert (
        d.source_info["hub_id"] == "HuggingFaceH4/ultrafeedback_binarized" and d.source_info["split"] is None
    )


def test_kto_mix_rows_become_binary_examples_with_multi_turn_prompts():
    d = hub("kto_mix_14k")
    assert d.kind == "binary" and [x.desirable for x in d.items] == [True, False, True, False]
    multi = d.items[2]
    assert [r for r, _ in multi.prompt] == ["user", "assistant", "user"]
    assert multi.completion == "100 degrees Celsius."


def test_hh_rlhf_transcripts_split_into_prompt_and_final_replies():
    d = hub("hh_rlhf")
    single, multi, tricky = d.items
    assert single.prompt == (("user", "What are some good vegetables to grow in spring?"),)
    assert single.rejected == "I don't know."
    assert multi.prompt == (
        ("user", "Can you help me plan a trip?"),
        ("assistant", "Sure, where would you like to go?"),
        ("user", "Somewhere warm in December."),
    )
    assert multi.chosen.startswith("The Canary Islands") and multi.rejected == "Try the North Pole."
    assert tricky.prompt == (("user", "How do I say 'Human:' in a screenplay?"),)  # inline 'Human:' is text


def test_shp_orders_the_pair_by_labels():
    d = hub("shp")
    a_wins, b_wins, _ = d.items
    assert a_wins.chosen.startswith("Sunlight") and a_wins.rejected == "Because it is."
    assert b_wins.chosen.startswith("Python") and b_wins.rejected == "Just pick anything."
    assert [x.source_id for x in d.items] == ["post0:cA0:cB0", "post1:cA1:cB1", "post0:cA2:cB2"]


def test_oasst1_pairs_best_vs_worst_ranked_siblings():
    d = hub("oasst1")
    # p1 has 3 ranked replies, p2 (a follow-up) 2; p3 has one reply; p4's second reply is deleted, third unranked
    assert [x.source_id for x in d.items] == ["p1", "p2"]
    p1, p2 = d.items
    assert p1.chosen.startswith("Bubbles") and p1.rejected == "Fish."  # rank 0 vs rank 2; rank 1 unused
    assert p2.prompt == (
        ("user", "What is a good name for a goldfish?"),
        ("assistant", "Bubbles is a classic, friendly goldfish name."),
        ("user", "Something more unusual, please."),
    )
    assert p2.chosen.startswith("Captain Finnegan") and p2.rejected == "Sir Swimsalot."
    assert d.source_info["rows_read"] == 13
    assert [x.source_id for x in hub("oasst1", limit=1).items] == ["p1"]


def test_oasst1_missing_parent_is_a_bad_row(tmp_path):
    rows = [json.loads(line) for line in (HUB / "oasst1.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["message_id"] != "a1"]  # p2's parent is gone
    path = write_jsonl(tmp_path / "oasst1.jsonl", rows)
    with pytest.raises(DataError, match=r"'oasst1'.*message p2.*'parent_id'.*'a1'"):
        S.load("oasst1", path=path)
    d = S.load("oasst1", path=path, on_bad_row="drop")
    assert [x.source_id for x in d.items] == ["p1"] and d.dropped == {"missing parent_id": 1}
    assert d.items[0].chosen == "Goldie."  # a1 (rank 0) is gone: rank 1 vs rank 2


def test_hub_loader_reads_parquet_copies_with_the_same_normaliser(tmp_path):
    rows = [json.loads(line) for line in (HUB / "ultrafeedback_binarized.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "uf.parquet")
    assert (
        S.load("ultrafeedback_binarized", path=tmp_path / "uf.parquet").items
        == hub("ultrafeedback_binarized").items
    )


def test_hub_loader_without_path_calls_load_dataset_with_id_split_revision(monkeypatch):
    import datasets

    rows = {
        hub_id: [json.loads(line) for line in (HUB / f"{name}.jsonl").read_text().splitlines()]
        for name, hub_id in [("hh_rlhf", "Anthropic/hh-rlhf"), ("shp", "stanfordnlp/SHP")]
    }
    expected, expected_shp = hub("hh_rlhf").items[:2], hub("shp").items
    calls = []

    def fake_load_dataset(hub_id, split=None, revision=None):
        calls.append((hub_id, split, revision))
        return rows[hub_id]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    commits = {"abc123": "a" * 40, None: "b" * 40}  # what each revision points to on the hub now
    monkeypatch.setattr(hub_module, "commit", lambda repo, rev, kind, field: commits[rev])
    d = S.load("hh_rlhf", split="test", revision="abc123", limit=2)
    assert calls == [("Anthropic/hh-rlhf", "test", "a" * 40)]  # loaded at the resolved commit
    assert d.items == expected
    assert d.source_info["split"] == "test" and d.source_info["revision"] == "abc123"
    assert d.source_info["commit"] == "a" * 40
    assert S.load("shp").items == expected_shp  # default split comes from the source
    assert calls[-1] == ("stanfordnlp/SHP", "train", "b" * 40)


def test_hub_revisions_resolve_to_commits_offline_from_the_local_cache(tmp_path, monkeypatch):
    """Offline, `main` resolves through the hub cache's refs; nothing resolvable is a clear error."""
    from kto_bench.errors import KtoBenchError

    sha = "c" * 40
    snap = tmp_path / "datasets--org--set" / "snapshots" / sha
    snap.mkdir(parents=True)
    (snap / "data.jsonl").write_text("{}\n")
    (tmp_path / "datasets--org--set" / "refs").mkdir()
    (tmp_path / "datasets--org--set" / "refs" / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    hub_module.commit.cache_clear()
    assert hub_module.commit("org/set", None, "dataset") == sha
    assert hub_module.commit("org/set", "d" * 40, "dataset") == "d" * 40  # a commit is already one
    with pytest.raises(KtoBenchError, match=r"data.revision: cannot resolve dataset 'org/other'.*commit sha"):
        hub_module.commit("org/other", "main", "dataset", "data.revision")


def test_hub_failure_is_a_data_error_that_suggests_a_local_path(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(hub_module, "commit", lambda repo, rev, kind, field: "e" * 40)
    with pytest.raises(DataError, match=r"'shp'.*stanfordnlp/SHP.*hub unreachable.*path:"):
        S.load("shp")


@pytest.mark.parametrize(
    ("name", "row", "field"),
    [
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hey\n\nAssistant: b"},
            "rejected",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
            "chosen",
        ),
        ("hh_rlhf", {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: b"}, "chosen"),
        ("shp", {"history": "q", "human_ref_A": "a", "human_ref_B": "b", "labels": 2}, "labels"),
        ("shp", {"history": "q", "human_ref_A": "a", "human_ref_B": 7, "labels": 1}, "human_ref_B"),
        (
            "kto_mix_14k",
            {"prompt": [{"role": "user", "content": "q"}], "completion": [], "label": True},
            "completion",
        ),
        (
            "kto_mix_14k",
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "user", "content": "a"}],
                "label": True,
            },
            "completion[-1]",
        ),
        (
            "ultrafeedback_binarized",
            {
                "prompt_id": "x",
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}],
            },
            "rejected",
        ),
    ],
)
def test_bad_hub_rows_name_source_file_row_and_field(tmp_path, name, row, field):
    good = json.loads((HUB / f"{name}.jsonl").read_text().splitlines()[0])
    path = write_jsonl(tmp_path / f"{name}.jsonl", [good, {**good, **row}])
    with pytest.raises(DataError) as e:
        S.load(name, path=path)
    msg = str(e.value)
    assert f"'{name}'" in msg and str(path) in msg and "row 2" in msg and f"field '{field}'" in msg
    d = S.load(name, path=path, on_bad_row="drop")
    assert len(d.items) == 1 and sum(d.dropped.values()) == 1


# ----------------------------------------------------------------------------------- local files


def test_local_pairs_accept_strings_messages_and_implicit_prompts():
    d = S.load("local_pairs", path=LOCAL / "pairs.jsonl")
    assert d.kind == "pairs" and len(d.items) == 4
    plain, system, implicit, with_id = d.items
    assert plain == Pair((("user", "What is the capital of France?"),), "Paris.", "Lyon.", plain.source_id)
    assert system.prompt == (("system", "Answer briefly."), ("user", "2+3?"))
    assert implicit.prompt == (("user", "Spell cat."),) and implicit.chosen == "c-a-t"
    assert with_id.source_id == "my-id-7" and with_id.chosen == "Hi!"
    assert S.load("local_pairs", path=LOCAL / "pairs.json").items == d.items  # JSON list, same rows
    assert d.source_info["file_sha256"] and d.source_info["rows_read"] == 4


def test_local_binary_labels_bools_and_0_1_ints(tmp_path):
    d = S.load("local_binary", path=LOCAL / "binary.jsonl")
    assert d.kind == "binary" and [x.desirable for x in d.items] == [True, False, True, False]
    rows = [json.loads(line) for line in (LOCAL / "binary.jsonl").read_text().splitlines()]
    pq.write_table(
        pa.Table.from_pylist([{**r, "prompt": str(r["prompt"])} for r in rows[:2]]), tmp_path / "b.parquet"
    )
    assert S.load("local_binary", path=tmp_path / "b.parquet").items == d.items[:2]


@pytest.mark.parametrize("label", ["yes", "true", 1.0, 2, -1, None, [True]])
def test_non_boolean_labels_are_rejected(tmp_path, label):
    path = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "completion": "a", "label": label}])
    with pytest.raises(DataError, match=r"line 1: field 'label'"):
        S.load("local_binary", path=path)


def test_bad_local_rows_error_by_default_and_are_counted_when_dropped():
    with pytest.raises(
        DataError, match=r"'local_pairs'.*bad_pairs.jsonl.*line 2: field 'rejected' is missing"
    ):
        S.load("local_pairs", path=LOCAL / "bad_pairs.jsonl")
    d = S.load("local_pairs", path=LOCAL / "bad_pairs.jsonl", on_bad_row="drop")
    assert [p.prompt[0][1] for p in d.items] == ["ok", "ok 2"]
    assert d.dropped == {"missing rejected": 1, "empty chosen": 1, "duplicate row": 1}
    b = S.load("local_binary", path=LOCAL / "bad_binary.jsonl", on_bad_row="drop")
    assert [x.completion for x in b.items] == ["a", "c"] and b.dropped == {"type label": 1, "invalid row": 1}


def test_exact_duplicates_are_dropped_but_conflicting_ids_are_bad_rows(tmp_path):
    row = {"id": 1, "prompt": "q", "chosen": "a", "rejected": "b"}
    dupes = write_jsonl(tmp_path / "d.jsonl", [row, row])
    d = S.load("local_pairs", path=dupes)
    assert len(d.items) == 1 and d.dropped == {"duplicate row": 1}
    clash = write_jsonl(tmp_path / "c.jsonl", [row, {**row, "chosen": "c"}])
    with pytest.raises(DataError, match=r"line 2: field 'id' '1' is also used by line 1"):
        S.load("local_pairs", path=clash)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt"),
        ({"prompt": [{"role": "wizard", "content": "q"}], "chosen": "a", "rejected": "b"}, "prompt[0].role"),
        ({"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"}, "prompt[0].content"),
        ({"chosen": "a", "rejected": "b"}, "prompt"),
        (
            {
                "prompt": "q",
                "chosen": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "a"}],
                "rejected": "b",
            },
            "chosen",
        ),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "id": 1.5}, "id"),
    ],
)
def test_each_local_rule_names_its_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "p.jsonl", [row])
    with pytest.raises(DataError, match=f"line 1: field {re.escape(repr(field))}"):
        S.load("local_pairs", path=path)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        S.load("local_pairs", path=tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported type"):
        S.load("local_pairs", path=tmp_path / "x.csv")
    (tmp_path / "x.json").write_text('{"prompt": "q"}')
    with pytest.raises(DataError, match="JSON list"):
        S.load("local_pairs", path=tmp_path / "x.json")
    with pytest.raises(DataError, match="set path:"):
        S.load("local_binary")
    with pytest.raises(DataError, match="did you mean 'local_pairs'"):
        S.load("local_pair", path=tmp_path / "x.json")
    with pytest.raises(DataError, match="on_bad_row"):
        S.load("local_pairs", path=LOCAL / "pairs.jsonl", on_bad_row="skip")  # type: ignore[arg-type]


def test_limit_is_the_first_n_items_after_normalisation():
    full = S.load("local_pairs", path=LOCAL / "bad_pairs.jsonl", on_bad_row="drop").items
    assert S.load("local_pairs", path=LOCAL / "bad_pairs.jsonl", on_bad_row="drop", limit=1).items == full[:1]
    assert S.load("local_pairs", path=LOCAL / "pairs.jsonl", limit=0).items == []
    assert hub("kto_mix_14k", limit=3).items == hub("kto_mix_14k").items[:3]


# ------------------------------------------------------------------------------------------ mirrors


def test_llamafactory_mirrors_normalise_sharegpt_and_messages(monkeypatch):
    files = {
        "llamafactory_dpo_en_demo": LOCAL / "llamafactory_dpo_sample.json",
        "llamafactory_kto_en_demo": LOCAL / "llamafactory_kto_sample.json",
    }
    monkeypatch.setattr(S, "fetch", lambda name: files[name])
    dpo = S.load("llamafactory_dpo")
    assert dpo.kind == "pairs" and len(dpo.items) == 3 and dpo.dropped == {"duplicate row": 1}
    assert dpo.items[1].prompt == (("system", "You are terse."), ("user", "Capital of Japan?"))
    assert dpo.items[2].prompt[1] == ("assistant", "Hello!") and dpo.items[2].chosen == "1, 2, 3."
    assert (
        dpo.source_info["asset"] == "llamafactory_dpo_en_demo"
        and dpo.source_info["package"] == "llamafactory==0.9.5"
    )
    kto = S.load("llamafactory_kto")
    assert kto.kind == "binary" and [x.desirable for x in kto.items] == [True, False, True]
    assert kto.items[2].prompt[-1] == ("user", "What is 5-2?") and kto.items[2].completion == "3"
    with pytest.raises(DataError, match="one split"):
        S.load("llamafactory_kto", split="test")


def test_real_llamafactory_mirrors_when_cached():
    from kto_bench import assets

    if (
        assets.cached_path("llamafactory_dpo_en_demo") is None
        or assets.cached_path("llamafactory_kto_en_demo") is None
    ):
        missing(
            "LLaMA-Factory mirrors not cached; run `kto-bench assets fetch llamafactory_dpo_en_demo` (and kto)"
        )
    dpo = S.load("llamafactory_dpo")
    assert len(dpo.items) == 295 and dpo.dropped == {"duplicate row": 5}
    kto = S.load("llamafactory_kto")
    assert len(kto.items) == 300 and sum(x.desirable for x in kto.items) == 150


# ---------------------------------------------------------------------------------- registry / load


def test_every_source_declares_its_kind():
    expected = {
        "ultrafeedback_binarized": "pairs",
        "kto_mix_14k": "binary",
        "hh_rlhf": "pairs",
        "shp": "pairs",
        "oasst1": "pairs",
        "local_pairs": "pairs",
        "local_binary": "binary",
        "llamafactory_dpo": "pairs",
        "llamafactory_kto": "binary",
        "demo_arith": "pairs",
    }
    assert {n: S.source_kind(n) for n in S.SOURCES.names()} == expected
    with pytest.raises(DataError, match="did you mean 'oasst1'"):
        S.source_kind("oasst")


def test_load_wraps_plain_list_loaders(monkeypatch):
    reg = Registry("data source")
    items = [BinaryExample((("user", "q"),), f"a{i}", i % 2 == 0, f"id{i}") for i in range(4)]
    reg.add("plain", S.Source("binary", lambda *, path, split, limit, revision: items))
    monkeypatch.setattr(S, "SOURCES", reg)
    d = S.load("plain", limit=2)
    assert d.kind == "binary" and d.items == items[:2] and d.dropped == {}


# ---------------------------------------------------------------------------------- property tests

json_scalar = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=6)
message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "human", "gpt", "bot"]) | json_scalar,
        "content": json_scalar,
    },
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
text = st.sampled_from(["q", "a", "b", " ", ""]) | st.text(max_size=5)
turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": text})
reply = st.builds(
    lambda before, c: [*before, {"role": "assistant", "content": c}], st.lists(turn, max_size=2), text
)
sharegpt = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system"]), "value": text})
transcript = st.builds(lambda q, a: f"\n\nHuman: {q}\n\nAssistant: {a}", text, text)
label = st.booleans() | st.integers(-1, 2)
# per field: values that are nearly right (so rows often normalise) mixed with arbitrary JSON
plausible = {
    "prompt": text | st.lists(turn, max_size=3),
    "chosen": text | reply | transcript | sharegpt,
    "rejected": text | reply | transcript | sharegpt,
    "completion": text | reply,
    "label": label,
    "labels": label,
    "conversations": st.lists(sharegpt, max_size=3),
    "messages": reply,
}
row_of = {
    "local_pairs": ["prompt", "chosen", "rejected", "id"],
    "local_binary": ["prompt", "completion", "label", "id"],
    "hh_rlhf": ["chosen", "rejected"],
    "shp": ["history", "human_ref_A", "human_ref_B", "labels", "post_id", "c_root_id_A", "c_root_id_B"],
    "ultrafeedback_binarized": ["prompt", "prompt_id", "chosen", "rejected"],
    "kto_mix_14k": ["prompt", "completion", "label"],
    "llamafactory_dpo": ["conversations", "chosen", "rejected"],
    "llamafactory_kto": ["messages", "label"],
}


@st.composite
def source_and_row(draw):
    name = draw(st.sampled_from(sorted(row_of)))
    row = {}
    for key in row_of[name]:
        if draw(st.integers(0, 9)) == 0:
            continue  # field missing
        nearly_right = draw(st.integers(0, 3)) > 0
        row[key] = draw(
            plausible.get(key, text) if nearly_right else json_value | st.lists(message, max_size=2)
        )
    return name, row


@settings(max_examples=400, deadline=None)
@given(source_and_row())
def test_any_row_normalises_or_raises_data_error(case):
    name, row = case
    try:
        item = S.normalise_row(name, row)
    except DataError as e:
        assert f"'{name}'" in str(e) and "field" in str(e)
        return
    assert isinstance(item, Pair | BinaryExample) and item.source_id
    assert all(isinstance(r, str) and isinstance(c, str) for r, c in item.prompt) and item.prompt
    reply = item.chosen if isinstance(item, Pair) else item.completion
    assert isinstance(reply, str) and reply.strip()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(source_and_row(), max_size=5), st.sampled_from(["local_pairs", "local_binary"]))
def test_any_local_file_loads_or_raises_data_error(tmp_path, cases, name):
    path = write_jsonl(tmp_path / "rows.jsonl", [row for _, row in cases])
    try:
        strict = S.load(name, path=path)
    except DataError as e:
        assert "line" in str(e) and str(path) in str(e)
        strict = None
    dropped = S.load(name, path=path, on_bad_row="drop")
    assert len(dropped.items) + sum(dropped.dropped.values()) == len(cases)
    if strict is not None:
        assert strict.items == dropped.items

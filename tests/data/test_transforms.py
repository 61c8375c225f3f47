"""Matched corruption: flips, subsampling, one-y-per-x — exact, seeded, the same for both methods."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kto_bench.data.canonical import BinaryExample, Pair, messages
from kto_bench.data.transforms import (
    corrupt,
    exact_count,
    flip_labels,
    flip_pairs,
    keep_one_output_per_prompt,
    pairs_from_binary,
    subsample,
    unpair,
)
from kto_bench.errors import DataError


def make_pairs(n: int) -> list[Pair]:
    return [Pair(messages(("user", f"q{i}")), f"good{i}", f"bad{i}", f"p{i}") for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), rate=st.floats(0, 0.5), seed=st.integers(0, 10**6))
def test_flips_are_the_exact_seeded_fraction_and_match_across_methods(n, rate, seed):
    pairs = make_pairs(n)
    flipped, ids = flip_pairs(pairs, rate, seed)
    assert len(ids) == int(n * rate + 0.5)
    swapped = {p.source_id for p in flipped if p.chosen.startswith("bad")}
    assert swapped == set(ids)
    views = corrupt(
        pairs,
        flip_rate=rate,
        desirable_fraction=1,
        undesirable_fraction=1,
        one_output_per_prompt=False,
        dpo_unpaired="drop",
        seed=seed,
    )
    # KTO sees the same corruption: each flipped pair becomes two mislabelled examples
    mislabelled = {
        e.source_id.split("/")[0] for e in views.binary if e.desirable == e.completion.startswith("bad")
    }
    assert mislabelled == set(ids)
    assert {p.source_id for p in views.pairs if p.chosen.startswith("bad")} == set(ids)
    assert views.report["flipped_ids"] == sorted(ids)


def test_flips_depend_on_seed():
    pairs = make_pairs(100)
    assert flip_pairs(pairs, 0.2, 1)[1] != flip_pairs(pairs, 0.2, 2)[1]
    assert flip_pairs(pairs, 0.2, 1)[1] == flip_pairs(pairs, 0.2, 1)[1]


def test_binary_flip_labels():
    ex = [BinaryExample(messages(("user", "q")), f"c{i}", i % 2 == 0, f"e{i}") for i in range(10)]
    out, ids = flip_labels(ex, 0.3, 0)
    assert len(ids) == 3
    assert sum(a.desirable != b.desirable for a, b in zip(ex, out, strict=True)) == 3


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 150), fd=st.floats(0.01, 1), fu=st.floats(0.01, 1), seed=st.integers(0, 1000))
def test_subsampling_hits_requested_counts_randomly(n, fd, fu, seed):
    ex = unpair(make_pairs(n))
    kept = subsample(ex, fd, fu, seed)
    assert sum(e.desirable for e in kept) == exact_count(n, fd)
    assert sum(not e.desirable for e in kept) == exact_count(n, fu)


def test_subsampling_is_not_a_prefix():
    kept = subsample(unpair(make_pairs(100)), 0.1, 1.0, 3)
    ids = sorted(int(e.source_id.split("/")[0][1:]) for e in kept if e.desirable)
    assert ids != list(range(10))


def test_dpo_view_under_imbalance():
    pairs = make_pairs(40)
    drop = corrupt(
        pairs,
        flip_rate=0,
        desirable_fraction=0.5,
        undesirable_fraction=1,
        one_output_per_prompt=False,
        dpo_unpaired="drop",
        seed=0,
    )
    full = corrupt(
        pairs,
        flip_rate=0,
        desirable_fraction=0.5,
        undesirable_fraction=1,
        one_output_per_prompt=False,
        dpo_unpaired="full",
        seed=0,
    )
    assert len(drop.pairs) == 20 and len(full.pairs) == 40
    kept_ids = {e.source_id for e in drop.binary}
    assert all(f"{p.source_id}/chosen" in kept_ids for p in drop.pairs)


def test_tiny_fraction_keeps_at_least_one_example_per_class():
    kept = subsample(unpair(make_pairs(50)), 1e-6, 1.0, 0)
    assert sum(e.desirable for e in kept) == 1


def test_one_output_per_prompt_keeps_one_each():
    ex = unpair(make_pairs(30))
    kept = keep_one_output_per_prompt(ex, 0)
    assert len(kept) == 30
    assert len({e.prompt for e in kept}) == 30
    assert 0 < sum(e.desirable for e in kept) < 30  # seeded random, not always the chosen side


def test_pairs_from_binary_pairs_within_prompt():
    ex = unpair(make_pairs(5)) + [BinaryExample(messages(("user", "lonely")), "x", True, "l")]
    pairs = pairs_from_binary(ex)
    assert len(pairs) == 5
    assert all(p.chosen.startswith("good") for p in pairs)


def test_empty_source_is_an_error():
    with pytest.raises(DataError, match="no examples"):
        corrupt(
            [],
            flip_rate=0,
            desirable_fraction=1,
            undesirable_fraction=1,
            one_output_per_prompt=False,
            dpo_unpaired="drop",
            seed=0,
        )

"""Tokenization: exact prompt/completion boundary, truncation, microbatches, KL pairing, fingerprints."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kto_bench.data.canonical import messages
from kto_bench.data.tokenize import encode, kl_partners, partition, render, tokenize_views
from kto_bench.demo.world import build_tokenizer
from kto_bench.errors import DataError
from tests.data.test_transforms import make_pairs
from tests.tiny_data import tokenized, views

TOK = build_tokenizer()


def test_boundary_is_exact_and_scores_end_of_turn():
    p, c = render(TOK, messages(("user", "Compute 1+2.")), "The answer is 3.", None)
    assert p == "<|user|>Compute 1+2.<|assistant|>"
    assert c == "The answer is 3.<|end|>"
    prompt_ids, completion_ids = encode(
        TOK, messages(("user", "Compute 1+2.")), "The answer is 3.", max_length=100, max_prompt_length=50
    )
    assert TOK.decode(list(completion_ids)) == "The answer is 3.<|end|>"
    assert completion_ids[-1] == TOK.eos_token_id


def test_truncation_cuts_prompt_from_left_then_completion():
    prompt = messages(("user", "x" * 40))
    p, c = encode(TOK, prompt, "y" * 30, max_length=30, max_prompt_length=10)
    assert len(p) == 10 and len(p) + len(c) == 30
    assert TOK.decode(list(p)).endswith("<|assistant|>")  # the left side was cut
    assert TOK.decode(list(c)) == "y" * 20


def test_example_with_no_completion_left_is_dropped_and_counted():
    assert encode(TOK, messages(("user", "x" * 40)), "y", max_length=10, max_prompt_length=10) is None
    v = views(make_pairs(6))
    data = tokenized(make_pairs(6), max_length=12, max_prompt_length=11, batch_size=2)
    assert data.dropped["pairs_truncated_away"] == 0
    long = make_pairs(1)[0].__class__(messages(("user", "q" * 30)), "a", "b", "long")
    data = tokenize_views(
        TOK,
        [long, *v.pairs],
        v.binary,
        max_length=12,
        max_prompt_length=11,
        chat_template=None,
        batch_size=2,
        partition_seed=0,
    )
    assert data.dropped["pairs_truncated_away"] == 0  # prompt cut to 11, 1 completion token left


def test_template_that_cannot_render_is_a_data_error():
    with pytest.raises(DataError, match="chat template"):
        render(
            TOK,
            messages(("user", "hi")),
            "yo",
            "{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}",
        )


@given(st.integers(2, 64))
def test_kl_pairing_never_pairs_an_example_with_itself(b):
    partners = kl_partners(b)
    assert all(j != p for j, p in enumerate(partners))
    assert sorted(partners) == list(range(b))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(4, 40), b=st.integers(2, 7), seed=st.integers(0, 100))
def test_microbatches_are_full_and_disjoint(n, b, seed):
    batches = partition(n, b, seed)
    flat = [i for batch in batches for i in batch]
    assert all(len(batch) == b for batch in batches)
    assert len(flat) == len(set(flat)) == (n // b) * b


def _data(seed: int, flip: float = 0.2):
    return tokenized(
        make_pairs(20), max_length=64, max_prompt_length=32, batch_size=3, flip_rate=flip, seed=seed
    )


def test_kl_sequences_are_mismatched_prompt_completion_pairs():
    data = _data(0)
    for batch, kl in zip(data.binary_batches, data.kl_seqs, strict=True):
        seqs = [data.sequences[data.binary[i][0]] for i in batch]
        for j, k in enumerate(kl):
            prompt, completion = data.sequences[k]
            assert prompt == seqs[j][0]
            assert completion == seqs[(j + 1) % len(seqs)][1]


def test_fingerprint_same_seed_same_different_seed_different():
    assert _data(1).fingerprint() == _data(1).fingerprint()
    assert _data(1).fingerprint() != _data(2).fingerprint()


def test_state_roundtrip_keeps_fingerprint():
    data = _data(3)
    again = type(data).from_state(data.to_state())
    assert again.fingerprint() == data.fingerprint()


def test_long_texts_are_capped_before_tokenizing_without_changing_a_token(monkeypatch):
    """A text longer than max_length x (longest vocabulary entry) characters is cut before the tokenizer
    sees it (a 50 MB line took 11 GB tokenized whole); what survives truncation is unchanged."""
    import kto_bench.data.tokenize as tokenize

    seen: list[int] = []
    real_render = tokenize.render

    def spy(tok, prompt, completion, template):
        seen.append(max(len(completion), *(len(c) for _, c in prompt)))
        return real_render(tok, prompt, completion, template)

    monkeypatch.setattr(tokenize, "render", spy)
    prompt = messages(("system", "s" * 50_000), ("user", "Compute " + "1+" * 100_000 + "1."))
    completion = "The answer is " + "9" * 300_000 + "."
    kw = {"max_length": 64, "max_prompt_length": 24}
    limit = 64 * tokenize.max_token_chars(TOK) + 1
    capped = encode(TOK, prompt, completion, **kw)
    assert max(seen) == limit  # no text reached the tokenizer longer than the cap
    whole = encode(TOK, prompt, completion, **kw, max_chars=10**9)
    assert max(seen) > 200_000 and capped == whole and len(capped[0]) == 24
    data = tokenize_views(
        TOK,
        [],
        [*views(make_pairs(6)).binary, tokenize.BinaryExample(prompt, completion, True, "huge")],
        **kw,
        chat_template=None,
        batch_size=2,
        partition_seed=0,
    )
    assert data.capped == {"max_chars": limit, "prompts": 1, "completions": 1}
    assert tokenize.TokenizedData.from_state(data.to_state()).capped == data.capped

"""Batch layouts and the chunked LM head: every fast path gives the plain path's log-probs and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from kto_bench.data.tokenize import seq_key
from kto_bench.demo.world import tiny_config
from kto_bench.scoring import (
    allowed,
    choose_attention,
    choose_row_tokens,
    collate,
    group_tokens,
    groups_of,
    naive_sequence_logps,
    pack_rows,
    sequence_logps,
    token_counts,
)
from kto_bench.train.refcache import ReferenceCache, fill

PAD = 0
# two sequences share a prompt (a pair), one has the same prompt as another's KL row, one has no prompt
SEQS = [
    ((5, 6, 7), (8, 9, 1)),
    ((5, 6, 7), (10, 11, 12, 13, 1)),
    ((7,), (8, 1)),
    ((14, 15, 16, 17), (18, 19)),
    ((7,), (20, 21, 22)),
    ((), (23, 24, 25)),
]
WEIGHTS = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25], dtype=torch.float64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(32, hidden=32, layers=2)).double()


def grads_of(model, logps: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    (logps * WEIGHTS).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def plain(model):
    logps = naive_sequence_logps(model, SEQS)
    return logps.detach(), grads_of(model, logps)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "layout,row_tokens,chunk",
    [("padded", None, 4096), ("packed", None, 3), ("packed", 9, 4096), ("shared", None, 1), ("shared", 9, 5)],
)
def test_layouts_match_the_plain_path_in_values_and_gradients(
    model, plain, attention, layout, row_tokens, chunk
):
    model.set_attn_implementation(attention)
    logps, counts = sequence_logps(model, collate(SEQS, PAD, layout=layout, row_tokens=row_tokens), chunk)
    torch.testing.assert_close(logps, plain[0], rtol=1e-7, atol=1e-7)
    assert counts.tolist() == [3, 5, 2, 2, 3, 2]  # the prompt-less sequence's first token is unscored
    for name, g in grads_of(model, logps.double()).items():
        torch.testing.assert_close(g, plain[1][name], rtol=1e-5, atol=1e-6, msg=name)  # eager: fp32 softmax
    model.set_attn_implementation("sdpa")


def test_sharing_removes_padding_and_repeated_prompts():
    padded, packed, shared = (
        token_counts(collate(SEQS, PAD, layout=x)) for x in ("padded", "packed", "shared")
    )
    total = sum(len(p) + len(c) for p, c in SEQS)
    assert padded["nonpad"] == packed["nonpad"] == packed["processed"] == total
    assert padded["processed"] == len(SEQS) * max(len(p) + len(c) for p, c in SEQS) > total
    assert shared["processed"] == shared["nonpad"] == total - len((5, 6, 7)) - len((7,))


def test_mask_rule_by_hand():
    """Prompt P, completions A and B of one group, then an unrelated sequence X."""
    b = collate([((1, 2), (3,)), ((1, 2), (4, 5)), ((6,), (7,))], PAD, layout="shared")
    m = allowed(b["doc"], b["seg"])[0].int()
    expected = [
        # P P A B B X X   (keys)
        [1, 0, 0, 0, 0, 0, 0],  # P
        [1, 1, 0, 0, 0, 0, 0],  # P
        [1, 1, 1, 0, 0, 0, 0],  # A sees the prompt and itself
        [1, 1, 0, 1, 0, 0, 0],  # B sees the prompt, not A
        [1, 1, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0],  # X sees only its own sequence
        [0, 0, 0, 0, 0, 1, 1],
    ]
    assert m.tolist() == expected
    assert b["position_ids"][0].tolist() == [0, 1, 2, 2, 3, 0, 1]  # B continues from the prompt, like A


seqs_strategy = st.lists(
    st.tuples(
        st.lists(st.integers(1, 4), max_size=4).map(tuple),
        st.lists(st.integers(1, 30), min_size=1, max_size=5).map(tuple),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(
    seqs=seqs_strategy,
    row_tokens=st.one_of(st.none(), st.integers(1, 20)),
    layout=st.sampled_from(["packed", "shared"]),
)
def test_every_scored_token_is_predicted_by_its_own_sequence(seqs, row_tokens, layout):
    """The hidden state that scores a token is the one just before it in that same sequence."""
    b = collate(seqs, PAD, layout=layout, row_tokens=row_tokens)
    ids = b["input_ids"]
    flat_ids, flat_doc, flat_pos = ids.flatten(), b["doc"].flatten(), b["position_ids"].flatten()
    expected = [t for p, c in seqs for t in (c if p else c[1:])]
    owners = [i for i, (p, c) in enumerate(seqs) for _ in (c if p else c[1:])]
    assert sorted(zip(b["owner"].tolist(), b["tgt"].tolist(), strict=True)) == sorted(
        zip(owners, expected, strict=True)
    )
    for src, owner, tgt in zip(b["src"].tolist(), b["owner"].tolist(), b["tgt"].tolist(), strict=True):
        p, c = seqs[owner]
        k = flat_pos[src].item() + 1 - len(p)  # index in the completion of the scored token
        assert c[k] == tgt and flat_doc[src] >= 0
        assert flat_ids[src] == (p[-1] if k == 0 else c[k - 1])
    prompts = [p for p, _ in seqs] if layout == "packed" else list({p for p, _ in seqs})
    assert token_counts(b)["nonpad"] == sum(map(len, prompts)) + sum(len(c) for _, c in seqs)


@settings(max_examples=60, deadline=None)
@given(seqs=seqs_strategy, row_tokens=st.integers(1, 30))
def test_rows_are_balanced_and_never_split_a_group(seqs, row_tokens):
    groups = groups_of(seqs, share_prompts=True)
    rows = pack_rows(groups, row_tokens)
    assert sorted(g[0] for row in rows for g in row) == sorted(g[0] for g in groups)
    total = sum(map(group_tokens, groups))
    assert len(rows) <= -(-total // row_tokens)
    loads = [sum(map(group_tokens, row)) for row in rows]
    assert max(loads) - min(loads) <= max(map(group_tokens, groups))  # greedy balance bound


def test_attention_choice():
    assert choose_attention("auto", "shared", "cuda") == "flex_attention"
    assert choose_attention("auto", "padded", "cuda") == "sdpa"
    assert choose_attention("auto", "shared", "cpu") == "sdpa"
    assert choose_attention("eager", "shared", "cuda") == "eager"
    assert choose_row_tokens(None, "flex_attention", 1024) is None  # one block-sparse row
    assert choose_row_tokens(None, "sdpa", 1024) == 2048  # dense masks: bounded rows
    assert choose_row_tokens(300, "flex_attention", 1024) == 300


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown layout 'ragged'"):
        collate(SEQS, PAD, layout="ragged")


@pytest.mark.parametrize("layout,row_tokens", [("padded", None), ("packed", 8), ("shared", 8)])
def test_reference_cache_entries_match_the_plain_path(model, plain, tmp_path, layout, row_tokens):
    cache = ReferenceCache(tmp_path, "m", "float64")
    fill(cache, model, SEQS, pad_id=PAD, batch_size=4, device="cpu", layout=layout, row_tokens=row_tokens)
    assert [cache.entries[seq_key(s)] for s in SEQS] == pytest.approx(plain[0].tolist(), rel=1e-7)


def test_flex_block_mask_gives_the_dense_mask_attention():
    """The BlockMask built for FlexAttention (CUDA's kernel) attends exactly as the dense SDPA mask: run
    eagerly on CPU (FlexAttention's reference implementation, forward only)."""
    import warnings
    from types import SimpleNamespace

    from torch.nn.attention.flex_attention import flex_attention

    from kto_bench.scoring import attention_mask_for

    b = collate(SEQS, PAD, layout="shared", row_tokens=9)
    flex = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flex_attention"))
    block_mask = attention_mask_for(flex, b["doc"], b["seg"], torch.float32)
    rows, n = b["doc"].shape
    torch.manual_seed(0)
    q, k, v = (torch.randn(rows, 2, n, 8) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile"
        out = flex_attention(q, k, v, block_mask=block_mask)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed(b["doc"], b["seg"])[:, None]
    )
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)

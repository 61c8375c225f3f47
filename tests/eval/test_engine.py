"""Engine: batched results equal naive per-request computations, in input order."""

from __future__ import annotations

import pytest
import torch

from kto_bench.errors import EvalError
from kto_bench.eval.engine import Engine, cut_at_stop, left_pad, top_p_filter

from . import char_tokenizer, tiny_llama

PROMPTS = [
    "Compute 2+3.",
    "Hi",
    "<|user|>What is 12-7?<|assistant|>",
    "A much longer prompt that forces padding of the others in its batch.",
    "x",
]


@pytest.fixture(scope="module")
def lm():
    tok = char_tokenizer()
    return tiny_llama(len(tok)), tok


def naive_generate(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    new = out[0, ids.shape[1] :].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def naive_loglikelihood(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(ids).logits[0, len(ctx) - 1 : -1].float().log_softmax(-1)
    target = torch.tensor(cont)
    return logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def test_greedy_generation_matches_per_prompt_hf_generate(lm):
    model, tok = lm
    got = Engine(model, tok, batch_size=3).generate(PROMPTS, max_new_tokens=12, progress=False)
    want = [tok.decode(naive_generate(model, tok, p, 12)) for p in PROMPTS]
    assert got == want
    assert all(len(g) > 0 for g in got)


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_generation_is_deterministic_and_independent_of_batch_size(lm, decode):
    model, tok = lm
    a = Engine(model, tok, batch_size=1, decode=decode).generate(PROMPTS, max_new_tokens=8, progress=False)
    b = Engine(model, tok, batch_size=64, decode=decode).generate(PROMPTS, max_new_tokens=8, progress=False)
    assert a == b == [tok.decode(naive_generate(model, tok, p, 8)) for p in PROMPTS]


def test_finished_rows_leave_the_batch_without_changing_the_others(lm):
    """EOS-heavy decoding: most rows stop early, the batch shrinks, the survivors' text is unchanged."""
    model, tok = lm
    engine = Engine(model, tok, batch_size=len(PROMPTS), decode="dynamic")
    stop_early = engine.generate(PROMPTS, max_new_tokens=12, stop=["e", "a"], progress=False)
    decoded = engine.stats["decode_tokens"]
    alone = [engine.generate([p], max_new_tokens=12, stop=["e", "a"], progress=False)[0] for p in PROMPTS]
    assert stop_early == alone
    assert decoded < len(PROMPTS) * 11  # fewer rows decoded than the full batch for 11 steps


def test_compiled_decoding_needs_the_static_cache(lm):
    model, tok = lm
    with pytest.raises(EvalError, match="decode='static'"):
        Engine(model, tok, decode="dynamic", compile_decode=True)
    with pytest.raises(EvalError, match="'dynamic' or 'static'"):
        Engine(model, tok, decode="paged")


def test_stop_strings_cut_the_completion(lm):
    model, tok = lm
    engine = Engine(model, tok, batch_size=4)
    full = engine.generate(PROMPTS, max_new_tokens=12, progress=False)
    # Stop at the 3rd generated character of each completion: the output is the 2-char prefix.
    checked = 0
    for prompt, text in zip(PROMPTS, full, strict=True):
        if len(text) < 3 or text[2] in text[:2]:
            continue
        (cut,) = engine.generate([prompt], max_new_tokens=12, stop=[text[2]], progress=False)
        assert cut == text[:2]
        checked += 1
    assert checked >= 2


def test_sampling_is_seeded(lm):
    model, tok = lm
    engine = Engine(model, tok, batch_size=2)
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, progress=False)
    a = engine.generate(PROMPTS[:3], seed=7, **kw)
    assert a == engine.generate(PROMPTS[:3], seed=7, **kw)
    assert a != engine.generate(PROMPTS[:3], seed=8, **kw)


def test_batched_loglikelihood_matches_unbatched(lm):
    model, tok = lm
    engine = Engine(model, tok, batch_size=3)
    requests = [
        ("Question: 2+3?\nAnswer:", " 5"),
        ("Q", "uite a long continuation here"),
        ("The following are multiple choice questions.\nAnswer:", " A"),
        ("ab", "c"),
        ("", "starts from nothing"),
    ]
    got = engine.loglikelihood(requests, progress=False)
    for (ctx, cont), (logp, greedy) in zip(requests, got, strict=True):
        c, x = engine.encode_pair(ctx, cont)
        want_logp, want_greedy = naive_loglikelihood(model, c, x)
        assert logp == pytest.approx(want_logp, abs=1e-4)
        assert greedy == want_greedy
        assert logp < 0


@pytest.mark.parametrize("row_tokens", [12, 2048])
def test_requests_sharing_a_context_run_it_once_and_match_the_plain_path(lm, row_tokens, monkeypatch):
    from kto_bench.eval import engine as engine_module

    batches = []
    collate = engine_module.collate
    monkeypatch.setattr(engine_module, "collate", lambda *a: batches.append(collate(*a)) or batches[-1])
    model, tok = lm
    engine = Engine(model, tok, batch_size=8, row_tokens=row_tokens)
    context = "The following are multiple choice questions.\nAnswer:"
    requests = [(context, x) for x in (" A", " B", " C", " D and more")] + [("Other context:", " A")]
    got = engine.loglikelihood(requests, progress=False)
    for (ctx, cont), (logp, greedy) in zip(requests, got, strict=True):
        want_logp, want_greedy = naive_loglikelihood(model, *engine.encode_pair(ctx, cont))
        assert logp == pytest.approx(want_logp, abs=1e-4) and greedy == want_greedy
    if row_tokens == 2048:  # each context ran once for all its continuations
        pairs = [engine.encode_pair(c, x) for c, x in requests]
        contexts = {tuple(c) for c, _ in pairs}
        assert len(contexts) == 2
        (batch,) = batches
        assert int((batch["doc"] >= 0).sum()) == sum(map(len, contexts)) + sum(len(x) for _, x in pairs)
        # a dense mask costs the square of the row: rows are the longest group, not row_tokens
        longest = len(pairs[0][0]) + sum(len(x) for c, x in pairs if c == pairs[0][0])
        assert batch["input_ids"].shape == (2, longest)


@pytest.mark.parametrize("decode", ["dynamic", "static"])
def test_a_shared_few_shot_prefix_is_prefilled_once_with_the_same_output(lm, decode):
    model, tok = lm
    shots = "Q: one\nA: 1\n\nQ: two\nA: 2\n\nQ: three\nA: 3\n\n"
    prompts = [shots + f"Q: {q}\nA:" for q in ("four", "five and six", "seven")]
    shared = Engine(model, tok, batch_size=3, share_prefix=8, decode=decode)
    plain = Engine(model, tok, batch_size=3, share_prefix=10**9, decode=decode)
    got = shared.generate(prompts, max_new_tokens=10, progress=False)
    assert got == plain.generate(prompts, max_new_tokens=10, progress=False)
    assert got == [tok.decode(naive_generate(model, tok, p, 10)) for p in prompts]
    assert shared.stats["prefill_tokens"] < plain.stats["prefill_tokens"] - len(tok.encode(shots))


def test_greedy_continuation_is_flagged(lm):
    model, tok = lm
    engine = Engine(model, tok)
    (completion,) = engine.generate(["Hello"], max_new_tokens=4, progress=False)
    ((_, greedy),) = engine.loglikelihood([("Hello", completion)], progress=False)
    ((_, not_greedy),) = engine.loglikelihood(
        [("Hello", "Z" if completion[0] != "Z" else "Y")], progress=False
    )
    assert greedy and not not_greedy


def test_encode_pair_moves_trailing_space_and_handles_merges():
    tok = char_tokenizer(merges=[("a", "b")])
    engine = Engine(tiny_llama(len(tok)), tok)
    ctx, cont = engine.encode_pair("Answer: ", "A")
    assert tok.decode(ctx) == "Answer:" and tok.decode(cont) == " A"
    # "xab" encodes as [x, ab]; the context alone is [x, a]: lm-eval's slice is empty, so the
    # continuation is scored encoded on its own.
    ctx, cont = engine.encode_pair("xa", "b")
    assert tok.decode(ctx) == "xa" and tok.decode(cont) == "b"
    assert engine.encode_pair("", "ab") == ([tok.eos_token_id], tok.encode("ab"))


def test_long_context_is_left_truncated(lm):
    model, tok = lm
    engine = Engine(model, tok, max_length=16)
    ((logp, _),) = engine.loglikelihood([("y" * 100, "z")], progress=False)
    want, _ = naive_loglikelihood(model, tok.encode("y" * 15), tok.encode("z"))
    assert logp == pytest.approx(want, abs=1e-4)
    (out,) = engine.generate(["y" * 100], max_new_tokens=4, progress=False)
    assert out == tok.decode(naive_generate(model, tok, "y" * 12, 4))  # 16 - 4 new tokens of prompt


def test_helpers():
    ids, mask, pos = left_pad([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    kept = top_p_filter(logits, 0.7)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    assert cut_at_stop("abc<|end|>de\n\nQ:", ["\n\n", "<|end|>"]) == "abc"
    assert cut_at_stop("abc", []) == "abc"


def test_bad_requests_raise(lm):
    model, tok = lm
    engine = Engine(model, tok)
    with pytest.raises(EvalError, match="max_new_tokens"):
        engine.generate(["x"], max_new_tokens=0)
    with pytest.raises(EvalError, match="empty continuation"):
        engine.loglikelihood_tokens([([1, 2], [])])

"""Per-sequence summed log-probs of completion tokens: batch layouts, attention masks, chunked LM head.

One scoring path for training (train.loop), the reference pass (train.refcache) and evaluation
(eval.engine's log-likelihood).

Layouts (`training.layout`), all giving the same per-sequence log-probs up to float rounding:

    padded   one sequence per row, right-padded (the peers' layout; plain causal attention)
    packed   sequences laid end to end in about total / `row_tokens` rows of nearly equal length, each
             attending only to itself: padding only where rows differ
    shared   packed, and sequences with the same prompt share one copy of it: a DPO pair's chosen and
             rejected completions (and, with `kl_pass: fused`, a KTO example's KL completion) attend
             to the one prompt

A packed row carries, per token, its group (`doc`: one prompt and the completions that share it) and
its segment (`seg`: 0 for the prompt, k for the group's k-th completion); a query may attend to a key
of the same group at or before it that is in the prompt or in its own completion. Position ids restart
at each prompt and each completion continues from its prompt's end, so every completion sees exactly
what it would see alone. The mask is built once per forward in the form the attention kernel takes:
a FlexAttention `BlockMask` (sparse: empty blocks are skipped), a boolean tensor for SDPA, an additive
float tensor for eager attention.

The decoder runs once; only the hidden states at positions that predict a completion token go through
the LM head, in chunks of `chunk_tokens`, each chunk under activation checkpointing when gradients are
needed, so peak extra memory is one [chunk_tokens, vocab] block instead of [batch, length, vocab].
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from kto_bench.data.tokenize import Seq

Layout = Literal["padded", "packed", "shared"]
LAYOUTS: tuple[str, ...] = ("padded", "packed", "shared")
Group = tuple[tuple[int, ...], list[tuple[int, tuple[int, ...]]]]  # (prompt, [(sequence index, completion)])


def groups_of(seqs: list[Seq], share_prompts: bool) -> list[Group]:
    """Sequences grouped by identical prompt (in first-seen order), or one group per sequence."""
    if not share_prompts:
        return [(p, [(i, c)]) for i, (p, c) in enumerate(seqs)]
    by_prompt: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
    for i, (p, c) in enumerate(seqs):
        by_prompt.setdefault(p, []).append((i, c))
    return list(by_prompt.items())


def group_tokens(group: Group) -> int:
    return len(group[0]) + sum(len(c) for _, c in group[1])


def dense_row_tokens(seqs: list[Seq], cap: int | None) -> int | None:
    """Row size for scoring `seqs` in the shared layout under a dense mask, whose cost grows with the square
    of the row: the longest group (a prompt and its completions), so a row holds it or a few shorter groups
    of about its size; never more than `cap`. CPU, the demo's model (docs/PERFORMANCE.md): 2.1x the
    requests/s of 1,024-token rows on its multiple choice, 2.3x on MMLU-shaped requests."""
    longest = max((group_tokens(g) for g in groups_of(seqs, share_prompts=True)), default=1)
    return longest if cap is None else min(cap, longest)


def pack_rows(groups: list[Group], row_tokens: int | None) -> list[list[Group]]:
    """Groups spread over ceil(total / row_tokens) rows, largest first onto the emptiest row, so the rows
    end up nearly equal (padding is what the longest row has over the others); None: one row."""
    if not groups:
        return []
    total = sum(map(group_tokens, groups))
    n_rows = 1 if row_tokens is None else max(1, -(-total // row_tokens))
    rows: list[list[Group]] = [[] for _ in range(n_rows)]
    load = [0] * n_rows
    for g in sorted(groups, key=group_tokens, reverse=True):
        r = load.index(min(load))
        rows[r].append(g)
        load[r] += group_tokens(g)
    return [row for row in rows if row]


def collate(
    seqs: list[Seq],
    pad_id: int,
    device: torch.device | str = "cpu",
    layout: Layout = "padded",
    row_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs for `sequence_logps`: input ids and, per scored token, where its predicting hidden
    state is (`src`, flat over rows × width), which token it is (`tgt`) and whose it is (`owner`).

    padded adds a 2D `attention_mask`; packed/shared add `position_ids`, `doc` and `seg` instead."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    groups = groups_of(seqs, share_prompts=layout == "shared")
    rows = [[g] for g in groups] if layout == "padded" else pack_rows(groups, row_tokens)
    width = max((sum(group_tokens(g) for g in row) for row in rows), default=1)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    doc = torch.full((len(rows), width), -1, dtype=torch.long)
    seg = torch.zeros((len(rows), width), dtype=torch.long)
    src: list[int] = []
    tgt: list[int] = []
    owner: list[int] = []
    n_doc = 0
    for r, row in enumerate(rows):
        at = 0
        for prompt, completions in row:
            start, p = at, len(prompt)
            ids[r, at : at + p] = torch.tensor(prompt, dtype=torch.long)
            pos[r, at : at + p] = torch.arange(p)
            doc[r, at : at + p] = n_doc
            at += p
            for k, (i, c) in enumerate(completions, start=1):
                n = len(c)
                ids[r, at : at + n] = torch.tensor(c, dtype=torch.long)
                pos[r, at : at + n] = torch.arange(p, p + n)
                doc[r, at : at + n] = n_doc
                seg[r, at : at + n] = k
                # c[0] is predicted by the prompt's last token (unscored without a prompt), c[t] by c[t-1]
                first = 0 if p else 1
                src += [r * width + (start + p - 1 if t == 0 else at + t - 1) for t in range(first, n)]
                tgt += list(c[first:])
                owner += [i] * (n - first)
                at += n
            n_doc += 1
    batch = {
        "input_ids": ids,
        "src": torch.tensor(src, dtype=torch.long),
        "tgt": torch.tensor(tgt, dtype=torch.long),
        "owner": torch.tensor(owner, dtype=torch.long),
        "n_seqs": torch.tensor(len(seqs)),
    }
    if layout == "padded":
        batch["attention_mask"] = (doc >= 0).long()
    else:
        batch |= {"position_ids": pos, "doc": doc, "seg": seg}
    return {k: v.to(device) for k, v in batch.items()}


def token_counts(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Token slots a forward processes, and how many of them hold a sequence token (not padding)."""
    real = batch["attention_mask"].sum() if "attention_mask" in batch else (batch["doc"] >= 0).sum()
    return {"processed": batch["input_ids"].numel(), "nonpad": int(real)}


def may_attend(doc: torch.Tensor, seg: torch.Tensor, b, q, k) -> torch.Tensor:
    """The packed attention rule as a FlexAttention mask_mod body (indices broadcast): same group, not
    in the future, key in the prompt or in the query's own completion; every token sees itself."""
    same = (doc[b, q] == doc[b, k]) & (k <= q)
    return (same & ((seg[b, k] == 0) | (seg[b, k] == seg[b, q]))) | (q == k)


def allowed(doc: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """`may_attend` over every (row, query, key): a boolean [R, L, L] mask."""
    rows, n = doc.shape
    idx = torch.arange(n, device=doc.device)
    return may_attend(doc, seg, torch.arange(rows, device=doc.device)[:, None, None], idx[None, :, None], idx)


def choose_attention(requested: str, layout: str, device: torch.device | str) -> str:
    """The one place that picks the attention kernel: FlexAttention skips the empty blocks of a packed
    mask on CUDA (its CPU path has no backward); SDPA takes the padded layout, and a dense mask elsewhere."""
    if requested != "auto":
        return requested
    return "flex_attention" if layout != "padded" and torch.device(device).type == "cuda" else "sdpa"


def choose_row_tokens(requested: int | None, attention: str, max_length: int) -> int | None:
    """Packed row size: as requested, else one row (None) under FlexAttention, whose block mask skips the
    pairs of sequences that never meet, and rows of 2 × max_length under a dense mask, whose cost grows
    with the square of the row (so a row costs no more attention than two padded rows)."""
    if requested is not None:
        return requested
    return None if attention == "flex_attention" else 2 * max_length


def use_attention(model, training, max_length: int, device: torch.device | str) -> tuple[str, int | None]:
    """Switch the model to the kernel `choose_attention` picks for a TrainingSpec; (kernel, row tokens)."""
    impl = choose_attention(training.attention, training.layout, device)
    if getattr(model.config, "_attn_implementation", None) != impl:
        model.set_attn_implementation(impl)
    return impl, choose_row_tokens(training.row_tokens, impl, max_length)


def attention_mask_for(model, doc: torch.Tensor, seg: torch.Tensor, dtype: torch.dtype):
    """The packed mask in the form the model's attention implementation takes."""
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        n = doc.shape[1]
        return create_block_mask(
            lambda b, h, q, k: may_attend(doc, seg, b, q, k), doc.shape[0], None, n, n, device=doc.device
        )
    mask = allowed(doc, seg)[:, None]  # [R, 1, L, L]
    if impl == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=doc.device).masked_fill(~mask, torch.finfo(dtype).min)


def _head_logps(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each target, whether it is the argmax) for a chunk of hidden states."""
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # [chunk, vocab], ≥ fp32
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logps = torch.gather(logits.log_softmax(-1), 1, targets[:, None]).squeeze(1)
    return logps, logits.argmax(-1) == targets


def scored_token_logps(
    model, batch: dict[str, torch.Tensor], chunk_tokens: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob [N], is-greedy [N]) of every scored token of a collated batch (order of `batch["tgt"]`)."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if "doc" in batch:
        dtype = next(model.parameters()).dtype
        mask = attention_mask_for(model, batch["doc"], batch["seg"], dtype)
        out = decoder(input_ids=batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"])
    else:
        out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = out.last_hidden_state
    selected = hidden.reshape(-1, hidden.shape[-1])[batch["src"]]  # [N, H]
    targets = batch["tgt"]
    softcap = getattr(model.config, "final_logit_softcapping", None)
    logps, greedy = [], []
    for start in range(0, selected.shape[0], chunk_tokens):
        h, t = selected[start : start + chunk_tokens], targets[start : start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            lp, g = checkpoint(_head_logps, head, h, t, softcap, use_reentrant=False)
        else:
            lp, g = _head_logps(head, h, t, softcap)
        logps.append(lp)
        greedy.append(g)
    if not logps:
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        return hidden.new_zeros(0, dtype=dtype), torch.zeros(0, dtype=torch.bool, device=hidden.device)
    return torch.cat(logps), torch.cat(greedy)


def sequence_logps(
    model, batch: dict[str, torch.Tensor], chunk_tokens: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs [S], scored completion token counts [S]) for a collated batch."""
    token_logps, _ = scored_token_logps(model, batch, chunk_tokens)
    return per_sequence(batch, token_logps), per_sequence(batch, torch.ones_like(batch["owner"]))


def per_sequence(batch: dict[str, torch.Tensor], token_values: torch.Tensor) -> torch.Tensor:
    """Sum per-scored-token values (in `batch["tgt"]` order) over each sequence: [S]."""
    n = int(batch["n_seqs"])
    return token_values.new_zeros(n).index_add(0, batch["owner"], token_values)


def naive_sequence_logps(model, seqs: list[Seq]) -> torch.Tensor:
    """The plain path (one unpadded sequence at a time, full logits), kept to check the others against."""
    out = []
    for p, c in seqs:
        ids = torch.tensor([list(p) + list(c)], device=next(model.parameters()).device)
        logits = model(input_ids=ids).logits[0, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logps = logits.log_softmax(-1).gather(1, ids[0, 1:, None]).squeeze(1)
        out.append(logps[max(len(p) - 1, 0) :].sum())
    return torch.stack(out)


class LogProbs(torch.nn.Module):
    """`sequence_logps` as a module: the training loop prepares (DDP/FSDP-wraps) this, not the causal LM,
    so the wrapper sees the forward and its gradient sync and parameter all-gathers run. `.model` is
    the causal LM (its state-dict keys gain a `model.` prefix here)."""

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = 4096) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(self, **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(self.model, batch, self.chunk_tokens)

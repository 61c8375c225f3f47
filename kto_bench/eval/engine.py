"""Batched generation (KV cache) and log-likelihood for Hugging Face causal LMs.

Requests are sorted by token length (longest first, so an out-of-memory batch shows up at once) and
results come back in input order.

- Generation left-pads a batch's prompts; a prefix every prompt of the batch starts with (GSM8K's
  8-shot exemplars) is prefilled once and its KV cache repeated across the batch.
- Log-likelihood packs each context once with all of its continuations (MMLU's four answer letters)
  in rows of at most `row_tokens` tokens (under a dense mask, rows of the batch's longest group, since
  its cost grows with the square of the row), with the training code's shared-prompt attention mask, and
  sends only the positions that predict a continuation token through the LM head.

Tokenisation mimics lm-eval's `_encode_pair`: trailing spaces of the context move to the
continuation, the whole string is encoded, and the continuation is the part beyond the context's
own token count.

Over 400 lines because generation and log-likelihood share tokenisation, length sorting and batching.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from kto_bench.errors import EvalError
from kto_bench.scoring import collate, dense_row_tokens, per_sequence, scored_token_logps

R = TypeVar("R")
TokenPair = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Left-pad token rows -> (input_ids [B, L], attention_mask [B, L], position_ids [B, L])."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask logits [B, V] outside the smallest set of tokens whose probability mass reaches top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    mass_before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every row starts with."""
    first, n = rows[0], min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s and (i := text.find(s)) != -1:
            cut = min(cut, i)
    return text[:cut]


@dataclass(frozen=True)
class Generation:
    text: str  # the completion, cut at the first stop string
    finish_reason: str  # "eos", "stop" (a stop string) or "length" (max_new_tokens)


class Engine:
    """Greedy/sampled generation and continuation log-likelihood for a loaded HF causal LM."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        row_tokens: int = 1024,
        share_prefix: int = 32,
        decode: str = "static",
        compile_decode: bool = False,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.row_tokens = (
            row_tokens  # log-likelihood: the largest packed row (dense masks: the longest group)
        )
        self.share_prefix = share_prefix  # generation: prefill a batch's common prefix once if this long
        if decode not in ("dynamic", "static"):
            raise EvalError(f"decode must be 'dynamic' or 'static', got {decode!r}")
        if compile_decode and decode != "static":
            raise EvalError("compile_decode needs decode='static' (CUDA graphs need fixed shapes)")
        self.decode = decode  # static: a preallocated KV cache, fixed shapes per step (for CUDA graphs)
        self._compiled_step = (
            torch.compile(self._decode_step, mode="reduce-overhead", dynamic=False)
            if compile_decode
            else None
        )
        self.device = next(model.parameters()).device
        self.max_length = max_length or int(getattr(model.config, "max_position_embeddings", 2048))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise EvalError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
        self.pad_id = int(pad)
        self.eos_id = tokenizer.eos_token_id
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.stats: Counter = Counter()  # tokens each phase ran (prefill, decode, log-likelihood)

    # -- tokenisation -------------------------------------------------------------------------
    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is conditioned on (BOS, else EOS), as in lm-eval."""
        bos = self.tokenizer.bos_token_id
        return int(bos if bos is not None else self.eos_id)

    def encode(self, text: str) -> list[int]:
        """Tokenise with the tokenizer's own special-token default, unless text already starts with BOS."""
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def encode_pair(self, context: str, continuation: str) -> TokenPair:
        """lm-eval's `_encode_pair` for causal LMs, plus an empty-context rule and a non-empty guarantee."""
        if not context:
            cont = list(self.tokenizer.encode(continuation, add_special_tokens=False))
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        cont = whole[len(ctx) :]
        if not cont and continuation:
            # The continuation merged into the context's last token: score it encoded on its own.
            cont = list(self.tokenizer.encode(continuation, add_special_tokens=False))
        return ctx, cont

    # -- batching -----------------------------------------------------------------------------
    def _batched(
        self,
        lengths: list[int],
        run: Callable[[list[int]], list[R]],
        *,
        desc: str,
        progress: bool,
        key: Callable[[int], Any] = lambda i: 0,
    ) -> list[R]:
        """Call run(indices) on length-sorted batches (ties broken by `key`, so requests with equal keys
        meet in a batch); halve the batch on CUDA OOM; input order out."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], key(i), i))
        out: list[R | None] = [None] * len(lengths)
        size, start = self.batch_size, 0
        with tqdm(total=len(order), desc=desc, disable=not progress) as bar:
            while start < len(order):
                batch = order[start : start + size]
                try:
                    results = run(batch)
                except torch.OutOfMemoryError:
                    if size == 1:
                        raise
                    size = max(1, size // 2)
                    torch.cuda.empty_cache()
                    continue
                for i, r in zip(batch, results, strict=True):
                    out[i] = r
                start += len(batch)
                bar.update(len(batch))
        return out  # type: ignore[return-value]

    # -- log-likelihood -----------------------------------------------------------------------
    def loglikelihood(
        self, requests: list[tuple[str, str]], *, progress: bool = True
    ) -> list[tuple[float, bool]]:
        """(context, continuation) -> (sum log p(continuation | context), continuation is greedy)."""
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests], progress=progress)

    def loglikelihood_tokens(
        self, pairs: list[TokenPair], *, progress: bool = True
    ) -> list[tuple[float, bool]]:
        """Token-level log-likelihood; the window is left-truncated to max_length + 1 tokens.

        Requests that share a context (MMLU's four answer letters) share one copy of it: they are
        packed as one prompt with one completion each (`training.layout: shared`'s rule), in rows of
        at most `row_tokens` tokens, so the context runs once instead of once per continuation."""
        seqs = []
        for ctx, cont in pairs:
            if not cont:
                raise EvalError("log-likelihood request with an empty continuation")
            seq = (ctx + cont)[-(self.max_length + 1) :]
            n = min(len(cont), len(seq) - 1)  # a continuation longer than the window loses its head
            seqs.append((tuple(seq[:-n]), tuple(seq[-n:])))
        return self._batched(
            [len(p) + len(c) for p, c in seqs],
            lambda batch: self._loglikelihood_batch([seqs[i] for i in batch]),
            desc="loglikelihood",
            progress=progress,
            key=lambda i: seqs[i][0],  # same context, same batch
        )

    @torch.inference_mode()
    def _loglikelihood_batch(
        self, seqs: list[tuple[tuple[int, ...], tuple[int, ...]]]
    ) -> list[tuple[float, bool]]:
        row_tokens = self.row_tokens
        if getattr(self.model.config, "_attn_implementation", "sdpa") != "flex_attention":
            row_tokens = dense_row_tokens(seqs, row_tokens)  # a dense mask costs the square of the row
        batch = collate(seqs, self.pad_id, self.device, "shared", row_tokens)
        self.stats["loglikelihood_tokens"] += batch["input_ids"].numel()
        logps, greedy = scored_token_logps(self.model, batch)
        sums, misses = per_sequence(batch, logps), per_sequence(batch, (~greedy).long())
        return [(float(v), not bool(m)) for v, m in zip(sums.tolist(), misses.tolist(), strict=True)]

    @torch.inference_mode()
    def token_logprobs(
        self, context: list[int], continuation: list[int], top_k: int = 0
    ) -> list[tuple[float, list[tuple[int, float]]]]:
        """Per continuation token: (its log-prob, the top_k most likely tokens at its position as (id,
        log-prob)), from the model's own distribution (no temperature or top-p), in one forward pass; the
        window is left-truncated to max_length tokens."""
        if not continuation:
            return []
        ids = (context + continuation[:-1])[-self.max_length :]
        kwargs = {"logits_to_keep": len(continuation)} if self._keeps_logits else {}
        logits = self.model(input_ids=torch.tensor([ids], device=self.device), **kwargs).logits
        logps = logits[0, -len(continuation) :].float().log_softmax(-1)  # [len(continuation), V]
        chosen = logps.gather(-1, torch.tensor(continuation, device=self.device)[:, None])[:, 0].tolist()
        if not top_k:
            return [(lp, []) for lp in chosen]
        top = logps.topk(top_k, dim=-1)
        alternatives = [
            list(zip(i, v, strict=True))
            for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]
        return list(zip(chosen, alternatives, strict=True))

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompts: list[str], **settings) -> list[str]:
        """Completions only (prompt excluded), cut at the first stop string or EOS: the texts of
        `generate_details` (same keyword settings)."""
        return [g.text for g in self.generate_details(prompts, **settings)]

    def generate_details(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: bool = True,
        skip_special_tokens: bool = False,
    ) -> list[Generation]:
        """Completions (prompt excluded), cut at the first stop string or EOS, with why each ended.

        Stops are matched in the text with special tokens; `skip_special_tokens` drops them from the
        returned text (lm-eval's `hf` does)."""
        if max_new_tokens < 1:
            raise EvalError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        budget = max(1, self.max_length - max_new_tokens)
        encoded = [self.encode(p)[-budget:] for p in prompts]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        stop = tuple(s for s in stop if s)
        return self._batched(
            [len(e) for e in encoded],
            lambda batch: self._generate_batch(
                [encoded[i] for i in batch],
                max_new_tokens,
                stop,
                temperature,
                top_p,
                generator,
                skip_special_tokens,
            ),
            desc="generate",
            progress=progress,
        )

    def _prefill(self, rows: list[list[int]], max_new_tokens: int):
        """Run the prompts once, filling the KV cache: (output, attention mask, position ids, filled slots).

        A prefix common to every row (the few-shot exemplars) of at least `share_prefix` tokens runs once
        and its keys/values are repeated across the batch; the rest of each prompt is left-padded after it
        (the mask has a hole between prefix and suffix, positions continue from the prefix). With the
        static cache the mask already spans every slot the batch will reach (zeros ahead), so every
        decoding step has the same shapes (what CUDA graphs need)."""
        kwargs = {"logits_to_keep": 1} if self._keeps_logits else {}
        shared = min(common_prefix_length(rows), min(len(r) for r in rows) - 1)
        if len(rows) == 1 or shared < self.share_prefix:
            shared = 0
        ids, mask, positions = left_pad([r[shared:] for r in rows], self.pad_id, self.device)
        filled = shared + ids.shape[1]
        self.stats["prefill_tokens"] += shared + ids.numel()
        prefix = None
        if shared:
            prefix = self.model(
                input_ids=torch.tensor([rows[0][:shared]], device=self.device), use_cache=True
            )
            prefix = prefix.past_key_values
            mask = torch.cat([torch.ones_like(ids[:, :1]).expand(-1, shared), mask], dim=1)
            positions = positions + shared
        if self.decode == "static":
            from transformers import StaticCache

            slots = -(-(filled + max_new_tokens) // 256) * 256  # few distinct shapes: few compilations
            cache = StaticCache(config=self.model.config, max_cache_len=slots)
            if (
                prefix is not None
            ):  # a cache layer writes at its own length: the prefix fills slots [0, shared)
                n = len(rows)
                for i, layer in enumerate(prefix.layers):
                    cache.update(layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1), i)
            mask = torch.cat([mask, mask.new_zeros(len(rows), slots - filled)], dim=1)
        elif prefix is not None:
            prefix.batch_repeat_interleave(len(rows))
            cache = prefix
        else:
            cache = None
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )
        return out, mask, positions, filled

    def _decode_step(self, token, mask, position, cache):
        return self.model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]

    @torch.inference_mode()
    def _generate_batch(
        self,
        rows: list[list[int]],
        max_new_tokens: int,
        stop: tuple[str, ...],
        temperature: float,
        top_p: float,
        generator: torch.Generator,
        skip_special_tokens: bool = False,
    ) -> list[Generation]:
        out, mask, positions, width = self._prefill(
            rows, max_new_tokens
        )  # width: slot of the first new token
        cache, next_pos, logits = out.past_key_values, positions[:, -1:] + 1, out.logits[:, -1]
        step_fn = self._compiled_step or self._decode_step
        generated: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        reason: list[str | None] = [None] * len(rows)  # why a row ended: eos, stop (a stop string)
        active = list(range(len(rows)))  # the rows still in the batch (dynamic cache), in cache order
        stop_window = max((len(s) for s in stop), default=0) + 2  # tokens are >= 1 char, mostly
        for step in range(max_new_tokens):
            logits = logits.float()  # [active, V]
            if temperature > 0:
                probs = top_p_filter(logits / temperature, top_p).softmax(-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                token = logits.argmax(-1)
            for i, t in zip(active, token.tolist(), strict=True):
                if done[i]:
                    continue
                if t == self.eos_id:
                    done[i], reason[i] = True, "eos"
                    continue
                generated[i].append(t)
                if stop:
                    tail = self.tokenizer.decode(generated[i][-stop_window:], skip_special_tokens=False)
                    done[i] = any(s in tail for s in stop)
                    reason[i] = "stop" if done[i] else None
            if all(done) or step == max_new_tokens - 1:
                break
            keep = [j for j, i in enumerate(active) if not done[i]]
            if self.decode == "dynamic" and len(keep) <= 0.75 * len(active):  # drop finished rows
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                token, mask, next_pos = token[index], mask[index], next_pos[index]
                active = [active[j] for j in keep]
            finished = torch.tensor([done[i] for i in active], device=self.device)
            token = token.masked_fill(finished, self.pad_id)
            if self.decode == "static":  # the cache writes this token at its own length: slot width + step
                mask[:, width + step] = 1
            else:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = step_fn(token, mask, next_pos, cache)
            next_pos = next_pos + 1
            self.stats["decode_tokens"] += len(active)
        texts = [self.tokenizer.decode(g, skip_special_tokens=skip_special_tokens) for g in generated]
        return [Generation(cut_at_stop(t, stop), reason[i] or "length") for i, t in enumerate(texts)]

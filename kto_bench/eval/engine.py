"""Batched generation (KV cache) and log-likelihood for Hugging Face causal LMs.

Requests are sorted by token length (longest first, so an out-of-memory batch shows up at once),
left-padded into batches, and results come back in input order. Left padding keeps every row's
last token at the last position, so log-likelihood only needs the LM head over the last
`max continuation length` positions (`logits_to_keep`) instead of a [B, L, V] float32 tensor.

Tokenisation mimics lm-eval's `_encode_pair`: trailing spaces of the context move to the
continuation, the whole string is encoded, and the continuation is the part beyond the context's
own token count.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from tqdm.auto import tqdm

from kto_bench.errors import EvalError

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


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s and (i := text.find(s)) != -1:
            cut = min(cut, i)
    return text[:cut]


class Engine:
    """Greedy/sampled generation and continuation log-likelihood for a loaded HF causal LM."""

    def __init__(self, model, tokenizer, *, batch_size: int = 64, max_length: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.max_length = max_length or int(getattr(model.config, "max_position_embeddings", 2048))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise EvalError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
        self.pad_id = int(pad)
        self.eos_id = tokenizer.eos_token_id
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

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
    ) -> list[R]:
        """Call run(indices) on length-sorted batches; halve the batch on CUDA OOM; input order out."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
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
        """Token-level log-likelihood; the window is left-truncated to max_length + 1 tokens."""
        windows = []
        for ctx, cont in pairs:
            if not cont:
                raise EvalError("log-likelihood request with an empty continuation")
            seq = (ctx + cont)[-(self.max_length + 1) :]
            windows.append((seq[:-1], seq[-len(cont) :]))  # model input, targets (its last positions)
        return self._batched(
            [len(w[0]) for w in windows],
            lambda batch: self._loglikelihood_batch([windows[i] for i in batch]),
            desc="loglikelihood",
            progress=progress,
        )

    @torch.inference_mode()
    def _loglikelihood_batch(self, windows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        ids, mask, positions = left_pad([w[0] for w in windows], self.pad_id, self.device)
        n_keep = max(len(w[1]) for w in windows)
        kwargs = {"logits_to_keep": n_keep} if self._keeps_logits else {}
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits
        logits = logits[:, -n_keep:]  # [B, K, V]: the last K positions predict the last K targets
        results = []
        for row, (_, targets) in zip(logits, windows, strict=True):
            row = row[n_keep - len(targets) :].float().log_softmax(-1)  # [T, V]
            target = torch.tensor(targets, device=row.device)
            logp = row.gather(-1, target[:, None]).sum().item()
            results.append((float(logp), bool((row.argmax(-1) == target).all())))
        return results

    # -- generation ---------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        progress: bool = True,
    ) -> list[str]:
        """Completions only (prompt excluded), cut at the first stop string or EOS."""
        if max_new_tokens < 1:
            raise EvalError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        budget = max(1, self.max_length - max_new_tokens)
        encoded = [self.encode(p)[-budget:] for p in prompts]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        stop = tuple(s for s in stop if s)
        return self._batched(
            [len(e) for e in encoded],
            lambda batch: self._generate_batch(
                [encoded[i] for i in batch], max_new_tokens, stop, temperature, top_p, generator
            ),
            desc="generate",
            progress=progress,
        )

    @torch.inference_mode()
    def _generate_batch(
        self,
        rows: list[list[int]],
        max_new_tokens: int,
        stop: tuple[str, ...],
        temperature: float,
        top_p: float,
        generator: torch.Generator,
    ) -> list[str]:
        ids, mask, positions = left_pad(rows, self.pad_id, self.device)
        kwargs = {"logits_to_keep": 1} if self._keeps_logits else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs)
        cache, next_pos = out.past_key_values, positions[:, -1:] + 1
        generated: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        stop_window = max((len(s) for s in stop), default=0) + 2  # tokens are >= 1 char, mostly
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1].float()  # [B, V]
            if temperature > 0:
                probs = top_p_filter(logits / temperature, top_p).softmax(-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                token = logits.argmax(-1)
            for i, t in enumerate(token.tolist()):
                if done[i]:
                    continue
                if t == self.eos_id:
                    done[i] = True
                    continue
                generated[i].append(t)
                if stop:
                    tail = self.tokenizer.decode(generated[i][-stop_window:], skip_special_tokens=False)
                    done[i] = any(s in tail for s in stop)
            if all(done):
                break
            token = token.masked_fill(torch.tensor(done, device=token.device), self.pad_id)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            cache, next_pos = out.past_key_values, next_pos + 1
        texts = [self.tokenizer.decode(g, skip_special_tokens=False) for g in generated]
        return [cut_at_stop(t, stop) for t in texts]

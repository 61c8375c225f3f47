"""Tokenization and batching: chat templates, truncation, microbatches, KTO's KL pairs, fingerprint.

The prompt/completion boundary is exact: the prompt is the chat template rendered with the generation
prompt, the completion is the rest of the fully rendered conversation (so end-of-turn tokens are scored),
and the two are tokenized separately. Truncation follows the peers: the prompt is cut from the left to
`max_prompt_length` first, then the completion from the right; an example left with no completion
tokens is dropped and counted.

Text is capped before it is tokenized (a 50 MB line used to be tokenized whole, 11 GB): no token covers
more characters than the longest entry of the tokenizer's vocabulary (M; vocabularies spell byte-level
tokens one character per byte, and a character is at least one byte), so a text of more than
`max_length * M` characters has more than `max_length` tokens and is truncated anyway. Each prompt
message keeps its last `max_length * M + 1` characters and the completion its first as many; the tokens
that survive truncation lie inside what is kept, so capping changes no result (up to a tokenizer whose
normaliser deletes characters, e.g. one that drops control characters). Capped texts are counted in
`TokenizedData.capped` (the data report's "capped").

Microbatches are formed once from the data (seeded by `data.partition_seed`), so KTO's mismatched pairs
(example i's prompt with example i+1's completion, wrapping, inside each per-step microbatch) are fixed
and their reference log-probs can be cached; a run's seed only shuffles the order of microbatches.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kto_bench.data.canonical import BinaryExample, Messages, Pair, as_dicts
from kto_bench.errors import DataError

Seq = tuple[tuple[int, ...], tuple[int, ...]]  # (prompt ids, completion ids)


def seq_key(seq: Seq) -> str:
    """Content address of one sequence (what the reference cache keys on)."""
    h = hashlib.sha1()
    h.update(len(seq[0]).to_bytes(4, "little"))
    for part in seq:
        h.update(b"".join(t.to_bytes(4, "little") for t in part))
    return h.hexdigest()


def render(tokenizer, prompt: Messages, completion: str, chat_template: str | None) -> tuple[str, str]:
    """(prompt text, completion text) with an exact boundary."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        eos = tokenizer.eos_token or ""
        return "\n\n".join(c for _, c in prompt) + "\n\n", completion + eos
    msgs = as_dicts(prompt)
    try:
        p = tokenizer.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=False, chat_template=template
        )
        full = tokenizer.apply_chat_template(
            [*msgs, {"role": "assistant", "content": completion}], tokenize=False, chat_template=template
        )
    except Exception as e:  # jinja errors come in many types
        raise DataError(
            f"the chat template cannot render this conversation ({type(e).__name__}: {e}); "
            "fix data.chat_template or the data's roles"
        ) from None
    if not full.startswith(p):
        raise DataError(
            "the chat template renders the prompt differently with and without the reply, so the "
            "prompt/completion boundary is ambiguous; set data.chat_template to a template that "
            "renders a prefix-consistent conversation"
        )
    return p, full[len(p) :]


def max_token_chars(tokenizer) -> int:
    """The most characters of text one token can cover: the longest vocabulary entry (an upper bound)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        vocab = {}
    return max((len(t) for t in vocab), default=64) or 1


def cap_chars(prompt: Messages, completion: str, limit: int) -> tuple[Messages, str, bool, bool]:
    """(prompt with each message cut to its last `limit` characters, completion cut to its first `limit`,
    whether the prompt was cut, whether the completion was)."""
    p_cut = any(len(c) > limit for _, c in prompt)
    if p_cut:
        prompt = tuple((r, c[-limit:] if len(c) > limit else c) for r, c in prompt)
    c_cut = len(completion) > limit
    return prompt, completion[:limit] if c_cut else completion, p_cut, c_cut


def encode(
    tokenizer,
    prompt: Messages,
    completion: str,
    *,
    max_length: int,
    max_prompt_length: int,
    chat_template: str | None = None,
    max_chars: int | None = None,
) -> Seq | None:
    """Token ids of (prompt, completion) after truncation; None if no completion token survives.
    `max_chars`: cap each text at this many characters first (default: max_length x max_token_chars + 1)."""
    if max_chars is None:
        max_chars = max_length * max_token_chars(tokenizer) + 1
    prompt, completion, _, _ = cap_chars(prompt, completion, max_chars)
    p_text, c_text = render(tokenizer, prompt, completion, chat_template)
    p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
    if (
        tokenizer.bos_token_id is not None
        and getattr(tokenizer, "add_bos_token", False)
        and (not p_ids or p_ids[0] != tokenizer.bos_token_id)
    ):
        p_ids = [tokenizer.bos_token_id, *p_ids]
    c_ids = tokenizer(c_text, add_special_tokens=False)["input_ids"]
    if len(p_ids) + len(c_ids) > max_length:
        p_ids = p_ids[-max_prompt_length:]
        c_ids = c_ids[: max_length - len(p_ids)]
    if not c_ids:
        return None
    return tuple(p_ids), tuple(c_ids)


def partition(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Seeded random microbatches of exactly batch_size indices (an incomplete last one is dropped)."""
    order = list(range(n))
    random.Random(f"partition-{seed}").shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def kl_partners(batch_len: int) -> list[int]:
    """KTO's mismatched pairing inside a microbatch: position j takes the completion of j+1 (wrapping)."""
    assert batch_len >= 2, "a KL pair needs two examples"
    return [(j + 1) % batch_len for j in range(batch_len)]


@dataclass
class TokenizedData:
    """Everything a run trains on, as indices into one table of unique sequences."""

    sequences: list[Seq] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # DPO: (chosen seq, rejected seq)
    binary: list[tuple[int, bool]] = field(default_factory=list)  # KTO: (seq, desirable)
    pair_batches: list[list[int]] = field(default_factory=list)  # indices into pairs
    binary_batches: list[list[int]] = field(default_factory=list)  # indices into binary
    kl_seqs: list[list[int]] = field(default_factory=list)  # per binary batch: the KL sequence of each slot
    dropped: dict[str, int] = field(default_factory=dict)
    capped: dict[str, int] = field(default_factory=dict)  # texts cut to a character cap before tokenizing
    _index: dict[Seq, int] = field(default_factory=dict, repr=False)

    def add(self, seq: Seq) -> int:
        if seq not in self._index:
            self._index[seq] = len(self.sequences)
            self.sequences.append(seq)
        return self._index[seq]

    def fingerprint(self) -> str:
        """Content hash of the final token batches and their order (both methods' views)."""
        h = hashlib.sha256()
        for s in self.sequences:
            h.update(seq_key(s).encode())
        h.update(
            repr((self.pairs, self.binary, self.pair_batches, self.binary_batches, self.kl_seqs)).encode()
        )
        return h.hexdigest()[:16]

    def lengths(self) -> dict[str, list[int]]:
        return {
            "prompt": [len(p) for p, _ in self.sequences],
            "completion": [len(c) for _, c in self.sequences],
        }

    def to_state(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "sequences",
                "pairs",
                "binary",
                "pair_batches",
                "binary_batches",
                "kl_seqs",
                "dropped",
                "capped",
            )
        }

    @classmethod
    def from_state(cls, state: dict) -> TokenizedData:
        data = cls(**{k: v for k, v in state.items()})
        data.sequences = [(tuple(p), tuple(c)) for p, c in data.sequences]
        data._index = {s: i for i, s in enumerate(data.sequences)}
        return data


def tokenize_views(
    tokenizer,
    pairs: list[Pair],
    binary: list[BinaryExample],
    *,
    max_length: int,
    max_prompt_length: int,
    chat_template: str | None,
    batch_size: int,
    partition_seed: int,
    progress: Callable[[int], None] = lambda n: None,
) -> TokenizedData:
    """Tokenize both views into one sequence table, form microbatches and KTO's KL sequences
    (`progress(1)` after each pair and each binary example)."""
    data = TokenizedData()
    cache: dict[tuple, Seq | None] = {}
    limit = max_length * max_token_chars(tokenizer) + 1
    capped = {"max_chars": limit, "prompts": 0, "completions": 0}

    def enc(prompt: Messages, completion: str) -> Seq | None:
        if (prompt, completion) not in cache:
            short_prompt, short_completion, p_cut, c_cut = cap_chars(prompt, completion, limit)
            capped["prompts"] += p_cut
            capped["completions"] += c_cut
            cache[(prompt, completion)] = encode(
                tokenizer,
                short_prompt,
                short_completion,
                max_length=max_length,
                max_prompt_length=max_prompt_length,
                chat_template=chat_template,
                max_chars=limit,
            )
        return cache[(prompt, completion)]

    dropped = {"pairs_truncated_away": 0, "binary_truncated_away": 0}
    for p in pairs:
        progress(1)
        c, r = enc(p.prompt, p.chosen), enc(p.prompt, p.rejected)
        if c is None or r is None:
            dropped["pairs_truncated_away"] += 1
            continue
        data.pairs.append((data.add(c), data.add(r)))
    for e in binary:
        progress(1)
        s = enc(e.prompt, e.completion)
        if s is None:
            dropped["binary_truncated_away"] += 1
            continue
        data.binary.append((data.add(s), e.desirable))
    if not data.pairs and not data.binary:
        raise DataError(
            "no example has a completion token left after truncation; raise data.max_length "
            "or lower data.max_prompt_length"
        )
    data.pair_batches = partition(len(data.pairs), batch_size, partition_seed)
    data.binary_batches = partition(len(data.binary), batch_size, partition_seed)
    dropped["pairs_in_incomplete_batch"] = len(data.pairs) - batch_size * len(data.pair_batches)
    dropped["binary_in_incomplete_batch"] = len(data.binary) - batch_size * len(data.binary_batches)
    for batch in data.binary_batches:
        seqs = [data.sequences[data.binary[i][0]] for i in batch]
        kl = []
        for j, partner in enumerate(kl_partners(len(seqs))):
            kl_seq = mismatched(seqs[j], seqs[partner], max_length)
            kl.append(data.add(kl_seq))
        data.kl_seqs.append(kl)
    data.dropped = dropped
    data.capped = capped
    return data


def mismatched(own: Seq, partner: Seq, max_length: int) -> Seq:
    """own's prompt with partner's completion, truncated to max_length from the completion's end."""
    prompt, completion = own[0], partner[1]
    return prompt, completion[: max(1, max_length - len(prompt))]

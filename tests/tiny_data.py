"""Shared test data: small canonical pairs and their clean (uncorrupted) tokenized views."""

from __future__ import annotations

from kto_bench.data.canonical import Pair, messages
from kto_bench.data.tokenize import TokenizedData, tokenize_views
from kto_bench.data.transforms import Views, corrupt
from kto_bench.demo.world import build_tokenizer

TOK = build_tokenizer()


def preference_pairs(n: int = 24) -> list[Pair]:
    """The preferred answer is always "yes"-shaped, the rejected one "no"-shaped: a learnable preference."""
    return [Pair(messages(("user", f"Q{i}?")), f"yes {i}", f"no no {i}", f"p{i}") for i in range(n)]


def views(pairs: list[Pair], flip_rate: float = 0.0, seed: int = 0) -> Views:
    """Both methods' views with no imbalance and no one-y-per-x (optionally with flips)."""
    return corrupt(
        pairs,
        flip_rate=flip_rate,
        desirable_fraction=1,
        undesirable_fraction=1,
        one_output_per_prompt=False,
        dpo_unpaired="drop",
        seed=seed,
    )


def tokenized(
    pairs: list[Pair],
    *,
    max_length: int,
    max_prompt_length: int,
    batch_size: int,
    flip_rate: float = 0.0,
    seed: int = 0,
) -> TokenizedData:
    v = views(pairs, flip_rate, seed)
    return tokenize_views(
        TOK,
        v.pairs,
        v.binary,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        chat_template=None,
        batch_size=batch_size,
        partition_seed=0,
    )

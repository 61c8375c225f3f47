"""Matched corruption: pure, seeded transforms from one canonical dataset to each method's view.

Order (one place decides it, `corrupt`):
  pairs:  flip (before unpairing) → unpair → subsample classes → DPO view (survivors or full pairs)
          → one output per prompt (KTO's view only; DPO cannot drop one side of a pair)
  binary: flip labels → subsample classes → DPO view (pairs formed where a prompt has both) → one-y-per-x
A flipped pair is swapped for DPO and becomes two mislabelled binary examples for KTO, so both methods
see the same corruption. Every transform records what it did.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

from kto_bench.data.canonical import BinaryExample, Pair
from kto_bench.errors import DataError


def exact_count(n: int, fraction: float) -> int:
    """The number of items a fraction keeps: round half up, at least 1 when fraction > 0 and n > 0."""
    return 0 if n == 0 else max(1, int(n * fraction + 0.5))


def flip_pairs(pairs: list[Pair], rate: float, seed: int) -> tuple[list[Pair], list[str]]:
    """Swap chosen and rejected in exactly round(rate·n) seeded-random pairs."""
    k = int(len(pairs) * rate + 0.5)
    idx = set(random.Random(f"flip-{seed}").sample(range(len(pairs)), k))
    out = [replace(p, chosen=p.rejected, rejected=p.chosen) if i in idx else p for i, p in enumerate(pairs)]
    return out, sorted(pairs[i].source_id for i in idx)


def flip_labels(
    examples: list[BinaryExample], rate: float, seed: int
) -> tuple[list[BinaryExample], list[str]]:
    k = int(len(examples) * rate + 0.5)
    idx = set(random.Random(f"flip-{seed}").sample(range(len(examples)), k))
    out = [replace(e, desirable=not e.desirable) if i in idx else e for i, e in enumerate(examples)]
    return out, sorted(examples[i].source_id for i in idx)


def unpair(pairs: list[Pair]) -> list[BinaryExample]:
    """Each pair into a desirable and an undesirable example (ids `<pair>/chosen`, `<pair>/rejected`)."""
    out = []
    for p in pairs:
        out.append(BinaryExample(p.prompt, p.chosen, True, f"{p.source_id}/chosen"))
        out.append(BinaryExample(p.prompt, p.rejected, False, f"{p.source_id}/rejected"))
    return out


def subsample(
    examples: list[BinaryExample], desirable_fraction: float, undesirable_fraction: float, seed: int
) -> list[BinaryExample]:
    """Keep a seeded random (not prefix) subset of each class (at least one example of a non-empty class);
    original order is preserved."""
    keep: set[int] = set()
    for label, frac in ((True, desirable_fraction), (False, undesirable_fraction)):
        idx = [i for i, e in enumerate(examples) if e.desirable is label]
        keep |= set(random.Random(f"subsample-{label}-{seed}").sample(idx, exact_count(len(idx), frac)))
    return [e for i, e in enumerate(examples) if i in keep]


def keep_one_output_per_prompt(examples: list[BinaryExample], seed: int) -> list[BinaryExample]:
    """Keep one seeded random output per prompt (the paper's one-y-per-x ablation)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        groups[e.prompt].append(i)
    rng = random.Random(f"one-y-{seed}")
    keep = {rng.choice(idx) for _, idx in sorted(groups.items(), key=lambda kv: kv[1][0])}
    return [e for i, e in enumerate(examples) if i in keep]


def pairs_from_binary(examples: list[BinaryExample]) -> list[Pair]:
    """Pairs wherever a prompt has both classes: the k-th desirable with the k-th undesirable."""
    by_prompt: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for e in examples:
        by_prompt[e.prompt][0 if e.desirable else 1].append(e)
    out = []
    for prompt, (good, bad) in by_prompt.items():
        for g, b in zip(good, bad, strict=False):
            out.append(Pair(prompt, g.completion, b.completion, f"{g.source_id}|{b.source_id}"))
    return out


def counts(examples: list[BinaryExample]) -> dict[str, int]:
    c = Counter(e.desirable for e in examples)
    return {"desirable": c[True], "undesirable": c[False]}


@dataclass
class Views:
    """The matched training inputs: DPO's pairs and KTO's binary examples, plus what was done."""

    pairs: list[Pair]
    binary: list[BinaryExample]
    report: dict = field(default_factory=dict)


def corrupt(
    items: list[Pair] | list[BinaryExample],
    *,
    flip_rate: float,
    desirable_fraction: float,
    undesirable_fraction: float,
    one_output_per_prompt: bool,
    dpo_unpaired: str,
    seed: int,
) -> Views:
    """Apply the spec's corruption once and derive both methods' views from the same examples."""
    if not items:
        raise DataError("the data source returned no examples; check data.source, data.path and data.limit")
    steps: list[dict] = []
    if isinstance(items[0], Pair):
        pairs, flipped = flip_pairs(items, flip_rate, seed)  # type: ignore[arg-type]
        steps.append({"step": "source", "pairs": len(items), **counts(unpair(items))})  # type: ignore[arg-type]
        binary = unpair(pairs)
        steps.append({"step": "flip", "flipped": len(flipped), **counts(binary)})
    else:
        steps.append({"step": "source", **counts(items)})  # type: ignore[arg-type]
        binary, flipped = flip_labels(items, flip_rate, seed)  # type: ignore[arg-type]
        pairs = pairs_from_binary(binary)
        steps.append({"step": "flip", "flipped": len(flipped), **counts(binary)})
    kept = subsample(binary, desirable_fraction, undesirable_fraction, seed)
    steps.append(
        {
            "step": "subsample",
            "desirable_fraction": desirable_fraction,
            "undesirable_fraction": undesirable_fraction,
            **counts(kept),
        }
    )
    if dpo_unpaired == "drop" and (desirable_fraction < 1 or undesirable_fraction < 1):
        ids = {e.source_id for e in kept}
        if isinstance(items[0], Pair):
            pairs = [p for p in pairs if f"{p.source_id}/chosen" in ids and f"{p.source_id}/rejected" in ids]
        else:
            pairs = pairs_from_binary(kept)
    steps.append({"step": "dpo_view", "rule": dpo_unpaired, "pairs": len(pairs)})
    if one_output_per_prompt:
        kept = keep_one_output_per_prompt(kept, seed)
        steps.append({"step": "one_output_per_prompt", **counts(kept)})
    report = {
        "steps": steps,
        "flipped_ids": flipped,
        "n_flipped": len(flipped),
        "counts": {"kto": counts(kept), "dpo_pairs": len(pairs)},
    }
    return Views(pairs=pairs, binary=kept, report=report)

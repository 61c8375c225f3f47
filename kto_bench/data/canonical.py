"""The two canonical forms every source normalizes to.

A message list is OpenAI-style: [{"role": "user", "content": "..."}, ...]. A completion is the
assistant's reply text. `source_id` is stable across runs and machines (a hub row id, a file
line number, or a content hash) and is what flips and subsampling record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

Messages = tuple[tuple[str, str], ...]  # ((role, content), ...) — hashable, immutable


def messages(*turns: tuple[str, str] | dict) -> Messages:
    """Build a Messages value from (role, content) tuples or {"role", "content"} dicts."""
    out = []
    for t in turns:
        role, content = (t["role"], t["content"]) if isinstance(t, dict) else t
        out.append((str(role), str(content)))
    return tuple(out)


def as_dicts(msgs: Messages) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in msgs]


@dataclass(frozen=True)
class Pair:
    """A preference pair: for `prompt`, `chosen` is preferred over `rejected`."""

    prompt: Messages
    chosen: str
    rejected: str
    source_id: str


@dataclass(frozen=True)
class BinaryExample:
    """One completion with a binary desirability label (KTO's native input)."""

    prompt: Messages
    completion: str
    desirable: bool
    source_id: str


def content_id(*parts: object) -> str:
    """A short stable id from content, for sources that carry no ids of their own."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_record(x: Pair | BinaryExample) -> dict:
    d = asdict(x)
    d["prompt"] = as_dicts(x.prompt)
    return d

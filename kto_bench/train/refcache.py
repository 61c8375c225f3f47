"""The reference log-prob cache: computed once, in inference mode, shared by methods, seeds and β.

Entries are content addressed: a sequence's key is the hash of its (prompt ids, completion ids), and the
namespace is the reference model's hash and compute dtype. So a DPO run and a KTO run on the same data,
every seed of the training order and every β read the same entries; KTO's mismatched (KL) sequences are
ordinary entries. Each write is one shard file, written to a temp name and renamed, so a killed process
leaves no partial shard; a corrupted shard is an error (never silently recomputed under another key).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from kto_bench.data.tokenize import Seq, seq_key
from kto_bench.errors import StoreError
from kto_bench.io import stable_hash
from kto_bench.train.logps import Layout, collate, sequence_logps


class ReferenceCache:
    def __init__(self, root: Path, model_hash: str, dtype: str) -> None:
        self.dir = Path(root) / "reference" / f"{stable_hash([model_hash, dtype], 16)}"
        self.entries: dict[str, float] = {}
        self.forward_sequences = 0  # sequences this process computed (tests count it)
        if self.dir.is_dir():
            for shard in sorted(self.dir.glob("shard-*.pt")):
                try:
                    self.entries.update(torch.load(shard, map_location="cpu", weights_only=True))
                except Exception as e:
                    raise StoreError(
                        f"reference cache shard {shard} is corrupted ({type(e).__name__}); delete "
                        "that file and rerun: only its entries will be recomputed"
                    ) from None

    def missing(self, seqs: list[Seq]) -> list[Seq]:
        seen, out = set(), []
        for s in seqs:
            k = seq_key(s)
            if k not in self.entries and k not in seen:
                seen.add(k)
                out.append(s)
        return out

    def lookup(self, seqs: list[Seq]) -> torch.Tensor:
        return torch.tensor([self.entries[seq_key(s)] for s in seqs], dtype=torch.float32)

    def write_shard(self, values: dict[str, float]) -> None:
        if not values:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"shard-{stable_hash(sorted(values), 16)}.pt"
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            torch.save(values, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.entries.update(values)


@torch.inference_mode()
def fill(
    cache: ReferenceCache,
    model,
    seqs: list[Seq],
    *,
    pad_id: int,
    batch_size: int,
    device,
    layout: Layout = "shared",
    row_tokens: int | None = 4096,
    shard_size: int = 4096,
    progress: Callable[[int], None] = lambda n: None,
) -> int:
    """Compute the reference log-probs of the sequences the cache lacks; returns how many it computed.

    Sequences go `batch_size` at a time in the given layout (packed into rows of `row_tokens`), ordered
    so that ones sharing a prompt meet in one forward and padded rows hold similar lengths."""
    todo = sorted(cache.missing(seqs), key=lambda s: (len(s[0]) + len(s[1]), s[0]))
    if layout == "shared":
        todo.sort(key=lambda s: s[0])
    pending: dict[str, float] = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        logps, _ = sequence_logps(model, collate(chunk, pad_id, device, layout, row_tokens))
        pending.update({seq_key(s): float(v) for s, v in zip(chunk, logps.tolist(), strict=True)})
        cache.forward_sequences += len(chunk)
        progress(len(chunk))
        if len(pending) >= shard_size:
            cache.write_shard(pending)
            pending = {}
    cache.write_shard(pending)
    return len(todo)

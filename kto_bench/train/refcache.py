"""The reference log-prob cache: computed once, in inference mode, shared by methods, seeds and β.

Entries are content addressed: a sequence's key is the hash of its (prompt ids, completion ids), and the
namespace is the reference model's hash and compute dtype. So a DPO run and a KTO run on the same data,
every seed of the training order and every β read the same entries; KTO's mismatched (KL) sequences are
ordinary entries. Each write is one shard file, written to a temp name and renamed, so a killed process
leaves no partial shard; a corrupted shard is an error (never silently recomputed under another key).

A shard found corrupted is noted (a `.shard-….pt.corrupt` marker): once the user deletes it, as the error
says, the next run recomputes the entries it needs that are missing (`deleted_corrupt`; the marker stays,
since several runs may need those entries). In a cache with no such deletion, a shard that goes missing
is still an error (nothing is recomputed behind the user's back). Temp files of processes that
died mid-write are removed when the cache is next opened.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from kto_bench.data.tokenize import Seq, seq_key
from kto_bench.errors import StoreError
from kto_bench.io import read_torch, stable_hash
from kto_bench.scoring import Layout, collate, sequence_logps
from kto_bench.store import save_torch


class ReferenceCache:
    def __init__(self, root: Path, model_hash: str, dtype: str) -> None:
        self.dir = Path(root) / "reference" / f"{stable_hash([model_hash, dtype], 16)}"
        self.entries: dict[str, float] = {}
        self.forward_sequences = 0  # sequences this process computed (tests count it)
        self.deleted_corrupt: list[Path] = []  # shards reported corrupted and since deleted by the user
        if self.dir.is_dir():
            remove_dead_temp_files(self.dir)
            for marker in self.dir.glob(".shard-*.pt.corrupt"):
                shard = self.dir / marker.name[1 : -len(".corrupt")]
                if not shard.exists():
                    self.deleted_corrupt.append(shard)
            for shard in sorted(self.dir.glob("shard-*.pt")):
                try:
                    self.entries.update(read_torch(shard))
                except Exception as e:
                    # noted, so that once deleted its entries are recomputed rather than called missing
                    with contextlib.suppress(OSError):
                        (self.dir / f".{shard.name}.corrupt").touch()
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
        save_torch(values, path)  # temp name `.<name>.tmp<pid>`: removed by a later process once pid is gone
        self.entries.update(values)


def remove_dead_temp_files(folder: Path) -> list[Path]:
    """Delete `.<name>.tmp<pid>` files whose writer is no longer running (killed mid-write); the cache is
    shared by concurrent runs, so a live writer's temp file is left alone. Returns those removed."""
    gone = []
    for tmp in folder.glob(".*.tmp*"):
        pid = tmp.name.rpartition(".tmp")[2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        gone.append(tmp)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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

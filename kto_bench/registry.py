"""One small registry type for every named thing (losses, sources, tasks, plots, claims).

Packages that register into the general registries from their own home (`kto_bench.extensions.PACKAGES`,
the demo) are imported the first time an extensible registry (data sources, tasks, model sources) is
looked up, so a lookup always sees their entries and no general module has to name them."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kto_bench.errors import KtoBenchError

T = TypeVar("T")


def did_you_mean(name: str, options: list[str] | tuple[str, ...] | set[str]) -> str:
    """A ' (did you mean 'x'?)' suffix, or '' when nothing is close."""
    close = difflib.get_close_matches(name, sorted(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_extensions_loaded = False


def load_extensions() -> None:
    """Import the packages of `kto_bench.extensions.PACKAGES` once (they register their entries)."""
    global _extensions_loaded
    if _extensions_loaded:
        return
    _extensions_loaded = True  # first: a package's own lookups while it imports do not recurse
    from kto_bench.extensions import PACKAGES

    for package in PACKAGES:
        importlib.import_module(package)


class Registry(Generic[T]):
    """Maps names to objects. Entries are either objects or lazy 'module:attr' strings,
    so heavy dependencies are imported only when an entry is used."""

    def __init__(self, kind: str, extensible: bool = False) -> None:
        self.kind = kind
        self._extensible = extensible  # extension packages may register here: load them before a lookup
        self._entries: dict[str, T | str] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, doc or (getattr(obj, "__doc__", "") or "").strip().split("\n")[0])
            return obj

        return deco

    def add(self, name: str, obj: T | str, doc: str = "") -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = obj
        self._docs[name] = doc

    def _complete(self) -> None:
        if self._extensible:
            load_extensions()

    def get(self, name: str) -> T:
        self._complete()
        if name not in self._entries:
            raise KtoBenchError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._entries)}; "
                f"known: {', '.join(sorted(self._entries))}"
            )
        entry = self._entries[name]
        if isinstance(entry, str) and ":" in entry:
            module, attr = entry.split(":")
            entry = getattr(importlib.import_module(module), attr)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        self._complete()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        self._complete()
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        return [(n, self._docs.get(n, "")) for n in self.names()]

    def in_order(self) -> list[str]:
        """Names in registration order (where the order is meaningful, e.g. a default that lists all)."""
        return list(self._entries)

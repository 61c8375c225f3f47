"""Run ids and spec hashes of the shipped specs are pinned: a refactor that changes how a spec is parsed,
defaulted or dumped would silently orphan every stored result (a new id reruns everything).

tests/data/shipped_run_ids.json was written from the specs as they were before the restructuring of
issue #20. A deliberate change of a result-affecting default changes ids: rewrite the file in the same
commit and say why in its message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kto_bench.spec import expand, load_spec

ROOT = Path(__file__).resolve().parents[1]
PINNED = json.loads((ROOT / "tests" / "data" / "shipped_run_ids.json").read_text())


def test_every_shipped_spec_is_pinned() -> None:
    assert sorted(PINNED) == sorted(p.name for p in (ROOT / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_spec_keeps_its_run_ids(name: str) -> None:
    spec = load_spec(ROOT / "experiments" / name)
    assert spec.spec_hash == PINNED[name]["spec_hash"]
    assert sorted(r.run_id for r in expand(spec)) == PINNED[name]["runs"]

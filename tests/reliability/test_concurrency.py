"""Two `kto-bench run` processes on one experiment at once (the session's baseline run): every stage of
every run happens exactly once and the store stays valid."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from tests.reliability.helpers import all_json_parses, run_dirs, stage_lines

pytestmark = pytest.mark.slow  # uses the session's baseline: two `kto-bench run` processes


def test_two_processes_do_each_stage_of_each_run_exactly_once(baseline):
    started = Counter(line for out in baseline.outputs for line in stage_lines(out))
    dirs = run_dirs(baseline.results)
    assert dirs.keys() == {"kto", "dpo", "base"}
    expected = {
        (stage, d.name)
        for m, d in dirs.items()
        if m != "base"
        for stage in ("data", "reference", "train", "eval", "done")
    }
    assert set(started) == expected and set(started.values()) == {1}, started
    assert sum(out.count("eval base model") for out in baseline.outputs) == 1
    for method, d in dirs.items():
        stages = json.loads((d / "status.json").read_text())["stages"]
        assert ("eval" if method == "base" else "done") in stages
    assert len(all_json_parses(baseline.results)) > 10
    assert (baseline.reports / "rel" / "report.md").is_file()
    assert not [p for p in baseline.results.rglob("*") if ".tmp" in p.name], "temp files left behind"


def test_racing_reference_passes_agree_on_every_shared_entry(baseline):
    """Two processes may compute the same reference log-prob at once (kto and dpo share sequences); the
    cache is content addressed, so each sequence has one value whichever shard holds it."""
    values: dict[str, set[float]] = {}
    for shard in (baseline.results / "_cache" / "reference").rglob("shard-*.pt"):
        for key, v in torch.load(shard, weights_only=True).items():
            values.setdefault(key, set()).add(v)
    dirs = run_dirs(baseline.results)
    n_seq = max(
        json.loads((dirs[m] / "data_report.json").read_text())["counts"]["sequences"] for m in ("kto", "dpo")
    )
    assert len(values) == n_seq and all(len(v) == 1 for v in values.values())

"""Two `kto-bench run` processes on one experiment at once (the session's baseline run): every stage of
every run happens exactly once and the store stays valid."""

from __future__ import annotations

import json
from collections import Counter

from tests.reliability.helpers import all_json_parses, run_dirs, stage_lines


def test_two_processes_do_each_stage_of_each_run_exactly_once(baseline):
    started = Counter(line for out in baseline.outputs for line in stage_lines(out))
    dirs = run_dirs(baseline.results)
    assert dirs.keys() == {"kto", "dpo", "base"}
    expected = {(stage, d.name) for m, d in dirs.items() if m != "base"
                for stage in ("data", "reference", "train", "eval", "done")}
    assert set(started) == expected and set(started.values()) == {1}, started
    assert sum(out.count("eval base model") for out in baseline.outputs) == 1
    for method, d in dirs.items():
        stages = json.loads((d / "status.json").read_text())["stages"]
        assert ("eval" if method == "base" else "done") in stages
    assert len(all_json_parses(baseline.results)) > 10
    assert (baseline.reports / "rel" / "report.md").is_file()
    assert not [p for p in baseline.results.rglob("*") if ".tmp" in p.name], "temp files left behind"


def test_the_shared_reference_cache_was_computed_once(baseline):
    dirs = run_dirs(baseline.results)
    computed = [json.loads((dirs[m] / "status.json").read_text())["stages"]["reference"] for m in ("kto", "dpo")]
    sequences = [json.loads((dirs[m] / "data_report.json").read_text())["counts"]["sequences"] for m in ("kto", "dpo")]
    # DPO's sequences are a subset of KTO's (KTO adds its KL pairs): whichever ran second computed only the rest
    assert sum(c["computed"] for c in computed) == max(sequences)

"""The spec package is a leaf: loading it imports nothing of data, eval, report or train (nor torch), and the
names those own are checked through the lazy entries of kto_bench.spec.hooks (kto_bench/checks.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kto_bench import checks
from kto_bench.errors import SpecError
from kto_bench.spec import ReportSpec, parse_spec
from kto_bench.spec.hooks import CHECKS

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("kto_bench.data", "kto_bench.eval", "kto_bench.report", "kto_bench.train", "kto_bench.checks")


def test_importing_the_spec_and_methods_loads_no_other_layer_and_no_torch():
    code = (
        "import sys; import kto_bench.spec, kto_bench.methods; "
        f"print(sorted(m for m in sys.modules if m == 'torch' or m.startswith({LAYERS!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_the_spec_package_names_no_other_layer():
    for path in (ROOT / "kto_bench" / "spec").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not any(f"{layer}." in text or f"import {layer}" in text for layer in LAYERS[:4]), path


def test_every_hook_is_a_function_of_kto_bench_checks():
    assert all(CHECKS.get(name) is getattr(checks, name) for name in CHECKS)


def test_default_report_lists_skip_the_registries_but_other_names_are_checked():
    assert ReportSpec().plots == ["bars", "noise", "imbalance", "training", "rewards"]
    with pytest.raises(ValueError, match="unknown plot 'nois' \\(did you mean 'noise'\\?\\)"):
        ReportSpec(plots=["nois"])
    spec = "name: t\nmodel: {source: hub, name: m}\ndata: {source: local_pairs, path: x}\nmethods: [{type: dpo}]\n"
    with pytest.raises(SpecError, match=r"<spec>:3: data.source: unknown data source 'local_pair'"):
        parse_spec(spec.replace("local_pairs", "local_pair"))

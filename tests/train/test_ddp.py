"""Two processes (gloo, CPU) train the same curve as one process accumulating twice as many microbatches.

The launch goes through torchrun, as `accelerate launch` does for configs/accelerate/cpu_2proc.yaml.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kto_bench.numerics import CPU_NUMERICS

WORKER = Path(__file__).with_name("ddp_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(two processes with grad_accum 1, one process with grad_accum 2): same global batch and microbatches.

    KTO runs with `z0_scope: step` here: with the paper's per-microbatch z0, two processes average their two
    microbatches' KL while one process with accumulation uses each microbatch's own, so only the step scope
    makes the two layouts the same computation (the per-process averaging itself is tested below)."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    # Both layouts run in fresh processes with one thread each and the CLI's CPU numerics: run inside the
    # test process, the one-process layout would use as many threads as the machine has cores and sum in
    # another order than the two single-threaded processes (on CI's runner: 1% apart after six steps).
    env = {**os.environ, **CPU_NUMERICS, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for cmd in ([*launch, str(WORKER), str(two), "1"], [sys.executable, str(WORKER), str(one), "2"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return two, one


@pytest.mark.parametrize("method", ["kto", "dpo"])
def test_two_processes_log_the_curve_of_one_process_at_the_same_global_batch(runs, method):
    two, one = runs
    a, b = (json.loads((d / f"{method}.json").read_text()) for d in (two, one))
    assert len(a) == len(b) == 6
    for step_two, step_one in zip(a, b, strict=True):
        keys = {k for k in step_one if k.startswith("train/")}
        assert keys == {k for k in step_two if k.startswith("train/")}
        for k in keys:
            assert step_two[k] == pytest.approx(step_one[k], rel=1e-4, abs=1e-6), k
        assert step_two["tokens/seen"] == step_one["tokens/seen"]  # tokens are summed over processes
    assert b[-1]["train/loss"] < b[0]["train/loss"]
    if method == "kto":
        # z0 is not clamped to 0 throughout, so the comparison covers its cross-process average
        assert any(s["train/kl"] > 0 for s in b)


def test_kto_z0_is_the_mean_of_the_processes_kl_estimates(runs):
    two, _ = runs
    r0, r1 = (json.loads((two / f"kl{r}.json").read_text()) for r in (0, 1))
    assert abs(r0["local"] - r1["local"]) > 0.1  # each process's own estimate differs
    mean = (r0["local"] + r1["local"]) / 2
    assert mean > 0
    assert r0["z0"] == pytest.approx(mean, rel=1e-5) and r1["z0"] == pytest.approx(mean, rel=1e-5)

"""CPU numerics held to one code path, so a CPU run gives the same bytes on any x86-64 machine.

Matrix products (MKL), vectorised ATen kernels and oneDNN pick their instruction set from the CPU they
run on: an AVX-512 machine and an AVX2 machine sum in different orders and, after a few hundred training
steps, can answer a few items differently. `kto-bench` therefore starts with these libraries held to AVX2
(MKL's conditional numerical reproducibility in strict mode), the widest path every x86-64 machine of the
last decade has. They are defaults: a variable already set in the environment wins. GPU kernels are not
affected. The demo world's build adds one thread on top (`demo.world.BUILD_ENV`).

Measured (docs/DEMO.md): the committed demo runs, retrained from an empty cache with and without these
settings and with one or two threads on the reference machine, give byte-identical rewards and per-item
outputs; `tests/test_committed_demo.py` retrains two of them on whatever machine runs the suite.
"""

from __future__ import annotations

import os

CPU_NUMERICS = {
    "MKL_CBWR": "AVX2,STRICT",
    "ATEN_CPU_CAPABILITY": "avx2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


def pin_cpu_numerics() -> dict[str, str]:
    """Sets CPU_NUMERICS in os.environ where unset (call before torch is imported); returns the values in
    force, for provenance."""
    for key, value in CPU_NUMERICS.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in CPU_NUMERICS}


def in_force() -> dict[str, str | None]:
    """The CPU numerics settings of this process's environment (provenance)."""
    return {key: os.environ.get(key) for key in CPU_NUMERICS}

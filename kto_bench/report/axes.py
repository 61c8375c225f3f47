"""The grid fields the report knows by name: the corruption axes (noise, imbalance, one output per
prompt) and the value of each corruption field that means "no corruption" (the spec's default).

Every report module that looks a grid field up by its dotted path takes it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kto_bench.spec import CorruptionSpec


@dataclass(frozen=True)
class Axis:
    field: str  # dotted grid path, as run.json's "grid" records it
    label: str  # x-axis label of its sweep plot


NOISE = Axis("corruption.flip_rate", "flip rate")
IMBALANCE = Axis("corruption.desirable_fraction", "desirable fraction")
ONE_Y_PER_X = "corruption.one_output_per_prompt"
# grid fields under this prefix choose the model: runs that share them form one comparison group (one base row)
MODEL_PREFIX = "model."

# Corruption settings whose value means "no corruption"; the reference point has these where they vary.
# The spec's defaults are the clean values (`CorruptionSpec()`); the corruption seed is no setting.
CLEAN_VALUES: dict[str, Any] = {
    f"corruption.{name}": value for name, value in CorruptionSpec().model_dump().items() if name != "seed"
}

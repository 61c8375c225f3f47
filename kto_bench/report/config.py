"""The `report:` section of an experiment spec: which tables, plots and claims to render, and how."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kto_bench.registry import did_you_mean
from kto_bench.report.registries import PLOTS, TABLES


def _check_names(kind: str, names: list[str], known: tuple[str, ...] | list[str]) -> list[str]:
    for name in names:
        if name not in known:
            raise ValueError(f"unknown {kind} {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
    return names


class ReportSpec(BaseModel):
    """What `kto-bench report` renders. Confidence intervals are two-sided at level 1 - alpha."""

    model_config = ConfigDict(extra="forbid")

    tables: list[str] = Field(default_factory=TABLES.in_order)
    plots: list[str] = Field(default_factory=PLOTS.in_order)
    claims: list[str] = Field(default_factory=list)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    compare: tuple[str, str] = ("kto", "dpo")

    @field_validator("tables")
    @classmethod
    def _tables(cls, v: list[str]) -> list[str]:
        return _check_names("table", v, TABLES.in_order())

    @field_validator("plots")
    @classmethod
    def _plots(cls, v: list[str]) -> list[str]:
        return _check_names("plot", v, PLOTS.in_order())

    @field_validator("claims")
    @classmethod
    def _claims(cls, v: list[str]) -> list[str]:
        if not v:
            return v
        from kto_bench.report.claims import CLAIMS  # numpy/pandas only when claims are named

        return _check_names("claim", v, CLAIMS.names())

    @field_validator("compare")
    @classmethod
    def _compare(cls, v: tuple[str, str]) -> tuple[str, str]:
        if v[0] == v[1]:
            raise ValueError(f"compare needs two different methods, got {list(v)}")
        return v

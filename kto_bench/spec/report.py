"""The `report:` section of a spec: which tables, plots and claims to render, and how.

Names are checked against the report's own registries (`kto_bench.checks`), and the defaults are those
registries in registration order (`report/registries.py` is the only list of names). The section is part
of the spec hash: registering a new table or plot changes the hash of specs that take the defaults.
Run ids do not depend on it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kto_bench.spec.hooks import check


class ReportSpec(BaseModel):
    """What `kto-bench report` renders. Confidence intervals are two-sided at level 1 - alpha."""

    model_config = ConfigDict(extra="forbid")

    tables: list[str] = Field(default_factory=lambda: check("report_defaults", "tables"))
    plots: list[str] = Field(default_factory=lambda: check("report_defaults", "plots"))
    claims: list[str] = Field(default_factory=list)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)
    compare: tuple[str, str] = ("kto", "dpo")

    @field_validator("tables")
    @classmethod
    def _tables(cls, v: list[str]) -> list[str]:
        return check("report_tables", v)

    @field_validator("plots")
    @classmethod
    def _plots(cls, v: list[str]) -> list[str]:
        return check("report_plots", v)

    @field_validator("claims")
    @classmethod
    def _claims(cls, v: list[str]) -> list[str]:
        return check("report_claims", v) if v else v

    @field_validator("compare")
    @classmethod
    def _compare(cls, v: tuple[str, str]) -> tuple[str, str]:
        if v[0] == v[1]:
            raise ValueError(f"compare needs two different methods, got {list(v)}")
        return v

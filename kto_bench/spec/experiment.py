"""A run (`RunSpec`: what a run id hashes) and an experiment (`ExperimentSpec`: what a spec file holds)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kto_bench.io import stable_hash
from kto_bench.methods import Method
from kto_bench.spec.evaluation import EvaluationSpec
from kto_bench.spec.report import ReportSpec
from kto_bench.spec.schema import CorruptionSpec, DataSpec, ModelSpec, Strict, TrainingSpec

# Fields that cannot change a result (what stays on disk): recorded with every run, but left out of run ids
# and spec hashes, so setting them reruns nothing and adding them kept every existing id (what a run keeps,
# where it logs its metrics).
UNHASHED: dict[str, Any] = {"training": {"keep_optimizer_state"}, "tracking": True}


class RunSpec(Strict):
    """One fully resolved run: what `run_id` hashes."""

    model: ModelSpec
    data: DataSpec
    corruption: CorruptionSpec = CorruptionSpec()
    method: Method
    training: TrainingSpec = TrainingSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    seed: int = 1

    @model_validator(mode="after")
    def _kto_batch(self) -> RunSpec:
        if (
            self.method.needs_kl and self.training.batch_size < 2
        ):  # KL pairs are mismatched within a microbatch
            raise ValueError(
                "training.batch_size must be at least 2 for KTO: z0 is estimated from mismatched pairs inside "
                "each per-step microbatch (the paper recommends ≥ 4)"
            )
        if self.training.precision == "bf16_pure" and self.model.lora is not None:
            raise ValueError(
                "training.precision: bf16_pure is for full fine-tuning; LoRA adapters are small and train "
                "with float32 master weights: use precision: bf16"
            )
        if getattr(self.method, "z0_scope", None) == "step" and self.training.kl_pass == "fused":
            raise ValueError(
                "training.kl_pass: fused computes each microbatch's KL rows in its own forward, but "
                "method.z0_scope: step needs the whole step's KL rows first; use kl_pass: separate"
            )
        return self

    @model_validator(mode="after")
    def _demo_feedback_from_its_world(self) -> RunSpec:
        if self.data.source == "demo_arith" and (
            self.model.source != "demo" or self.data.path not in (None, self.model.name)
        ):
            raise ValueError(
                "data.source demo_arith reads the feedback of the model's own demo world: use model.source: "
                "demo and leave data.path unset (or equal to model.name)"
            )
        return self

    @property
    def run_id(self) -> str:
        return f"{self.method.name}-{stable_hash(self.model_dump(mode='json', exclude=UNHASHED), 10)}"


GridBlock = dict[str, list[Any]]


class TrackingSpec(Strict):
    """Where training metrics go besides metrics.jsonl (kto_bench/tracking.py). Not part of any run's
    identity: changing it never changes a run id or the spec hash."""

    trackers: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=lambda: ["tensorboard"], description="[] logs to metrics.jsonl only"
    )
    project: str | None = Field(None, description="wandb/mlflow/trackio project; None = the experiment name")


class ExperimentSpec(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    requires: list[Literal["gpu", "hub", "api-key", "mirrors"]] = Field(default_factory=list)
    model: ModelSpec
    data: DataSpec
    corruption: CorruptionSpec = CorruptionSpec()
    methods: list[Method] = Field(..., min_length=1)
    training: TrainingSpec = TrainingSpec()
    seeds: list[int] = Field([1], min_length=1)
    evaluation: EvaluationSpec = EvaluationSpec()
    report: ReportSpec = Field(default_factory=ReportSpec)
    tracking: TrackingSpec = TrackingSpec()
    grid: list[GridBlock] = Field(default_factory=list, description="union of cross products")

    @field_validator("grid", mode="before")
    @classmethod
    def _one_block(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _unique_methods(self) -> ExperimentSpec:
        names = [m.name for m in self.methods]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"methods named twice: {sorted(dup)}; give ablations a distinct `label`")
        return self

    @property
    def spec_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json", exclude=UNHASHED), 16)

"""The model, data, corruption and training sections of a spec (pydantic models that forbid unknown keys).

Every default of a spec lives in the models of this package (a method's in its `kto_bench.methods` config);
a resolved run records all values, defaults included. Names that other registries own (data sources) are
checked through `hooks.check`, so this package imports nothing of kto_bench.data, .eval or .report.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kto_bench.registry import did_you_mean
from kto_bench.spec.hooks import check


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------- model and data


class LoraSpec(Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class DemoWorldSpec(Strict):
    """The demo world (model.source: demo): problems, SFT model, sampled feedback and held-out splits.

    `model.name` picks a preset from DEMO_WORLDS (its fields become the defaults); fields given here override
    it. Validation writes the resolved world into the spec, so run ids hash every field that shapes the
    world. See kto_bench/demo/world.py and docs/DEMO.md."""

    seed: int = 0
    max_term: int = Field(12, ge=2, description="operands are drawn from 1..max_term")
    n_sft: int = Field(3000, gt=0, description="SFT problems with a worked solution")
    sft_steps: int = Field(800, gt=0)
    sft_batch: int = Field(32, gt=0)
    sft_lr: float = Field(3e-3, gt=0)
    hidden: int = Field(64, gt=0)
    layers: int = Field(3, gt=0)
    flaw_ending: float = Field(
        0.5,
        ge=0,
        le=1,
        description="fraction of SFT solutions ending 'The result is N.' (the verifier rejects it)",
    )
    flaw_sign: float = Field(
        0.0, ge=0, le=1, description="fraction of SFT solutions that drop the minus sign of negative steps"
    )
    n_feedback_prompts: int = Field(600, gt=0, description="prompts sampled for feedback")
    samples_per_prompt: int = Field(4, ge=2)
    temperature: float = Field(0.6, gt=0)
    n_eval: int = Field(1000, gt=0, description="held-out generative items (reported)")
    n_eval_mc: int = Field(500, gt=0, description="held-out multiple-choice items (reported)")
    n_dev: int = Field(300, gt=0, description="dev items for tuning, disjoint from the reported ones")


# presets: model.name -> DemoWorldSpec fields that differ from the defaults ("arith-sft" is the demo)
DEMO_WORLDS: dict[str, dict[str, Any]] = {
    "arith-sft": {},
    "arith-tiny": {  # seconds-long, for tests: same code path, tiny sizes
        "n_sft": 1000,
        "sft_steps": 200,
        "hidden": 48,
        "layers": 2,
        "n_feedback_prompts": 64,
        "samples_per_prompt": 6,
        "temperature": 1.0,
        "n_eval": 24,
        "n_eval_mc": 24,
        "n_dev": 16,
    },
}


class ModelSpec(Strict):
    """The base model: also the reference model and the policy's starting point."""

    source: Literal["hub", "local", "mirror", "demo"] = "hub"
    name: str = Field(..., description="hub id, local path, offline mirror name, or demo world name")
    revision: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    lora: LoraSpec | None = None
    world: DemoWorldSpec | None = Field(None, description="source demo: the world (preset = name)")

    @model_validator(mode="before")
    @classmethod
    def _resolve_world(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("source") != "demo":
            if isinstance(data, dict) and data.get("world") is not None:
                raise ValueError("model.world is for model.source: demo only")
            return data
        name, given = data.get("name"), data.get("world")
        if name not in DEMO_WORLDS and given is None:
            raise ValueError(
                f"unknown demo world {name!r}{did_you_mean(str(name), DEMO_WORLDS)}; known presets: "
                f"{', '.join(DEMO_WORLDS)} (or give model.world fields for a new world)"
            )
        given = given.model_dump() if isinstance(given, BaseModel) else dict(given or {})
        return {**data, "world": {**DEMO_WORLDS.get(name, {}), **given}}


class DataSpec(Strict):
    source: str = Field(..., description="a name from `kto-bench ls sources`")
    path: str | None = None
    split: str = "train"
    revision: str | None = None
    limit: int | None = Field(None, gt=0)
    on_bad_row: Literal["error", "drop"] = "error"
    max_length: int = Field(1024, gt=1)
    max_prompt_length: int = Field(512, gt=0)
    chat_template: str | None = Field(None, description="a Jinja template; None = the tokenizer's own")
    partition_seed: int = Field(
        0, description="seed of the data-level microbatch partition (not the training order)"
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        return check("data_source", v)

    @model_validator(mode="after")
    def _lengths(self) -> DataSpec:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length})"
            )
        return self


class CorruptionSpec(Strict):
    """Matched corruption: applied to the shared data before it is split into each method's view."""

    flip_rate: float = Field(
        0.0, ge=0.0, le=0.5, description="fraction of pairs (or labels) flipped, in [0, 0.5]"
    )
    desirable_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="fraction of desirable examples kept, in (0, 1]"
    )
    undesirable_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="fraction of undesirable examples kept, in (0, 1]"
    )
    one_output_per_prompt: bool = False
    dpo_unpaired: Literal["drop", "full"] = Field(
        "drop", description="DPO under imbalance: only pairs whose both sides survive, or the full pairs"
    )
    seed: int | None = Field(None, description="corruption seed; None = the run's seed")


# ----------------------------------------------------------------------------- training


class BudgetSpec(Strict):
    """How much training each run gets: the same rule for every method of an experiment says what is
    matched between methods (docs/TRAINING.md).

    epochs     `value` passes over the method's own view (the paper's setting: KTO's unpaired view has
               twice DPO's examples per epoch, so KTO takes twice the optimizer steps at equal sequences)
    steps      `value` optimizer steps for every method
    examples   `value` training examples (a DPO pair, a KTO example)
    sequences  `value` trained completion sequences (two per DPO pair, one per KTO example)
    tokens     `value` trained tokens (prompt + completion of every trained sequence)

    With `per: paired_epoch`, `value` counts in units of one epoch of the run's paired view (DPO's data):
    `{rule: steps, value: 1, per: paired_epoch}` gives every method as many optimizer steps as one DPO
    epoch takes.
    """

    rule: Literal["epochs", "steps", "examples", "sequences", "tokens"] = "epochs"
    value: float = Field(1.0, gt=0)
    per: Literal["absolute", "paired_epoch"] = Field(
        "absolute", description="absolute counts, or multiples of one epoch of the paired view"
    )

    @model_validator(mode="after")
    def _per(self) -> BudgetSpec:
        if self.rule == "epochs" and self.per != "absolute":
            raise ValueError(
                "budget.per: paired_epoch scales steps, examples, sequences or tokens; with rule: epochs "
                "leave per out"
            )
        return self


class TrainingSpec(Strict):
    optimizer: Literal["adamw"] = "adamw"
    lr: float = Field(5e-7, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    precision: Literal["fp32", "bf16", "bf16_pure"] = Field(
        "bf16",
        description="fp32: fp32 weights and compute. bf16: fp32 master weights and optimizer state, bf16 "
        "compute (autocast), as FSDP/DeepSpeed mixed precision. bf16_pure: bf16 weights updated with "
        "stochastic rounding (an opt-in that halves weight memory; see docs/TRAINING.md)",
    )
    batch_size: int = Field(
        8, gt=0, description="per-step microbatch per process (KTO's z0 is estimated on it)"
    )
    grad_accum: int = Field(1, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    budget: BudgetSpec = BudgetSpec()
    checkpoint_every: int = Field(200, gt=0, description="optimizer steps between checkpoints")
    keep_optimizer_state: bool = Field(
        False,
        description="keep checkpoints/last.pt (weights, optimizer state, schedule, RNG: what resumes "
        "training) once training is done; by default only checkpoints/final (the weights) stays. Not hashed",
    )
    reference_batch_size: int = Field(64, gt=0)
    compile: bool = Field(False, description="torch.compile the decoder (dynamic shapes); pays off on GPUs")
    gradient_checkpointing: bool = False
    layout: Literal["padded", "packed", "shared"] = Field(
        "shared",
        description="microbatch layout: padded rows (as the peers), packed without padding, or packed with "
        "one copy of each prompt shared by its completions (same log-probs; see kto_bench/scoring.py)",
    )
    kl_pass: Literal["separate", "fused"] = Field(
        "separate",
        description="KTO's KL completions: a separate no-grad forward, or in the trained forward (sharing "
        "the prompt with layout shared); same values",
    )
    attention: Literal["auto", "sdpa", "flex_attention", "eager"] = Field(
        "auto", description="attention kernel; auto = flex_attention for packed layouts on CUDA, else sdpa"
    )
    row_tokens: int | None = Field(
        None,
        gt=0,
        description="packed row size in tokens (training and reference pass); None = one row per microbatch "
        "under flex_attention (block-sparse), else rows of 2 × data.max_length (a dense mask costs row²)",
    )

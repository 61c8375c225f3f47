"""Experiment specs: typed models, YAML loading with file/line errors, grid expansion, run ids.

Every default lives in the models below (and only here); a resolved run records all values, defaults
included. A run id is a hash of the run's resolved content, so the same spec gives the same ids on
every machine and any change to a result-affecting field changes the id.
"""

from __future__ import annotations

import copy
import itertools
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kto_bench.errors import KtoBenchError, SpecError
from kto_bench.io import stable_hash
from kto_bench.registry import did_you_mean
from kto_bench.report.config import ReportSpec


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
    world. See kto_bench/data/synthetic.py and docs/DEMO.md."""

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
        from kto_bench.data.sources import SOURCES

        if v not in SOURCES:
            raise ValueError(
                f"unknown data source {v!r}{did_you_mean(v, SOURCES.names())}; known: {', '.join(SOURCES)}"
            )
        return v

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


# ----------------------------------------------------------------------------- methods


class _Method(Strict):
    label: str | None = Field(None, description="display name; defaults to the type (use it for ablations)")

    @property
    def name(self) -> str:
        return self.label or self.type  # type: ignore[attr-defined]

    def loss_kwargs(self) -> dict[str, Any]:
        """Loss hyperparameters; unset ones (None) are left to the loss's defaults or the data stage (λ)."""
        dumped = self.model_dump(exclude={"type", "label", "lambda_ratio", "z0_scope"})
        return {k: v for k, v in dumped.items() if v is not None}


class KTOMethod(_Method):
    type: Literal["kto"] = "kto"
    beta: float = Field(0.1, gt=0)
    lambda_ratio: float = Field(1.0, ge=1.0, le=4 / 3, description="target λD·nD/(λU·nU), in [1, 4/3]")
    desirable_weight: float | None = Field(None, gt=0, description="λD; None = set from lambda_ratio")
    undesirable_weight: float | None = Field(None, gt=0, description="λU; None = set from lambda_ratio")
    z0_scope: Literal["microbatch", "step"] = Field(
        "microbatch",
        description="z0 from each per-step microbatch (the paper) or from the whole optimizer "
        "step's microbatches (an ablation; makes the curve independent of the process/accumulation layout)",
    )


class DPOMethod(_Method):
    type: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)


class IPOMethod(_Method):
    type: Literal["ipo"] = "ipo"
    beta: float = Field(0.1, gt=0)
    length_normalize: bool = True


class RDPOMethod(_Method):
    type: Literal["rdpo"] = "rdpo"
    beta: float = Field(0.1, gt=0)
    label_smoothing: float = Field(0.1, ge=0, lt=0.5)


class SimPOMethod(_Method):
    type: Literal["simpo"] = "simpo"
    beta: float = Field(2.0, gt=0)
    gamma_beta_ratio: float = Field(0.5, ge=0)


class SLiCMethod(_Method):
    type: Literal["slic"] = "slic"
    beta: float = Field(0.1, gt=0)
    delta: float = Field(1.0, gt=0)


class SFTMethod(_Method):
    type: Literal["sft"] = "sft"


Method = Annotated[
    Union[KTOMethod, DPOMethod, IPOMethod, RDPOMethod, SimPOMethod, SLiCMethod, SFTMethod],  # noqa: UP007
    Field(discriminator="type"),
]


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
        "one copy of each prompt shared by its completions (same log-probs; see kto_bench/train/logps.py)",
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


# ----------------------------------------------------------------------------- evaluation


class EvalTaskSpec(Strict):
    name: str
    variant: Literal["stock", "offline"] = "stock"
    num_fewshot: int | None = Field(None, ge=0)
    limit: int | None = Field(None, gt=0)
    apply_chat_template: bool = False
    max_new_tokens: int | None = Field(None, gt=0)

    @field_validator("name")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from kto_bench.eval.tasks import TASKS

        if v not in TASKS:
            raise ValueError(f"unknown task {v!r}{did_you_mean(v, TASKS.names())}; known: {', '.join(TASKS)}")
        return v

    @model_validator(mode="after")
    def _variant_runs(self) -> EvalTaskSpec:
        from kto_bench.eval.tasks import check_variant

        try:
            check_variant(self.name, self.variant, self.num_fewshot)
        except KtoBenchError as e:
            raise ValueError(str(e)) from None
        return self


class JudgeSpec(Strict):
    """AlpacaEval's judge: an alpaca-eval annotator config, run by alpaca-eval (kto_bench/eval/alpaca.py).

    api    the config as published, through alpaca-eval's own client (OPENAI_API_KEY in the environment)
    local  the config's prompt, decoding and parser on a local model behind an OpenAI-compatible endpoint:
           `model` is a causal LM folder (or hub id) the eval stage serves itself on 127.0.0.1, or, with
           `base_url`, the model name an external server (vLLM, llama.cpp, `kto-bench serve`) serves"""

    type: Literal["api", "local"] = "local"
    model: str | None = Field(None, description="local: a causal LM folder or hub id, or the served name")
    base_url: str | None = Field(
        None, description="local: an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"
    )
    annotator_config: str = Field("weighted_alpaca_eval_gpt4_turbo", description="a config of alpaca-eval")

    @model_validator(mode="after")
    def _judge(self) -> JudgeSpec:
        if self.type == "local" and not self.model:
            raise ValueError(
                "a local judge needs model: a causal LM folder to serve, or the model name the server at "
                "base_url serves"
            )
        if self.type == "api" and (self.model or self.base_url):
            raise ValueError(
                "an api judge uses its annotator config's own model and client; model and base_url are for "
                "type: local"
            )
        return self


class EvaluationSpec(Strict):
    tasks: list[EvalTaskSpec] = Field(default_factory=list)
    backend: Literal["engine", "hf", "vllm"] = "engine"
    batch_size: int = Field(64, gt=0)
    decode: Literal["dynamic", "static"] = Field(
        "static",
        description="engine KV cache: static (preallocated, written in place, fixed shapes per step) or "
        "dynamic (grown by concatenation; finished rows leave the batch)",
    )
    compile: bool = Field(False, description="engine: compile the decoding step (CUDA graphs); needs static")
    seed: int = 1234
    allow_code_execution: bool = False
    evaluate_base: bool = True
    judge: JudgeSpec | None = None

    def engine_options(self) -> dict:
        """Keyword arguments of our `Engine` (the one place that maps these fields onto it)."""
        return {"batch_size": self.batch_size, "decode": self.decode, "compile_decode": self.compile}

    @model_validator(mode="after")
    def _unique_tasks(self) -> EvaluationSpec:
        if self.compile and self.decode != "static":
            raise ValueError(
                "evaluation.compile needs evaluation.decode: static (CUDA graphs need fixed shapes)"
            )
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"tasks listed twice: {dup}; each task's results are stored under its name")
        return self


# ----------------------------------------------------------------------------- experiment and run


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
        if self.method.type == "kto" and self.training.batch_size < 2:
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
    report: ReportSpec = ReportSpec()
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


# ----------------------------------------------------------------------------- loading with line numbers


# A spec is a few dozen lines: these bounds are far above any real one and far below what hurts. The
# depth counts nested mappings/lists; the node count is after alias expansion (a billion-laughs alias
# bomb of under 1 KB expands to 10^9 nodes, which pydantic and the line map would otherwise walk).
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


def _compose(text: str, source: str) -> yaml.Node | None:
    """The YAML node graph of a spec, refused (SpecError, at once) when nested deeper than MAX_YAML_DEPTH,
    when aliases would expand it beyond MAX_YAML_NODES nodes, or when an alias refers to itself."""
    depth = 0  # the event parser is iterative: this bounds the (recursive) composer before it runs
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise SpecError(
                    f"{source}:{event.start_mark.line + 1}: YAML nested deeper than {MAX_YAML_DEPTH} "
                    "levels; a spec needs a few: flatten it"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    seen: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes below, incl. itself; height)

    def walk(node: yaml.Node, level: int, stack: set[int]) -> tuple[int, int]:
        key = id(node)
        where = f"{source}:{node.start_mark.line + 1}"
        if key in stack:
            raise SpecError(f"{where}: a YAML alias refers to a node that contains it; remove the alias")
        if key not in seen:
            stack.add(key)
            children: list = []
            if isinstance(node, yaml.MappingNode):
                children = [n for kv in node.value for n in kv]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            size, height = 1, 1
            for child in children:
                s, h = walk(child, level + 1, stack)
                size, height = size + s, max(height, h + 1)
            stack.discard(key)
            seen[key] = (size, height)
        size, height = seen[key]
        if level + height > MAX_YAML_DEPTH:
            raise SpecError(
                f"{where}: YAML aliases nest this spec deeper than {MAX_YAML_DEPTH} levels; "
                "write the values out instead of aliasing them"
            )
        if size > MAX_YAML_NODES:
            raise SpecError(
                f"{where}: YAML aliases expand this spec to more than {MAX_YAML_NODES:,} values "
                "(an alias bomb?); write the values out instead of aliasing them"
            )
        return size, height

    if root is not None:
        walk(root, 0, set())
    return root


def _line_map(text: str, root: yaml.Node | None = None) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line (`root`: its already checked nodes)."""
    out: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[(*path, k.value)] = k.start_mark.line + 1
                walk(v, (*path, k.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    root = _compose(text, "<spec>") if root is None else root
    if root is not None:
        walk(root, ())
    return out


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    """The line of the deepest prefix of a pydantic loc found in the YAML (skips union tags)."""
    path: tuple = ()
    best = lines.get(())
    for part in loc:
        if (*path, part) in lines:
            path = (*path, part)
            best = lines[path]
    return best


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the model a loc points into (best effort, for did-you-mean)."""
    model: Any = ExperimentSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if isinstance(model, type) and issubclass(model, BaseModel):
            if part in model.model_fields:
                model = _unwrap(model.model_fields[part].annotation)
            else:  # a discriminator tag such as 'kto'
                model = next(
                    (
                        m
                        for m in typing.get_args(_unwrap_union(Method))
                        if m.model_fields["type"].default == part
                    ),
                    None,
                )
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _unwrap_union(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _unwrap(tp: Any) -> Any:
    tp = _unwrap_union(tp)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        models = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(models[0]) if len(models) == 1 else tp
    return tp


def _format_errors(err: ValidationError, source: str, lines: dict[tuple, int]) -> str:
    msgs = []
    for e in err.errors():
        loc = tuple(e["loc"])
        field = ".".join(str(p) for p in loc if not (isinstance(p, str) and p in _TAGS)) or "(top level)"
        line = _line_for(loc, lines)
        where = f"{source}:{line}" if line else source
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            hint = did_you_mean(key, _fields_at(loc)) or ""
            fix = f"remove it{hint.replace(' (did', '; did').rstrip(')') if hint else ''}"
            msgs.append(f"{where}: {field}: unknown key {key!r}; {fix}")
        elif e["type"] == "missing":
            msgs.append(f"{where}: {field}: required field is missing; add it")
        else:
            got = "" if e["type"].startswith("value_error") else f" (got {e.get('input')!r})"
            msgs.append(f"{where}: {field}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "\n".join(msgs)


_TAGS = {"kto", "dpo", "ipo", "rdpo", "simpo", "slic", "sft", "function-after", "function-before"}


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in a raw spec; a number indexes a list (`evaluation.tasks.0.limit`)."""
    keys = dotted.split(".")
    node: Any = d
    for i, k in enumerate(keys):
        where = ".".join(keys[:i]) or "the spec"
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                valid = f"an index from 0 to {len(node) - 1}" if node else "none: the list is empty"
                raise SpecError(f"--set {dotted}: {where} is a list of {len(node)}; {k!r} is not {valid}")
            k = int(k)
        elif not isinstance(node, dict):
            raise SpecError(f"--set {dotted}: {where} is not a mapping or a list")
        if last:
            node[k] = value
        else:
            node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=c` strings from the command line into {dotted: YAML-parsed value}."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set training.lr=1e-6")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def smoke_overrides(spec: ExperimentSpec, n: int) -> dict[str, Any]:
    """`kto-bench run --limit N`, a smoke run of every stage: at most N source rows, N optimizer steps and N
    items per evaluation task. They are spec fields, so a smoke run has run ids of its own."""
    if n <= 0:
        raise SpecError(f"--limit {n}: give a positive number of rows, steps and items, e.g. --limit 8")
    tasks = spec.evaluation.tasks
    return {
        "data.limit": min(spec.data.limit or n, n),
        "training.budget": {"rule": "steps", "value": n},
        **{f"evaluation.tasks.{i}.limit": min(t.limit or n, n) for i, t in enumerate(tasks)},
    }


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    """Read and validate an experiment YAML; errors name file, line, field path and fix."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file; list shipped specs with `ls experiments/`")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    return parse_spec(text, str(path), overrides)


def parse_spec(text: str, source: str = "<spec>", overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    try:
        root = _compose(text, source)
        raw = yaml.SafeLoader("").construct_document(root) if root is not None else None
        lines = _line_map(text, root)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise SpecError(f"{where}: malformed YAML: {getattr(e, 'problem', e)}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a spec is a YAML mapping with keys name, model, data, methods, …")
    raw = copy.deepcopy(raw)
    for k, v in (overrides or {}).items():
        _set_dotted(raw, k, v)
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_format_errors(e, source, lines)) from None
    _check_grid(spec, source, lines)
    expand(spec, source=source)  # every grid point must validate as a run
    _check_measurable(spec, source, lines)
    return spec


def _check_measurable(spec: ExperimentSpec, source: str, lines: dict[tuple, int]) -> None:
    """The spec runs what it claims to measure: each named claim's task, methods and grid points
    (report/claims.py `spec_problems`), and the AlpacaEval task and its judge go together."""
    tasks = {t.name for t in spec.evaluation.tasks}
    problems = []
    if spec.evaluation.judge is not None and "alpaca_eval" not in tasks:
        problems.append(
            (("evaluation", "judge"), "evaluation.judge: set, but no task uses it; add `- {name: alpaca_eval}` to "
             "evaluation.tasks, or remove the judge")
        )  # fmt: skip
    if spec.evaluation.judge is None and "alpaca_eval" in tasks:
        problems.append(
            (("evaluation", "tasks"), "evaluation.tasks: alpaca_eval needs evaluation.judge: {type: api} (OPENAI_API_KEY) "
             "or {type: local, model: <causal LM path>}")
        )  # fmt: skip
    if spec.report.claims:
        from kto_bench.report.claims import spec_problems

        problems += [(("report", "claims", i), f"report.claims: {msg}") for i, msg in spec_problems(spec)]
    if problems:
        raise SpecError("\n".join(f"{source}:{_line_for(loc, lines) or '?'}: {msg}" for loc, msg in problems))


# ----------------------------------------------------------------------------- grid expansion


def _grid_paths() -> set[str]:
    """Every dotted path a grid may vary (leaves of RunSpec, plus 'method' and 'seed')."""
    paths = {"method", "seed"}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            tp = _unwrap(f.annotation)
            dotted = f"{prefix}{name}"
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                walk(tp, dotted + ".")
            elif name == "method":
                for m in typing.get_args(_unwrap_union(Method)):
                    walk(m, "method.")
            else:
                paths.add(dotted)

    walk(RunSpec, "")
    return paths


def _check_grid(spec: ExperimentSpec, source: str, lines: dict[tuple, int]) -> None:
    known = _grid_paths()
    names = [m.name for m in spec.methods]
    for i, block in enumerate(spec.grid):
        for key, values in block.items():
            where = f"{source}:{lines.get(('grid', i, key)) or lines.get(('grid', key)) or lines.get(('grid',), '?')}"
            if key not in known:
                raise SpecError(
                    f"{where}: grid.{key}: not a field of a run{did_you_mean(key, known)}; "
                    "grid keys are dotted paths such as corruption.flip_rate, training.lr, method.beta, seed, method"
                )
            if not values:
                raise SpecError(f"{where}: grid.{key}: give a non-empty list of values")
            if key == "method":
                bad = [v for v in values if v not in names]
                if bad:
                    raise SpecError(f"{where}: grid.method: {bad} not among the spec's methods {names}")


def expand(spec: ExperimentSpec, source: str = "<spec>") -> list[RunSpec]:
    """The runs of an experiment: methods × seeds × each grid block's cross product (deduplicated)."""
    base = spec.model_dump(
        mode="json",
        exclude={"name", "description", "requires", "methods", "seeds", "report", "grid", "tracking"},
    )
    methods = {m.name: m.model_dump(mode="json") for m in spec.methods}
    runs: dict[str, RunSpec] = {}
    for block in spec.grid or [{}]:
        keys = [k for k in block if k not in ("method", "seed")]
        for values in itertools.product(*(block[k] for k in keys)):
            for mname in block.get("method", list(methods)):
                for seed in block.get("seed", spec.seeds):
                    raw = copy.deepcopy(base) | {"method": copy.deepcopy(methods[mname]), "seed": seed}
                    for k, v in zip(keys, values, strict=True):
                        if k.startswith("method.") and k.split(".", 1)[1] not in raw["method"]:
                            continue  # a knob of another method (e.g. method.label_smoothing for kto)
                        _set_dotted(raw, k, v)
                    try:
                        run = RunSpec.model_validate(raw)
                    except ValidationError as e:
                        point = ", ".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
                        raise SpecError(
                            f"{source}: grid point ({point}, method={mname}, seed={seed}) is invalid:\n"
                            + _format_errors(e, source, {})
                        ) from None
                    runs.setdefault(run.run_id, run)
    return list(runs.values())


def grid_fields(spec: ExperimentSpec) -> list[str]:
    return sorted({k for block in spec.grid for k in block if k not in ("method", "seed")})


def grid_values(spec: ExperimentSpec, run: RunSpec) -> dict[str, Any]:
    """The run's value of every field any grid block varies (for tables and plots)."""
    dumped = run.model_dump(mode="json")
    out = {}
    for dotted in grid_fields(spec):
        node: Any = dumped
        for k in dotted.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        out[dotted] = node
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")

"""The evaluation section of a spec: tasks, the engine's settings, AlpacaEval's judge."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kto_bench.spec.hooks import check
from kto_bench.spec.schema import Strict


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
        return check("eval_task", v)

    @model_validator(mode="after")
    def _variant_runs(self) -> EvalTaskSpec:
        check("eval_variant", self.name, self.variant, self.num_fewshot)
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

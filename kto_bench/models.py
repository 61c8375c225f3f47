"""Base models and tokenizers: hub (the default for real users), local paths, offline mirrors, and model
sources registered from their own package (`MODEL_SOURCES`: the demo's).

`resolve(spec)` decides where the weights are; `model_hash` hashes what makes the model: weights, config
and tokenizer files (cached by path, size and mtime), or for a hub model the commit its revision resolves
to (`hub.commit`), so every result names the exact model it started from. A hub model is always loaded at
that commit.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kto_bench.errors import AssetError, KtoBenchError
from kto_bench.io import atomic_write_json, read_json, sha256_file
from kto_bench.registry import Registry

if TYPE_CHECKING:
    import torch

    from kto_bench.spec import ModelSpec
# torch is imported by the functions that load weights, and the spec is only annotations here: an extension
# package registering a model source (on the first registry lookup, maybe while the spec imports) stays light.

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
# what else makes a model: its architecture and its tokenizer (with the chat template)
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


def revision(spec: ModelSpec) -> str | None:
    """The revision to load: a hub model's resolved commit; None for local folders."""
    if spec.source != "hub":
        return None
    from kto_bench import hub

    return hub.commit(spec.name, spec.revision, "model", "model.revision")


MIRROR_ASSETS = {"smollm2_135m_instruct": "smollm2_135m_instruct_gguf"}  # model mirror -> its asset


@dataclass(frozen=True)
class ModelSource:
    """A model source registered from its own package; each field a lazy "module:attr" taking the ModelSpec."""

    folder: str  # -> the local folder of its weights and tokenizer
    identity: str | None = None  # -> {field: value} a run records beside the model hash (provenance identity)
    task_data: str | None = None  # -> {task name: data file}: the model's own evaluation data


MODEL_SOURCES: Registry[ModelSource] = Registry("model source", extensible=True)


def _hook(spec: ModelSpec, field: str) -> Callable[[ModelSpec], Any] | None:
    if spec.source not in MODEL_SOURCES or (target := getattr(MODEL_SOURCES.get(spec.source), field)) is None:
        return None
    import importlib

    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def source_identity(spec: ModelSpec) -> dict[str, Any]:
    """What identifies a registered source's model beyond its weights (the demo: its world's hash); {}."""
    hook = _hook(spec, "identity")
    return hook(spec) if hook else {}


def task_data(spec: ModelSpec) -> dict[str, Path] | None:
    """The model's own evaluation data files by task (the demo world's held-out files); None for others."""
    hook = _hook(spec, "task_data")
    return hook(spec) if hook else None


def resolve(spec: ModelSpec) -> str:
    """A local directory or a hub id that `from_pretrained` accepts."""
    if (folder := _hook(spec, "folder")) is not None:
        return str(folder(spec))
    if spec.source == "mirror":
        from kto_bench import assets

        converters = {"smollm2_135m_instruct": assets.convert_smollm2}
        if spec.name not in converters or spec.name not in MIRROR_ASSETS:
            raise AssetError(f"model.name: unknown offline mirror {spec.name!r}; known: {sorted(converters)}")
        return str(converters[spec.name]())
    if spec.source == "local":
        if not Path(spec.name).is_dir():
            raise KtoBenchError(
                f"model.name: local model path {spec.name!r} does not exist; give a folder "
                "with config.json and weights, or use model.source: hub"
            )
        return spec.name
    return spec.name


def load_tokenizer(spec: ModelSpec, where: str | None = None):
    from transformers import AutoTokenizer

    where = where or resolve(spec)
    tok = AutoTokenizer.from_pretrained(where, revision=revision(spec) if not Path(where).is_dir() else None)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    spec: ModelSpec, where: str | None = None, device: str | torch.device = "cpu", dtype: str | None = None
):
    """The model's weights in `dtype` (default: `model.dtype`, as stored; training picks its own)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        where = where or resolve(spec)
        model = AutoModelForCausalLM.from_pretrained(
            where,
            revision=revision(spec) if not Path(where).is_dir() else None,
            dtype=getattr(torch, dtype or spec.dtype),
        )
    except OSError as e:
        raise KtoBenchError(f"model.name: cannot load {spec.name!r} ({spec.source}): {e}") from None
    return model.to(device)


def apply_lora(model, spec: ModelSpec):
    if spec.lora is None:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise KtoBenchError("model.lora needs peft: pip install 'kto-bench[lora]'") from None
    cfg = LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=spec.lora.dropout,
        target_modules=spec.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def model_hash(where: str, spec: ModelSpec) -> str:
    """What identifies the model: a hub model by its resolved commit (weights, config and tokenizer are all
    in it); a folder by sha256 over its weight, config and tokenizer files (name + content hash), cached in a
    sidecar keyed by size and mtime."""
    if not Path(where).is_dir():
        from kto_bench.io import stable_hash

        return stable_hash({"hub": spec.name, "commit": revision(spec)}, 16)
    folder = Path(where)
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in MODEL_FILES)
    )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise KtoBenchError(f"no weight files in {folder}")
    sidecar = folder / ".kto-bench-hash.json"
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    try:
        cached = read_json(sidecar, {})
        if cached.get("stamp") == stamp and cached.get("version") == 2:
            return cached["hash"]
    except (OSError, ValueError, KeyError, AttributeError):  # a damaged sidecar: hash again
        pass
    h = hashlib.sha256()
    for p in files:
        real = p.resolve()
        digest = real.name if len(real.name) == 64 and "blobs" in real.parts else sha256_file(real)
        h.update(f"{p.name}:{digest}\n".encode())
    value = h.hexdigest()[:16]
    with contextlib.suppress(OSError):  # a read-only model folder: hash again next time
        atomic_write_json(sidecar, {"stamp": stamp, "hash": value, "version": 2})
    return value

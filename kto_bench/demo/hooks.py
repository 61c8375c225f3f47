"""What the general registries call for the demo (each registered by name in `kto_bench.demo`): a demo
model's folders, identity and evaluation data all come from its own world (built once, cached)."""

from __future__ import annotations

from pathlib import Path

from kto_bench.demo.world import world_hash, world_of, write_eval_files
from kto_bench.spec import ModelSpec

TASK_FILES = {f"demo_arith_{k}": f"demo_arith_{k}.jsonl" for k in ("gen", "mc", "dev")}


def world_folder(model: ModelSpec) -> Path:
    """demo_arith's path: the feedback of the model's own world, never a default one."""
    return world_of(model)


def model_folder(model: ModelSpec) -> Path:
    return world_of(model) / "model"


def identity(model: ModelSpec) -> dict[str, str]:
    """The world's content hash, recorded in a run's identity beside the model hash."""
    return {"demo_world_hash": world_hash(model.world)}


def task_data(model: ModelSpec) -> dict[str, Path]:
    """The demo world's own held-out files for the demo tasks."""
    folder = world_of(model) / "eval"
    return {task: folder / name for task, name in TASK_FILES.items()}


def default_task_data(out_dir: Path) -> dict[str, Path]:
    """The demo tasks' data for a model that is not a demo model: the default world's held-out files."""
    files = write_eval_files(out_dir)
    return {f"demo_arith_{k}": path for k, path in files.items()}

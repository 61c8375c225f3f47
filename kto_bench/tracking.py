"""Experiment tracking: each training step's metrics go, beside the store's own metrics.jsonl (the record
the report reads), to the trackers researchers use, through accelerate's tracker API.

The spec's `tracking.trackers` (or `kto-bench run --tracker`) picks them; TensorBoard is the default and
works offline. Tracking is not part of a run's identity: `spec.expand` and `spec_hash` leave the field out,
so choosing a tracker never changes a run id. Every tracker names the run by its run id and stores the
resolved run spec (dotted keys) as its config:

    tensorboard  events in results/<experiment>/<run_id>/tensorboard/ (`tensorboard --logdir results/<experiment>`)
    wandb        project = tracking.project or the experiment name; run name = run id (WANDB_MODE=offline works)
    mlflow       experiment = tracking.project or the experiment name; run name = run id (MLFLOW_TRACKING_URI)
    trackio      project = tracking.project or the experiment name; run name = run id

A resumed run continues its TensorBoard curve: events from steps after the checkpoint it resumes from are
purged (a killed run's last steps are logged once). wandb, mlflow and trackio start a new run of the same
name on resumption.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from kto_bench.errors import SpecError

# tracker name -> the package it needs (accelerate's tracker class imports it when the run starts)
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
TENSORBOARD_DIR = "tensorboard"


def check(names: list[str]) -> None:
    """Every tracker's package is installed (before any stage runs, and again when one starts)."""
    missing = [n for n in names if importlib.util.find_spec(PACKAGES[n]) is None]
    if missing:
        raise SpecError(
            f"tracking.trackers: {', '.join(missing)} needs the {' and '.join(PACKAGES[n] for n in missing)} "
            f"package; `pip install {' '.join(PACKAGES[n] for n in missing)}`, or choose other trackers "
            "(--tracker tensorboard, or --tracker none)"
        )


def build(names: list[str], *, project: str, run_id: str, run_dir: Path, resumed_step: int = 0) -> list:
    """accelerate trackers for `names`, each naming the run by its run id (pass them as `log_with`)."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, TrackioTracker, WandBTracker

    check(names)
    make = {
        # <run_dir>/tensorboard/: a resumed run purges the events after its checkpoint's step
        "tensorboard": lambda: TensorBoardTracker(TENSORBOARD_DIR, run_dir, purge_step=resumed_step + 1),
        "wandb": lambda: WandBTracker(project, name=run_id),
        "mlflow": lambda: MLflowTracker(experiment_name=project, run_name=run_id),
        "trackio": lambda: TrackioTracker(project, name=run_id),
    }
    return [make[n]() for n in names]


def config(run, experiment: str) -> dict[str, Any]:
    """The resolved run spec as one flat config every tracker accepts: dotted keys, scalar values (lists as
    JSON), plus the run id and experiment."""
    flat: dict[str, Any] = {"run_id": run.run_id, "experiment": experiment}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list | tuple):
            flat[prefix[:-1]] = json.dumps(node)
        else:
            flat[prefix[:-1]] = node

    walk(run.model_dump(mode="json"), "")
    return flat


def finish(accelerator) -> None:
    """Close the run in every tracker (not `Accelerator.end_training`: that also ends the process group,
    which the stages after training still use)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []

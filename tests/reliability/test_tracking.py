"""Experiment tracking through accelerate's tracker API: TensorBoard's event files hold exactly the run's
metrics.jsonl, named by run id, with the resolved spec as config; a resumed run logs each step once; the
tracker choice never changes a run id; wandb, mlflow and trackio name the run the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from kto_bench import tracking
from kto_bench.errors import SpecError
from kto_bench.spec import expand, parse_spec
from tests.reliability.helpers import SPEC

KTO_ONLY = SPEC.replace("  - {type: dpo, beta: 0.1}\n", "")


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), …]} from the TensorBoard event files of one run folder (not its subfolders)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}


def test_tensorboard_holds_the_runs_metrics_and_config(tmp_path):
    from kto_bench.runner import run_experiment

    spec = parse_spec(KTO_ONLY)
    assert spec.tracking.trackers == ["tensorboard"]  # the default
    run = expand(spec)[0]
    run_experiment(spec, tmp_path, stop_after="train")
    folder = tmp_path / "rel" / run.run_id / tracking.TENSORBOARD_DIR
    logged = scalars(folder)
    lines = [
        json.loads(ln) for ln in (tmp_path / "rel" / run.run_id / "metrics.jsonl").read_text().splitlines()
    ]
    assert [s for s, _ in logged["train/loss"]] == [r["step"] for r in lines] == [1, 2, 3, 4]
    assert set(logged) == {k for r in lines for k in r if k != "step"}
    for key, points in logged.items():  # every value at its step (TensorBoard stores float32)
        want = [(r["step"], r[key]) for r in lines if key in r]
        assert [s for s, _ in points] == [s for s, _ in want], key
        assert [v for _, v in points] == pytest.approx([v for _, v in want], rel=1e-6), key
    (hparams,) = folder.rglob("hparams.yml")  # accelerate's record of the config it gave TensorBoard
    config = yaml.safe_load(hparams.read_text())
    assert config == tracking.config(run, "rel")
    assert config["run_id"] == run.run_id and config["method.type"] == "kto"
    assert config["training.lr"] == 1e-3 and json.loads(config["training.adam_betas"]) == [0.9, 0.999]


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Steps after the checkpoint a run resumes from were logged by the killed process: they are purged."""
    from accelerate import Accelerator

    def session(resumed: int, steps: range, value: float) -> None:
        acc = Accelerator(
            cpu=True,
            log_with=tracking.build(
                ["tensorboard"], project="p", run_id="r", run_dir=tmp_path, resumed_step=resumed
            ),
        )
        acc.init_trackers("p", config={"run_id": "r"})
        for step in steps:
            acc.log({"train/loss": value + step}, step=step)
        tracking.finish(acc)

    session(0, range(1, 6), 10.0)  # killed after step 5, its last checkpoint at step 2
    session(2, range(3, 7), 20.0)
    assert scalars(tmp_path / tracking.TENSORBOARD_DIR)["train/loss"] == [
        (1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0), (5, 25.0), (6, 26.0)
    ]  # fmt: skip


def test_tracker_choice_changes_no_run_id():
    plain = parse_spec(KTO_ONLY)
    tracked = parse_spec(KTO_ONLY + "tracking: {trackers: [wandb, mlflow], project: elsewhere}\n")
    silent = parse_spec(KTO_ONLY + "tracking: {trackers: []}\n")
    ids = [[r.run_id for r in expand(s)] for s in (plain, tracked, silent)]
    assert ids[0] == ids[1] == ids[2]
    assert plain.spec_hash == tracked.spec_hash == silent.spec_hash
    assert tracked.tracking.project == "elsewhere"


def test_other_trackers_name_the_run_by_run_id(monkeypatch, tmp_path):
    from accelerate.tracking import MLflowTracker, TrackioTracker, WandBTracker

    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: object())  # as if installed
    wandb, mlflow, trackio = tracking.build(
        ["wandb", "mlflow", "trackio"], project="exp", run_id="kto-123", run_dir=tmp_path
    )
    assert isinstance(wandb, WandBTracker) and (wandb.run_name, wandb.init_kwargs) == (
        "exp",
        {"name": "kto-123"},
    )
    assert isinstance(mlflow, MLflowTracker) and (mlflow.experiment_name, mlflow.run_name) == (
        "exp",
        "kto-123",
    )
    assert isinstance(trackio, TrackioTracker)
    assert (trackio.run_name, trackio.init_kwargs) == ("exp", {"name": "kto-123"})


def test_a_tracker_without_its_package_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else object()
    )
    with pytest.raises(
        SpecError, match=r"tracking.trackers: wandb needs the wandb package; `pip install wandb`"
    ):
        tracking.build(["tensorboard", "wandb"], project="p", run_id="r", run_dir=tmp_path)


def test_cli_tracker_option_is_validated_before_anything_runs(tmp_path, monkeypatch):
    from kto_bench.cli import app

    spec = tmp_path / "rel.yaml"
    spec.write_text(KTO_ONLY)
    res = CliRunner().invoke(app, ["run", str(spec), "--tracker", "tensorbord", "--results", str(tmp_path)])
    assert res.exit_code == 2
    assert "tracking.trackers.0: Input should be 'tensorboard'" in " ".join(res.output.split())
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name: None if name == "mlflow" else object()
    )
    res = CliRunner().invoke(app, ["run", str(spec), "--tracker", "mlflow", "--results", str(tmp_path)])
    assert res.exit_code == 2 and "pip install mlflow" in " ".join(res.output.split())
    assert not (tmp_path / "rel").exists()  # nothing ran

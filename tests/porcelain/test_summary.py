"""The typed experiment summary reads and writes exactly the stored JSON form."""

from __future__ import annotations

from pathlib import Path

import mlvc
from mlvc.experiments.summary import ExperimentSummary, summary_with_checkpoint

STORED = {
    "type": "experiment",
    "name": "run",
    "created": 1700000000,
    "user": "ana",
    "host": "box",
    "command": "python train.py",
    "params": {"lr": 0.1},
    "status": "stopped",
    "ended": 1700000100.5,
    "end_reason": "ok",
    "error": None,
    "resumed": 1,
    "checkpoints": 2,
    "latest": "b" * 64,
    "latest_step": 7,
    "latest_metrics": {"loss": "nan"},
    "primary_metric": {"name": "loss", "goal": "minimize"},
    "best": {"checkpoint": "a" * 64, "step": 3, "value": 0.25},
    "removed": ["c" * 64],
    "written_by_a_newer_mlvc": {"kept": True},
}


def test_a_stored_summary_round_trips_unchanged() -> None:
    rec = ExperimentSummary.from_dict(STORED)
    assert rec.to_dict() == STORED
    assert (
        rec.best is not None
        and rec.best_value == 0.25
        and rec.primary_metric
        == (
            "loss",
            "minimize",
        )
    )
    minimal = {k: STORED[k] for k in ("type", "status", "params", "checkpoints")}
    assert ExperimentSummary.from_dict(minimal).to_dict() == minimal  # nothing added


def test_checkpoints_update_latest_and_best_as_stored() -> None:
    new = ExperimentSummary(name="x", primary_metric=("acc", "maximize")).to_dict()
    assert "end_reason" not in new and new["best"] is None and new["removed"] == []
    after = summary_with_checkpoint(new, "a" * 64, 0, {"acc": 0.5}, None)
    after = summary_with_checkpoint(after, "b" * 64, 1, {"acc": float("nan")}, None)
    assert after["best"] == {"checkpoint": "a" * 64, "step": 0, "value": 0.5}  # NaN never wins
    assert (after["checkpoints"], after["latest"], after["latest_step"]) == (2, "b" * 64, 1)
    ended = ExperimentSummary.from_dict(after).ended_with("stopped", 5.0, "ok", None).to_dict()
    assert ended["error"] is None and "error" in ended and ended["status"] == "stopped"


def test_a_tracked_run_stores_the_documented_fields(project: Path) -> None:
    with mlvc.track(repository=project / "repo", params={"lr": 0.1}) as run:
        run.checkpoint(metrics={"loss": 1.0}, step=0, primary_metric=("loss", "minimize"))
    exp = mlvc.experiments.get(str(run.id), repository=project / "repo")
    stored = exp.repository.refs.require(f"experiments/{exp.id}").summary
    assert exp.summary == stored
    assert set(stored) >= {"type", "name", "created", "params", "status", "checkpoints", "best"}
    assert (stored["status"], stored["end_reason"], stored["checkpoints"]) == ("stopped", "ok", 1)

"""Steps are non-negative integers below 2**64: anything else is refused at the call."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import mlvc
from mlvc.errors import TrackingError

BAD_STEPS = [1.7, 2.0, True, np.bool_(True), -1, 2**64, "3", np.float32(3)]


@pytest.mark.parametrize("bad", BAD_STEPS, ids=repr)
def test_a_checkpoint_with_a_bad_step_is_skipped_with_a_warning(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: object
) -> None:
    repo_dir = tmp_path / "repo"
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=repo_dir) as run:
            run.checkpoint(step=bad, metrics={"loss": 1.0})  # type: ignore[arg-type]
            run.checkpoint(metrics={"loss": 0.5})  # the default step ignores the bad one
    assert "step must be a non-negative integer" in caplog.text
    exp = mlvc.experiments.get(run.id or "", repository=repo_dir)
    assert [c.step for c in exp.checkpoints] == [0]


@pytest.mark.parametrize("bad", BAD_STEPS, ids=repr)
def test_a_bad_checkpoint_step_raises_at_the_call_when_strict(
    project: Path, tmp_path: Path, bad: object
) -> None:
    with mlvc.track(repository=tmp_path / "repo", strict=True) as run:
        with pytest.raises(TrackingError, match="step must be a non-negative integer"):
            run.checkpoint(step=bad)  # type: ignore[arg-type]


def test_integer_steps_of_any_integer_type_up_to_2_64_are_recorded(
    project: Path, tmp_path: Path
) -> None:
    repo_dir = tmp_path / "repo"
    with mlvc.track(repository=repo_dir, strict=True) as run:
        run.checkpoint(step=np.int64(5))  # type: ignore[arg-type]
        run.checkpoint(step=np.uint64(2**64 - 1))  # type: ignore[arg-type]
        run.log({"loss": 1.0}, step=np.int32(3))  # type: ignore[arg-type]
        run.log({"loss": 0.5}, step=2**64 - 1)
    exp = mlvc.experiments.get(run.id or "", repository=repo_dir)
    assert [c.step for c in exp.checkpoints] == [5, 2**64 - 1]
    assert [s for s, _ in exp.metrics("loss")] == [3, 2**64 - 1]


@pytest.mark.parametrize("bad", BAD_STEPS, ids=repr)
def test_a_logged_point_with_a_bad_step_is_refused(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: object
) -> None:
    repo_dir = tmp_path / "repo"
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=repo_dir) as run:
            run.log({"loss": 1.0}, step=bad)  # type: ignore[arg-type]
            run.log({"loss": 0.5})
    assert "step must be a non-negative integer" in caplog.text
    exp = mlvc.experiments.get(run.id or "", repository=repo_dir)
    assert exp.metrics("loss") == [(0, 0.5)]
    with mlvc.track(repository=repo_dir, strict=True) as run:
        with pytest.raises(TrackingError, match="step must be a non-negative integer"):
            run.log({"loss": 1.0}, step=bad)  # type: ignore[arg-type]

"""The run API: one list of options for track/init/Run, and what ``run.log`` keeps."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import mlvc
from mlvc.errors import TrackingError
from mlvc.repo import open_repo
from mlvc.tracking.commits import update_summary
from mlvc.tracking.options import RunOptions
from tests.porcelain.conftest import subprocess_env


def test_track_init_and_run_take_the_fields_of_run_options() -> None:
    fields = [(f.name, f.default) for f in dataclasses.fields(RunOptions)]
    for fn in (mlvc.track, mlvc.init):
        params = inspect.signature(fn).parameters.values()
        assert [(p.name, p.default) for p in params] == fields
        assert fn.__doc__ and "Run" in fn.__doc__
    with pytest.raises(TypeError, match="max_pendin"):
        mlvc.track(max_pendin=3)  # type: ignore[call-arg]


def test_run_takes_options_or_keywords(project: Path, tmp_path: Path) -> None:
    with mlvc.Run(repository=tmp_path / "repo", name="kw") as a:
        a.log({"x": 1.0})
    with mlvc.Run(RunOptions(repository=tmp_path / "repo", name="opts")) as b:
        b.log({"x": 2.0})
    names = sorted(e.name for e in mlvc.experiments.list(repository=tmp_path / "repo"))
    assert names == ["kw", "opts"]


def test_log_records_values_as_they_were_at_the_call(project: Path, tmp_path: Path) -> None:
    metrics = {"loss": 1.0, "acc": 0}
    total = np.array(0.5)  # an accumulator updated in place after each log
    with mlvc.track(repository=tmp_path / "repo") as run:
        for step in range(3):
            metrics["loss"] = 1.0 / (step + 1)
            metrics["acc"] = step  # an int: kept as is, converted in the background
            run.log({**metrics, "total": total}, step=step)
            run.log(metrics, step=10 + step)
            metrics["loss"] = -1.0  # the dict is reused: the point keeps the call's values
            total += 1.0
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")  # type: ignore[arg-type]
    loss = dict(exp.metrics("loss"))
    assert loss == {0: 1.0, 1: 0.5, 2: 1 / 3, 10: 1.0, 11: 0.5, 12: 1 / 3}
    assert dict(exp.metrics("acc")) == {0: 0.0, 1: 1.0, 2: 2.0, 10: 0.0, 11: 1.0, 12: 2.0}
    assert dict(exp.metrics("total")) == {0: 0.5, 1: 1.5, 2: 2.5}


def test_log_refuses_a_bad_step_clearly(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=tmp_path / "repo") as run:
            run.log({"x": 1.0}, step="three")  # type: ignore[arg-type]
            run.log({"x": 2.0})
    assert "could not record log: UsageError: step must be a non-negative integer" in caplog.text
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")  # type: ignore[arg-type]
    assert exp.metrics("x") == [(0, 2.0)]
    with mlvc.track(repository=tmp_path / "repo", strict=True) as strict:
        with pytest.raises(TrackingError):
            strict.log({"x": 1.0}, step="three")  # type: ignore[arg-type]


def test_a_run_ended_elsewhere_is_not_ended_again_by_sync(project: Path, tmp_path: Path) -> None:
    with mlvc.track(repository=tmp_path / "repo") as run:
        pass
    repo = open_repo(str(tmp_path / "repo"))
    try:
        name = f"experiments/{run.id}"
        before = repo.refs.require(name)
        assert update_summary(repo, name, lambda old: None) is None  # declined: left alone
        assert repo.refs.require(name).version == before.version
        moved = update_summary(repo, name, lambda old: dict(old, note="x"))
        assert moved is not None and moved.summary["note"] == "x"
        assert update_summary(repo, "experiments/" + "0" * 64, lambda old: old) is None
    finally:
        repo.close()


def test_importing_the_package_does_not_start_a_run() -> None:
    code = (
        "import sys, mlvc.tracking, mlvc.tracking.options; "
        "print('mlvc.tracking.run' in sys.modules, 'mlvc_core.ingest' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=subprocess_env(Path.cwd()),
    )
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "bad",
    [
        {"heartbeat_interval": 0},
        {"heartbeat_interval": -1.0},
        {"heartbeat_interval": "10"},
        {"heartbeat_interval": float("nan")},
        {"copy_budget": "1"},
        {"copy_budget": -1},
        {"exit_timeout": float("nan")},
        {"max_pending": 0},
        {"max_code_files": -1},
    ],
)
def test_a_bad_numeric_option_is_one_clear_warning_not_a_dead_or_spinning_thread(
    project: Path, bad: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    (name,) = bad
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(**bad) as run:  # type: ignore[arg-type]
            run.checkpoint(path="train.py", step=0)
    assert run.id is None
    assert "could not record run configuration" in caplog.text
    assert name in caplog.text
    assert not [t for t in threading.enumerate() if t.name == "mlvc-heartbeat"]
    with pytest.raises(TrackingError, match=name):
        mlvc.track(strict=True, **bad).close()  # type: ignore[arg-type]

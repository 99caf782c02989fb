"""The training process forks (DataLoader workers) while tracking runs child processes."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlvc
from mlvc.tracking.environment import _git

WORKER_LIFE = 4.0


@pytest.fixture
def fake_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fast ``git`` on PATH that says it is inside a work tree."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    git = bindir / "git"
    git.write_text("#!/bin/sh\necho true\n")
    git.chmod(git.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return git


def _fork_sleeper(seconds: float) -> int:
    """Fork a child that lives ``seconds`` (like a persistent DataLoader worker), doing nothing."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            time.sleep(seconds)
        finally:
            os._exit(0)
    return pid


@pytest.fixture
def children() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_git_never_waits_for_workers_forked_meanwhile(
    fake_git: Path, tmp_path: Path, children: list[int]
) -> None:
    # One thread runs git again and again (as the run's start does) while the main thread forks
    # short-lived workers: no git call may wait for a worker to exit.
    durations: list[float] = []
    stop = threading.Event()

    def call_git() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            assert _git(["rev-parse", "--is-inside-work-tree"], tmp_path) == "true\n"
            durations.append(time.monotonic() - t0)

    t = threading.Thread(target=call_git)
    t.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            children.append(_fork_sleeper(WORKER_LIFE))
            time.sleep(0.02)
    finally:
        stop.set()
        t.join(60)
    assert len(durations) > 20
    assert max(durations) < WORKER_LIFE / 2, "a git call waited for a forked worker to exit"


def test_run_closes_while_forked_workers_outlive_it(
    project: Path, tmp_path: Path, fake_git: Path, children: list[int]
) -> None:
    weights = project / "model.bin"
    weights.write_bytes(os.urandom(3 << 20))
    t0 = time.monotonic()
    # No copy budget: the files are copied by the background copier while workers fork.
    with mlvc.track(repository=tmp_path / "repo", params={"workers": 2}, copy_budget=0) as run:
        children.append(_fork_sleeper(60))
        for step in range(2):
            run.checkpoint(path="model.bin", step=step, metrics={"loss": 1.0 / (step + 1)})
            children.append(_fork_sleeper(60))  # forks while the copier and worker are busy
    assert time.monotonic() - t0 < 20, "closing the run waited for the forked workers"
    assert not [t for t in threading.enumerate() if t.name == "mlvc-copier"]
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")
    assert exp.status == "stopped" and len(exp.checkpoints) == 2
    with exp.latest().open("model.bin") as f:  # type: ignore[union-attr]
        assert f.read() == weights.read_bytes()

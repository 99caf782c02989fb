"""A run's status tells how it ended: real processes that finish, fail, are interrupted, vanish."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mlvc
from mlvc.cli import app
from tests.porcelain.conftest import subprocess_env

SCRIPT = """
import os, sys, time
import mlvc

how = sys.argv[1]
params = {"how": how}
if how == "uncaught":
    run = mlvc.init(params=params, heartbeat_interval=0.2)
    run.checkpoint(metrics={"loss": 1.0})
    raise RuntimeError("diverged: loss is nan, see https://bob:hunter2@logs.example.com")
with mlvc.track(params=params, heartbeat_interval=0.2) as run:
    run.checkpoint(metrics={"loss": 0.5})
    run.flush()
    print("ready", flush=True)
    if how == "raise":
        raise ValueError("shapes (3, 4) and (5,) do not match")
    if how == "wait":
        time.sleep(60)
    if how == "exit0":
        sys.exit(0)
"""


def _run(tmp_path: Path, how: str, signum: int | None = None) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = subprocess_env(tmp_path, MLVC_REPOSITORY=str(tmp_path / "repo"))
    proc = subprocess.Popen(
        [sys.executable, str(script), how],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if signum is not None:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _only(tmp_path: Path) -> mlvc.Experiment:
    (exp,) = mlvc.experiments.list(repository=tmp_path / "repo", stale_after=1.0)
    return exp


def test_clean_end_is_stopped(tmp_path: Path) -> None:
    for how in ("clean", "exit0"):
        assert _run(tmp_path, how).returncode == 0
    exps = mlvc.experiments.list(repository=tmp_path / "repo")
    assert [e.status for e in exps] == ["stopped", "stopped"]
    assert all(e.error is None for e in exps)


def test_exception_inside_track_is_failed_with_type_and_message(tmp_path: Path) -> None:
    done = _run(tmp_path, "raise")
    assert done.returncode == 1 and "ValueError" in done.stderr
    exp = _only(tmp_path)
    assert exp.status == "failed" and exp.end_reason == "exception"
    assert exp.error == "ValueError: shapes (3, 4) and (5,) do not match"
    assert len(exp.checkpoints) == 1


def test_uncaught_exception_after_init_is_failed_without_the_url_password(tmp_path: Path) -> None:
    done = _run(tmp_path, "uncaught")
    assert done.returncode == 1 and "RuntimeError" in done.stderr
    exp = _only(tmp_path)
    assert exp.status == "failed"
    assert exp.error == (
        "RuntimeError: diverged: loss is nan, see https://bob:<redacted>@logs.example.com"
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_are_interrupted(tmp_path: Path, signum: int) -> None:
    _run(tmp_path, "wait", signum)
    exp = _only(tmp_path)
    assert exp.status == "interrupted", exp.summary
    assert exp.end_reason == ("KeyboardInterrupt" if signum == signal.SIGINT else "SIGTERM")
    assert exp.error is None and len(exp.checkpoints) == 1


def test_a_vanished_process_is_crashed(tmp_path: Path) -> None:
    _run(tmp_path, "wait", signal.SIGKILL)
    time.sleep(1.2)  # the heartbeat died with the process
    assert _only(tmp_path).status == "crashed"


def test_ls_show_and_filters_tell_each_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tmp_path, "clean")
    _run(tmp_path, "raise")
    _run(tmp_path, "wait", signal.SIGINT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLVC_REPOSITORY", str(tmp_path / "repo"))
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cli-cache"))
    runner = CliRunner()

    def mlvc_cli(*args: str) -> str:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    table = mlvc_cli("ls")
    for status in ("stopped", "failed", "interrupted"):
        assert status in table
    failed = json.loads(mlvc_cli("ls", "--filter", "status = failed", "--json"))
    assert [e["params"]["how"] for e in failed] == ["raise"]
    assert failed[0]["error"] == "ValueError: shapes (3, 4) and (5,) do not match"
    interrupted = json.loads(mlvc_cli("ls", "-f", "status = interrupted", "--json"))
    assert [e["params"]["how"] for e in interrupted] == ["wait"]
    shown = mlvc_cli("show", failed[0]["id"][:10])
    assert "failed" in shown and "ValueError: shapes (3, 4) and (5,) do not match" in shown
    assert json.loads(mlvc_cli("ps", "--json")) == []

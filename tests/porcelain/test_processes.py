"""Training scripts in child processes: killed, terminated, and running side by side."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlvc
from tests.porcelain.child_train import weights
from tests.porcelain.conftest import subprocess_env

CHILD = Path(__file__).with_name("child_train.py")


def _spawn(workdir: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _checkpoint_bytes(ckpt: mlvc.Checkpoint) -> bytes:
    with ckpt.open("model.bin") as f:
        return f.read()


def test_sigkill_reads_as_crashed_and_keeps_finished_checkpoints(tmp_path: Path) -> None:
    repo_url = str(tmp_path / "repo")
    env = subprocess_env(tmp_path, MLVC_REPOSITORY=repo_url, MLVC_TEST_HEARTBEAT="0.2")
    work = tmp_path / "job"
    proc = _spawn(work, env, "victim", "200", "0.2", "--hang")
    try:
        deadline = time.monotonic() + 60
        exp = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                exps = mlvc.experiments.list(repository=repo_url)
            except mlvc.errors.NotARepository:
                exps = []
            if exps and exps[0].summary.get("checkpoints", 0) >= 2:
                exp = exps[0]
                break
            time.sleep(0.1)
        assert exp is not None, "the child never recorded 2 checkpoints"
        assert exp.status == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    (exp_now,) = mlvc.experiments.list(repository=repo_url, stale_after=1.0)
    time.sleep(1.2)  # the heartbeat stops with the process
    (exp_later,) = mlvc.experiments.list(repository=repo_url, stale_after=1.0)
    assert exp_later.status == "crashed"
    assert (
        mlvc.experiments.get(exp.id[:9], repository=repo_url, stale_after=1.0).status == "crashed"
    )

    checkpoints = exp_later.checkpoints
    assert len(checkpoints) >= 2
    assert [c.step for c in checkpoints] == list(range(len(checkpoints)))
    for ckpt in checkpoints:
        expected = (work / "expected" / f"model-{ckpt.step}.bin").read_bytes()
        assert _checkpoint_bytes(ckpt) == expected
        out = tmp_path / "fsck" / str(ckpt.step)
        assert ckpt.checkout(out) == ["model.bin"]
        assert (out / "model.bin").read_bytes() == expected


def test_sigterm_flushes_the_pending_checkpoint(tmp_path: Path) -> None:
    repo_url = str(tmp_path / "repo")
    env = subprocess_env(tmp_path, MLVC_REPOSITORY=repo_url)
    from mlvc.repo import open_repo

    open_repo(repo_url, create=True).close()
    proc = _spawn(tmp_path / "job", env, "term", "1", "0", "--hang", "--slow-store")
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the checkpoint is queued; its commit is still under way
    assert line.strip() == "queued 0"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM  # the default action still ran afterwards
    assert time.monotonic() - t0 >= 0.4  # it waited for the slow commit
    assert "mlvc: saved experiment" in err and "(1 checkpoint, best loss=1 at step 0)" in err, err

    (exp,) = mlvc.experiments.list(repository=repo_url)
    assert exp.status == "interrupted"
    assert exp.summary["end_reason"] == "SIGTERM"
    (ckpt,) = exp.checkpoints
    assert _checkpoint_bytes(ckpt) == weights("term", 0)


def test_exit_without_close_flushes_pending_checkpoints(tmp_path: Path) -> None:
    repo_url = str(tmp_path / "repo")
    from mlvc.repo import open_repo

    open_repo(repo_url, create=True).close()
    env = subprocess_env(tmp_path, MLVC_REPOSITORY=repo_url)
    proc = _spawn(tmp_path / "job", env, "leaver", "2", "0", "--no-close", "--slow-store")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "exiting" in out and "(2 checkpoints, best loss=0.5 at step 1)" in err, err
    (exp,) = mlvc.experiments.list(repository=repo_url)
    assert exp.status == "stopped" and exp.summary["end_reason"] == "exit"
    assert [_checkpoint_bytes(c) for c in exp.checkpoints] == [weights("leaver", s) for s in (0, 1)]


def _run_two(tmp_path: Path, env: dict[str, str]) -> None:
    procs = [_spawn(tmp_path / tag, env, tag, "5", "0") for tag in ("alpha", "beta")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "done" in out and "mlvc: saved experiment" in err and "(5 checkpoints" in err, err


def _check_two(repository: object) -> None:
    exps = mlvc.experiments.list(repository=repository)  # type: ignore[arg-type]
    assert sorted(e.name for e in exps) == ["alpha", "beta"]
    for exp in exps:
        assert exp.status == "stopped"
        assert exp.summary["checkpoints"] == 5
        checkpoints = exp.checkpoints
        assert [c.step for c in checkpoints] == [0, 1, 2, 3, 4]
        for ckpt in checkpoints:
            assert ckpt.experiment_id == exp.id
            assert _checkpoint_bytes(ckpt) == weights(exp.name, ckpt.step)
        assert exp.best().step == 4  # loss = 1 / (step + 1)


def test_two_concurrent_runs_local(tmp_path: Path) -> None:
    repo_url = str(tmp_path / "repo")
    _run_two(tmp_path, subprocess_env(tmp_path, MLVC_REPOSITORY=repo_url))
    _check_two(repo_url)


def test_two_concurrent_runs_s3(tmp_path: Path, s3_repo_url: tuple[str, dict[str, object]]) -> None:
    url, options = s3_repo_url
    client_kwargs = options["client_kwargs"]
    assert isinstance(client_kwargs, dict)
    env = subprocess_env(
        tmp_path,
        MLVC_REPOSITORY=url,
        AWS_ENDPOINT_URL=str(client_kwargs["endpoint_url"]),  # mapped to client_kwargs by settings
        AWS_ACCESS_KEY_ID=str(options["key"]),
        AWS_SECRET_ACCESS_KEY=str(options["secret"]),
    )
    _run_two(tmp_path, env)
    from mlvc.settings import load_settings

    settings = load_settings(url, storage_options=dict(options))
    _check_two(settings)

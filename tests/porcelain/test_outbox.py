"""Storage that stops answering never stalls the loop, and nothing pending is lost."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mlvc
from mlvc.cli import app
from mlvc.tracking import outbox
from tests.porcelain.stores import GatedStore, wrap_repo


def test_frozen_storage_never_stalls_checkpoints_and_sync_sends_what_was_kept(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo, store = wrap_repo(GatedStore, tmp_path / "repo", tmp_path / "cache" / "r")
    run = mlvc.init(repository=repo, exit_timeout=1.0, heartbeat_interval=0.2)
    run.flush()  # the experiment is recorded; then the storage freezes
    store.gate.clear()
    weights = project / "model.bin"
    expected = {}
    longest = 0.0
    for step in range(5):
        expected[step] = f"weights {step} ".encode() * 50_000  # 0.5 MB each
        weights.write_bytes(expected[step])
        t0 = time.monotonic()
        run.checkpoint(path="model.bin", step=step, metrics={"loss": 1.0 / (step + 1)})
        longest = max(longest, time.monotonic() - t0)
    assert longest < 1.6, f"checkpoint() blocked the loop {longest:.1f} s"
    t0 = time.monotonic()
    run.close()
    assert time.monotonic() - t0 < 10, "close() waited past exit_timeout"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "did not answer within 1 s" in last and "mlvc sync" in last, last
    kept = outbox.pending()
    assert len(kept) == 6  # five checkpoints and the run's end

    store.gate.set()  # the storage answers again (the stuck write may finish meanwhile)
    time.sleep(0.5)
    result = CliRunner().invoke(app, ["sync", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert outbox.pending() == []
    exp = mlvc.experiments.get(run.id, repository=repo)  # type: ignore[arg-type]
    assert [c.step for c in exp.checkpoints] == [0, 1, 2, 3, 4]  # each once, in order
    for ckpt in exp.checkpoints:
        with ckpt.open("model.bin") as f:
            assert f.read() == expected[ckpt.step]  # type: ignore[index]
    assert exp.status == "stopped" and exp.summary["latest_step"] == 4


def test_sync_keeps_what_still_fails(project: Path, tmp_path: Path) -> None:
    root = outbox.outbox_dir()
    entry = {"kind": "end", "repository": str(tmp_path / "nowhere"), "experiment": "ab" * 32}
    outbox.save(root, {**entry, "status": "stopped"})
    result = CliRunner().invoke(app, ["sync"], catch_exceptions=False)
    assert result.exit_code == 1 and "kept" in result.output
    assert len(outbox.pending()) == 1


@pytest.mark.parametrize("tty", [False, True])
def test_a_long_end_of_run_says_what_is_left(
    project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tty: bool,
) -> None:
    from mlvc.tracking import ending
    from tests.porcelain.stores import SlowStore

    monkeypatch.setattr(ending, "QUIET_WAIT", 0.2)
    monkeypatch.setattr(ending, "_is_tty", lambda stream: tty)
    repo, _store = wrap_repo(SlowStore, tmp_path / "repo", tmp_path / "cache" / "r")
    (project / "model.bin").write_bytes(b"w" * 3_000_000)
    with mlvc.track(repository=repo) as run:
        run.checkpoint(path="model.bin", step=0)
    err = capsys.readouterr().err
    lines = [line for line in err.split("\n") if line.strip()]
    progress = [line for line in lines if "mlvc: storing 1 checkpoint (3.0 MB left" in line]
    assert progress, err
    assert lines[-1].rsplit("\r", 1)[-1].startswith("mlvc: saved experiment")
    if tty:
        assert "\r" in err and err.count("\n") == 1  # rewritten in place, one final line
    else:
        assert err.count("mlvc: storing") == 1


def test_progress_line() -> None:
    from mlvc.tracking.ending import progress_line

    assert progress_line(2, 1_500_000_000, 2.5e8, 299.7) == (
        "mlvc: storing 2 checkpoints (1.5 GB left, 250.0 MB/s), waiting up to 299 s more"
    )


def test_backlog_never_fills_the_local_disk(
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from mlvc.tracking import run as tracking_run

    repo, store = wrap_repo(GatedStore, tmp_path / "repo", tmp_path / "cache" / "r")
    run = mlvc.init(repository=repo, exit_timeout=0.5, max_pending=1)
    run.flush()
    store.gate.clear()
    monkeypatch.setattr(tracking_run, "disk_room", lambda where, size: False)  # a full disk
    (project / "model.bin").write_bytes(b"w" * 100_000)
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        t0 = time.monotonic()
        run.checkpoint(path="model.bin", step=0)
        assert store.blocked.wait(10)  # the worker is stuck storing step 0
        for step in range(1, 4):
            run.checkpoint(path="model.bin", step=step)  # 1 waits in the queue; 2, 3 dropped
        assert time.monotonic() - t0 < 3
        run.close()
    assert caplog.text.count("the local disk is nearly full") == 1
    kinds = [json.loads((d / "entry.json").read_text()) for d in outbox.pending()]
    assert [(e["kind"], e.get("step")) for e in kinds] == [
        ("checkpoint", 0),
        ("checkpoint", 1),
        ("end", None),
    ]
    store.gate.set()

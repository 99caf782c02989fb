"""What a run records, under the conditions users meet: gc running, odd files, odd params."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

import mlvc
from mlvc.repo import open_repo
from mlvc.settings import load_settings
from mlvc_core.lock import ExclusiveLock


def test_checkpoint_taken_while_gc_holds_the_lock_waits_for_it(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo_dir = tmp_path / "repo"
    weights = project / "w.bin"
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=repo_dir) as run:
            weights.write_bytes(b"step 0" * 1000)
            run.checkpoint(path="w.bin", step=0)
            run.flush()
            repo = open_repo(load_settings(repo_dir))
            gc_lock = ExclusiveLock.acquire(repo.store)  # a gc starts
            threading.Timer(1.0, gc_lock.release).start()  # and finishes a second later
            for step in (1, 2):
                weights.write_bytes(f"step {step}".encode() * 1000)
                run.checkpoint(path="w.bin", step=step)
    assert "waits until gc has finished" in caplog.text
    assert "could not record" not in caplog.text
    exp = mlvc.experiments.get(run.id, repository=repo_dir)
    assert [c.step for c in exp.checkpoints] == [0, 1, 2]
    with exp.checkpoints[1].open("w.bin") as f:
        assert f.read() == b"step 1" * 1000


def test_a_file_name_that_is_not_utf8_costs_that_file_not_the_run(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = os.fsdecode(b"notes-\xff.txt")
    (project / bad).write_text("latin-1 named file")
    ckpt_dir = project / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "weights.bin").write_bytes(b"w" * 100)
    (ckpt_dir / os.fsdecode(b"opt-\xe9.bin")).write_bytes(b"o" * 100)
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        with mlvc.track(repository=tmp_path / "repo") as run:
            run.checkpoint(path="ckpt", step=0)
    assert run.id is not None
    assert "notes-\\xff.txt" in caplog.text and "opt-\\xe9.bin" in caplog.text
    exp = mlvc.experiments.get(run.id, repository=tmp_path / "repo")
    files = {path for path, _ in exp.latest().files(all=True)}  # type: ignore[union-attr]
    assert {"train.py", "ckpt/weights.bin"} <= files
    assert not any("\\udc" in f or "notes-" in f or "opt-" in f for f in files)

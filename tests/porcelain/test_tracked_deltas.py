"""Tracked checkpoints of a full fine-tune are stored as deltas, also when each file is named
by its step, and read back exactly."""

from __future__ import annotations

from pathlib import Path

import mlvc
from mlvc_core import codec
from mlvc_core.repository import Repository
from tests.core.test_deltas import model


def test_numbered_checkpoint_files_are_coded_against_the_previous_one(
    project: Path, tmp_path: Path
) -> None:
    repo_dir = tmp_path / "repo"
    with mlvc.track(repository=str(repo_dir), exit_timeout=60.0) as run:
        previous: Path | None = None
        for step in range(3):
            path = project / f"ckpt-{step * 100}.safetensors"
            path.write_bytes(model(step))
            run.checkpoint(path=path, step=step * 100)
            run.flush()
            if previous is not None:
                previous.unlink()
            previous = path
    repo = Repository.open(repo_dir)
    coded = [loc for _, loc in repo.iter_index() if loc.codec == codec.DELTA]
    assert len(coded) >= 6  # two later checkpoints, three large tensors each at least
    checkpoints = mlvc.experiments.get(run.id, repository=str(repo_dir)).checkpoints
    for step, ckpt in enumerate(checkpoints):
        assert ckpt.open(f"ckpt-{step * 100}.safetensors").read() == model(step)

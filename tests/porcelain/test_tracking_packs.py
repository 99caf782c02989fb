"""A tracked checkpoint costs one pack and one index file, not a pack of data and one of
metadata each with its own index."""

from __future__ import annotations

import os
from pathlib import Path

import mlvc
from mlvc_core.check import check
from mlvc_core.repository import Repository


def test_each_checkpoint_is_one_pack_and_one_index_file(project: Path, tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    weights = project / "model.bin"
    with mlvc.track(repository=str(repo_dir), name="packs", strict=True) as run:
        run.flush()
        repo = Repository.open(repo_dir)
        start_packs, start_files = len(repo.index_ids()), len(repo.list_index_files())
        for step in range(3):
            weights.write_bytes(os.urandom(200_000))
            run.checkpoint(path=str(weights), step=step, metrics={"loss": 1.0 / (step + 1)})
            run.flush()
    repo = Repository.open(repo_dir)
    assert len(repo.index_ids()) == start_packs + 3
    assert len(repo.list_index_files()) == start_files + 3
    assert check(repo).ok

"""RefStore.list reads experiment refs through the catalog: never an outdated target (gc marks
from it)."""

from __future__ import annotations

import time
from pathlib import Path

from mlvc_core.catalog import LocalCache, catalog_key, scan
from mlvc_core.check import check
from mlvc_core.gc import collect
from mlvc_core.ingest import ingest_bytes
from mlvc_core.objects import Commit, Tree
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession
from tests.synth import make_experiments

PREFIX = "refs/experiments/"


def test_gc_marks_from_refs_moved_after_the_catalog_was_written(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "repo")
    ids = make_experiments(repo, 10, seed=1, per_session=1)
    time.sleep(1.1)  # past the racy window: the catalog's size:mtime copies are trusted
    assert scan(repo.store, PREFIX, LocalCache(None), 0.0, compact_threshold=0).compacted
    before = repo.store.read(catalog_key(PREFIX))
    # One experiment moves on: a new commit in a new pack, after the catalog was written.
    ref = repo.refs.require(f"experiments/{ids[4]}")
    with WriteSession(repo) as s:
        chunk = ingest_bytes(s, b"fresh checkpoint bytes" * 100).chunks[0][0]
        tree = s.add_object(Tree(()))
        new = s.add_object(
            Commit(tree=tree, parents=(ref.target,), message="later", metadata={"c": chunk.hex()})
        )
        s.flush()
        repo.refs.move(ref, new, dict(ref.summary, latest=new.hex()))
    assert repo.store.read(catalog_key(PREFIX)) == before  # the catalog is now outdated
    seen = scan(repo.store, PREFIX, LocalCache(None), 1.0, compact=False)
    assert seen.catalog_read and seen.refs_read == 1  # nine from the catalog, one read
    listed = {r.name: r for r in Repository.open(tmp_path / "repo").refs.list("experiments")}
    assert listed[f"experiments/{ids[4]}"].target == new
    report = collect(Repository.open(tmp_path / "repo"), dry_run=False, grace_seconds=0.0)
    assert report.reachable_objects > 0
    after = Repository.open(tmp_path / "repo")
    assert after.read_commit(new).message == "later"
    assert check(after).ok

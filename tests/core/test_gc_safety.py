"""gc never deletes what a writer relies on (invariant 7), shown by doing it.

Each test ends the same way: ``fsck`` clean and every commit checked out byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlvc_core.check import check
from mlvc_core.chunker import ChunkerParams
from mlvc_core.config import RepoConfig
from mlvc_core.errors import ObjectNotFound, RepositoryLocked
from mlvc_core.gc import collect
from mlvc_core.history import commit_paths
from mlvc_core.ingest import TreeBuilder
from mlvc_core.objects import Commit, Tree
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from mlvc_core.session import WriteSession
from mlvc_core.statcache import StatCache
from tests.core.intact import assert_branches_intact

SMALL = RepoConfig(chunker=ChunkerParams(min=1024, avg=4096, max=16384))
ROOT = Path(__file__).resolve().parents[2]


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _old(path: Path) -> None:
    """Back-date a file so the stat cache trusts it (recent files are racy)."""
    t = time.time() - 3600
    os.utime(path, (t, t))


def test_a_writer_opened_before_gc_stores_again_what_gc_deleted(tmp_path: Path) -> None:
    """The training-run case: the repository was opened (index loaded) before gc ran."""
    weights = tmp_path / "w.bin"
    weights.write_bytes(rand(300_000, 1))
    setup = Repository.init(tmp_path / "r", SMALL)
    commit_paths(setup, weights, "e0", branch="e0")
    setup.refs.delete("heads/e0")  # `mlvc rm`: e0's chunks are garbage now
    run = Repository.open(tmp_path / "r")  # a long run, opened before gc
    report = collect(Repository.open(tmp_path / "r"), dry_run=False, grace_seconds=0)
    assert report.packs_deleted >= 1 and report.generation == 1
    commit_paths(run, weights, "checkpoint", branch="e1")  # same bytes as e0's
    assert run.generation == 1
    assert_branches_intact(Repository.open(tmp_path / "r"), {"e1": weights.read_bytes()}, tmp_path)


def test_gc_between_the_checkpoints_of_a_live_tracked_run(tmp_path: Path) -> None:
    """The same through ``mlvc.track``: gc runs in another process between two checkpoints."""
    script = r"""
import os, subprocess, sys
import mlvc
repo, ckpt, code, other = sys.argv[1:5]
with mlvc.track(path=code, name="e0", repository=repo) as run:
    run.checkpoint(path=ckpt, step=0)
e0 = [e for e in mlvc.experiments.list(repo) if e.name == "e0"][0]
e0.remove()
run = mlvc.track(path=code, name="e1", repository=repo, strict=True)
run.checkpoint(path=other, step=0)   # the run is live: it has opened the repository
run.flush()
gc = subprocess.run([sys.executable, "-c",
    "import sys; from mlvc_core.repository import Repository; from mlvc_core.gc import collect;"
    "r = collect(Repository.open(sys.argv[1]), dry_run=False, grace_seconds=0);"
    "print(r.packs_deleted)", repo],
    capture_output=True, text=True, check=True)
print("gc deleted", gc.stdout.strip())
run.checkpoint(path=ckpt, step=1)   # same bytes as e0's checkpoint
run.close()
"""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("print('train')\n")
    ckpt = tmp_path / "base.bin"
    ckpt.write_bytes(rand(3 << 20, 7))
    other = tmp_path / "other" / "base.bin"
    other.parent.mkdir()
    other.write_bytes(rand(1 << 20, 8))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLVC_CACHE_DIR": str(tmp_path / "cache")}
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "r"), str(ckpt), str(tmp_path / "code")]
        + [str(other)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "gc deleted" in r.stdout and "gc deleted 0" not in r.stdout
    repo = Repository.open(tmp_path / "r")
    assert check(repo).ok
    exp = [ref for ref in repo.refs.list() if ref.summary.get("name") == "e1"]
    assert len(exp) == 1
    expected = {1: ckpt.read_bytes(), 0: other.read_bytes()}
    steps = []
    for i, (cid, commit) in enumerate(repo.log(exp[0].target)):
        if commit.metadata.get("type") != "checkpoint":
            continue
        steps.append(commit.metadata["step"])
        out = tmp_path / f"out{i}"
        restored = checkout(repo, cid, out)
        files = [out / p for p in restored if (out / p).name == "base.bin"]
        assert len(files) == 1 and files[0].read_bytes() == expected[commit.metadata["step"]]
    assert sorted(steps) == [0, 1]


def test_a_stat_cache_hit_is_not_trusted_after_gc_removed_its_manifest(tmp_path: Path) -> None:
    """An unreachable manifest kept inside a partly live pack is not *stored* after gc."""
    cfg = RepoConfig(chunker=ChunkerParams(min=1024, avg=4096, max=16384), pack_size=32 << 10)
    repo = Repository.init(tmp_path / "r", cfg)
    src = tmp_path / "src"
    src.mkdir()
    drop = tmp_path / "drop.bin"
    drop.write_bytes(rand(100_000, 3))
    for i in range(100):
        (src / f"f{i:03}").write_bytes(rand(300, 100 + i))
    _old(drop)
    cache = StatCache(tmp_path / "statcache.sqlite")
    # One session stores drop.bin (its manifest lands in the same object pack as the live
    # commit's) but only src/ is committed: drop.bin's manifest is garbage in a live pack.
    with WriteSession(repo) as s:
        builder = TreeBuilder(s, stat_cache=cache)
        builder.file_entry(drop, "drop.bin", os.stat(drop), "drop.bin")
        cache.flush()
        tree = s.add_object(builder.tree(src))
        cid = s.add_object(Commit(tree=tree, parents=(), author="t", time=0.0, message="m"))
        s.flush()
        repo.refs.set("heads/main", cid, None)
    report = collect(Repository.open(tmp_path / "r"), dry_run=False, grace_seconds=0)
    assert report.packs_deleted >= 1
    # The stat cache still names drop.bin's manifest; the repository no longer stores it.
    cid2 = commit_paths(repo, drop, "again", branch="drop", stat_cache=cache)
    assert repo.read_commit(cid2)
    assert_branches_intact(Repository.open(tmp_path / "r"), {"drop": drop.read_bytes()}, tmp_path)


def test_a_session_refuses_to_store_a_tree_naming_what_is_not_stored(tmp_path: Path) -> None:
    """The last line of defence: no commit can reach missing data, even if a caller reuses an
    id read before gc ran (a parent's tree, an earlier snapshot)."""
    repo = Repository.init(tmp_path / "r", SMALL)
    (tmp_path / "f").write_bytes(rand(50_000, 2))
    old = commit_paths(repo, tmp_path / "f", "old", branch="tmp")
    entries = repo.read_tree(repo.read_commit(old).tree).entries  # read before gc runs
    repo.refs.delete("heads/tmp")
    collect(Repository.open(tmp_path / "r"), dry_run=False, grace_seconds=0)
    with WriteSession(repo) as s, pytest.raises(ObjectNotFound, match="no longer stored"):
        s.add_object(Tree(tuple(entries)))
    assert check(Repository.open(tmp_path / "r")).ok


WRITER = r"""
import hashlib, json, random, sys, time
from pathlib import Path
from mlvc_core.errors import RepositoryLocked
from mlvc_core.repository import Repository
from mlvc_core.history import commit_paths
repo_path, me, rounds, work = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
options = json.loads(sys.argv[5])
repo = Repository.open(repo_path, **options)   # long-lived: its index grows stale under gc
done = {}
def retry(fn):
    while True:
        try:
            return fn()
        except RepositoryLocked:
            time.sleep(0.02)
for k in range(rounds):
    base = random.Random(1000 * me + k).randbytes(120_000)
    mine = random.Random(k).randbytes(20_000)          # shared by every writer in round k
    f = work / f"w{me}.bin"
    f.write_bytes(base)
    retry(lambda: commit_paths(repo, f, "scratch", branch=f"scratch{me}"))
    seen = repo.read_generation().number
    repo.refs.delete(f"heads/scratch{me}")             # garbage now: gc may delete it
    t = time.monotonic()                               # give gc a chance to (up to 5 s)
    while repo.read_generation().number == seen and time.monotonic() - t < 5:
        time.sleep(0.02)
    f.write_bytes(base + mine)
    cid = retry(lambda: commit_paths(repo, f, f"round {k}", branch=f"w{me}"))
    done[cid.hex()] = [f"w{me}.bin", hashlib.sha256(base + mine).hexdigest()]
    time.sleep(random.random() * 0.1)
print(json.dumps(done))
"""


@pytest.mark.parametrize(
    "backend", ["local", pytest.param("seaweed_repo_url", marks=pytest.mark.slow)]
)
def test_gc_beside_eight_concurrent_writer_processes(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import hashlib

    if backend == "local":
        url, options, rounds = str(tmp_path / "r"), {}, 4
    else:
        url, options = request.getfixturevalue(backend)
        rounds = 2
    Repository.init(url, SMALL, **options).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    for me in range(8):
        work = tmp_path / f"work{me}"
        work.mkdir()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, url, str(me), str(rounds), str(work)]
                + [json.dumps(options)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    gc_repo = Repository.open(url, **options)
    ran = deleted = 0
    deadline = time.monotonic() + 180
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        try:
            report = collect(gc_repo, dry_run=False, grace_seconds=0)
        except RepositoryLocked:
            time.sleep(0.05)
            continue
        ran += 1
        deleted += report.packs_deleted + report.packs_repacked
        time.sleep(0.05)
    results: dict[str, list[str]] = {}
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.update(json.loads(out))
    assert ran >= 1 and deleted >= 1, (ran, deleted)
    collect(gc_repo, dry_run=False, grace_seconds=0)
    repo = Repository.open(url, **options)
    report = check(repo)
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    assert len(results) == 8 * rounds
    for i, (cid, (name, digest)) in enumerate(sorted(results.items())):  # every commit
        out = tmp_path / f"out{i}"
        checkout(repo, cid, out)
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert len(repo.index_files()) == 1

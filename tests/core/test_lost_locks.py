"""A holder paused past the stale time whose lock was taken over stops before it acts.

Shown by doing it: a real process holding gc's (or a writer's) lock stops itself (SIGSTOP)
in the middle of its work, stays stopped past a test-shortened stale time while another
process takes over, and is then continued (SIGCONT). It must delete and publish nothing and
leave the other's lock alone; fsck is clean and checkouts are byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlvc_core import lock as lock_mod
from mlvc_core.chunker import ChunkerParams
from mlvc_core.config import RepoConfig
from mlvc_core.errors import LockLost
from mlvc_core.gc import collect
from mlvc_core.history import commit_paths
from mlvc_core.lock import EXCLUSIVE, ExclusiveLock, SharedLock, read_holder
from mlvc_core.repository import Repository
from mlvc_core.storage import LocalStore
from tests.core.intact import assert_branches_intact

ROOT = Path(__file__).resolve().parents[2]
SMALL = RepoConfig(chunker=ChunkerParams(min=1024, avg=4096, max=16384))
STALE = 2.0
"""The test-shortened stale time (``STALE_AFTER``: 300 s in real use)."""
INTERVAL = 0.25
"""The test-shortened refresh interval."""

PAUSED = r"""
import json, os, signal, sys
from mlvc_core import lock
lock.STALE_AFTER, lock.REFRESH_INTERVAL = float(sys.argv[3]), float(sys.argv[4])
from mlvc_core.errors import LockLost
from mlvc_core.gc import collect
from mlvc_core.history import commit_paths
from mlvc_core.repository import Repository

repo = Repository.open(sys.argv[1], **json.loads(sys.argv[2]))
stopped = []

def pause(_n):
    if not stopped:  # once, in the middle of the work, holding the lock
        stopped.append(1)
        os.kill(os.getpid(), signal.SIGSTOP)

try:
    if sys.argv[5] == "gc":
        collect(repo, dry_run=False, grace_seconds=0, progress=pause)
    else:
        commit_paths(repo, sys.argv[6], "late", branch="late", progress=pause)
except LockLost as exc:
    print("lost:", exc, flush=True)
    sys.exit(3)
print("finished", flush=True)
"""


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(
    params=[
        "local",
        "s3_repo_url",
        "gcs_repo_url",
        pytest.param("seaweed_repo_url", marks=pytest.mark.slow),
    ]
)
def location(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A fresh repository location on local disk, moto, fake-gcs-server and (slow) SeaweedFS."""
    if request.param == "local":
        return str(tmp_path / "repo"), {}
    url, options = request.getfixturevalue(request.param)
    return url, dict(options)


@pytest.fixture
def short_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process judges locks with the shortened times too."""
    monkeypatch.setattr(lock_mod, "STALE_AFTER", STALE)
    monkeypatch.setattr(lock_mod, "REFRESH_INTERVAL", INTERVAL)


def _setup(url: str, options: dict[str, Any], tmp_path: Path) -> tuple[Repository, Path, Path]:
    """A repository with ``main`` (file a) and garbage: file b's commit, its branch deleted."""
    repo = Repository.init(url, SMALL, cache_dir=tmp_path / "cache", **options)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(_rand(150_000, 1))
    b.write_bytes(_rand(200_000, 2))
    commit_paths(repo, a, "a")
    commit_paths(repo, b, "b", branch="tmp")
    repo.refs.delete("heads/tmp")
    return repo, a, b


def _start_paused(
    url: str, options: dict[str, Any], what: str, tmp_path: Path, path: Path | None = None
) -> subprocess.Popen[str]:
    """Start a process that stops itself mid-``what`` holding its lock; return once stopped."""
    p = subprocess.Popen(
        [sys.executable, "-c", PAUSED, url, json.dumps(options), str(STALE), str(INTERVAL)]
        + [what, str(path or "")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MLVC_CACHE_DIR": str(tmp_path / "c2")},
    )
    _, status = os.waitpid(p.pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        p.returncode = os.waitstatus_to_exitcode(status)
        out, err = p.communicate()
        pytest.fail(f"{what} ended before pausing: {out}{err}")
    time.sleep(STALE + 0.5)  # unrefreshed past the stale time: abandoned, for all others know
    return p


def _resume(p: subprocess.Popen[str]) -> str:
    """SIGCONT ``p``; it must end reporting its lock lost. Returns its output."""
    os.kill(p.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3 and out.startswith("lost:"), (p.returncode, out, err)
    return out


def _keys(repo: Repository) -> dict[str, int]:
    return {i.key: i.size for p in ("packs/", "index/", "refs/") for i in repo.store.list(p)}


@pytest.mark.usefixtures("short_locks")
def test_a_paused_gc_whose_lock_was_taken_over_deletes_nothing(
    location: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, options = location
    repo, a, b = _setup(url, options, tmp_path)
    gc = _start_paused(url, options, "gc", tmp_path)
    # While gc is stopped with b's pack marked dead, a writer stores b again: it takes the
    # abandoned gc lock away and deduplicates against b's chunks, still indexed.
    commit_paths(
        Repository.open(url, cache_dir=tmp_path / "c3", **options), b, "b again", branch="again"
    )
    assert not repo.store.exists(EXCLUSIVE)
    taker = ExclusiveLock.acquire(repo.store)  # and another gc now holds the lock
    before = _keys(repo)
    out = _resume(gc)
    assert "took over" in out
    assert _keys(repo) == before  # the resumed gc deleted and published nothing
    holder = read_holder(repo.store, EXCLUSIVE)
    assert holder is not None and holder.pid == os.getpid()  # nor removed the other's lock
    taker.check(0)
    taker.release()
    assert not repo.store.exists(EXCLUSIVE)
    fresh = Repository.open(url, cache_dir=tmp_path / "c4", **options)
    assert_branches_intact(
        fresh, {"main": a.read_bytes(), "again": b.read_bytes()}, tmp_path / "v1"
    )
    collect(fresh, dry_run=False, grace_seconds=0)  # a gc that runs to the end changes nothing
    assert_branches_intact(
        fresh, {"main": a.read_bytes(), "again": b.read_bytes()}, tmp_path / "v2"
    )


@pytest.mark.usefixtures("short_locks")
def test_a_paused_writer_whose_lock_gc_took_publishes_nothing(
    location: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, options = location
    repo, a, b = _setup(url, options, tmp_path)
    writer = _start_paused(url, options, "commit", tmp_path, b)  # mid-ingest of b (garbage)
    report = collect(repo, dry_run=False, grace_seconds=0)  # frees b's chunks it reuses
    assert report.packs_deleted >= 1 and report.writers  # the stopped writer, judged stale
    out = _resume(writer)
    assert "abandoned" in out
    assert repo.refs.get("heads/late") is None  # never points at what gc freed
    assert not list(repo.store.list("locks/"))
    fresh = Repository.open(url, cache_dir=tmp_path / "c4", **options)
    assert_branches_intact(fresh, {"main": a.read_bytes()}, tmp_path / "v1")
    commit_paths(fresh, b, "retry", branch="late")  # a retry stores b again
    assert_branches_intact(fresh, {"main": a.read_bytes(), "late": b.read_bytes()}, tmp_path / "v2")


def test_a_lock_taken_over_is_lost_and_left_to_its_new_holder(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = ExclusiveLock.acquire(store, interval=3600, stale_after=0.2)
    time.sleep(0.3)  # unrefreshed (as if paused): stale
    second = ExclusiveLock.acquire(store, interval=3600, stale_after=0.2)
    with pytest.raises(LockLost, match="took over"):
        first.check()  # past its lease: refreshes first, and finds the lock replaced
    assert first.lost
    mine = store.read(EXCLUSIVE)
    first.release()
    assert store.read(EXCLUSIVE) == mine  # the new holder's lock stays
    second.check(0)
    second.release()
    assert not store.exists(EXCLUSIVE)


def test_a_writer_removes_a_stale_gc_lock_so_its_holder_learns_it_lost_it(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    gc = ExclusiveLock.acquire(store, interval=3600, stale_after=0.2)
    time.sleep(0.3)
    writer = SharedLock.acquire(store, stale_after=0.2)  # does not wait for an abandoned gc
    assert not store.exists(EXCLUSIVE)
    with pytest.raises(LockLost):
        gc.check()
    writer.release()
    gc.release()
    assert not list(store.list("locks/"))


def test_a_refreshed_lock_is_not_removed_as_stale(tmp_path: Path) -> None:
    """gc reads a stale writer's lock, the writer refreshes it, gc's conditional delete fails."""
    store = LocalStore(tmp_path)
    writer = SharedLock.acquire(store, interval=3600, stale_after=0.2)
    time.sleep(0.3)
    real = store.delete_if

    def refresh_first(key: str, version: Any) -> None:
        if key == writer.key:
            writer.refresh()  # the writer wakes between gc's read and its delete
        real(key, version)

    store.delete_if = refresh_first  # type: ignore[method-assign]
    with pytest.raises(lock_mod.RepositoryLocked, match="writer"):
        ExclusiveLock.acquire(store, stale_after=0.2)
    store.delete_if = real  # type: ignore[method-assign]
    writer.check(0)  # still held
    assert not store.exists(EXCLUSIVE)
    writer.release()


def test_a_lock_within_its_lease_is_checked_without_a_request(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    held = ExclusiveLock.acquire(store, interval=3600, stale_after=2.0)
    writes: list[str] = []
    real = store.write_if

    def counting(key: str, data: bytes, expected: Any) -> Any:
        writes.append(key)
        return real(key, data, expected)

    store.write_if = counting  # type: ignore[method-assign]
    held.check()
    assert writes == []  # confirmed a moment ago: nothing to ask the store
    time.sleep(1.1)  # past the lease (half the stale time) without a refresh: as if paused
    held.check()
    assert writes == [EXCLUSIVE]  # refreshed (conditionally) before going on
    held.release()
    assert not store.exists(EXCLUSIVE)

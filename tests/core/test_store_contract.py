"""Every Store backend passes the same contract; plus what only object stores can get wrong.

Backends: MemoryStore, LocalStore, FsspecStore over ``memory://``, over S3 (moto and SeaweedFS)
and over GCS (fake-gcs-server). The servers come from ``tests/servers.py``.
"""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlvc_core.errors import KeyNotFound, PreconditionFailed, RefConflict
from mlvc_core.ids import from_hex, hash_bytes, to_hex
from mlvc_core.refs import RefStore
from mlvc_core.storage import LocalStore, MemoryStore, Store, open_store
from mlvc_core.storage.fsspec_store import FsspecStore
from mlvc_core.testing import StoreContract

Location = tuple[str, dict[str, Any]]


def unique_name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------------
# The contract, on every backend


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()


class TestLocalStore(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "store")


class TestFsspecMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[FsspecStore]:
        store = FsspecStore(f"memory://{unique_name('contract')}")
        yield store
        if store.fs.exists(store.root):
            store.fs.rm(store.root, recursive=True)


class TestS3MotoStore(StoreContract):
    @pytest.fixture
    def store(self, s3_repo_url: Location) -> FsspecStore:
        url, options = s3_repo_url
        return FsspecStore(url, **options)


class TestS3SeaweedStore(StoreContract):
    @pytest.fixture
    def store(self, seaweed_repo_url: Location) -> FsspecStore:
        url, options = seaweed_repo_url
        return FsspecStore(url, **options)


class TestGcsStore(StoreContract):
    @pytest.fixture
    def store(self, gcs_repo_url: Location) -> FsspecStore:
        url, options = gcs_repo_url
        return FsspecStore(url, **options)


def test_store_factory_makes_fresh_empty_stores(store_factory: Any) -> None:
    """The fixture repository tests run on: each call is a new, empty, working store."""
    first = store_factory()
    second = store_factory()
    assert isinstance(first, Store)
    first.write("objs/x", b"1")
    assert not second.exists("objs/x")
    assert list(second.list("objs/")) == []
    again = store_factory.reopen(first)  # another client on the same data
    assert again.read("objs/x") == b"1"
    assert [k.key for k in again.list("objs/")] == ["objs/x"]


# ---------------------------------------------------------------------------------------------
# Object-store specifics

REMOTES = ["s3_repo_url", "seaweed_repo_url", "gcs_repo_url"]


@pytest.fixture(params=REMOTES)
def remote(request: pytest.FixtureRequest) -> Location:
    """A fresh location on each object-store server."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


def test_open_store_dispatches_to_fsspec_and_store_pickles(remote: Location) -> None:
    url, options = remote
    store = open_store(url, **options)
    assert isinstance(store, FsspecStore)
    assert store.backend == ("gcs" if url.startswith("gs://") else "s3")
    store.write("k", b"v")
    clone = pickle.loads(pickle.dumps(store))  # e.g. handed to a worker process
    assert clone.read("k") == b"v"
    for credential in ("key", "secret"):
        if credential in options:
            assert options[credential] not in repr(store)  # reprs end up in logs


def test_listing_sees_other_clients_writes_and_deletes(remote: Location) -> None:
    url, options = remote
    a = FsspecStore(url, **options)
    b = FsspecStore(url, skip_instance_cache=True, **options)  # a separate client
    assert b.fs is not a.fs
    assert list(b.list("objs/")) == []  # would be cached if listings were cached
    assert not b.exists("objs/x")
    a.write("objs/x", b"123")
    a.write("objs/sub/y", b"4")
    assert [(k.key, k.size) for k in b.list("objs/")] == [("objs/sub/y", 1), ("objs/x", 3)]
    assert b.exists("objs/x")
    a.delete("objs/x")
    assert [k.key for k in b.list("objs/")] == ["objs/sub/y"]
    assert not b.exists("objs/x")
    with pytest.raises(KeyNotFound):
        b.read("objs/x")


def test_listing_mtime_is_epoch_seconds_of_the_write(remote: Location) -> None:
    url, options = remote
    store = FsspecStore(url, **options)
    before = time.time()
    store.write("t/a", b"x")
    (info,) = list(store.list("t/"))
    # S3 reports a datetime, GCS an RFC 3339 string: both must come out as epoch seconds.
    assert isinstance(info.mtime, float)
    assert before - 120 < info.mtime < time.time() + 120


def test_ranges_at_and_past_the_end(remote: Location) -> None:
    url, options = remote
    store = FsspecStore(url, **options)
    data = bytes(range(200))
    store.write("r/x", data)
    assert store.read_range("r/x", 200, 10) == b""
    assert store.read_range("r/x", 500, 10) == b""
    assert store.read_range("r/x", 3, 0) == b""
    got = store.read_ranges("r/x", [(190, 50), (0, 4), (300, 5), (7, 0), (100, 1)])
    assert got == [data[190:], data[:4], b"", b"", data[100:101]]
    with pytest.raises(KeyNotFound):
        store.read_ranges("r/missing", [(0, 4), (5, 5)])
    with pytest.raises(KeyNotFound):
        store.open_read("r/missing")


def test_version_names_exactly_the_bytes_read(remote: Location) -> None:
    url, options = remote
    store = FsspecStore(url, **options)
    v1 = store.write_if("refs/v", b"one", None)
    data, v = store.read_versioned("refs/v")
    assert (data, v) == (b"one", v1)
    store.write("refs/v", b"changed behind our back")
    with pytest.raises(PreconditionFailed):
        store.write_if("refs/v", b"lost update", v)
    data2, v2 = store.read_versioned("refs/v")
    assert data2 == b"changed behind our back" and v2 != v
    store.delete("refs/v")
    with pytest.raises(PreconditionFailed):
        store.write_if("refs/v", b"resurrect", v2)  # expected a version, the key is gone


def test_keys_cannot_escape_the_prefix() -> None:
    store = FsspecStore(f"memory://{unique_name('keys')}")
    for bad in ("../x", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            store.write(bad, b"x")


def _s3_uploads(store: FsspecStore) -> list[dict[str, Any]]:
    bucket, _, prefix = store.root.partition("/")
    out = store.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/")
    return list(out.get("Uploads", []))


@pytest.mark.parametrize("how", ["abort", "exception", "dropped"])
@pytest.mark.parametrize("server", REMOTES)
def test_writer_aborted_mid_stream_leaves_nothing(
    server: str, how: str, request: pytest.FixtureRequest
) -> None:
    url, options = request.getfixturevalue(server)
    # Small blocks so that parts are already uploaded when the writer is abandoned.
    extra = {"default_block_size": 5 << 20} if url.startswith("s3://") else {"block_size": 1 << 20}
    store = FsspecStore(url, **options, **extra)
    store.write("packs/keep", b"unrelated")
    piece = b"p" * (1 << 20)
    w = store.open_write("packs/partial")
    for _ in range(6 if store.backend == "s3" else 3):  # more than one block
        w.write(piece)
    if store.backend == "s3":
        assert len(_s3_uploads(store)) == 1  # really mid-stream: a multipart upload is open
    if how == "abort":
        w.abort()
    elif how == "exception":
        with pytest.raises(RuntimeError), w:
            raise RuntimeError("training crashed")
    else:
        del w  # never closed: must not be published by a finaliser
        gc.collect()
    assert not store.exists("packs/partial")
    assert [k.key for k in store.list("packs/")] == ["packs/keep"]
    if store.backend == "s3":
        assert _s3_uploads(store) == []  # no billed orphan parts


# ---------------------------------------------------------------------------------------------
# 16 processes race to move one ref

RACERS = 16
ROUNDS = 3


def _race_worker(
    url: str, options: dict[str, Any], barrier: Any, index: int, start_hex: str
) -> list[tuple[str, str, str]]:
    """In a fresh process: for each round, move heads/main from the agreed commit to our own.

    Returns:
        Per round: ("won"|"lost", the id we tried, the ref's target after the round).
    """
    store: Store = LocalStore(url) if "://" not in url else FsspecStore(url, **options)
    refs = RefStore(store)
    expected = from_hex(start_hex)
    results = []
    for rnd in range(ROUNDS):
        mine = hash_bytes(f"round {rnd} racer {index}".encode())
        barrier.wait(timeout=120)
        try:
            refs.set("heads/main", mine, expected)
            outcome = "won"
        except RefConflict:
            outcome = "lost"
        barrier.wait(timeout=120)
        expected = refs.require("heads/main").target
        results.append((outcome, to_hex(mine), to_hex(expected)))
    return results


@pytest.fixture(scope="module")
def racers() -> Iterator[tuple[Any, Any]]:
    """A pool of RACERS spawned processes (reused by every race) and a Manager for barriers."""
    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    pool = ctx.Pool(RACERS)
    try:
        yield pool, manager
    finally:
        pool.terminate()
        pool.join()
        manager.shutdown()


@pytest.mark.parametrize("backend", ["local", "s3_repo_url", "seaweed_repo_url", "gcs_repo_url"])
def test_racing_processes_move_a_ref_exactly_once(
    backend: str,
    racers: tuple[Any, Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    pool, manager = racers
    if backend == "local":
        url, options = str(tmp_path / "repo"), {}
        store: Store = LocalStore(url)
    else:
        url, options = request.getfixturevalue(backend)
        store = FsspecStore(url, **options)
    refs = RefStore(store)
    start = hash_bytes(b"initial commit")
    refs.set("heads/main", start, None)

    barrier = manager.Barrier(RACERS)
    jobs = [
        pool.apply_async(_race_worker, (url, options, barrier, i, to_hex(start)))
        for i in range(RACERS)
    ]
    results = [job.get(timeout=240) for job in jobs]

    for rnd in range(ROUNDS):
        outcomes = [r[rnd] for r in results]
        winners = [tried for outcome, tried, _ in outcomes if outcome == "won"]
        assert len(winners) == 1, f"round {rnd}: {len(winners)} winners"
        assert sum(outcome == "lost" for outcome, _, _ in outcomes) == RACERS - 1
        # Every racer saw the winner's commit afterwards: no lost or partial update.
        assert {after for _, _, after in outcomes} == set(winners)
    final_winner = next(tried for outcome, tried, _ in (r[-1] for r in results) if outcome == "won")
    assert to_hex(refs.require("heads/main").target) == final_winner


# ---------------------------------------------------------------------------------------------
# A conditional delete racing a compare-and-swap: exactly one of them wins


def _delete_or_move(store: Store, version: Any, moved: bytes) -> list[str]:
    """Race ``delete_if`` and ``write_if`` on ``refs/r`` at ``version``; return who won."""
    barrier = threading.Barrier(2)
    won: list[str] = []

    def delete() -> None:
        barrier.wait(30)
        try:
            store.delete_if("refs/r", version)
            won.append("delete")
        except PreconditionFailed:
            pass

    def move() -> None:
        barrier.wait(30)
        try:
            store.write_if("refs/r", moved, version)
            won.append("move")
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=delete), threading.Thread(target=move)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


@pytest.mark.parametrize("backend", ["memory", "local", "s3_repo_url", "seaweed_repo_url"])
def test_conditional_delete_and_move_never_both_win(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On backends with atomic conditional deletes (fake-gcs-server ignores the condition)."""
    if backend == "memory":
        store: Store = MemoryStore()
    elif backend == "local":
        store = LocalStore(tmp_path / "store")
    else:
        url, options = request.getfixturevalue(backend)
        store = FsspecStore(url, **options)
    for rnd in range(12):
        version = store.write_if("refs/r", b"start %d" % rnd, None)
        won = _delete_or_move(store, version, b"moved %d" % rnd)
        assert len(won) == 1, f"round {rnd}: {won}"
        if won == ["move"]:
            assert store.read("refs/r") == b"moved %d" % rnd
            store.delete("refs/r")
        else:
            assert not store.exists("refs/r")


def test_a_process_forked_inside_a_conditional_write_leaves_the_key_unlocked(
    tmp_path: Path,
) -> None:
    """A training process forks DataLoader workers at any moment, also while a background
    thread holds a local key's lock; the worker must not keep that key locked for its life."""
    import os
    import signal

    store = LocalStore(tmp_path)
    with store._locked("refs/heads/main"):  # the window of a compare-and-swap
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: a worker that outlives the write
            try:
                time.sleep(30)
            finally:
                os._exit(0)
    try:
        done = threading.Event()

        def write() -> None:
            store.write_if("refs/heads/main", b"moved", None)
            done.set()

        threading.Thread(target=write, daemon=True).start()
        assert done.wait(10), "the key stayed locked while the forked process lived"
        assert store.read("refs/heads/main") == b"moved"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

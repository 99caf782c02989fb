"""Locks die with their holder (invariant 8), with real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlvc_core.errors import RepositoryLocked
from mlvc_core.holders import Holder
from mlvc_core.lock import EXCLUSIVE, ExclusiveLock, SharedLock, read_holder
from mlvc_core.manifests import ingest_bytes
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession
from mlvc_core.storage import LocalStore

ROOT = Path(__file__).resolve().parents[2]

HOLD = r"""
import sys, time
from mlvc_core.lock import ExclusiveLock, SharedLock
from mlvc_core.storage import LocalStore
store = LocalStore(sys.argv[1])
lock = ExclusiveLock.acquire(store) if sys.argv[2] == "exclusive" else SharedLock.acquire(store)
print("held", flush=True)
time.sleep(600)
"""


def _hold_then_kill(root: Path, kind: str) -> None:
    """Start a process holding a lock, then kill -9 it."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), kind],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


def test_a_killed_writers_lock_does_not_block_gc(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _hold_then_kill(tmp_path, "shared")
    assert [i.key for i in store.list("locks/")]  # left behind
    t = time.monotonic()
    lock = ExclusiveLock.acquire(store)  # the holder is gone from this host: dead at once
    assert time.monotonic() - t < 2
    assert not lock.broken  # provably dead: nothing to protect
    lock.release()
    assert not list(store.list("locks/"))


def test_a_killed_gcs_lock_blocks_neither_writers_nor_the_next_gc(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    _hold_then_kill(tmp_path / "r", "exclusive")
    assert repo.store.exists(EXCLUSIVE)
    WriteSession(repo).finish()  # a writer proceeds
    lock = ExclusiveLock.acquire(repo.store)  # and so does the next gc (takes the lock over)
    holder = read_holder(repo.store, EXCLUSIVE)
    assert holder is not None and holder.pid == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    me = Holder.me("write")
    impostor = Holder(me.host, me.pid, (me.start or 0) - 1000, time.time(), "write")
    store.write("locks/shared-x", impostor.encode())
    ExclusiveLock.acquire(store).release()
    assert not store.exists("locks/shared-x")


def test_another_hosts_lock_is_live_until_it_goes_unrefreshed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    fresh = Holder("trainer-7", 4242, 1.0, time.time() - 30, "write")
    store.write("locks/shared-x", fresh.encode())
    with pytest.raises(RepositoryLocked, match=r"trainer-7.*abandoned if not refreshed within"):
        ExclusiveLock.acquire(store)
    old = Holder("trainer-7", 4242, 1.0, time.time() - 3600, "write")
    store.write("locks/shared-x", old.encode())
    lock = ExclusiveLock.acquire(store)
    assert [h.host for h in lock.broken] == ["trainer-7"]  # may be alive: gc keeps its packs
    lock.release()
    assert not store.exists("locks/shared-x")


def test_a_held_lock_is_refreshed_in_the_background(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    lock = SharedLock.acquire(store, interval=0.05)
    first = read_holder(store, lock.key)
    time.sleep(0.3)
    later = read_holder(store, lock.key)
    assert first is not None and later is not None and later.time > first.time
    lock.release()
    assert not list(store.list("locks/"))


def test_a_session_whose_lock_was_removed_publishes_nothing(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    s = WriteSession(repo)
    ingest_bytes(s, b"x" * 1000)
    handle = s._lock_handle
    assert handle is not None
    repo.store.delete(handle.key)  # what gc does to a lock it judged abandoned
    with pytest.raises(RepositoryLocked, match="abandoned"):
        s.flush()
    s.abort()
    assert not repo.list_index_files()


def test_a_lock_records_host_pid_and_process_start(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    lock = SharedLock.acquire(store)
    doc = json.loads(store.read(lock.key))
    assert doc["pid"] == os.getpid() and doc["host"] and doc["start"] > 0 and doc["time"] > 0
    lock.release()


def test_a_writer_waiting_for_gc_goes_before_the_next_gc(tmp_path: Path) -> None:
    import threading

    store = LocalStore(tmp_path)
    gc = ExclusiveLock.acquire(store)
    got: list[SharedLock] = []
    writer = threading.Thread(target=lambda: got.append(SharedLock.acquire(store, wait=30)))
    writer.start()
    time.sleep(0.2)
    assert not got  # waiting while gc runs
    gc.release()
    with pytest.raises(RepositoryLocked, match="writer"):
        ExclusiveLock.acquire(store)  # the waiting writer goes first
    writer.join(10)
    assert got
    got[0].release()
    ExclusiveLock.acquire(store).release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_start_from_proc_is_what_psutil_says() -> None:
    import psutil

    from mlvc_core.holders import _linux_process_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (os.getpid(), child.pid):
            assert _linux_process_start(pid) == pytest.approx(
                psutil.Process(pid).create_time(), abs=0.02
            )
        child.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert _linux_process_start(child.pid) is None  # a zombie holds no lock
    finally:
        child.kill()
        child.wait()
    assert _linux_process_start(child.pid) is None  # gone

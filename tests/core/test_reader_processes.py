"""Small files read, hashed and compressed by reader processes (``mlvc_core.readers``).

Each test does the thing for real: real worker processes, real SIGKILL and SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from mlvc_core import readers
from mlvc_core.check import check
from mlvc_core.history import commit_paths
from mlvc_core.ids import hash_bytes
from mlvc_core.objects import Manifest
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from mlvc_core.statcache import StatCache

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc")


def _dataset(root: Path, n: int) -> dict[str, bytes]:
    """``n`` small files (empty, noise, text, one above the chunker's minimum) in two dirs."""
    rng = np.random.default_rng(3)
    files: dict[str, bytes] = {}
    for i in range(n):
        kind = i % 4
        size = int(rng.integers(1, 40_000))
        if kind == 0:
            body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        elif kind == 1:
            body = (b'{"label": "dog", "box": [1, 2, 3, 4]}\n' * (size // 38 + 1))[:size]
        elif kind == 2:
            body = b"" if i % 8 == 2 else bytes(size)
        else:
            body = (rng.standard_normal(size // 4) * 0.02).astype(np.float32).tobytes()
        files[f"d{i % 2}/f{i:04d}"] = body
    files["d0/large"] = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return files


class _Started(readers.ReaderPool):
    """A pool that waits until its workers take batches, and counts the batches it got."""

    batches = 0

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        deadline = time.monotonic() + 30
        while not self.ready and time.monotonic() < deadline:
            time.sleep(0.01)

    def submit(self, *args: object, **kw: object) -> object:  # type: ignore[override]
        type(self).batches += 1
        return super().submit(*args, **kw)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _gone(pids: list[int], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def pooled(monkeypatch: pytest.MonkeyPatch) -> type[_Started]:
    """Reader processes from the first small file on, two of them."""
    monkeypatch.setattr(readers, "POOL_FILES", 0)
    monkeypatch.setattr(readers, "default_workers", lambda: 2)
    monkeypatch.setattr(readers, "ReaderPool", _Started)
    _Started.batches = 0
    return _Started


def test_a_commit_through_reader_processes_records_what_threads_do(
    tmp_path: Path, pooled: type[_Started], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _dataset(tmp_path / "src", 400)
    a = Repository.init(tmp_path / "a")
    cache = StatCache(tmp_path / "cache.db")
    with_procs = a.read_commit(commit_paths(a, tmp_path / "src", "v1", stat_cache=cache)).tree
    assert pooled.batches > 0
    monkeypatch.setattr(readers, "default_workers", lambda: 0)
    b = Repository.init(tmp_path / "b")
    threads = b.read_commit(commit_paths(b, tmp_path / "src", "v1")).tree
    assert with_procs == threads  # the same manifests, trees and ids
    checkout(a, "heads/main", tmp_path / "out")
    for rel, body in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == body
    assert check(a).ok
    # The stat cache recorded what the processes read: nothing is read again.
    pooled.batches = 0
    again = commit_paths(a, tmp_path / "src", "v2", stat_cache=cache)
    assert a.read_commit(again).tree == with_procs
    assert pooled.batches == 0


def test_readers_run_this_package_whatever_the_working_directory_holds(
    tmp_path: Path, pooled: type[_Started], monkeypatch: pytest.MonkeyPatch
) -> None:
    _dataset(tmp_path / "src", 100)
    other = tmp_path / "project" / "mlvc_core"  # another copy of the package, without readers
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise ImportError('not this one')\n")
    monkeypatch.chdir(other.parent)
    repo = Repository.init(tmp_path / "r")
    commit_paths(repo, tmp_path / "src", "v1")
    assert pooled.batches > 0  # the workers started (they answer only once imported)


def test_what_a_reader_cannot_read_cleanly_is_left_to_the_parent(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    grown = tmp_path / "grown"
    grown.write_bytes(bytes(30_000))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    text = tmp_path / "text"
    text.write_bytes(b"abc " * 5000)
    old = time.time() - 10  # settled: read at once
    for p in (grown, empty, text):
        os.utime(p, (old, old))
    got = readers.read_batch([str(gone), str(grown), str(empty), str(text)], 30_000, 1, True)
    assert got[0] is readers.AGAIN and got[1] is readers.AGAIN  # vanished; not below the limit
    assert got[2] is not None and got[2][5] is None and got[2][0].st_size == 0
    assert got[3] is not None and got[3][0].st_size == 20_000 and got[3][4] != 0  # compressed
    assert got[3][1] == Manifest(20_000, ((got[3][3], 20_000),)).encode()
    assert got[3][2] == hash_bytes(got[3][1]) and got[3][3] == hash_bytes(text.read_bytes())


def test_files_sent_back_unread_are_read_by_the_committing_process(
    tmp_path: Path, pooled: type[_Started], monkeypatch: pytest.MonkeyPatch
) -> None:
    _dataset(tmp_path / "src", 200)
    (tmp_path / "src" / "d1" / "f0001").unlink()  # listed by nobody: the tree simply lacks it

    class Refusing(_Started):  # as workers that found every file changing under them
        def submit(self, paths: list[str], *args: object) -> object:  # type: ignore[override]
            type(self).batches += 1
            future: Future[list[readers.Read | None]] = Future()
            future.set_result([readers.AGAIN] * len(paths))
            return future

    monkeypatch.setattr(readers, "ReaderPool", Refusing)
    a = Repository.init(tmp_path / "a")
    refused = a.read_commit(commit_paths(a, tmp_path / "src", "v1")).tree
    assert Refusing.batches > 0
    monkeypatch.setattr(readers, "default_workers", lambda: 0)
    b = Repository.init(tmp_path / "b")
    assert b.read_commit(commit_paths(b, tmp_path / "src", "v1")).tree == refused


def test_a_small_commit_starts_no_reader_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(workers: int) -> None:
        raise AssertionError("reader processes started for a small commit")

    monkeypatch.setattr(readers, "ReaderPool", refuse)
    monkeypatch.setattr(readers, "default_workers", lambda: 2)
    _dataset(tmp_path / "src", min(100, readers.POOL_FILES - 1))
    repo = Repository.init(tmp_path / "r")
    commit_paths(repo, tmp_path / "src", "small")


def test_readers_killed_mid_commit_leave_the_commit_whole(
    tmp_path: Path,
    pooled: type[_Started],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The OOM killer takes the reader processes: the commit reads their files itself and
    # records what it would have recorded, saying so once.
    files = _dataset(tmp_path / "src", 300)
    pids: list[int] = []

    class Killed(_Started):
        def submit(self, *args: object, **kw: object) -> object:  # type: ignore[override]
            future = super().submit(*args, **kw)
            if type(self).batches == 2:  # one batch sent and answered, the next one not
                pids.extend(self.pids)
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                assert _gone(pids)
            return future

    monkeypatch.setattr(readers, "ReaderPool", Killed)
    repo = Repository.init(tmp_path / "r")
    with caplog.at_level("WARNING", logger="mlvc_core.ingest"):
        killed = commit_paths(repo, tmp_path / "src", "killed")
    assert pids and _gone(pids)
    said = [r.getMessage() for r in caplog.records if "ended before answering" in r.getMessage()]
    assert len(said) == 1 and "reading its files in this process" in said[0]
    assert check(repo).ok
    checkout(repo, killed.hex(), tmp_path / "out")
    for rel, body in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == body
    # The same tree a commit on threads alone records.
    monkeypatch.setattr(readers, "default_workers", lambda: 0)
    plain = commit_paths(Repository.init(tmp_path / "r2"), tmp_path / "src", "threads")
    assert repo.read_commit(killed).tree == Repository.open(tmp_path / "r2").read_commit(plain).tree


CHILD = r"""
import sys, time
from mlvc_core import readers
from mlvc_core.history import commit_paths
from mlvc_core.repository import Repository
readers.POOL_FILES = 0

class Pool(readers.ReaderPool):
    def __init__(self, workers):
        super().__init__(workers)
        while not self.ready:
            time.sleep(0.01)
        print(" ".join(map(str, self.pids)), flush=True)

readers.ReaderPool = Pool
store = readers.store
def slow(session, answer):
    time.sleep(0.02)  # a commit long enough to be interrupted
    return store(session, answer)
readers.store = slow
commit_paths(Repository.open(sys.argv[1]), sys.argv[2], "interrupted")
"""


@pytest.mark.parametrize("how", ["kill -9", "ctrl-c"])
def test_an_interrupted_commit_leaves_no_reader_behind(tmp_path: Path, how: str) -> None:
    files = _dataset(tmp_path / "src", 600)
    Repository.init(tmp_path / "r").close()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "r"), str(tmp_path / "src")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert len(pids) >= 2 and all(_alive(p) for p in pids)
        time.sleep(0.2)
        if how == "kill -9":
            child.kill()
        else:
            os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C at a terminal sends
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0
    assert _gone(pids)
    if how == "ctrl-c":
        assert err.count("Traceback") == 1 and "KeyboardInterrupt" in err  # the parent's only
    repo = Repository.open(tmp_path / "r")
    assert check(repo).ok
    assert repo.refs.get("heads/main") is None
    commit_paths(repo, tmp_path / "src", "after")
    checkout(repo, "heads/main", tmp_path / "out")
    for rel, body in files.items():
        assert (tmp_path / "out" / rel).read_bytes() == body

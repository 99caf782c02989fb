"""The stat cache is a hint: damaged, it is rebuilt with a warning; a hit is checked before use."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from mlvc_core import statcache
from mlvc_core.history import commit_paths
from mlvc_core.ids import hash_bytes
from mlvc_core.repository import Repository
from mlvc_core.statcache import StatCache
from mlvc_core.trees import find_entry
from tests.cli.conftest import Cli


@pytest.fixture(autouse=True)
def _no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by a test are seconds old: let the cache trust their stat at once."""
    monkeypatch.setattr(statcache, "_RACY_NS", 0)


def _old(path: Path) -> None:
    """Backdate a file past the racy window, so the cache may trust its stat."""
    t = time.time() - 60
    os.utime(path, (t, t))


def _files(tmp_path: Path, contents: dict[str, bytes]) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for name, data in contents.items():
        (d / name).write_bytes(data)
        _old(d / name)
    return d


def _content(repo: Repository, cid: bytes, name: str) -> bytes:
    entry = find_entry(repo, repo.read_commit(cid).tree, name)  # type: ignore[arg-type]
    assert entry is not None and entry.oid is not None
    manifest = repo.read_manifest(entry.oid)
    return b"".join(repo.read_chunks(c for c, _ in manifest.chunks))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty-header"])
def test_a_damaged_cache_is_rebuilt_and_the_commit_is_right(tmp_path: Path, damage: str) -> None:
    repo = Repository.init(tmp_path / "r")
    d = _files(tmp_path, {f"f{i}": os.urandom(3000 + i) for i in range(300)})
    path = tmp_path / "cache" / "statcache.sqlite"
    cache = StatCache(path)
    commit_paths(repo, d, stat_cache=cache)
    cache.close()
    data = path.read_bytes()
    assert len(data) > 8192
    if damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2 + 100])
    else:
        path.write_bytes(b"SQLite format 3\x00" + bytes(84))
    (d / "f0").write_bytes(b"new content")
    _old(d / "f0")
    cache = StatCache(path)
    assert cache.damaged is not None or damage == "truncated"
    cid = commit_paths(repo, d, stat_cache=cache)
    cache.close()
    assert _content(repo, cid, "f0") == b"new content"
    assert _content(repo, cid, "f7") == (d / "f7").read_bytes()
    again = StatCache(path)  # rebuilt: sound now, and it hits
    assert again.damaged is None
    st = (d / "f7").stat()
    assert again.lookup(str((d / "f7").absolute()), st) is not None
    again.close()


def test_a_row_naming_another_files_manifest_is_no_hit(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    d = _files(tmp_path, {"a": b"A" * 5000, "b": b"B" * 5000, "c": b"C" * 7000})
    path = tmp_path / "statcache.sqlite"
    cache = StatCache(path)
    commit_paths(repo, d, stat_cache=cache)
    cache.close()
    import sqlite3

    db = sqlite3.connect(path)
    rows = {Path(p).name: m for p, m in db.execute("SELECT path, manifest FROM files")}
    assert set(rows) == {"a", "b", "c"}
    # b's row names a's manifest (same size), c's row a's too (another size), tags kept
    db.execute("UPDATE files SET manifest = ? WHERE path LIKE '%/b'", (rows["a"],))
    db.execute("UPDATE files SET manifest = ? WHERE path LIKE '%/c'", (rows["a"],))
    db.commit()
    db.close()
    cache = StatCache(path)
    cid = commit_paths(repo, d, stat_cache=cache)
    cache.close()
    for name in "abc":
        assert _content(repo, cid, name) == (d / name).read_bytes()


def test_a_hit_whose_manifest_records_another_size_is_reread(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    d = _files(tmp_path, {"a": b"A" * 5000, "c": b"C" * 7000})
    cache = StatCache(tmp_path / "sc.sqlite")
    first = commit_paths(repo, d, stat_cache=cache)
    cache.flush()
    a_manifest = find_entry(repo, repo.read_commit(first).tree, "a").oid  # type: ignore[union-attr]
    assert a_manifest is not None
    cache.record(str((d / "c").absolute()), (d / "c").stat(), a_manifest)  # valid tag, wrong file
    cache.flush()
    cid = commit_paths(repo, d, stat_cache=cache)
    cache.close()
    assert _content(repo, cid, "c") == b"C" * 7000


def test_a_hit_whose_manifest_is_not_in_the_repository_is_reread(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    d = _files(tmp_path, {"a": b"A" * 5000})
    cache = StatCache(tmp_path / "sc.sqlite")
    cache.record(str((d / "a").absolute()), (d / "a").stat(), hash_bytes(b"elsewhere"))
    cache.flush()
    cid = commit_paths(repo, d, stat_cache=cache)
    cache.close()
    assert _content(repo, cid, "a") == b"A" * 5000


def test_mlvc_commit_with_a_garbage_cache_warns_and_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    project = tmp_path / "p"
    project.mkdir()
    cli = Cli(project)
    cli("init")
    (project / "w.bin").write_bytes(os.urandom(10000))
    cli("commit", "w.bin", "-m", "one")
    caches = list((tmp_path / "cache").rglob("statcache.sqlite"))
    assert caches
    for c in caches:
        c.write_bytes(b"this is not a database" * 100)
    (project / "w.bin").write_bytes(b"second")
    with caplog.at_level(logging.WARNING, logger="mlvc"):
        cid = cli("commit", "w.bin", "-m", "two").stdout.strip()
    assert "stat cache" in caplog.text and "rebuilt" in caplog.text
    cli("checkout", cid, "-o", "out")
    assert (project / "out" / "w.bin").read_bytes() == b"second"
    from mlvc.repo import forget_shared

    forget_shared()


def test_checking_hits_on_a_bucket_costs_requests_per_run_not_per_file(tmp_path: Path) -> None:
    from mlvc_core.storage import MemoryStore

    store = MemoryStore()
    assert not store.is_local
    repo = Repository.init(store)
    d = _files(tmp_path, {f"f{i}": os.urandom(100 + i) for i in range(600)})
    cache = StatCache(tmp_path / "sc.sqlite")
    first = commit_paths(repo, d, stat_cache=cache)
    cache.flush()
    reads = 0
    read_range = store.read_range

    def counting(key: str, offset: int, length: int) -> bytes:
        nonlocal reads
        reads += 1
        return read_range(key, offset, length)

    store.read_range = counting  # type: ignore[method-assign]
    fresh = Repository(store, repo.config)  # nothing cached in memory
    second = commit_paths(fresh, d, stat_cache=cache, branch=None)
    cache.close()
    assert fresh.read_commit(second).tree == repo.read_commit(first).tree
    assert reads < 20, f"{reads} reads to check 600 stat-cache hits"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other-index"])
def test_a_damaged_cached_index_is_read_again(tmp_path: Path, damage: str) -> None:
    repo = Repository.init(tmp_path / "r", cache_dir=tmp_path / "cache")
    d = _files(tmp_path, {"a": b"A" * 5000, "b": os.urandom(3000)})
    cid = commit_paths(repo, d)
    (d / "c").write_bytes(os.urandom(4000))
    commit_paths(repo, d)  # a second index file
    repo.close()
    Repository.open(tmp_path / "r", cache_dir=tmp_path / "cache").close()  # fills the cache
    cached = sorted((tmp_path / "cache" / "index").iterdir())
    assert len(cached) == 2
    first, second = (p.read_bytes() for p in cached)
    cached[0].write_bytes(
        {"garbage": os.urandom(len(first)), "truncated": first[:-7], "other-index": second}[damage]
    )
    again = Repository.open(tmp_path / "r", cache_dir=tmp_path / "cache")
    assert not again.bad_indexes
    assert _content(again, cid, "a") == b"A" * 5000
    assert cached[0].read_bytes() == first  # repaired from the repository
    from mlvc_core.check import check

    assert check(again).ok

"""Few, consolidated index files; the generation a reader refreshes to; the local index cache."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlvc_core.check import check
from mlvc_core.chunker import ChunkerParams
from mlvc_core.config import RepoConfig
from mlvc_core.gc import collect
from mlvc_core.history import commit_paths
from mlvc_core.repository import INDEX_MERGE_AT, Repository
from mlvc_core.restore import checkout
from mlvc_core.session import WriteSession
from mlvc_core.storage import KeyInfo, MemoryStore

SMALL = RepoConfig(chunker=ChunkerParams(min=1024, avg=4096, max=16384))


class CountingStore(MemoryStore):
    """A memory store that counts requests by kind, like a server would."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def _count(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    def read(self, key: str, limit: int | None = None) -> bytes:
        self._count("read")
        return super().read(key, limit)

    def list(self, prefix: str) -> Iterator[KeyInfo]:
        self._count("list")
        return super().list(prefix)


def rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_a_commit_writes_one_index_file_and_many_are_merged(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", SMALL)
    f = tmp_path / "f"
    commits = []
    for i in range(INDEX_MERGE_AT + 8):
        f.write_bytes(rand(3000, i))
        before = len(repo.list_index_files())
        commits.append((commit_paths(repo, f, f"c{i}", branch=f"b{i}"), f.read_bytes()))
        after = len(repo.list_index_files())
        assert after == before + 1 or after < before  # one new file, or a merge
    assert len(repo.list_index_files()) < INDEX_MERGE_AT
    fresh = Repository.open(tmp_path / "r")
    assert check(fresh).ok
    for i, (cid, data) in enumerate(commits):
        checkout(fresh, cid, tmp_path / f"o{i}")
        assert (tmp_path / f"o{i}" / "f").read_bytes() == data
    collect(fresh, dry_run=False)
    assert len(fresh.list_index_files()) == 1  # gc leaves one file
    assert check(Repository.open(tmp_path / "r")).ok


def test_refresh_after_gc_reads_the_generation_and_the_files_it_names_without_listing(
    tmp_path: Path,
) -> None:
    store = CountingStore()
    repo = Repository.init(store, SMALL)
    (tmp_path / "f").write_bytes(rand(50_000, 1))
    commit_paths(repo, tmp_path / "f", "x", branch="tmp")
    repo.refs.delete("heads/tmp")
    other = Repository.open(store)
    store.calls.clear()
    assert repo.refresh() is False  # gc has not run: one small read
    assert store.calls == {"read": 1}
    collect(other, dry_run=False)
    store.calls.clear()
    assert repo.refresh() is True
    assert store.calls.get("list", 0) == 0
    assert repo.generation == 1 and not any(True for _ in repo.iter_index())


def test_a_damaged_local_index_cache_file_is_rebuilt_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    cache = tmp_path / "cache"
    repo = Repository.init(store, SMALL, cache_dir=cache)
    (tmp_path / "f").write_bytes(rand(50_000, 2))
    cid = commit_paths(repo, tmp_path / "f", "x")
    files = sorted((cache / "index").iterdir())
    assert len(files) == 1
    good = files[0].read_bytes()
    for damage in (good[:-7], b"garbage", good[:40] + bytes([good[40] ^ 1]) + good[41:]):
        files[0].write_bytes(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            reopened = Repository.open(store, cache_dir=cache)
            reopened.index_files()  # index files are read on first need, not at open
        assert "local index cache file" in caplog.text and "damaged" in caplog.text
        assert files[0].read_bytes() == good  # fetched again
        assert check(reopened).ok  # never reported as repository corruption
        out = tmp_path / f"out{len(damage)}"
        checkout(reopened, cid, out)
        assert (out / "f").read_bytes() == (tmp_path / "f").read_bytes()


def test_a_commit_is_one_pack_and_one_index_file(tmp_path: Path) -> None:
    """Its objects ride at the end of its data pack instead of a tiny pack of their own."""
    repo = Repository.init(tmp_path / "r", SMALL)
    (tmp_path / "d").mkdir()
    for i in range(5):
        (tmp_path / "d" / f"f{i}").write_bytes(rand(20_000, 10 + i))
    cid = commit_paths(repo, tmp_path / "d", "x")
    assert len(repo.index_ids()) == 1 and len(repo.list_index_files()) == 1
    # A commit of nothing new is a pack of objects only.
    (tmp_path / "d" / "f0").rename(tmp_path / "d" / "g0")
    cid2 = commit_paths(repo, tmp_path / "d", "renamed")
    assert len(repo.index_ids()) == 2
    fresh = Repository.open(tmp_path / "r")
    assert check(fresh).ok
    checkout(fresh, cid, tmp_path / "o1")
    checkout(fresh, cid2, tmp_path / "o2")
    assert (tmp_path / "o1" / "f0").read_bytes() == (tmp_path / "o2" / "g0").read_bytes()


def test_many_objects_stream_into_a_pack_of_their_own(tmp_path: Path) -> None:
    import base64

    from mlvc_core.objects import Commit, Tree
    from mlvc_core.session import META_BUFFER

    repo = Repository.init(tmp_path / "r", SMALL)
    with WriteSession(repo) as s:
        tree = s.add_object(Tree(()))
        n = 0
        while s._held_bytes < META_BUFFER:
            text = base64.b64encode(rand(20_000, n)).decode()
            s.add_object(Commit(tree=tree, parents=(), author="a", time=0.0, message=text))
            n += 1
        s.add_object(Commit(tree=tree, parents=(), author="a", time=0.0, message="last"))
        assert not s._held and s._meta is not None  # spilled: streaming to its own pack
    fresh = Repository.open(tmp_path / "r")
    assert check(fresh).ok and len(fresh.commit_ids()) == n + 1


def test_a_reader_opened_before_gc_repacked_still_reads_everything(tmp_path: Path) -> None:
    from mlvc_core.gc import MERGE_AT

    repo = Repository.init(tmp_path / "r", SMALL)
    f = tmp_path / "f"
    commits = []
    for i in range(MERGE_AT):
        f.write_bytes(rand(30_000, 50 + i))
        commits.append((commit_paths(repo, f, f"c{i}", branch=f"b{i}"), f.read_bytes()))
    reader = Repository.open(tmp_path / "r")  # takes no lock: gc may run beside it
    report = collect(Repository.open(tmp_path / "r"), dry_run=False)
    assert report.packs_merged >= MERGE_AT  # every pack the reader knows is gone
    for i, (cid, data) in enumerate(commits):
        checkout(reader, cid, tmp_path / f"o{i}")
        assert (tmp_path / f"o{i}" / "f").read_bytes() == data


def test_a_malformed_index_file_is_a_format_error_naming_it() -> None:
    import msgpack

    from mlvc_core.codec import compress_blob
    from mlvc_core.errors import FormatError
    from mlvc_core.ids import hash_bytes
    from mlvc_core.packs import INDEX_FILE_MAGIC, decode_index_file

    def blob(doc: object) -> bytes:
        body = compress_blob(msgpack.packb(doc, use_bin_type=True))
        return INDEX_FILE_MAGIC + hash_bytes(body) + body

    good_pack = "a" * 32
    for doc in (
        {"packs": ["../../etc"], "entries": []},
        {"packs": [good_pack], "entries": [[b"short", 0, 0, 0, 1, 1, 0]]},
        {"packs": [good_pack], "entries": [[b"x" * 32, 5, 0, 0, 1, 1, 0]]},
        {"packs": [good_pack], "entries": [[b"x" * 32, 0, 0, -1, 1, 1, 0]]},
        {"packs": [good_pack]},
    ):
        with pytest.raises(FormatError, match="index/abc"):
            decode_index_file(blob(doc), "index/abc")

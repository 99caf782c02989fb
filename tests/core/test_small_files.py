"""Datasets of many small files: read and written on worker threads, recorded as one by one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from mlvc_core import codec, ingest, statcache
from mlvc_core.chunker import ChunkerParams
from mlvc_core.config import RepoConfig
from mlvc_core.history import commit_paths
from mlvc_core.ids import ObjectId
from mlvc_core.objects import Tree
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from mlvc_core.session import WriteSession
from mlvc_core.statcache import StatCache
from mlvc_core.trees import walk_tree


def _dataset(root: Path, n: int = 300) -> Path:
    """Small files of several kinds over a few directories, plus one large file and a link."""
    rng = np.random.default_rng(7)
    for i in range(n):
        d = root / f"part{i % 3}" / ("deep" if i % 5 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        size = int(rng.integers(0, 70_000))
        if i % 3 == 0:
            body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        elif i % 3 == 1:
            body = (b'{"label": "cat", "score": 0.5}\n' * (size // 31 + 1))[:size]
        else:
            body = (rng.standard_normal(size // 4) * 0.02).astype(np.float32).tobytes()
        (d / f"f{i:04d}.bin").write_bytes(body)
    (root / "part0" / "big.bin").write_bytes(rng.integers(0, 256, 3 << 20, np.uint8).tobytes())
    (root / "part1" / "link").symlink_to("f0001.bin")
    return root


def _one_by_one(builder: ingest.TreeBuilder, directory: Path) -> ObjectId:
    """The tree a walk gives that stores every entry alone, in order, on this thread."""
    entries = []
    for name in sorted(os.listdir(directory)):
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            tree_id = _one_by_one(builder, path)
            tree = builder.session.repo.read_tree(tree_id)
            mode = path.stat().st_mode & 0o777
            entries.append(ingest.TreeEntry(name, "dir", tree_id, tree.size, mode))
        else:
            e = builder.entry(path, name, name)
            assert e is not None
            entries.append(e)
    return builder.session.add_object(Tree(tuple(entries)))


def test_a_walk_on_worker_threads_records_what_one_by_one_does(tmp_path: Path) -> None:
    src = _dataset(tmp_path / "src")
    repo = Repository.init(tmp_path / "r")
    with WriteSession(repo) as s:
        parallel = ingest.ingest_paths(s, [src])
    other = Repository.init(tmp_path / "r2")
    with WriteSession(other) as s:
        alone = _one_by_one(ingest.TreeBuilder(s), src)
    assert parallel == alone  # same manifests, trees and ids
    files = {rel: e.oid for rel, e in walk_tree(repo, parallel) if e.kind == "file"}
    assert len(files) == 301


def test_checkout_of_many_small_files_is_byte_identical_and_listed_in_order(
    tmp_path: Path,
) -> None:
    src = _dataset(tmp_path / "src")
    repo = Repository.init(tmp_path / "r")
    cid = commit_paths(repo, src, "v1")
    out = tmp_path / "out"
    written = checkout(repo, cid, out)
    expected = [rel for rel, e in walk_tree(repo, repo.read_commit(cid).tree) if e.kind != "dir"]
    assert written == [r for r in expected if r != "part1/link"] + ["part1/link"]
    for rel in expected:
        a, b = src / rel, out / rel
        if a.is_symlink():
            assert os.readlink(b) == os.readlink(a)
        else:
            assert b.read_bytes() == a.read_bytes(), rel
    assert checkout(repo, cid, out) == []  # all already there


def test_an_unchanged_recommit_reads_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _dataset(tmp_path / "src", 100)
    monkeypatch.setattr(statcache, "_RACY_NS", 0)  # trust stats however fresh (tests only)
    repo = Repository.init(tmp_path / "r")
    cache = StatCache(tmp_path / "cache.sqlite")
    first = commit_paths(repo, src, "v1", stat_cache=cache)
    reads: list[Path] = []
    real = ingest.TreeBuilder.read

    def read(self: ingest.TreeBuilder, path: Path, guide: object = None) -> object:
        reads.append(path)
        return real(self, path, guide)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest.TreeBuilder, "read", read)
    second = commit_paths(repo, src, "v2", stat_cache=cache)
    assert reads == []
    assert repo.read_commit(second).tree == repo.read_commit(first).tree
    # A file changed since is read again, the rest still not.
    (src / "part2" / "f0002.bin").write_bytes(b"new")
    third = commit_paths(repo, src, "v3", stat_cache=cache)
    assert reads == [src / "part2" / "f0002.bin"]
    assert repo.read_commit(third).tree != repo.read_commit(first).tree


def test_a_small_file_rewritten_while_a_worker_reads_it_is_read_again_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i:02d}.txt").write_bytes(b"old " * 1000)
    past = time.time() - 10
    for p in src.iterdir():
        os.utime(p, (past, past))
    target = src / "f25.txt"
    real = ingest.FileIngester._ingest_small
    rewritten: list[bool] = []

    def small(self: ingest.FileIngester, data: bytes) -> object:
        if self.worker and data.startswith(b"old") and not rewritten and len(data) == 4000:
            # another process rewrites the file after this read (the bytes just read are
            # the old version; the file now holds the new one)
            time.sleep(0.02)
            target.write_bytes(b"new!" * 1500)
            rewritten.append(True)
        return real(self, data)

    monkeypatch.setattr(ingest.FileIngester, "_ingest_small", small)
    monkeypatch.setattr(ingest, "_QUIET_S", 0.05)
    repo = Repository.init(tmp_path / "r")
    cid = commit_paths(repo, src, "x")
    assert rewritten
    out = tmp_path / "out"
    checkout(repo, cid, out)
    changed = [p.name for p in out.iterdir() if p.read_bytes() != (src / p.name).read_bytes()]
    assert changed == []  # every file as it is now: the rewritten one whole, never torn


def test_small_chunks_skip_the_entropy_check_unless_planes_may_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = codec._plan
    monkeypatch.setattr(codec, "_plan", lambda data: calls.append(len(data)) or real(data))
    rng = np.random.default_rng(1)
    text = (b'{"label": "cat", "score": 0.5}\n' * 1000)[:20_000]
    noise = rng.integers(0, 256, 20_000, np.uint8).tobytes()
    weights = (rng.standard_normal(5_000) * 0.02).astype(np.float32).tobytes()
    assert codec.compress(text, 1, True)[0] == codec.ZSTD
    assert codec.compress(noise, 1, True)[0] == codec.RAW
    assert calls == []  # neither paid for the check
    c, payload = codec.compress(weights, 1, True)
    assert calls == [20_000]
    assert c == codec.PLANES
    assert codec.decompress(payload, c, len(weights)) == weights


def test_many_directories_leave_no_descriptor_open(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(150):  # more directories than descriptors kept open for the workers
        d = src / f"d{i:03d}" / "sub"
        d.mkdir(parents=True)
        (d / "a.txt").write_text(f"a{i}")
        (d.parent / "b.txt").write_text(f"b{i}" * 100)
    repo = Repository.init(tmp_path / "r")
    before = len(os.listdir("/proc/self/fd"))
    cid = commit_paths(repo, src, "v1")
    written = checkout(repo, cid, tmp_path / "out")
    assert len(os.listdir("/proc/self/fd")) <= before + 1  # a pack file may stay open
    assert len(written) == 300
    for i in range(150):
        assert (tmp_path / "out" / f"d{i:03d}" / "sub" / "a.txt").read_text() == f"a{i}"
        assert (tmp_path / "out" / f"d{i:03d}" / "b.txt").read_text() == f"b{i}" * 100


@pytest.mark.parametrize("params", [ChunkerParams(), ChunkerParams(64, 256, 1024)])
def test_a_small_file_gets_the_chunks_the_chunker_cuts(
    tmp_path: Path, params: ChunkerParams
) -> None:
    repo = Repository.init(tmp_path / "r", RepoConfig(chunker=params))
    rng = np.random.default_rng(3)
    with WriteSession(repo) as s:
        files = ingest.FileIngester(s)
        for n in (0, 1, params.min - 1, params.min, params.min + 1, 3 * params.max + 5):
            data = rng.integers(0, 256, n, np.uint8).tobytes()
            manifest = files._ingest_small(data)
            assert [oid for oid, _ in manifest.chunks] == ingest.chunk_ids_of(data, params)
            assert manifest.size == n

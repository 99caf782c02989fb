"""Repository behaviour users rely on: round trips, dedup, verification, safety, gc, transfer."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlvc_core.check import check
from mlvc_core.chunker import ChunkerParams
from mlvc_core.config import RepoConfig
from mlvc_core.errors import (
    FileExistsConflict,
    IntegrityError,
    NotARepository,
    ObjectNotFound,
    RefConflict,
    RepositoryExists,
    RepositoryLocked,
    StorageError,
    UnsafePath,
    UnsupportedFormatVersion,
    UsageError,
)
from mlvc_core.gc import collect
from mlvc_core.history import commit_paths
from mlvc_core.manifests import ingest_bytes
from mlvc_core.objects import Commit, Tree, TreeEntry
from mlvc_core.packs import PACK_PREFIX
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout, restore_tree
from mlvc_core.session import WriteSession
from mlvc_core.statcache import StatCache
from mlvc_core.stats import stats
from mlvc_core.storage import MemoryStore
from mlvc_core.transfer import transfer
from tests.cutting import count_cuts

SMALL = RepoConfig(chunker=ChunkerParams(min=1024, avg=4096, max=16384))


def rand(n: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "model.bin": rand(300_000, 1),
        "config.json": b'{"lr": 0.01}\n',
        "sub/deeper/notes.txt": b"hello\n" * 1000,
        "empty.txt": b"",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "link-to-config").symlink_to("config.json")
    return files


def read_all(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# --------------------------------------------------------------------------- every backend


def test_commit_checkout_round_trip_on_every_store(store_factory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = make_tree(src)
    repo = Repository.init(store_factory(), SMALL)
    cid = commit_paths(repo, src, "first")
    # A second process opening the same store sees the commit.
    again = Repository.open(store_factory.reopen(repo.store))
    assert again.resolve("heads/main") == cid
    out = tmp_path / "out"
    checkout(again, cid, out)
    assert read_all(out) == files
    assert os.readlink(out / "link-to-config") == "config.json"
    assert check(again).ok


# --------------------------------------------------------------------------- repository


def test_init_open_and_refusals(tmp_path: Path) -> None:
    with pytest.raises(NotARepository):
        Repository.open(tmp_path / "nothing")
    Repository.init(tmp_path / "r")
    with pytest.raises(RepositoryExists):
        Repository.init(tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "config").read_text())
    assert cfg["chunker"] == {
        "algorithm": "fastcdc2020",
        "min": 65536,
        "avg": 262144,
        "max": 1048576,
        "normalization": 1,
        "seed": 0,
    }
    cfg["version"] = 99
    (tmp_path / "r" / "config").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedFormatVersion, match="version 99"):
        Repository.open(tmp_path / "r")


def test_chunker_params_are_honoured_on_later_writes(tmp_path: Path) -> None:
    Repository.init(tmp_path / "r", SMALL)
    repo = Repository.open(tmp_path / "r")
    assert repo.config.chunker == SMALL.chunker
    (tmp_path / "f").write_bytes(rand(200_000))
    commit_paths(repo, tmp_path / "f", "x")
    chunk_sizes = [loc.raw_len for _, loc in repo.iter_index() if loc.kind == 0]
    assert max(chunk_sizes) <= SMALL.chunker.max and len(chunk_sizes) > 10


def test_unchanged_content_costs_nothing_and_header_shift_dedups(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", SMALL)
    body = rand(2_000_000, 7)
    f = tmp_path / "w.safetensors"
    f.write_bytes(struct.pack("<Q", 8) + b"{}      " + body)
    commit_paths(repo, f, "v1")
    stored1 = stats(repo).stored_bytes
    commit_paths(repo, f, "v2 same bytes")
    assert stats(repo).stored_bytes - stored1 < 5_000  # a manifest, a tree and a commit
    # The header grows by 8 bytes: every tensor shifts, but content-defined chunks re-align.
    f.write_bytes(struct.pack("<Q", 16) + b'{"a":1}         ' + body)
    commit_paths(repo, f, "v3 shifted")
    grown = stats(repo).stored_bytes - stored1
    assert grown < 0.03 * len(body)


def test_stat_cache_skips_unchanged_files_and_sees_changes(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", SMALL)
    src = tmp_path / "src"
    make_tree(src)
    old = time.time() - 60
    for p in src.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.utime(p, (old, old))
    cache = StatCache(tmp_path / "cache.db")
    commit_paths(repo, src, "one", stat_cache=cache)
    read: list[int] = []
    c2 = commit_paths(repo, src, "two", stat_cache=cache, progress=read.append)
    assert repo.read_commit(c2).tree == repo.read_commit(repo.read_commit(c2).parents[0]).tree
    (src / "config.json").write_bytes(b'{"lr": 0.02}\n')
    c3 = commit_paths(repo, src, "three", stat_cache=cache)
    out = tmp_path / "out"
    checkout(repo, c3, out)
    assert (out / "config.json").read_bytes() == b'{"lr": 0.02}\n'


def test_rewritten_or_copied_data_is_verified_against_the_parent_not_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut = count_cuts(monkeypatch)
    repo = Repository.init(tmp_path / "r")
    data = os.urandom(6 << 20)
    src = tmp_path / "run1"
    src.mkdir()
    (src / "model.bin").write_bytes(data)
    c1 = commit_paths(repo, src, "one")
    assert sum(cut) >= len(data)  # every byte cut (a carried tail is cut again)

    # The same bytes under a new path (a copy, a clone, a rewrite): nothing is cut.
    cut.clear()
    copy = tmp_path / "run2"
    copy.mkdir()
    (copy / "model.bin").write_bytes(data)
    c2 = commit_paths(repo, copy, "two")
    assert repo.read_commit(c2).tree == repo.read_commit(c1).tree
    assert cut == []

    # Bytes inserted in the middle: the part before is verified, the rest is cut, and the
    # manifest is the one a repository without the guide gives.
    cut.clear()
    edited = data[: 3 << 20] + b"inserted" + data[3 << 20 :]
    (copy / "model.bin").write_bytes(edited)
    c3 = commit_paths(repo, copy, "three")
    assert 0 < sum(cut) < len(edited)
    fresh = Repository.init(tmp_path / "fresh")
    c4 = commit_paths(fresh, copy, "alone")
    assert repo.read_tree(repo.read_commit(c3).tree) == fresh.read_tree(fresh.read_commit(c4).tree)
    out = tmp_path / "out"
    checkout(repo, c3, out)
    assert (out / "model.bin").read_bytes() == edited


def test_a_stat_cache_guides_a_file_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut = count_cuts(monkeypatch)
    repo = Repository.init(tmp_path / "r")
    f = tmp_path / "weights.bin"
    data = os.urandom(5 << 20)
    f.write_bytes(data)
    old = time.time() - 60
    os.utime(f, (old, old))
    cache = StatCache(tmp_path / "cache.db")
    commit_paths(repo, f, "one", branch=None, stat_cache=cache)  # no parent: only the cache knows
    cut.clear()
    f.write_bytes(data)  # rewritten with the same bytes: new mtime, the cache misses
    c2 = commit_paths(repo, f, "two", branch=None, stat_cache=cache)
    assert cut == []
    out = tmp_path / "out"
    checkout(repo, c2, out)
    assert (out / "weights.bin").read_bytes() == data


def test_id_prefixes(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    (tmp_path / "a").write_text("a")
    cid = commit_paths(repo, tmp_path / "a", "a")
    assert repo.resolve(cid.hex()[:7]) == cid
    assert repo.resolve(cid.hex()) == cid
    with pytest.raises(ObjectNotFound):
        repo.resolve("0000000")
    with pytest.raises(UsageError):
        from mlvc_core.ids import resolve_prefix

        resolve_prefix("abc", [cid.hex()])
    from mlvc_core.errors import AmbiguousId
    from mlvc_core.ids import resolve_prefix

    with pytest.raises(AmbiguousId) as info:
        resolve_prefix("abcdef1", ["abcdef1" + "0" * 57, "abcdef1" + "1" * 57])
    assert len(info.value.candidates) == 2 and "ambiguous" in str(info.value)


def test_branch_moves_by_compare_and_swap(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    (tmp_path / "a").write_text("a")
    c1 = commit_paths(repo, tmp_path / "a", "one")
    other = Repository.open(tmp_path / "r")
    c2 = commit_paths(other, tmp_path / "a", "two")
    # A writer holding a stale view of the branch loses, with a conflict error.
    with pytest.raises(RefConflict):
        repo.refs.set("heads/main", c1, c1)
    assert repo.resolve("heads/main") == c2
    assert [c.message for _, c in repo.log(c2)] == ["two", "one"]


# --------------------------------------------------------------------------- integrity


def test_corrupted_pack_raises_and_fsck_names_it(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", SMALL)
    f = tmp_path / "f"
    f.write_bytes(rand(100_000, 3))
    cid = commit_paths(repo, f, "x")
    victim_oid, loc = next((oid, at) for oid, at in repo.iter_index() if at.kind == 0)
    pack = tmp_path / "r" / "packs" / loc.pack[:2] / loc.pack
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.stored_len // 2] ^= 0xFF
    pack.write_bytes(bytes(raw))
    fresh = Repository.open(tmp_path / "r")
    with pytest.raises(IntegrityError) as info:
        fresh.read_raw(victim_oid)
    assert victim_oid.hex() in str(info.value)
    with pytest.raises(IntegrityError) as info:
        checkout(fresh, cid, tmp_path / "out")  # read in a run with its neighbours
    assert victim_oid.hex() in str(info.value)
    report = check(fresh)
    assert not report.ok
    assert victim_oid.hex() in {p.key for p in report.problems}


def test_missing_pack_is_reported(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    (tmp_path / "f").write_bytes(b"x" * 1000)
    commit_paths(repo, tmp_path / "f", "x")
    for p in (tmp_path / "r" / "packs").rglob("*"):
        if p.is_file():
            p.unlink()
            break
    report = check(Repository.open(tmp_path / "r"))
    assert any(p.kind == "missing" for p in report.problems)


# --------------------------------------------------------------------------- restore safety


def _hostile(repo: Repository, entries: list[TreeEntry]) -> bytes:
    """Write a tree the way a malicious repository would, bypassing name validation."""
    import msgpack

    from mlvc_core.objects import TREE

    with WriteSession(repo) as s:
        data = msgpack.packb(
            {"t": "tree", "entries": [e.to_list() for e in entries]}, use_bin_type=True
        )
        from mlvc_core.ids import hash_bytes

        tid = hash_bytes(data)
        s.add_payload(tid, TREE, 0, data, len(data))
        cid = s.add_object(Commit(tid, (), "x", 0.0, "hostile"))
    return cid


@pytest.mark.parametrize(
    "entry",
    [
        TreeEntry("..", "link", None, 0, 0o777, "x"),
        TreeEntry("a/../../b", "link", None, 0, 0o777, "x"),
    ],
    ids=["dotdot-name", "slash-in-name"],
)
def test_restore_refuses_hostile_trees(tmp_path: Path, entry: TreeEntry) -> None:
    repo = Repository.init(tmp_path / "r")
    cid = _hostile(repo, [entry])
    dest = tmp_path / "box" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(UnsafePath):
        checkout(repo, cid, dest)
    assert list((tmp_path / "box").rglob("*")) == [dest]
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(
    "entry",
    [
        TreeEntry("evil", "link", None, 0, 0o777, "/etc/passwd"),
        TreeEntry("evil", "link", None, 0, 0o777, "../../outside"),
    ],
    ids=["absolute-link", "link-out"],
)
def test_restore_skips_links_leading_out(tmp_path: Path, entry: TreeEntry) -> None:
    repo = Repository.init(tmp_path / "r")
    with WriteSession(repo) as s:
        m = s.add_object(ingest_bytes(s, b"kept"))
    cid = _hostile(repo, [entry, TreeEntry("kept.txt", "file", m, 4, 0o644)])
    dest = tmp_path / "box" / "dest"
    dest.mkdir(parents=True)
    skipped: list[str] = []
    written = restore_tree(
        repo, repo.read_commit(cid).tree, dest, on_skip=lambda p, why: skipped.append(p)
    )
    assert written == ["kept.txt"] and skipped == ["evil"]
    assert sorted(p.name for p in (tmp_path / "box").rglob("*")) == ["dest", "kept.txt"]


def test_restore_does_not_follow_symlinks_planted_in_dest(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("payload")
    cid = commit_paths(repo, src, "x")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    with pytest.raises(FileExistsConflict):
        checkout(repo, cid, dest)
    assert list(outside.iterdir()) == []
    checkout(repo, cid, dest, force=True)  # the link is replaced, never written through
    assert list(outside.iterdir()) == []
    assert not (dest / "sub").is_symlink() and (dest / "sub" / "f").read_text() == "payload"


def test_checkout_does_not_overwrite_without_force(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    src = tmp_path / "src"
    files = make_tree(src)
    cid = commit_paths(repo, src, "x")
    dest = tmp_path / "dest"
    (dest / "sub" / "deeper").mkdir(parents=True)
    (dest / "config.json").write_text("mine")
    with pytest.raises(FileExistsConflict) as info:
        checkout(repo, cid, dest)
    assert info.value.paths == ["config.json"]
    assert (dest / "config.json").read_text() == "mine"
    assert not (dest / "model.bin").exists()  # nothing written before the refusal
    checkout(repo, cid, dest, force=True)
    assert read_all(dest) == files


def test_checkout_selected_paths(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    src = tmp_path / "src"
    make_tree(src)
    cid = commit_paths(repo, src, "x")
    written = checkout(repo, cid, tmp_path / "d", paths=["sub"])
    assert written == ["sub/deeper/notes.txt"]
    with pytest.raises(UsageError, match="not in this snapshot"):
        checkout(repo, cid, tmp_path / "e", paths=["nope"])


# --------------------------------------------------------------------------- gc


def _backdate(root: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (t, t))


def test_gc_dry_run_by_default_then_frees_only_unreachable(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r", SMALL)
    keep, drop = tmp_path / "keep", tmp_path / "drop"
    keep.write_bytes(rand(200_000, 1))
    drop.write_bytes(rand(200_000, 2))
    c_keep = commit_paths(repo, keep, "keep")
    commit_paths(repo, drop, "drop", branch="scratch")
    repo.refs.delete("heads/scratch")
    _backdate(tmp_path / "r", 7200)
    before = stats(repo).stored_bytes
    dry = collect(repo)
    assert dry.dry_run and dry.bytes_freed > 150_000
    assert stats(repo).stored_bytes == before  # nothing deleted
    report = collect(repo, dry_run=False)
    assert report.bytes_freed == dry.bytes_freed
    fresh = Repository.open(tmp_path / "r")
    assert check(fresh).ok
    out = tmp_path / "out"
    checkout(fresh, c_keep, out)
    assert (out / "keep").read_bytes() == keep.read_bytes()
    assert stats(fresh).stored_bytes < before - 150_000


def test_gc_grace_period_protects_fresh_packs_only_of_a_writer_that_may_be_alive(
    tmp_path: Path,
) -> None:
    from mlvc_core.holders import Holder

    repo = Repository.init(tmp_path / "r", SMALL)
    (tmp_path / "f").write_bytes(rand(100_000))
    commit_paths(repo, tmp_path / "f", "x", branch="tmp")
    repo.refs.delete("heads/tmp")
    # A writer on another host stopped refreshing its lock ten minutes ago: probably gone,
    # but it may still publish what it wrote, so its young packs are kept.
    remote = Holder("other-host", 4242, 1.0, time.time() - 600, "write")
    repo.store.write("locks/shared-remote", remote.encode())
    report = collect(repo, dry_run=False)
    assert report.bytes_freed == 0 and report.packs_in_grace >= 1
    assert report.writers and "other-host" in report.writers[0]
    assert not repo.store.exists("locks/shared-remote")  # stale: removed
    # No writer left: what nothing reaches is freed at once, however young.
    again = collect(repo, dry_run=False)
    assert again.bytes_freed > 90_000 and again.packs_in_grace == 0 and not again.writers


def test_gc_waits_for_writers_and_writers_wait_for_gc(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    session = WriteSession(repo)
    with pytest.raises(RepositoryLocked, match="writer"):
        collect(repo, dry_run=False)
    session.finish()
    from mlvc_core.lock import ExclusiveLock

    lock = ExclusiveLock.acquire(repo.store)
    with pytest.raises(RepositoryLocked):
        WriteSession(repo, wait=0)
    # A writer waits (a bounded time) for a gc that finishes.
    import threading

    threading.Timer(0.3, lock.release).start()
    t = time.monotonic()
    WriteSession(repo, wait=30).finish()
    assert 0.2 < time.monotonic() - t < 10


# --------------------------------------------------------------------------- transfer


def test_push_sends_only_what_is_missing_and_moves_refs_forward(tmp_path: Path) -> None:
    src = Repository.init(tmp_path / "a", SMALL)
    dst = Repository.init(tmp_path / "b", SMALL)
    f = tmp_path / "w"
    f.write_bytes(rand(500_000, 1))
    commit_paths(src, f, "v1")
    first = transfer(src, dst)
    assert first.bytes_sent > 400_000 and first.refs_updated == ["heads/main"]
    data = bytearray(f.read_bytes())
    data[250_000:250_100] = b"\0" * 100
    f.write_bytes(bytes(data))
    c2 = commit_paths(src, f, "v2")
    second = transfer(src, dst)
    assert 0 < second.bytes_sent < 0.15 * len(data)
    assert Repository.open(tmp_path / "b").resolve("heads/main") == c2
    assert check(Repository.open(tmp_path / "b")).ok
    # A diverged destination ref is not overwritten without force.
    dst2 = Repository.open(tmp_path / "b")
    (tmp_path / "other").write_text("other")
    commit_paths(dst2, tmp_path / "other", "diverged")
    commit_paths(src, f, "v3")
    third = transfer(src, dst2)
    assert third.refs_skipped == ["heads/main"]
    assert transfer(src, dst2, force=True).refs_updated == ["heads/main"]


# --------------------------------------------------------------------------- memory


def test_commit_and_checkout_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    script = r"""
import os, resource, sys
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from mlvc_core.history import commit_paths
from mlvc_core.restore import restore_tree
path, repo_path, out = sys.argv[1:4]
with open(path, "wb") as f:
    for i in range(192):
        f.write(os.urandom(1 << 20))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
repo = Repository.init(repo_path)
cid = commit_paths(repo, path, "big")
after_commit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
checkout(repo, cid, out)
after_checkout = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, after_commit, after_checkout)
"""
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "big"),
            str(tmp_path / "r"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    base, after_commit, after_checkout = (int(x) for x in res.stdout.split())
    # 192 MiB went through; the process grew by far less (ring buffers + chunks in flight).
    assert after_commit - base < 100_000, res.stdout
    assert after_checkout - base < 100_000, res.stdout
    assert (tmp_path / "out" / "big").stat().st_size == 192 << 20


def test_memory_store_repository_and_loose_commit() -> None:
    repo = Repository.init(MemoryStore())
    with WriteSession(repo) as s:
        tid = s.add_object(Tree(()))
        cid = s.add_object(Commit(tid, (), "me", 1.0, "empty"))
    assert repo.read_commit(cid).message == "empty"
    assert list(repo.store.list(PACK_PREFIX))
    assert isinstance(Repository.open(repo.store).store, MemoryStore)


def test_config_for_a_new_repository_keeps_settings_not_identity() -> None:
    cfg = RepoConfig(chunker=ChunkerParams(min=1024, avg=4096, max=16384), compression_level=3)
    new = cfg.for_new_repository()
    assert (new.chunker, new.compression_level, new.byte_planes) == (
        cfg.chunker,
        3,
        cfg.byte_planes,
    )
    assert new.repo_id != cfg.repo_id


def test_chunk_boundaries_do_not_depend_on_read_buffers(tmp_path: Path) -> None:
    """A file larger than several read buffers is cut exactly as if it were cut in one piece."""
    from mlvc_core.manifests import chunk_ids_of

    data = rand(40 << 20, 11)  # spans three 16 MiB read buffers, with tails carried across
    (tmp_path / "big").write_bytes(data)
    repo = Repository.init(tmp_path / "r")
    cid = commit_paths(repo, tmp_path / "big", "big")
    entry = repo.read_tree(repo.read_commit(cid).tree).entries[0]
    manifest = repo.read_manifest(entry.oid)  # type: ignore[arg-type]
    assert [c for c, _ in manifest.chunks] == chunk_ids_of(data, repo.config.chunker)
    checkout(repo, cid, tmp_path / "out")
    assert (tmp_path / "out" / "big").read_bytes() == data


def test_gc_merges_many_small_packs_and_keeps_everything(tmp_path: Path) -> None:
    from mlvc_core.gc import MERGE_AT

    repo = Repository.init(tmp_path / "r", SMALL)
    commits = []
    for i in range(MERGE_AT):  # each commit writes one small pack
        (tmp_path / "f").write_bytes(rand(20_000, i))
        commits.append(commit_paths(repo, tmp_path / "f", f"v{i}"))
    _backdate(tmp_path / "r", 7200)
    packs_before = stats(repo).packs
    assert packs_before >= MERGE_AT
    report = collect(repo, dry_run=False)
    assert report.packs_merged == packs_before and report.bytes_freed == 0
    fresh = Repository.open(tmp_path / "r")
    assert stats(fresh).packs < packs_before // 4
    assert check(fresh).ok
    for i, cid in enumerate(commits):
        checkout(fresh, cid, tmp_path / f"out{i}")
        assert (tmp_path / f"out{i}" / "f").read_bytes() == rand(20_000, i)


def test_a_pack_carries_its_own_index(tmp_path: Path) -> None:
    """A lost index can be rebuilt from its pack: the pack ends with its own index blob."""
    from dataclasses import replace

    from mlvc_core.packs import decode_index, pack_key, read_pack_trailer

    repo = Repository.init(tmp_path / "r", replace(SMALL, pack_size=32 << 10))
    (tmp_path / "f").write_bytes(rand(100_000, 5))
    commit_paths(repo, tmp_path / "f", "x")
    files = repo.index_files()
    assert len(files) == 1  # one index file for the whole commit, covering all its packs
    (packs,) = files.values()
    assert len(packs) >= 3
    for pack_id in packs:
        size = len(repo.store.read(pack_key(pack_id)))
        trailer = read_pack_trailer(repo.store, pack_id, size)
        got_id, entries = decode_index(trailer, pack_id)
        assert got_id == pack_id and entries
        assert all(repo.locate(oid) == loc for oid, loc in entries)


def test_a_write_failing_mid_file_fails_the_commit_and_nothing_writes_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a write fails the commit fails with that error, the branch stays where it was,
    and nothing goes on writing into the repository behind the failed call."""
    from mlvc_core.packs import PackWriter

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "weights.bin").write_bytes(rand(24 << 20, 12))
    repo = Repository.init(tmp_path / "r")
    writes: list[float] = []
    real_add = PackWriter.add

    def add(self: PackWriter, *args: object, **kwargs: object) -> object:
        writes.append(time.monotonic())
        if len(writes) == 20:
            raise StorageError("disk full")
        return real_add(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PackWriter, "add", add)
    with pytest.raises(StorageError, match="disk full"):
        commit_paths(repo, tmp_path / "src", "weights", branch="main")
    failed_at = time.monotonic()
    time.sleep(0.3)
    assert all(t <= failed_at for t in writes)
    assert repo.head("main") is None


def test_reads_take_a_files_adjacent_chunks_with_one_request_per_run(tmp_path: Path) -> None:
    """On a bucket every request costs a round trip: a file's chunks, stored one after another
    in a pack, are read together (at most a few MiB per request), not one request each."""
    from mlvc_core.history import commit_paths
    from mlvc_core.reads import _RUN_BYTES
    from mlvc_core.restore import checkout

    class CountingStore(MemoryStore):
        ranges: list[int] = []

        def read_range(self, key: str, offset: int, length: int) -> bytes:
            if key.startswith(PACK_PREFIX):
                self.ranges.append(length)
            return super().read_range(key, offset, length)

    store = CountingStore()
    repo = Repository.init(store, SMALL)
    data = rand(3 * _RUN_BYTES, 13)  # random: chunks stored raw, ~4 KiB each
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.bin").write_bytes(data)
    cid = commit_paths(repo, tmp_path / "src", "f")
    entry = repo.read_tree(repo.read_commit(cid).tree).entries[0]
    n_chunks = len(repo.read_manifest(entry.oid).chunks)  # type: ignore[arg-type]
    store.ranges.clear()
    checkout(Repository.open(store), cid, tmp_path / "out")
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert n_chunks > 500
    assert len(store.ranges) < n_chunks / 50  # the data runs, the tree and the manifest
    assert max(store.ranges) <= _RUN_BYTES

    # The same for a file opened lazily and read front to back, as a loader does.
    from mlvc_core.reader import ChunkedReader

    store.ranges.clear()
    reader = ChunkedReader(Repository.open(store), repo.read_manifest(entry.oid))  # type: ignore[arg-type]
    got = b"".join(iter(lambda: reader.read(65536), b""))
    assert got == data
    assert len(store.ranges) < n_chunks / 50
    reader.seek(len(data) // 2 + 12345)  # random access still reads what is asked
    assert reader.read(100) == data[len(data) // 2 + 12345 :][:100]

    # Read front to back, the next run is requested before it is needed.
    manifest = repo.read_manifest(entry.oid)  # type: ignore[arg-type]
    first_run = next(repo.chunk_runs(oid for oid, _ in manifest.chunks))
    second_run_at = sum(loc.raw_len for _, loc in first_run)
    lazy_repo = Repository.open(store)
    reader = ChunkedReader(lazy_repo, manifest)
    store.ranges.clear()
    assert reader.read(10) == data[:10]
    reader.seek(second_run_at)
    assert reader.read(10) == data[second_run_at:][:10]
    lazy_repo.close()  # waits for the worker threads
    assert len(store.ranges) == 3  # two runs read, the third read ahead

"""Hostile repositories, crafted byte by byte: every command refuses them clearly or reads them
within the format's own limits, never by what a file declares, never hanging, never exit 70."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from mlvc_core import packs
from mlvc_core.errors import FormatError
from mlvc_core.history import commit_paths
from mlvc_core.ids import hash_bytes, to_hex
from mlvc_core.ingest import ingest_bytes
from mlvc_core.objects import COMMIT, MANIFEST, TREE, Commit, Manifest, Tree, TreeEntry
from mlvc_core.packs import INDEX_MAGIC, decode_index, encode_index
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from mlvc_core.session import WriteSession
from mlvc_core.trees import MAX_TREE_DEPTH, tree_budget, walk_tree
from tests.cli.conftest import Cli
from tests.core.hostile import bomb_chunk, store, store_encoded, write_ref

ROOT = Path(__file__).resolve().parents[2]
INTERNAL = 70


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project with a repository (``mlvc init``) and caches under the test's directory."""
    monkeypatch.setenv("MLVC_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "project"
    d.mkdir()
    Cli(d)("init")
    yield d
    from mlvc.repo import forget_shared

    forget_shared()


def _repo(project: Path) -> Repository:
    return Repository.open(project / ".mlvc")


def _set_branch(repo: Repository, cid: bytes) -> None:
    ref = repo.head()
    repo.refs.set("heads/main", cid, ref.target if ref else None)  # type: ignore[arg-type]


def _max_rss_of(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, int]:
    """Run ``mlvc ARGS`` in a fresh process; (exit code, output, its peak RSS in MiB).

    The peak is the process's own (``VmHWM``): ``ru_maxrss`` would count the parent's too.
    """
    code = (
        "import sys\n"
        "from mlvc.cli import main\n"
        f"sys.argv = ['mlvc', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code or 0\nelse:\n    rc = 0\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "sys.stderr.write('RSS %s\\n' % hwm.split()[1])\n"
        "sys.exit(rc)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    rss = int(p.stderr.rsplit("RSS ", 1)[1].split()[0]) // 1024
    return p.returncode, p.stdout + p.stderr, rss


# ------------------------------------------------------------------ memory bounded by the format


def test_index_declaring_gigabytes_for_a_tiny_frame_costs_no_memory(project: Path) -> None:
    repo = _repo(project)
    chunk = bomb_chunk(repo, declared=2 << 30, real=2 << 30)  # 64 KiB that really inflate to 2 GiB
    m, t = Manifest(2 << 30, ((chunk, 2 << 30),)), None
    # The manifest itself breaks the format's chunk limit too: write it as raw msgpack.
    mid = store_encoded(repo, MANIFEST, m.encode())
    t = Tree((TreeEntry("big.bin", "file", mid, 2 << 30),))
    (tid,) = store(repo, t)
    (cid,) = store(repo, Commit(tid, message="hostile"))
    _set_branch(repo, cid)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["fsck"], ["checkout", to_hex(cid), "-o", "out"], ["show", to_hex(cid)]):
        rc, out, rss = _max_rss_of(args, project, env)
        assert rc != INTERNAL and (rc != 0 or args[0] == "show"), out
        assert rss < 300, f"mlvc {args[0]} used {rss} MiB: {out}"
    rc, out, _ = _max_rss_of(["fsck"], project, env)
    assert "declares 2147483648 bytes" in out and "the format allows" in out
    assert not (project / "out" / "big.bin").exists()


def test_frame_inflating_past_its_declared_length_is_refused(project: Path) -> None:
    repo = _repo(project)
    small = bomb_chunk(repo, declared=1 << 20, real=1 << 30)  # within limits, yields 1 GiB
    large = bomb_chunk(repo, declared=12 << 20, real=1 << 30)  # above the one-call threshold
    repo.load_index()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for oid in (small, large):
        with pytest.raises(Exception, match="corrupted") as info:
            repo.read_raw(oid)
        assert type(info.value).__name__ == "IntegrityError"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 << 10


def test_an_index_cannot_expand_into_millions_of_entries() -> None:
    # Ids a real index never holds (all alike) compress to nothing: the body would decode to
    # ~60 MB of entries from a few KB.
    entries = [[bytes(31) + bytes([i % 256]), 0, 8, 1, 1, 0] for i in range(1_000_000)]
    body = packs.compress_blob(msgpack.packb({"pack": "p", "entries": entries}), 19)
    blob = INDEX_MAGIC + hash_bytes(body) + body
    assert len(blob) < 200_000
    t0 = time.monotonic()
    with pytest.raises(FormatError, match="malformed index"):
        decode_index(blob, "index/p")
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "entry, why",
    [
        ([b"\x01" * 32, 0, 8, 10, 17 << 20, 1], "declares"),  # chunk over the format's limit
        ([b"\x01" * 32, 1, 8, 10, (256 << 20) + 1, 1], "declares"),  # object over its limit
        ([b"\x01" * 32, 0, 8, 10, 20, 0], "stored bytes"),  # raw payload of another length
        ([b"\x01" * 32, 0, 2, 10, 10, 0], "offset"),  # inside the pack header
        ([b"\x01" * 32, 9, 8, 10, 10, 0], "unknown kind"),
        ([b"\x01" * 32, 0, 8, -1, 10, 0], "integer"),
        ([b"\x01" * 32, 0, 8, "10", 10, 0], "integer"),
        ([b"\x01" * 5, 0, 8, 10, 10, 0], "object id"),
        ("entry", "6 fields"),
    ],
)
def test_index_entries_outside_the_format_are_refused(entry: object, why: str) -> None:
    body = packs.compress_blob(msgpack.packb({"pack": "p", "entries": [entry]}))
    with pytest.raises(FormatError, match=why):
        decode_index(INDEX_MAGIC + hash_bytes(body) + body, "index/p")


def test_a_valid_index_round_trips() -> None:
    loc = packs.Location("p", 8, 10, 12, 1, 0)
    blob = encode_index("p", [(hash_bytes(b"x"), loc)])
    assert decode_index(blob, "i")[1][0][1] == loc
    assert decode_index(blob, "i", "p")[1][0][1] == loc
    with pytest.raises(FormatError, match="index of pack 'p'"):
        decode_index(blob, "index/q", "q")  # a valid index, stored under another pack's name


def test_writers_start_a_new_pack_before_the_entry_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(packs, "MAX_PACK_ENTRIES", 5)
    repo = Repository.init(tmp_path / "r")
    d = tmp_path / "d"
    d.mkdir()
    for i in range(12):
        (d / f"f{i}").write_bytes(os.urandom(100 + i))
    cid = commit_paths(repo, d)
    monkeypatch.undo()
    fresh = Repository.open(tmp_path / "r")
    fresh.load_index()
    per_pack = Counter(loc.pack for _, loc in fresh.iter_index())
    assert len(per_pack) >= 3 and max(per_pack.values()) <= 5
    out = tmp_path / "out"
    checkout(fresh, cid, out)
    assert sorted(os.listdir(out)) == sorted(os.listdir(d))


def test_a_damaged_index_leaves_the_rest_readable_and_gc_keeps_its_pack(project: Path) -> None:
    cli = Cli(project)
    (project / "a.txt").write_text("hello")
    cli("commit", "a.txt", "-m", "one")
    repo = _repo(project)
    bomb_chunk(repo, declared=2 << 30, real=1 << 20)
    cli("log")  # the repository opens; the bad index is skipped
    r = cli("fsck", code=3)
    assert "malformed index" in r.output
    packs_before = {i.key for i in repo.store.list("packs/")}
    r = cli("gc", "--yes", "--grace", "0", code=None)
    assert r.exit_code != INTERNAL
    reopened = Repository.open(project / ".mlvc")
    reopened.load_index()
    assert reopened.bad_indexes  # still there, still named
    assert {i.key for i in repo.store.list("packs/")} == packs_before  # no pack of unknown use lost


# ------------------------------------------------------------------ trees walked with a budget


def _shared_tower(repo: Repository, levels: int, leaf_size: int = 1) -> bytes:
    """A tree of ``levels`` levels whose two entries name the same subtree: 2**levels paths."""
    (mid,) = store(repo, Manifest(0, ())) if leaf_size == 0 else (None,)
    if leaf_size:
        (chunk_tree,) = store(repo, Tree())
        leaf = TreeEntry("f", "dir", chunk_tree, 0)
    else:
        leaf = TreeEntry("f", "file", mid, 0)
    (tid,) = store(repo, Tree((leaf,)))
    size = 0
    for _ in range(levels):
        (tid,) = store(
            repo, Tree((TreeEntry("a", "dir", tid, size), TreeEntry("b", "dir", tid, size)))
        )
    (cid,) = store(repo, Commit(tid, message="tower"))
    return cid


def test_a_tree_of_two_to_the_48_paths_is_refused_by_every_path_walk(project: Path) -> None:
    repo = _repo(project)
    cid = _shared_tower(repo, 48)
    _set_branch(repo, cid)
    tree = repo.read_commit(cid).tree
    t0 = time.monotonic()
    with pytest.raises(FormatError, match="paths"):
        tree_budget(repo, tree)
    with pytest.raises(FormatError):
        next(walk_tree(repo, tree))
    cli = Cli(project)
    for args in (["show", to_hex(cid)], ["checkout", to_hex(cid), "-o", "out"]):
        r = cli(*args, code=3)
        assert "paths" in r.output
    (project / "x").write_text("x")
    other = cli("commit", "x", "-m", "x").stdout.strip()
    cli("diff", to_hex(cid), other, code=3)
    cli("fsck")  # reachability reads each distinct tree once: finishes, and it is intact
    cli("gc", "--yes", "--grace", "0")
    assert time.monotonic() - t0 < 60
    assert not (project / "out").exists() or not any((project / "out").iterdir())


def test_declared_sizes_that_disagree_are_refused(project: Path) -> None:
    repo = _repo(project)
    mid = store(repo, Manifest(0, ()))[0]
    (inner,) = store(repo, Tree((TreeEntry("f", "file", mid, 5),)))
    (root,) = store(repo, Tree((TreeEntry("d", "dir", inner, 99),)))
    with pytest.raises(FormatError, match="declared sizes disagree"):
        tree_budget(repo, root)


def test_a_tree_nested_deeper_than_the_limit_is_refused_and_fsck_finishes(project: Path) -> None:
    repo = _repo(project)
    (tid,) = store(repo, Tree())
    with WriteSession(repo) as s:
        for _ in range(MAX_TREE_DEPTH + 50):
            tid = s.add_object(Tree((TreeEntry("d", "dir", tid, 0),)))
        cid = s.add_object(Commit(tid))
    with pytest.raises(FormatError, match="deep"):
        list(walk_tree(repo, tid))
    _set_branch(repo, cid)
    Cli(project)("fsck")
    Cli(project)("show", to_hex(cid), code=3)


def test_shared_subtrees_of_a_real_tree_are_walked_in_full(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    d = tmp_path / "d"
    for copy in ("x", "y", "z"):
        (d / copy / "sub").mkdir(parents=True)
        (d / copy / "sub" / "w.bin").write_bytes(b"same")
    cid = commit_paths(repo, d)
    tree = repo.read_commit(cid).tree
    assert tree_budget(repo, tree).paths == 9
    assert [p for p, _ in walk_tree(repo, tree)][:3] == ["x", "x/sub", "x/sub/w.bin"]


# ------------------------------------------------------------------ every decoded value is typed


def _two_experiments(project: Path) -> None:
    repo = _repo(project)
    (tid,) = store(repo, Tree())
    for name in ("good", "bad"):
        (cid,) = store(repo, Commit(tid, metadata={"type": "experiment", "name": name}))
        summary = {
            "type": "experiment",
            "name": name,
            "status": "stopped",
            "checkpoints": 0,
            "created": time.time(),
            "params": {},
            "latest_metrics": {},
            "removed": [],
        }
        if name == "bad":
            summary["latest_metrics"] = "loss=0.1"
        repo.refs.set(f"experiments/{to_hex(cid)}", cid, None, summary)


def test_ls_lists_the_experiments_it_can_read(project: Path) -> None:
    _two_experiments(project)
    r = Cli(project)("ls", "--json")
    names = [e["name"] for e in json.loads(r.stdout)]
    assert names == ["good"]


def test_a_tag_with_a_malformed_history(project: Path) -> None:
    cli = Cli(project)
    (project / "a.txt").write_text("keep me")
    cid = cli("commit", "a.txt", "-m", "one").stdout.strip()
    write_ref(project / ".mlvc", "tags/prod", {"target": cid, "history": 7})
    r = cli("gc", "--yes", "--grace", "0", code=3)
    assert (
        "tags/prod" in r.output
        and "refs/tags/prod" in r.output
        and "nothing is deleted" in r.output
    )
    r = cli("fsck", code=3)
    assert "refs/tags/prod" in r.output
    cli("log")
    cli("checkout", cid, "-o", "out")
    assert (project / "out" / "a.txt").read_text() == "keep me"
    assert "could not be read" in cli("tag", "-d", "prod").output  # the way out
    cli("fsck")
    cli("gc", "--yes", "--grace", "0")


def test_clone_leaves_an_unreadable_ref_behind_and_copies_the_rest(
    project: Path, tmp_path: Path
) -> None:
    cli = Cli(project)
    (project / "a.txt").write_text("keep me")
    cid = cli("commit", "a.txt", "-m", "one").stdout.strip()
    cli("tag", "good", cid)
    write_ref(project / ".mlvc", "tags/broken", {"target": 5})
    r = cli("clone", project / ".mlvc", tmp_path / "copy")
    assert "tags/broken" in r.output  # named, not silently dropped
    copy = Cli(tmp_path / "copy")
    copy("fsck")
    copy("checkout", "good", "-o", "out")
    assert (tmp_path / "copy" / "out" / "a.txt").read_text() == "keep me"
    assert "broken" not in copy("tag").output


@pytest.mark.parametrize(
    "doc",
    [
        {"target": 5},
        {"target": "zz"},
        {"target": "ab" * 32, "history": [{"target": 1}]},
        {"target": "ab" * 32, "set_at": "yesterday"},
        [1, 2],
        b"\xff\xfe not json",
        b"[" * 100_000,
    ],
)
def test_every_malformed_ref_is_named_by_every_command(project: Path, doc: object) -> None:
    cli = Cli(project)
    (project / "a.txt").write_text("a")
    cli("commit", "a.txt", "-m", "one")
    write_ref(project / ".mlvc", "tags/broken", doc)
    for args, code in ((["fsck"], 3), (["gc", "--yes"], 3), (["tag"], 0), (["ls"], 0)):
        r = cli(*args, code=code)
        assert r.exit_code != INTERNAL
    assert "tags/broken" in cli("fsck", code=3).output


@pytest.mark.parametrize(
    "commit",
    [
        {"parents": {"a": 1}},
        {"meta": {"type": "checkpoint", "metrics": "loss=0.1", "step": 1}},
        {"meta": {"type": "checkpoint", "step": "one"}},
        {"meta": {"type": "experiment", "params": []}},
        {"meta": "x"},
        {"time": "noon"},
        {"author": 5},
    ],
)
def test_malformed_commits_are_named_not_internal_errors(project: Path, commit: dict) -> None:
    repo = _repo(project)
    (tid,) = store(repo, Tree())
    doc = {
        "t": "commit",
        "tree": tid,
        "parents": [],
        "author": "a",
        "time": 1.0,
        "message": "m",
        "meta": {},
    }
    doc.update(commit)
    cid = store_encoded(repo, COMMIT, msgpack.packb(doc, use_bin_type=True))
    _set_branch(repo, cid)
    cli = Cli(project)
    for args in (["log"], ["show", to_hex(cid)], ["checkout", to_hex(cid), "-o", "o"]):
        r = cli(*args, code=3)
        assert f"commit {to_hex(cid)}" in r.output  # named
    r = cli("fsck", code=3)
    assert to_hex(cid) in r.output
    cli("gc", code=3)


def test_malformed_tree_entries_are_refused(project: Path) -> None:
    repo = _repo(project)
    mid = store(repo, Manifest(0, ()))[0]
    for entry in (
        ["f", "file", mid, -1, 0o644, None],
        ["f", "file", mid, 0, "rw", None],
        ["f", "file", mid, 0, 0o644],
        ["f", "dir", 5, 0, 0o755, None],
    ):
        tid = store_encoded(repo, TREE, msgpack.packb({"t": "tree", "entries": [entry]}))
        with pytest.raises(FormatError):
            repo.read_object(tid)


def test_a_damaged_listing_cache_is_read_around(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from mlvc import experiments

    _two_experiments(project)
    monkeypatch.setattr(experiments, "RACY_SECONDS", {"local": -1e9, "remote": -1e9})
    cli = Cli(project)
    assert [e["name"] for e in json.loads(cli("ls", "--json").stdout)] == ["good"]
    (cache,) = (project.parent / "cache").rglob("refs.sqlite")
    db = sqlite3.connect(cache)
    db.execute("UPDATE refs SET doc = ?", (b'{"target": 5, "summary": []}',))
    db.commit()
    db.close()
    assert [e["name"] for e in json.loads(cli("ls", "--json").stdout)] == ["good"]
    experiments._caches.clear()
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    for suffix in ("-wal", "-shm"):
        Path(f"{cache}{suffix}").unlink(missing_ok=True)
    assert [e["name"] for e in json.loads(cli("ls", "--json").stdout)] == ["good"]


def test_a_manifest_whose_chunk_lengths_disagree_is_never_restored(project: Path) -> None:
    from mlvc_core.restore import ChunkedReader

    repo = _repo(project)
    with WriteSession(repo) as s:
        real = ingest_bytes(s, b"x" * 5000).chunks[0][0]
        other = ingest_bytes(s, b"y" * 10).chunks[0][0]
    lying = Manifest(5010, ((real, 10), (other, 5000)))  # adds up, but each length is wrong
    (mid,) = store(repo, lying)
    (tid,) = store(repo, Tree((TreeEntry("f.bin", "file", mid, 5010),)))
    (cid,) = store(repo, Commit(tid))
    _set_branch(repo, cid)
    cli = Cli(project)
    r = cli("fsck", code=3)
    assert to_hex(mid) in r.output and "manifest says" in r.output
    cli("checkout", to_hex(cid), "-o", "out", code=3)
    assert not (project / "out" / "f.bin").exists()
    with pytest.raises(Exception, match="its manifest says") as info:
        ChunkedReader(repo, lying).read()
    assert type(info.value).__name__ == "IntegrityError"

"""Checkout restores what commit accepted, and never writes or links outside its target.

Links are judged by where the kernel will resolve them (through other links of the tree and
links already in the target), conflicts of every kind are found before the first byte, modes
never widen, zero runs come back as holes, and names are any bytes Linux allows.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlvc_core.errors import FileExistsConflict, FormatError
from mlvc_core.history import commit_paths
from mlvc_core.ids import ObjectId
from mlvc_core.manifests import ingest_bytes
from mlvc_core.objects import Tree, TreeEntry, decode
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout, restore_tree
from mlvc_core.session import WriteSession
from mlvc_core.storage import MemoryStore


@dataclass(frozen=True)
class Link:
    """A symlink in a tree spec."""

    target: str


Spec = dict[str, Union[bytes, Link, "Spec"]]


def _add(s: WriteSession, spec: Spec) -> Tree:
    entries = []
    for name, v in spec.items():
        if isinstance(v, Link):
            entries.append(TreeEntry(name, "link", None, 0, 0o777, v.target))
        elif isinstance(v, bytes):
            m = ingest_bytes(s, v)
            entries.append(TreeEntry(name, "file", s.add_object(m), m.size, 0o644))
        else:
            sub = _add(s, v)
            entries.append(TreeEntry(name, "dir", s.add_object(sub), sub.size, 0o755))
    return Tree(tuple(entries))


def tree_of(repo: Repository, spec: Spec) -> ObjectId:
    """Store a tree as a (possibly hostile) repository would hold it."""
    with WriteSession(repo) as s:
        return s.add_object(_add(s, spec))


def mem_repo() -> Repository:
    return Repository.init(MemoryStore())


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Everything under ``root`` (links not followed), for before/after comparisons."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", p.read_bytes())
    return out


def links_stay_inside(dest: Path) -> list[str]:
    """Links under ``dest`` whose physical resolution leaves it (should be none)."""
    root = os.path.realpath(dest)
    bad = []
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if real != root and not real.startswith(root + os.sep):
                    bad.append(os.path.relpath(p, dest))
    return bad


# ------------------------------------------------------------------------------ links


def test_a_chain_of_links_that_is_lexically_inside_is_not_planted(tmp_path: Path) -> None:
    repo = mem_repo()
    deep = "sub/up/" * 6 + "../" * 14 + "etc"
    tree = tree_of(
        repo,
        {
            "sub": {"up": Link(".."), "f": b"inside"},
            "escape": Link("sub/up/../outside_secret"),
            "etc": Link(deep),
            "to_escape": Link("escape"),  # a link to a link that leads out
            "fine": Link("sub/up/sub/f"),  # through the same links, but staying inside
        },
    )
    box = tmp_path / "box"
    dest = box / "out"
    (box / "outside_secret").parent.mkdir(parents=True)
    (box / "outside_secret").write_text("secret")
    skipped: dict[str, str] = {}
    written = restore_tree(repo, tree, dest, on_skip=lambda p, why: skipped.__setitem__(p, why))
    assert sorted(skipped) == ["escape", "etc", "to_escape"]
    assert sorted(written) == ["fine", "sub/f", "sub/up"]
    assert links_stay_inside(dest) == []
    assert (dest / "fine").read_bytes() == b"inside"
    assert (box / "outside_secret").read_text() == "secret"


def test_a_later_link_cannot_turn_an_earlier_one_outward(tmp_path: Path) -> None:
    repo = mem_repo()
    dest = tmp_path / "box" / "dest"
    # "a/../x" is inside while "a" is missing or a directory; once "a" is a link to ".",
    # it is "../x". So targets climb only first, and never deeper than the link sits.
    first = tree_of(repo, {"l": Link("a/../x"), "d": {"m": Link("d/../x")}, "x": b"x"})
    skipped: list[str] = []
    restore_tree(repo, first, dest, on_skip=lambda p, why: skipped.append(p))
    assert sorted(skipped) == ["d/m", "l"]
    second = tree_of(repo, {"a": Link("."), "d": Link(".")})
    restore_tree(repo, second, dest, force=True)
    assert links_stay_inside(dest) == []
    hf = tree_of(  # the Hugging Face cache layout: leading ".." only, and not too many
        repo,
        {
            "blobs": {"abc": b"weights"},
            "snapshots": {"main": {"model.bin": Link("../../blobs/abc")}},
            "too_far": Link("../blobs/abc"),
        },
    )
    skipped.clear()
    restore_tree(repo, hf, tmp_path / "hf", on_skip=lambda p, why: skipped.append(p))
    assert skipped == ["too_far"]
    assert (tmp_path / "hf" / "snapshots" / "main" / "model.bin").read_bytes() == b"weights"


def test_links_already_in_the_target_count_when_resolving(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "data").symlink_to(outside)  # the user's own link, e.g. to /datasets
    repo = mem_repo()
    tree = tree_of(repo, {"train": Link("data/train"), "up": Link("data/..")})
    skipped: list[str] = []
    restore_tree(repo, tree, dest, on_skip=lambda p, why: skipped.append(p))
    assert sorted(skipped) == ["train", "up"]
    assert os.readlink(dest / "data") == str(outside)  # left alone
    assert links_stay_inside(dest) == ["data"]  # only the user's own


def test_nothing_is_written_through_a_link_in_the_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "a").mkdir(parents=True)
    (dest / "a" / "b").symlink_to(outside)
    (dest / "f").symlink_to(outside / "f")  # a link where the tree has a file
    repo = mem_repo()
    tree = tree_of(repo, {"a": {"b": {"c": b"payload"}}, "f": b"x"})
    with pytest.raises(FileExistsConflict) as info:
        restore_tree(repo, tree, dest)
    assert sorted(info.value.paths) == ["a/b", "f"]
    restore_tree(repo, tree, dest, force=True)
    assert list(outside.iterdir()) == []
    assert not (dest / "a" / "b").is_symlink() and not (dest / "f").is_symlink()
    assert (dest / "a" / "b" / "c").read_bytes() == b"payload"


def test_a_link_restored_by_one_checkout_is_not_written_through_by_the_next(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "box" / "dest"
    repo = mem_repo()
    first = tree_of(repo, {"d": Link("sub"), "sub": {"k": b"1"}})
    restore_tree(repo, first, dest)
    assert (dest / "d").is_symlink()
    second = tree_of(repo, {"d": {"new": b"2"}})
    with pytest.raises(FileExistsConflict):
        restore_tree(repo, second, dest)
    restore_tree(repo, second, dest, force=True)
    assert (dest / "d").is_dir() and not (dest / "d").is_symlink()
    assert not (dest / "sub" / "new").exists()  # not written through the old link


_COMPONENTS = st.sampled_from(["..", ".", "a", "b", "l1", "l2", "d", ""])
_TARGETS = st.lists(_COMPONENTS, min_size=1, max_size=6).map("/".join)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(st.sampled_from(["l1", "l2", "l3"]), _TARGETS, min_size=1),
    st.dictionaries(st.sampled_from(["l1", "l2"]), _TARGETS, max_size=2),
    st.dictionaries(st.sampled_from(["b", "l2", "l3"]), _TARGETS, max_size=2),
)
def test_no_link_ever_resolves_outside(
    top: dict[str, str], inner: dict[str, str], planted: dict[str, str]
) -> None:
    spec: Spec = {name: Link(t) for name, t in top.items()}
    spec["d"] = {name: Link(t) for name, t in inner.items()}
    spec["d"]["a"] = {"f": b"x"}  # type: ignore[index]
    repo = mem_repo()
    tree = tree_of(repo, spec)
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "box" / "dest"
        dest.mkdir(parents=True)
        for name, target in planted.items():  # links already in the target directory
            (dest / name).symlink_to(target or ".")
        sentinel = Path(tmp) / "a"
        sentinel.mkdir()
        try:
            written = restore_tree(repo, tree, dest, on_skip=lambda p, why: None)
        except FileExistsConflict:
            written = restore_tree(repo, tree, dest, force=True, on_skip=lambda p, why: None)
        for rel in written:
            real = os.path.realpath(dest / rel)
            assert real == str(dest) or real.startswith(f"{dest}/"), (rel, real)
        assert list(sentinel.iterdir()) == []
        assert sorted(os.listdir(Path(tmp))) == ["a", "box"]
        assert sorted(os.listdir(Path(tmp) / "box")) == ["dest"]


# ------------------------------------------------------------------------------ conflicts


def _conflict_tree(repo: Repository) -> ObjectId:
    return tree_of(
        repo,
        {
            "dir_here": {"x": b"1"},
            "file_here": b"new content",
            "link_here": Link("same.txt"),
            "same.txt": b"identical",
            "same_link": Link("same.txt"),
            "fresh": b"fresh",
        },
    )


def _conflicting_dest(dest: Path) -> None:
    dest.mkdir(parents=True)
    (dest / "dir_here").write_bytes(b"a file where a directory goes")
    (dest / "file_here").mkdir()
    (dest / "file_here" / "inner").write_bytes(b"a directory where a file goes")
    (dest / "link_here").write_bytes(b"a file where a link goes")
    (dest / "same.txt").write_bytes(b"identical")
    (dest / "same_link").symlink_to("same.txt")


def test_every_conflict_is_found_before_anything_is_written(tmp_path: Path) -> None:
    repo = mem_repo()
    tree = _conflict_tree(repo)
    dest = tmp_path / "dest"
    _conflicting_dest(dest)
    before = snapshot(dest)
    with pytest.raises(FileExistsConflict) as info:
        restore_tree(repo, tree, dest)
    assert sorted(info.value.paths) == ["dir_here", "file_here", "link_here"]
    assert any("where the snapshot has a directory" in d for d in info.value.details)
    assert snapshot(dest) == before  # not one byte written, "fresh" included


def test_force_resolves_every_kind_of_conflict(tmp_path: Path) -> None:
    repo = mem_repo()
    tree = _conflict_tree(repo)
    dest = tmp_path / "dest"
    _conflicting_dest(dest)
    written = restore_tree(repo, tree, dest, force=True)
    # identical entries are left alone; everything else replaced
    assert sorted(written) == ["dir_here/x", "file_here", "fresh", "link_here"]
    assert (dest / "dir_here" / "x").read_bytes() == b"1"
    assert (dest / "file_here").read_bytes() == b"new content"
    assert os.readlink(dest / "link_here") == "same.txt"
    assert sorted(os.listdir(dest)) == sorted(
        ["dir_here", "file_here", "link_here", "same.txt", "same_link", "fresh"]
    )


def test_identical_files_are_not_conflicts(tmp_path: Path) -> None:
    repo = mem_repo()
    tree = tree_of(repo, {"m.bin": os.urandom(300_000), "s": {"t.txt": b"t"}})
    dest = tmp_path / "dest"
    assert sorted(restore_tree(repo, tree, dest)) == ["m.bin", "s/t.txt"]
    assert restore_tree(repo, tree, dest) == []  # no force needed, nothing rewritten
    (dest / "m.bin").write_bytes(b"changed")
    with pytest.raises(FileExistsConflict):
        restore_tree(repo, tree, dest)


# ------------------------------------------------------------------------------ modes


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o077, 0o022])
def test_permissions_are_restored_and_never_widened(tmp_path: Path, mask: int) -> None:
    src = tmp_path / "src"
    (src / "private").mkdir(parents=True)
    modes = {"cred.json": 0o600, "shared.txt": 0o644, "run.sh": 0o755, "group.txt": 0o640}
    for name, mode in modes.items():
        (src / name).write_text(name)
        os.chmod(src / name, mode)
    (src / "private" / "key").write_text("k")
    os.chmod(src / "private", 0o700)
    repo = Repository.init(tmp_path / "r")
    cid = commit_paths(repo, src, "modes")
    out = tmp_path / "out"
    with umask(mask):
        checkout(repo, cid, out)
    for name, mode in modes.items():
        assert stat.S_IMODE(os.stat(out / name).st_mode) == mode & ~mask, name
    assert stat.S_IMODE(os.stat(out / "private").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(out / "cred.json").st_mode) == 0o600  # under either umask


# ------------------------------------------------------------------------------ holes


def test_zero_runs_come_back_as_holes(tmp_path: Path) -> None:
    mib = 1 << 20
    src = tmp_path / "sparse.bin"
    with open(src, "wb") as f:
        f.write(os.urandom(mib))
        f.seek(40 * mib)
        f.write(os.urandom(mib))
        f.truncate(96 * mib)  # ends in a hole
    repo = Repository.init(tmp_path / "r")
    cid = commit_paths(repo, src, "sparse")
    out = tmp_path / "out"
    checkout(repo, cid, out)
    restored = out / "sparse.bin"
    assert restored.stat().st_size == 96 * mib
    assert restored.stat().st_blocks * 512 < 8 * mib  # about the 2 MiB of data, not 96
    with open(src, "rb") as a, open(restored, "rb") as b:
        while True:
            x, y = a.read(8 * mib), b.read(8 * mib)
            assert x == y
            if not x:
                break


# ------------------------------------------------------------------------------ names


def test_names_keep_their_format_version_1_encoding() -> None:
    oid = ObjectId(bytes(32))
    entries = [  # sorted by name, as trees are
        TreeEntry("données", "dir", oid, 3, 0o755),
        TreeEntry("latest", "link", None, 0, 0o777, "../ckpt/step-10"),
        TreeEntry("model.safetensors", "file", oid, 3, 0o644),
    ]
    rows = [[e.name, e.kind, e.oid, e.size, e.mode, e.target] for e in entries]
    v1 = msgpack.packb({"t": "tree", "entries": rows}, use_bin_type=True)
    assert Tree(tuple(entries)).encode() == v1
    assert decode(v1) == Tree(tuple(entries))


def test_a_name_that_is_not_utf8_is_stored_as_its_bytes_and_only_so() -> None:
    name = os.fsdecode(b"caf\xe9.csv")
    tree = Tree((TreeEntry(name, "link", None, 0, 0o777, os.fsdecode(b"\xff/x")),))
    raw = msgpack.unpackb(tree.encode(), raw=False)
    assert raw["entries"][0][0] == b"caf\xe9.csv" and raw["entries"][0][5] == b"\xff/x"
    assert decode(tree.encode()) == tree
    utf8_as_bytes = msgpack.packb(
        {"t": "tree", "entries": [[b"plain", "link", None, 0, 0o777, "x"]]}, use_bin_type=True
    )
    with pytest.raises(FormatError):  # one name, one encoding: ids stay canonical
        decode(utf8_as_bytes)


_NAME_BYTES = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_NAME_BYTES, min_size=1, max_size=5, unique=True))
def test_every_name_linux_allows_round_trips(names: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        src = os.fsencode(base / "src")
        os.mkdir(src)
        for i, name in enumerate(names):
            if i % 3 == 2:
                os.symlink(b"t-" + name, os.path.join(src, name))  # dangling, inside
            elif i % 3 == 1:
                os.mkdir(os.path.join(src, name))
                with open(os.path.join(src, name, name), "wb") as f:
                    f.write(name)
            else:
                with open(os.path.join(src, name), "wb") as f:
                    f.write(name * 3)
        repo = Repository.init(MemoryStore())
        cid = commit_paths(repo, os.fsdecode(src), "names")
        out = base / "out"
        checkout(repo, cid, out)
        assert _listing(os.fsencode(out)) == _listing(src)


def _listing(root: bytes) -> dict[bytes, tuple[str, bytes]]:
    found: dict[bytes, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                found[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                found[rel] = ("dir", b"")
            else:
                with open(p, "rb") as f:
                    found[rel] = ("file", f.read())
    return found


def test_backslashes_absolute_links_and_latin1_names_commit_and_check_out(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a\\b.txt").write_text("backslash")
    latin1 = os.path.join(os.fsencode(src), b"caf\xe9.csv")
    with open(latin1, "wb") as f:
        f.write(b"old zip")
    (src / "data").symlink_to("/datasets/imagenet")  # the usual ML layout
    (src / "model.bin").write_bytes(b"weights")
    repo = Repository.init(tmp_path / "r")
    cid = commit_paths(repo, src, "odd names")
    skipped: list[tuple[str, str]] = []
    out = tmp_path / "out"
    written = restore_tree(
        repo, repo.read_commit(cid).tree, out, on_skip=lambda p, w: skipped.append((p, w))
    )
    assert [p for p, _ in skipped] == ["data"] and "absolute" in skipped[0][1]
    assert sorted(written) == sorted(["a\\b.txt", os.fsdecode(b"caf\xe9.csv"), "model.bin"])
    assert (out / "a\\b.txt").read_text() == "backslash"
    with open(os.path.join(os.fsencode(out), b"caf\xe9.csv"), "rb") as f:
        assert f.read() == b"old zip"
    shutil.rmtree(out)


def test_recorded_special_bits_are_never_restored(tmp_path: Path) -> None:
    repo = mem_repo()
    with WriteSession(repo) as s:
        m = ingest_bytes(s, b"#!/bin/sh\n")
        hostile = Tree((TreeEntry("suid", "file", s.add_object(m), m.size, 0o6777),))
        tree = s.add_object(hostile)
    with umask(0o022):
        restore_tree(repo, tree, tmp_path / "out")
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "suid").st_mode) == 0o755  # no setuid


KILLED_CHECKOUT = r"""
import sys
from pathlib import Path
from mlvc_core.repository import Repository
from mlvc_core.restore import restore_tree
repo = Repository.open(sys.argv[1])
done = Path(sys.argv[3])
def progress(n):
    if not done.exists() and (Path(sys.argv[2]) / "a.bin").exists():
        done.write_text("first file in place")
tree = repo.read_commit(repo.resolve("heads/main")).tree
restore_tree(repo, tree, Path(sys.argv[2]), progress=progress)
"""


def test_a_checkout_killed_midway_completes_when_run_again_without_force(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys
    import time

    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.bin", "b.bin", "c.bin"):
        (src / name).write_bytes(os.urandom(24 << 20))
    repo = Repository.init(tmp_path / "r")
    commit_paths(repo, src, "x", branch="main")
    out, done = tmp_path / "out", tmp_path / "done"
    out.mkdir()  # an existing target: each file goes to a temporary name, then into place
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CHECKOUT, str(tmp_path / "r"), str(out), str(done)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    deadline = time.monotonic() + 60
    while not done.exists() and child.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    child.kill()  # SIGKILL, mid-way through the next files
    assert child.wait() == -9  # killed, not finished
    # What was written is whole (renamed into place only once complete), so nothing in the
    # way differs from the snapshot: running it again needs no force and finishes the job.
    restore_tree(repo, repo.read_commit(repo.resolve("heads/main")).tree, out)
    for name in ("a.bin", "b.bin", "c.bin"):
        assert (out / name).read_bytes() == (src / name).read_bytes()


def test_names_the_file_system_refuses_are_skipped_not_fatal(tmp_path: Path) -> None:
    repo = mem_repo()
    long_file, long_dir = "f" * 300, "d" * 300  # NAME_MAX is 255 bytes
    tree = tree_of(
        repo,
        {long_file: b"1", long_dir: {"inner": b"2", "l": Link("inner")}, "ok": b"3"},
    )
    skipped: list[str] = []
    written = restore_tree(repo, tree, tmp_path / "out", on_skip=lambda p, w: skipped.append(p))
    assert sorted(skipped) == sorted([long_file, long_dir])
    assert written == ["ok"] and (tmp_path / "out" / "ok").read_bytes() == b"3"


def test_a_hard_link_in_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.link(outside, dest / "f")
    repo = mem_repo()
    tree = tree_of(repo, {"f": b"new"})
    with pytest.raises(FileExistsConflict):
        restore_tree(repo, tree, dest)
    restore_tree(repo, tree, dest, force=True)
    assert (dest / "f").read_bytes() == b"new"
    assert outside.read_bytes() == b"keep me"

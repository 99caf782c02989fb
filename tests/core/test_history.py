"""The one commit path: store, publish, compare-and-swap, re-parent on a lost race."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlvc_core.check import check
from mlvc_core.errors import RefConflict
from mlvc_core.history import advance, commit_paths, record_paths
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import Commit, Tree
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession

WRITER = r"""
import sys, time
from mlvc_core.history import advance
from mlvc_core.objects import Commit, Tree
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession
repo_path, me, rounds, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
repo = Repository.open(repo_path)
while time.time() < start:  # every writer starts at once
    time.sleep(0.001)
for i in range(rounds):
    with WriteSession(repo) as s:
        tree = s.add_object(Tree(()))
        msg = f"{me}-{i}"
        def make(parent, msg=msg, tree=tree):
            return Commit(tree=tree, parents=(parent,) if parent else (), author=me,
                          time=0.0, message=msg)
        def summarize(old, cid, msg=msg):
            return dict(old, count=int(old.get("count", 0)) + 1, last=msg)
        advance(s, "heads/race", repo.refs.get("heads/race"), make, summarize)
repo.close()
"""


def _commit(tree: ObjectId, parent: ObjectId | None, message: str) -> Commit:
    return Commit(
        tree=tree,
        parents=(parent,) if parent is not None else (),
        author="test",
        time=0.0,
        message=message,
    )


def _empty_tree(repo: Repository) -> ObjectId:
    with WriteSession(repo) as s:
        return s.add_object(Tree(()))


def test_eight_processes_advancing_one_ref_lose_no_commit(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    writers, rounds = 8, 4
    start = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path / "r"), f"w{n}", str(rounds), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ref = repo.refs.require("heads/race")
    chain = list(repo.log(ref.target))
    messages = [c.message for _, c in chain]
    # Every commit of every writer is on the first-parent chain, exactly once ...
    assert sorted(messages) == sorted(f"w{n}-{i}" for n in range(writers) for i in range(rounds))
    # ... each writer's own commits in the order it made them ...
    for n in range(writers):
        mine = [m for m in reversed(messages) if m.startswith(f"w{n}-")]
        assert mine == [f"w{n}-{i}" for i in range(rounds)]
    # ... the chain ends at a root, and the summary saw every move.
    assert chain[-1][1].parents == ()
    assert ref.summary["count"] == writers * rounds
    assert ref.summary["last"] == messages[0]
    assert check(repo).ok


def test_a_moved_target_re_parents_and_a_summary_edit_keeps_the_commit(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    tree = _empty_tree(repo)
    with WriteSession(repo) as s:
        first = advance(s, "heads/x", None, lambda p: _commit(tree, p, "one"))
    assert first.ref.target == first.commit
    stale = first.ref
    other = Repository.open(tmp_path / "r")
    with WriteSession(other) as s:
        second = advance(s, "heads/x", stale, lambda p: _commit(tree, p, "two"))
    built_on: list[ObjectId | None] = []

    def make(parent: ObjectId | None) -> Commit:
        built_on.append(parent)
        return _commit(tree, parent, "three")

    with WriteSession(repo) as s:
        third = advance(s, "heads/x", stale, make)
    assert built_on == [first.commit, second.commit]  # built again on the new tip
    assert [c.message for _, c in repo.log(third.commit)] == ["three", "two", "one"]

    # Only the summary changed since the ref was read: the commit is kept, not rebuilt.
    read = repo.refs.require("heads/x")
    repo.refs.update_summary(read, {"hidden": [1]})
    built_on.clear()
    with WriteSession(repo) as s:
        fourth = advance(s, "heads/x", read, make, lambda old, cid: dict(old, tip=cid))
    assert built_on == [third.commit]
    assert fourth.ref.summary == {"hidden": [1], "tip": to_hex(fourth.commit)}


def test_creating_a_ref_that_appeared_builds_on_it(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    tree = _empty_tree(repo)
    with WriteSession(repo) as s:
        there = advance(s, "heads/y", None, lambda p: _commit(tree, p, "there"))
    with WriteSession(repo) as s:
        mine = advance(s, "heads/y", None, lambda p: _commit(tree, p, "mine"))
    assert repo.read_commit(mine.commit).parents == (there.commit,)
    assert repo.refs.require("heads/y").target == mine.commit


def test_without_re_parenting_a_moved_branch_is_a_conflict(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    (tmp_path / "a").write_text("a")
    base = commit_paths(repo, tmp_path / "a", "base")
    stale = repo.refs.require("heads/main")
    moved = commit_paths(Repository.open(tmp_path / "r"), tmp_path / "a", "moved")
    tree = repo.read_commit(base).tree
    with WriteSession(repo) as s, pytest.raises(RefConflict) as info:
        advance(s, "heads/main", stale, lambda p: _commit(tree, p, "late"), reparent=False)
    assert info.value.actual == to_hex(moved)
    assert repo.refs.require("heads/main").target == moved


def test_a_race_lost_every_time_ends_in_a_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.init(tmp_path / "r")
    tree = _empty_tree(repo)
    with WriteSession(repo) as s:
        advance(s, "heads/z", None, lambda p: _commit(tree, p, "root"))
    rival = Repository.open(tmp_path / "r")
    real_move = repo.refs.move
    swaps = 0

    def move_just_after_a_rival(ref: Ref, target: ObjectId, summary: dict[str, Any]) -> Ref:
        nonlocal swaps
        swaps += 1
        rival.refs.update_summary(rival.refs.require("heads/z"), {"rival": swaps})
        return real_move(ref, target, summary)

    monkeypatch.setattr(repo.refs, "move", move_just_after_a_rival)
    with WriteSession(repo) as s, pytest.raises(RefConflict):
        advance(
            s, "heads/z", repo.refs.require("heads/z"), lambda p: _commit(tree, p, "x"), attempts=3
        )
    assert swaps == 3
    assert [c.message for _, c in repo.log(repo.refs.require("heads/z").target)] == ["root"]


def test_record_paths_reports_what_it_stored(tmp_path: Path) -> None:
    repo = Repository.init(tmp_path / "r")
    data = tmp_path / "d"
    data.mkdir()
    (data / "w.bin").write_bytes(bytes(range(256)) * 4096)
    first = record_paths(repo, data, "one")
    assert first.ref is not None and first.ref.target == first.commit
    assert first.new_bytes >= 256 * 4096 and 0 < first.stored_bytes
    again = record_paths(repo, data, "same")
    assert again.new_bytes < 2_000  # only a commit: the content is already stored
    loose = record_paths(repo, data, "loose", branch=None)
    assert loose.ref is None and repo.refs.require("heads/main").target == again.commit

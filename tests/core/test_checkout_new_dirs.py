"""Checkout into directories that do not exist yet: built aside, files created in place.

A killed checkout (kill -9 at many points, a real process) never leaves a torn file under a
real name; running it again without force finishes the job byte for byte and leaves no
temporary directory behind. Conflicts, refused names and modes behave as in an existing
directory.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlvc_core.errors import FileExistsConflict
from mlvc_core.history import commit_paths
from mlvc_core.repository import Repository
from mlvc_core.restore import restore_tree

ROOT = Path(__file__).resolve().parents[2]

KILLED = r"""
import os, signal, sys
from pathlib import Path
from mlvc_core import restore, targets
from mlvc_core.repository import Repository
kill_at, count = int(sys.argv[3]), [0]
def point():
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
write_all, put = restore._write_all, targets.put
def counted_write(fd, data):
    point()
    write_all(fd, data[: len(data) // 2])  # half a file, then maybe the kill
    point()
    write_all(fd, memoryview(data)[len(data) // 2 :])
def counted_put(*a, **k):
    point()
    put(*a, **k)
restore._write_all, restore.put, targets.put = counted_write, counted_put, counted_put
repo = Repository.open(sys.argv[1])
restore.restore_tree(repo, repo.read_commit(repo.resolve("heads/main")).tree, Path(sys.argv[2]))
print(count[0])
"""


def _dataset(root: Path) -> dict[str, bytes]:
    """Small files in nested directories and at the top, one large file; path -> bytes."""
    rng = np.random.default_rng(3)
    files: dict[str, bytes] = {}
    for i in range(60):
        rel = ["top", "a", "a/deep", "b"][i % 4] + f"/f{i:03d}.bin"
        files[rel] = rng.integers(0, 256, int(rng.integers(1, 40_000)), np.uint8).tobytes()
    files["top.txt"] = b"at the root\n" * 100
    files["a/large.bin"] = rng.integers(0, 256, 3 << 20, np.uint8).tobytes()
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return files


def _visible(out: Path) -> dict[str, bytes]:
    """Every regular file under ``out`` by relative path, temporary names left out."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if not d.startswith(".mlvc-")]
        for name in filenames:
            if not name.startswith(".mlvc-"):
                p = Path(dirpath) / name
                found[str(p.relative_to(out))] = p.read_bytes()
    return found


def _leftovers(top: Path) -> list[str]:
    return [str(p) for p in top.rglob(".mlvc-*")]


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    base = tmp_path_factory.mktemp("committed")
    files = _dataset(base / "src")
    repo = Repository.init(base / "r")
    commit_paths(repo, base / "src", "data", branch="main")
    repo.close()
    return base / "r", files


def _kill_at(repo: Path, out: Path, n: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", KILLED, str(repo), str(out), str(n)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )


@pytest.mark.parametrize("existing", [False, True], ids=["new-target", "existing-target"])
def test_a_checkout_killed_at_many_points_is_never_torn_and_completes(
    committed: tuple[Path, dict[str, bytes]], tmp_path: Path, existing: bool
) -> None:
    repo_path, files = committed
    whole = _kill_at(repo_path, tmp_path / "probe", 0)  # never killed: count its points
    assert whole.returncode == 0, whole.stderr
    points = int(whole.stdout.split()[-1])
    assert _visible(tmp_path / "probe") == files
    for n in sorted({1, 2, 3, points // 3, points // 2, points - 2, points - 1, points}):
        out = tmp_path / f"out{n}"
        if existing:
            out.mkdir()
        killed = _kill_at(repo_path, out, n)
        assert killed.returncode == -9, (n, killed.stderr)
        seen = _visible(out) if out.exists() else {}
        # Whatever is visible under a real name is whole and the snapshot's own.
        assert all(files[rel] == body for rel, body in seen.items()), n
        repo = Repository.open(repo_path)
        try:
            restore_tree(repo, repo.read_commit(repo.resolve("heads/main")).tree, out)
        finally:
            repo.close()
        assert _visible(out) == files, n
        assert _leftovers(tmp_path) == [], n


def test_new_directories_in_an_existing_target_still_refuse_changed_files(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    (src / "new" / "deep").mkdir(parents=True)
    (src / "new" / "deep" / "x.bin").write_bytes(b"x" * 1000)
    (src / "kept.txt").write_bytes(b"the snapshot's")
    repo = Repository.init(tmp_path / "r")
    tree = repo.read_commit(commit_paths(repo, src, "v1")).tree
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_bytes(b"the user's own edit")
    with pytest.raises(FileExistsConflict) as info:
        restore_tree(repo, tree, out)
    assert info.value.paths == ["kept.txt"]
    assert sorted(os.listdir(out)) == ["kept.txt"]  # nothing written, nothing built aside
    assert (out / "kept.txt").read_bytes() == b"the user's own edit"
    assert sorted(restore_tree(repo, tree, out, force=True)) == ["kept.txt", "new/deep/x.bin"]
    assert (out / "new" / "deep" / "x.bin").read_bytes() == b"x" * 1000


@pytest.mark.parametrize("existing", [False, True], ids=["new-target", "existing-target"])
def test_modes_of_files_and_directories_built_aside(tmp_path: Path, existing: bool) -> None:
    src = tmp_path / "src"
    (src / "private" / "inner").mkdir(parents=True)
    (src / "private" / "inner" / "key").write_bytes(b"k")
    (src / "private" / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "private" / "inner" / "key", 0o600)
    os.chmod(src / "private" / "run.sh", 0o755)
    os.chmod(src / "private" / "inner", 0o750)
    os.chmod(src / "private", 0o700)
    repo = Repository.init(tmp_path / "r")
    tree = repo.read_commit(commit_paths(repo, src, "modes")).tree
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    old = os.umask(0o022)
    try:
        restore_tree(repo, tree, out)
    finally:
        os.umask(old)

    def mode(rel: str) -> int:
        return stat.S_IMODE(os.stat(out / rel).st_mode)

    assert mode("") == 0o755
    assert (mode("private"), mode("private/inner")) == (0o700, 0o750)
    assert (mode("private/inner/key"), mode("private/run.sh")) == (0o600, 0o755)
    assert _leftovers(tmp_path) == []


def test_a_new_directory_whose_name_is_refused_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_bytes(b"ok")
    repo = Repository.init(tmp_path / "r")
    commit_paths(repo, src, "v1", branch="main")
    # A tree with a directory name too long for this file system (NAME_MAX is 255 bytes).
    from mlvc_core.objects import Tree, TreeEntry
    from mlvc_core.session import WriteSession

    with WriteSession(repo) as s:
        inner_file = repo.read_tree(repo.read_commit(repo.resolve("heads/main")).tree).entries[0]
        long_dir = s.add_object(Tree((inner_file,)))
        root = Tree(
            (
                TreeEntry("d" * 300, "dir", long_dir, 2, 0o755),
                TreeEntry("e", "dir", long_dir, 2, 0o755),
            )
        )
        tree = s.add_object(root)
        s.flush()
    out = tmp_path / "out"
    out.mkdir()  # the long name meets the file system only when its directory is renamed
    skipped: list[str] = []
    written = restore_tree(repo, tree, out, on_skip=lambda p, why: skipped.append(p))
    assert skipped == ["d" * 300]
    assert written == ["e/ok.txt"]
    assert sorted(os.listdir(out)) == ["e"]


@pytest.mark.parametrize("existing", [False, True], ids=["new-target", "existing-target"])
def test_files_in_new_directories_are_created_in_place(
    committed: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    existing: bool,
) -> None:
    """One rename per directory built aside (the target, or each new top directory), not
    one per file; the only file renamed is the one at the top of an existing target."""
    repo_path, files = committed
    renames: list[str] = []
    replace = os.replace

    def counted(src: str, dst: str, **kw: int) -> None:
        renames.append(str(dst))
        replace(src, dst, **kw)

    monkeypatch.setattr(os, "replace", counted)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    repo = Repository.open(repo_path)
    try:
        restore_tree(repo, repo.read_commit(repo.resolve("heads/main")).tree, out)
    finally:
        repo.close()
    assert _visible(out) == files
    assert sorted(renames) == (["a", "b", "top", "top.txt"] if existing else ["out"])

"""kill -9 of commit and gc at many points: the next command runs, nothing committed is lost,
and a later gc removes what the killed process left (locks, packs, temporary files).

The child process counts its own writes to the store (every write, create, delete, streamed
pack write and pack close) and sends itself SIGKILL at the N-th: a real process dying at a
real point, for N spread over the whole operation.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import pytest

from mlvc_core.check import check
from mlvc_core.chunker import ChunkerParams
from mlvc_core.config import RepoConfig
from mlvc_core.gc import collect
from mlvc_core.history import commit_paths
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout
from tests.core.killpoints import run_killed

SMALL = RepoConfig(chunker=ChunkerParams(min=1024, avg=4096, max=16384), pack_size=128 << 10)


def _child(op: str, repo: Path, arg: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    return run_killed(op, repo, arg, kill_at, timeout=60)


def _tree(root: Path, seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    root.mkdir()
    out = {}
    for i in range(3):
        data = rng.randbytes(rng.randrange(40_000, 160_000))
        (root / f"f{i}").write_bytes(data)
        out[f"f{i}"] = hashlib.sha256(data).hexdigest()
    return out


def _files(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in out.rglob("*")
        if p.is_file()
    }


def _points(total: int, n: int = 8) -> list[int]:
    return sorted({max(1, round(total * i / n)) for i in range(n)} | {1, total})


def _setup(tmp_path: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    repo_path = tmp_path / "r"
    repo = Repository.init(repo_path, SMALL)
    old = _tree(tmp_path / "old", 1)
    commit_paths(repo, tmp_path / "old", "old", branch="main")
    _tree(tmp_path / "junk", 2)
    commit_paths(repo, tmp_path / "junk", "junk", branch="junk")
    repo.refs.delete("heads/junk")  # garbage for gc
    repo.close()
    return repo_path, {"old": old}


def _assert_clean_and_intact(repo_path: Path, expect: list[dict[str, str]], out: Path) -> None:
    """The next gc runs, fsck is clean with nothing left over, main checks out intact."""
    repo = Repository.open(repo_path)
    collect(repo, dry_run=False, grace_seconds=0)  # never refused: the killed holder is dead
    report = check(repo)
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    assert not list(repo.store.list("locks/"))
    assert not list(repo.store.list_temporary(""))
    checkout(repo, "heads/main", out)
    assert _files(out) in expect


@pytest.mark.parametrize("op", ["commit", "gc"])
def test_kill_9_at_many_points(op: str, tmp_path: Path) -> None:
    base, trees = _setup(tmp_path)
    new = _tree(tmp_path / "new", 3)
    # A run to the end counts the points.
    import shutil

    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    arg = str(tmp_path / "new")
    full = _child(op, probe, arg, 0)
    assert full.returncode == 0, full.stderr
    total = int(full.stdout.strip())
    assert total >= 5
    left_temp = left_locks = 0
    for n in _points(total):
        repo_path = tmp_path / f"r{n}"
        shutil.copytree(base, repo_path)
        r = _child(op, repo_path, arg, n)
        assert r.returncode == -9, (n, r.stderr)
        store = Repository.open(repo_path).store
        left_temp += bool(list(store.list_temporary("")))
        left_locks += bool(list(store.list("locks/")))
        # The next command of either kind runs at once.
        _assert_clean_and_intact(repo_path, [trees["old"], new], tmp_path / f"out{n}")
        again = Repository.open(repo_path)
        commit_paths(again, tmp_path / "new", "again", branch="main")
        _assert_clean_and_intact(repo_path, [new], tmp_path / f"again{n}")
    assert left_locks >= 1  # the points did catch the process holding its lock
    if op == "commit":
        assert left_temp >= 1  # and a pack half written


def test_gc_aborts_the_incomplete_upload_of_a_killed_writer_on_s3(
    s3_repo_url: tuple[str, dict[str, object]], tmp_path: Path
) -> None:
    """On S3 a pack being streamed is a multipart upload: killed, it lingers unseen (and
    billed) until aborted. gc aborts it once its writer is gone."""
    url, options = s3_repo_url
    repo = Repository.init(url, SMALL, **options)
    store = repo.store
    fs = store.fs  # type: ignore[attr-defined]
    bucket, root_key, _ = fs.split_path(store.root)  # type: ignore[attr-defined]
    key = f"{root_key}/packs/ab/ab" + "0" * 30
    fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key)  # a writer, then kill -9
    (left,) = list(store.list_temporary("packs/"))
    assert left.key.startswith("packs/ab/ab") and "#upload=" in left.key
    report = collect(repo, dry_run=True)
    assert report.temp_files_deleted == 1 and list(store.list_temporary(""))  # dry: kept
    report = collect(repo, dry_run=False)
    assert report.temp_files_deleted == 1
    assert not list(store.list_temporary(""))
    assert check(repo).ok

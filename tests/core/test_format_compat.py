"""The frozen version-1 repository stays readable."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mlvc_core.check import check
from mlvc_core.repository import Repository

DATA = Path(__file__).parent.parent / "data" / "repos"


@pytest.fixture
def v1_repo(tmp_path: Path) -> Path:
    dest = tmp_path / "v1"
    shutil.copytree(DATA / "v1-small", dest)
    return dest


def _expected() -> dict[str, object]:
    doc: dict[str, object] = json.loads((DATA / "v1-small.json").read_text())
    return doc


def _check_out_all(repo: Repository, tmp_path: Path, revs: list[str]) -> None:
    files = _expected()["files"]
    assert isinstance(files, dict)
    for i, rev in enumerate(revs):
        cid = repo.resolve(rev)
        out = tmp_path / f"out{i}"
        repo.checkout(cid, out)
        got = {
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file() and not p.is_symlink()
        }
        assert got == files[cid.hex()]
        assert (out / "link").is_symlink() and str((out / "link").readlink()) == "a.txt"


def test_version_1_repository_reads_and_checks_out(v1_repo: Path, tmp_path: Path) -> None:
    with Repository.open(v1_repo) as repo:
        assert check(repo).ok
        assert repo.resolve("main").hex() == _expected()["main"]
        _check_out_all(repo, tmp_path, ["main", "tags/v1"])

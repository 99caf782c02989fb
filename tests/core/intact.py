"""What crash and concurrency tests prove at the end: nothing committed was lost."""

from __future__ import annotations

from pathlib import Path

from mlvc_core.check import check
from mlvc_core.repository import Repository
from mlvc_core.restore import checkout


def assert_branches_intact(repo: Repository, expected: dict[str, bytes], tmp_path: Path) -> None:
    """fsck clean, and each branch's one file checks out byte-identical to ``expected``."""
    report = check(repo)
    assert report.ok, report.problems
    for i, (branch, data) in enumerate(sorted(expected.items())):
        out = tmp_path / f"verify-{i}"
        checkout(repo, f"heads/{branch}", out)
        (got,) = [p for p in out.rglob("*") if p.is_file()]
        assert got.read_bytes() == data, branch

"""Maintenance verbs: ``gc``, ``fsck`` and ``stats`` (thin wrappers over :mod:`mlvc_core`)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mlvc_core.errors import UsageError
from mlvc_core.repository import Repository
from mlvc_core.session import ProgressFn

if TYPE_CHECKING:
    from mlvc_core.check import CheckReport
    from mlvc_core.gc import GcReport
    from mlvc_core.stats import RepoStats


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1w"`` or plain seconds -> seconds.

    Raises:
        UsageError: Not a duration.
    """
    m = _DURATION.match(text.lower())
    if not m:
        raise UsageError(f"not a duration: {text!r} (examples: 0, 90s, 30m, 1h, 2d)")
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def gc(
    repo: Repository,
    delete: bool = False,
    grace: float = 3600.0,
    progress: ProgressFn | None = None,
) -> GcReport:
    """Find (and with ``delete``, free) data no ref reaches.

    ``grace``: seconds during which packs of a writer that may still be alive are kept.

    Raises:
        RepositoryLocked: Writers are active or another gc runs (only when deleting).
    """
    from mlvc_core.gc import collect

    return collect(repo, dry_run=not delete, grace_seconds=grace, progress=progress)


def upgrade(repo: Repository) -> tuple[int, int]:
    """Upgrade the repository to this mlvc's format version.

    Returns:
        The format version before and after.

    Raises:
        UnsupportedFormatVersion: The repository is newer than this mlvc.
    """
    before = repo.config.version
    repo.upgrade(announce=False)  # the caller reports the upgrade: no second line
    return before, repo.config.version


def stored_size(repo: Repository) -> int:
    """Bytes of every pack (what ``fsck`` reads; for a progress bar)."""
    from mlvc_core.packs import PACK_PREFIX

    return sum(info.size for info in repo.store.list(PACK_PREFIX))


def fsck(repo: Repository, progress: ProgressFn | None = None) -> CheckReport:
    """Verify every pack, index and object, and that refs reach only stored objects."""
    from mlvc_core.check import check

    return check(repo, progress=progress)


def stats(repo: Repository) -> RepoStats:
    """Logical and stored size, dedup ratio and counts."""
    from mlvc_core.stats import stats as repo_stats

    return repo_stats(repo)

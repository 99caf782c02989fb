"""The code snapshot a run records in its first commit (and again when it resumes).

The code directory, honouring ``.gitignore``/``.mlvcignore`` (:mod:`mlvc.tracking.ignore`);
files over the size limit and files past the count limit are left out with a warning, as are
names that are not UTF-8, unreadable files, and files that keep changing while they are read
(a log the run itself writes). Writes only through the caller's write session.
"""

from __future__ import annotations

import logging
import os
import stat as stat_mod
from pathlib import Path

from mlvc.errors import MlvcError
from mlvc.repo import stat_cache
from mlvc.settings import Settings
from mlvc.tracking.ignore import IgnoreMatcher
from mlvc.tracking.options import PathArg
from mlvc_core.ids import ObjectId
from mlvc_core.ingest import ingest_paths
from mlvc_core.session import WriteSession

log = logging.getLogger("mlvc")

__all__ = ["MAX_CODE_FILE_SIZE", "code_size_limit", "shown_name", "snapshot_code"]

MAX_CODE_FILE_SIZE = 64 << 20
"""Default bytes above which a file stays out of the code snapshot."""
CODE_PATIENCE_S = 5.0
"""How long the code snapshot waits for a file that changes while it is read (a log the
run itself writes) before leaving it out with a warning."""


def shown_name(rel: str) -> str:
    r"""A path for a message: bytes that are not UTF-8 as ``\xNN`` escapes."""
    return os.fsencode(rel).decode("utf-8", errors="backslashreplace")


def _untakable(root: Path, rel: str) -> bool:
    """True for a path a snapshot cannot store: a name that is not UTF-8, or unreadable."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return True
    path = root / rel
    try:
        st = os.lstat(path)
    except OSError:
        return False  # gone: the walk skips it
    if stat_mod.S_ISREG(st.st_mode):
        return not os.access(path, os.R_OK)
    if stat_mod.S_ISDIR(st.st_mode):
        return not os.access(path, os.R_OK | os.X_OK)
    return False


def code_size_limit(given: int | None, settings: Settings) -> int:
    """Bytes above which a file stays out of the code snapshot (0: no limit).

    ``given`` (``track(max_code_file_size=...)``) wins; else the project's
    ``snapshot.max_file_size``; else :data:`MAX_CODE_FILE_SIZE`.
    """
    if given is not None:
        return given
    from mlvc.project_config import get_value

    try:
        return int(get_value("snapshot.max_file_size", settings.project_dir))
    except (MlvcError, TypeError, ValueError) as exc:
        log.warning("mlvc: snapshot.max_file_size unreadable (%s); using 64 MiB", exc)
        return MAX_CODE_FILE_SIZE


def snapshot_code(
    session: WriteSession,
    root: Path,
    settings: Settings,
    max_file_size: int | None,
    max_files: int,
) -> ObjectId:
    """Store the code directory ``root`` as a tree; warn about what was left out.

    Args:
        session: The write session to store into.
        root: The code directory.
        settings: The run's settings (the cache directory is left out, as is a local
            repository inside ``root``).
        max_file_size: ``track(max_code_file_size=...)`` (None: the project's setting).
        max_files: The snapshot stops after this many files.

    Returns:
        The tree's id.
    """
    repo = session.repo
    skip: list[PathArg] = [settings.cache_dir]
    if repo.store.is_local:
        skip.append(repo.url)
    matcher = IgnoreMatcher(root, skip_paths=skip)
    limit = code_size_limit(max_file_size, settings)
    too_big: list[str] = []
    changing: list[str] = []
    untakable: list[str] = []
    counted = [0]

    def exclude(rel: str) -> bool:
        if _untakable(root, rel):
            untakable.append(rel)
            return True
        if matcher(rel):
            return True
        try:
            st = os.lstat(root / rel)
        except OSError:
            return True
        if not stat_mod.S_ISREG(st.st_mode):
            return False
        if limit and st.st_size > limit:
            too_big.append(rel)
            return True
        counted[0] += 1
        return counted[0] > max_files

    cache = stat_cache(repo)
    try:
        tree = ingest_paths(
            session,
            [root],
            exclude=exclude,
            stat_cache=cache,
            on_changed=lambda rel, exc: changing.append(rel),
            patience_s=CODE_PATIENCE_S,
        )
    finally:
        if cache is not None:
            cache.close()
    if untakable:
        log.warning(
            "mlvc: code snapshot left out %d file(s) it cannot store (a name that is not "
            "UTF-8, or unreadable): %s",
            len(untakable),
            ", ".join(shown_name(r) for r in untakable[:10]),
        )
    if too_big:
        log.warning(
            "mlvc: code snapshot left out %d file(s) over %s (snapshot.max_file_size; add "
            "them to .mlvcignore, or checkpoint them explicitly): %s%s",
            len(too_big),
            f"{limit / (1 << 20):g} MiB",
            ", ".join(too_big[:10]),
            f" and {len(too_big) - 10} more" if len(too_big) > 10 else "",
        )
    if changing:
        log.warning(
            "mlvc: code snapshot left out %d file(s) that kept changing while they were "
            "read (logs? add them to .mlvcignore): %s",
            len(changing),
            ", ".join(changing[:10]),
        )
    if counted[0] > max_files:
        log.warning(
            "mlvc: code snapshot of %s stopped at %d files; pass track(path=...) or add an "
            ".mlvcignore to snapshot only the code",
            root,
            max_files,
        )
    return tree

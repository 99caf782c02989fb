"""The code snapshot a run records in its first commit (and again when it resumes).

The code directory, honouring ``.gitignore``/``.mlvcignore`` (:mod:`mlvc.tracking.ignore`);
files over the size limit and files past the count limit are left out with a warning, as are
names that are not UTF-8, unreadable files, and files that change while they are copied.
:func:`copy_code` copies the files in the caller's thread when the run starts; the start
commit stores that copy (:func:`snapshot_code`), through the caller's write session.
"""

from __future__ import annotations

import logging
import os
import stat as stat_mod
import time
from pathlib import Path

from mlvc.errors import MlvcError
from mlvc.settings import Settings
from mlvc.tracking.ignore import IgnoreMatcher
from mlvc.tracking.protect import FileProtector
from mlvc_core.ids import ObjectId
from mlvc_core.ingest import ingest_paths
from mlvc_core.session import WriteSession

log = logging.getLogger("mlvc")

__all__ = [
    "MAX_CODE_FILE_SIZE",
    "CODE_COPY_SECONDS",
    "MAX_CODE_TOTAL_SIZE",
    "code_size_limit",
    "copy_code",
    "shown_name",
    "snapshot_code",
]

MAX_CODE_FILE_SIZE = 64 << 20
"""Default bytes above which a file stays out of the code snapshot."""
MAX_CODE_TOTAL_SIZE = 512 << 20
CODE_COPY_SECONDS = 2.0
"""``track()`` spends at most about this long copying the code: a script outside any project
(whose "code directory" is, say, /tmp) must not stall its start for the seconds that copying
20,000 unrelated files takes. Files past it are left out, with a warning."""
"""Bytes of files past which the code snapshot stops (it is copied before ``track()``
returns: this bounds that copy, about 0.2 s from the page cache)."""


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


def copy_code(
    protector: FileProtector,
    root: Path,
    settings: Settings,
    max_file_size: int | None,
    max_files: int,
) -> Path:
    """Copy the code directory ``root`` into a private copy now; warn about what is left out.

    Called by ``track()`` before it returns, so the recorded code is what was on disk then,
    however late the start commit lands (a gc holding the repository, a start retried at the
    first checkpoint). Only the files the snapshot keeps are copied (ignore rules, the size
    and count limits), each cloned or copied by the kernel (:mod:`mlvc.tracking.copies`), so
    the cost is bounded by ``max_files`` files, :data:`MAX_CODE_TOTAL_SIZE` bytes in all and
    :data:`CODE_COPY_SECONDS` of copying (what is past a bound is left out, with a warning).
    Measured on the development machine (2 shared cores, ext4, no reflinks): about 75 ms
    for a project of 300 source files (2.5 MB), most of it matching the ignore rules, which
    the snapshot paid in the background before.

    Args:
        protector: The run's file protector (owns the copier and the copy directories).
        root: The code directory.
        settings: The run's settings.
        max_file_size: ``track(max_code_file_size=...)`` (None: the project's setting).
        max_files: The snapshot stops after this many files.

    Returns:
        The copy of ``root`` (inside a copy directory: remove its parent once stored).

    Raises:
        OSError: The copy directory could not be made.
    """
    matcher = IgnoreMatcher(root, skip_paths=list(protector.skip_dirs))
    limit = code_size_limit(max_file_size, settings)
    too_big: list[str] = []
    untakable: list[str] = []
    counted = [0, 0]  # files, bytes
    deadline = time.monotonic() + CODE_COPY_SECONDS
    late = [0]

    def exclude(rel: str) -> bool:
        if late[0] or time.monotonic() > deadline:
            late[0] += 1
            return True
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
        counted[1] += st.st_size
        return counted[0] > max_files or counted[1] > MAX_CODE_TOTAL_SIZE

    copy, changing = protector.copy_tree(root, exclude)
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
            "mlvc: code snapshot left out %d file(s) that kept changing (or vanished) while "
            "they were copied (logs? add them to .mlvcignore): %s",
            len(changing),
            ", ".join(shown_name(r) for r in changing[:10]),
        )
    if late[0]:
        log.warning(
            "mlvc: code snapshot of %s stopped after %g s of copying (%d files taken); pass "
            "track(path=...) or add an .mlvcignore to snapshot only the code",
            root,
            CODE_COPY_SECONDS,
            counted[0],
        )
    elif counted[0] > max_files or counted[1] > MAX_CODE_TOTAL_SIZE:
        log.warning(
            "mlvc: code snapshot of %s stopped at %d files or %d MiB; pass track(path=...) or "
            "add an .mlvcignore to snapshot only the code",
            root,
            max_files,
            MAX_CODE_TOTAL_SIZE >> 20,
        )
    return copy


def snapshot_code(session: WriteSession, copy: Path) -> ObjectId:
    """Store the private copy :func:`copy_code` made as a tree.

    Args:
        session: The write session to store into.
        copy: The copy of the code directory.

    Returns:
        The tree's id.
    """
    return ingest_paths(session, [copy])

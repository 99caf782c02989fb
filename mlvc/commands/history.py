"""History verbs: ``commit`` (snapshot paths on a branch), ``log``, and tags.

Tags remember where they pointed: moving a tag appends its previous target to a ``history``
list in the tag ref's summary (``mlvc_core.walk`` keeps those commits alive through ``gc``),
so a rollback is tagging the old id again and ``log NAME`` shows every version it named.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mlvc.commands._describe import (
    CommitInfo,
    describe_commit,
    list_files,
)
from mlvc.experiments.revisions import check_new_name, oid_of, resolve
from mlvc.experiments.summary import iso
from mlvc_core.errors import FormatError, InvalidRefName, ObjectNotFound, RefNotFound, UsageError
from mlvc_core.history import default_author, record_paths
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.refs import Ref, validate_name
from mlvc_core.repository import Repository
from mlvc_core.session import ProgressFn

DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class CommitResult:
    """What ``commit`` stored."""

    id: str
    branch: str | None
    files: int
    total_bytes: int
    """Size of every file in the snapshot."""
    new_bytes: int
    """Bytes of content the repository did not have before (uncompressed)."""
    stored_bytes: int
    """What those new bytes took in storage (compressed), including metadata."""
    parent: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def input_size(paths: Iterable[str | os.PathLike[str]]) -> int:
    """Bytes of the regular files under ``paths`` (for a progress bar; symlinks not followed)."""
    total = 0
    for p in paths:
        path = Path(p)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
        elif path.is_dir() and not path.is_symlink():
            for dirpath, _dirs, files in os.walk(path):
                for name in files:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
    return total


def _special_kind(mode: int) -> str | None:
    """What a FIFO, socket or device is called in a message; None for recordable kinds."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    return "a special file"


def snapshot_roots(
    paths: list[Path], cwd: Path | None = None
) -> tuple[list[Path], Callable[[str], bool] | None]:
    """What to hand the core's ingest so the snapshot names files as the user typed them.

    When every path lies inside ``cwd`` (default: the current directory), the snapshot is
    ``cwd`` itself, walked only along the given paths: ``data/`` and ``data/notes.txt``
    keep their ``data/`` prefix, and nothing else in ``cwd`` is read. A path outside ``cwd``
    (absolute elsewhere, or through ``..``) cannot keep its name: then, as before, a single
    directory becomes the snapshot's root and otherwise each path an entry named by its base
    name.

    Returns:
        ``(paths for ingest, exclude predicate on tree paths or None)``.

    Raises:
        UsageError: A path does not exist, or is a FIFO, socket or device (content that
            cannot be recorded; inside a directory such files are skipped instead).
    """
    here = (cwd or Path.cwd()).absolute()
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            raise UsageError(f"no such file or directory: {p}") from None
        except OSError as exc:
            raise UsageError(f"cannot read {p}: {exc.strerror}") from None
        kind = _special_kind(st.st_mode)
        if kind is not None:
            raise UsageError(
                f"{p} is {kind}: only files, directories and symlinks can be committed"
            )
    wanted: list[str] = []
    for p in paths:
        full = Path(os.path.normpath(here / p))
        try:
            rel = full.relative_to(here).as_posix()
        except ValueError:
            return paths, None  # outside: the base-name layout
        if rel == ".":
            return [here], None  # the whole directory
        wanted.append(rel)

    def exclude(rel: str) -> bool:
        return not any(
            rel == w or rel.startswith(w + "/") or w.startswith(rel + "/") for w in wanted
        )

    return [here], exclude


def commit(
    repo: Repository,
    paths: Iterable[str | os.PathLike[str]],
    message: str,
    branch: str | None = DEFAULT_BRANCH,
    progress: ProgressFn | None = None,
) -> CommitResult:
    """Snapshot files or directories as a commit on ``branch``.

    Files whose size, times and inode match the stat cache are not read again; content the
    repository already holds is not stored again.

    Args:
        repo: The repository.
        paths: Files and directories. Each is recorded at the path it was given by, relative
            to the current directory (``data/`` records ``data/...``, as git does); see
            :func:`snapshot_roots` for paths outside it.
        message: The commit message.
        branch: The branch to advance (compare-and-swap), or None for a loose commit.
        progress: Called with bytes read.

    Raises:
        UsageError: A path does not exist, or lies in the repository or its cache.
        RefConflict: The branch moved while committing.
    """
    from mlvc.repo import stat_cache as open_stat_cache

    path_list = [Path(p) for p in paths]
    if not path_list:
        raise UsageError("nothing to commit: give files or directories")
    if branch is not None and repo.refs.get(validate_name(f"heads/{branch}")) is None:
        check_new_name(repo, "heads", branch)
    own = repo.own_directories()
    for p in path_list:
        for d in (p.absolute(), *p.absolute().parents):
            try:
                st = d.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in own:
                raise UsageError(f"{p} is in the repository (or its cache): it is never committed")
    roots, exclude = snapshot_roots(path_list)
    stat_cache = open_stat_cache(repo)
    try:
        done = record_paths(
            repo,
            roots,
            message,
            branch=branch,
            progress=progress,
            stat_cache=stat_cache,
            exclude=exclude,
        )
    finally:
        if stat_cache is not None:
            stat_cache.close()
    cid = done.commit
    files = list_files(repo, cid)
    parents = repo.read_commit(cid).parents
    return CommitResult(
        id=to_hex(cid),
        branch=branch,
        files=sum(1 for f in files if f.kind == "file"),
        total_bytes=sum(f.size for f in files),
        new_bytes=done.new_bytes,
        stored_bytes=done.stored_bytes,
        parent=to_hex(parents[0]) if parents else None,
    )


# --------------------------------------------------------------------------------------- log


@dataclass(frozen=True)
class LogEntry:
    """One line of history."""

    commit: CommitInfo
    tagged_at: float | None = None
    """For a tag's history: when the tag was set to this commit."""
    tagged_by: str | None = None
    current: bool = False
    """For a tag's history: the tag points here now."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        d = self.commit.to_dict()
        if self.tagged_at is not None:
            d.update(tagged_at=iso(self.tagged_at), tagged_by=self.tagged_by, current=self.current)
        return d


@dataclass(frozen=True)
class LogResult:
    """History of a branch, an experiment, a tag or a commit."""

    ref: str
    kind: Literal["branch", "experiment", "tag", "commit"]
    entries: list[LogEntry]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"ref": self.ref, "kind": self.kind, "entries": [e.to_dict() for e in self.entries]}


def log(repo: Repository, spec: str | None = None, limit: int | None = None) -> LogResult:
    """History, newest first.

    * a branch (default ``main``): its commits, following first parents;
    * an experiment: its checkpoints (hidden ones left out) down to its first commit;
    * a tag: every commit it has named, with when it was moved there;
    * any other id: the commits from there.

    Raises:
        RefNotFound: The default branch does not exist yet.
        ObjectNotFound: Nothing by that name.
    """
    if spec is None:
        head = repo.head(DEFAULT_BRANCH)
        if head is None:
            raise RefNotFound(f"heads/{DEFAULT_BRANCH}")
        return LogResult(head.name, "branch", _walk(repo, head.target, limit))
    tag = None
    try:
        tag = repo.refs.get(f"tags/{spec}")
    except InvalidRefName:
        pass
    if tag is not None:
        return LogResult(tag.name, "tag", _tag_log(repo, tag, limit))
    target = resolve(repo, spec)
    if target.kind == "experiment" and target.experiment_id is not None:
        exp = target.experiment  # already read: its ref's target and summary
        if exp is not None:
            name, tip, summary = f"experiments/{exp.id}", exp.target, exp.summary
        else:
            ref = repo.refs.require(f"experiments/{target.experiment_id}")
            name, tip, summary = ref.name, ref.target, ref.summary
        hidden = set(summary.get("removed") or [])
        entries = [e for e in _walk(repo, tip, None) if e.commit.id not in hidden]
        return LogResult(name, "experiment", entries[:limit] if limit else entries)
    if target.via and target.via.startswith("heads/"):
        return LogResult(target.via, "branch", _walk(repo, target.commit_id, limit))
    return LogResult(target.id, "commit", _walk(repo, target.commit_id, limit))


def _walk(repo: Repository, start: ObjectId, limit: int | None) -> list[LogEntry]:
    return [LogEntry(describe_commit(repo, oid)) for oid, _ in repo.log(start, limit)]


def _tag_log(repo: Repository, tag: Ref, limit: int | None) -> list[LogEntry]:
    entries = [
        LogEntry(
            describe_commit(repo, tag.target),
            tagged_at=float(tag.summary.get("set_at") or 0.0),
            tagged_by=str(tag.summary.get("set_by") or ""),
            current=True,
        )
    ]
    for old in reversed(tag.summary.get("history") or []):
        try:
            info = describe_commit(repo, oid_of(old["target"]))
        except (KeyError, TypeError, ValueError, ObjectNotFound, UsageError):
            continue
        entries.append(
            LogEntry(
                info,
                tagged_at=float(old.get("set_at") or 0.0),
                tagged_by=str(old.get("set_by") or ""),
            )
        )
    return entries[:limit] if limit else entries


# --------------------------------------------------------------------------------------- tags


@dataclass(frozen=True)
class TagInfo:
    """A tag and what it names."""

    name: str
    target: CommitInfo
    set_at: float | None
    set_by: str | None
    previous: str | None = None
    """The commit it named before this change (set/delete), if any."""
    versions: int = 1
    """How many commits it has named."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "name": self.name,
            "target": self.target.to_dict(),
            "set_at": iso(self.set_at),
            "set_by": self.set_by,
            "previous": self.previous,
            "versions": self.versions,
        }


def _tag_info(repo: Repository, ref: Ref, previous: str | None = None) -> TagInfo:
    return TagInfo(
        name=ref.short_name,
        target=describe_commit(repo, ref.target),
        set_at=ref.summary.get("set_at"),
        set_by=ref.summary.get("set_by"),
        previous=previous,
        versions=1 + len(ref.summary.get("history") or []),
    )


def tag_set(repo: Repository, name: str, spec: str) -> TagInfo:
    """Point tag ``name`` at what ``spec`` names, remembering where it pointed before.

    Raises:
        InvalidRefName: A name with characters outside ``[A-Za-z0-9._-]``.
        UsageError: A new tag's name is a branch's, or reads as an id (7+ hex digits).
        RefConflict: Someone moved the tag at the same moment.
    """
    ref_name = validate_name(f"tags/{name}")
    target = resolve(repo, spec).commit_id
    current = repo.refs.get(ref_name)
    if current is None:
        check_new_name(repo, "tags", name)
    if current is not None and current.target == target:
        return _tag_info(repo, current, to_hex(target))
    now = time.time()
    summary: dict[str, Any] = {
        "type": "tag",
        "set_at": now,
        "set_by": default_author(),
        "history": [],
    }
    if current is not None:
        history = list(current.summary.get("history") or [])
        history.append(
            {
                "target": to_hex(current.target),
                "set_at": current.summary.get("set_at"),
                "set_by": current.summary.get("set_by"),
                "moved_at": now,
            }
        )
        summary["history"] = history
    ref = repo.refs.set(ref_name, target, current.target if current else None, summary)
    return _tag_info(repo, ref, to_hex(current.target) if current else None)


def tag_delete(repo: Repository, name: str) -> TagInfo | None:
    """Remove tag ``name`` (its history goes with it; ``gc`` may then free what only it kept).

    A tag that cannot be read (``mlvc fsck`` names it) is removed as well; None is returned
    for it, as what it pointed at is unknown. The tag goes only as it was read: one moved
    meanwhile (by another process) stays, and that is a conflict.

    Raises:
        RefNotFound: No such tag.
        RefConflict: The tag changed between reading and removing it.
    """
    ref_name = validate_name(f"tags/{name}")
    try:
        ref = repo.refs.require(ref_name)
    except FormatError:
        repo.refs.delete_unreadable(ref_name)
        return None
    info = _tag_info(repo, ref, to_hex(ref.target))
    repo.refs.delete(ref.name, expected=ref)
    return info


def tag_list(repo: Repository) -> list[TagInfo]:
    """Every readable tag, by name (an unreadable one is left out with a warning)."""
    refs, bad = repo.refs.scan("tags")
    for _name, why in bad:
        logging.getLogger("mlvc").warning("mlvc: tag left out: %s", why)
    return [_tag_info(repo, r) for r in refs]

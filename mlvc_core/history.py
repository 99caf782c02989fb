"""The one path by which a commit is recorded and a ref moved to it.

:func:`advance` stores a commit through a write session, publishes the session (packs, then
their index file), and only then moves the ref by compare-and-swap: the write ordering of
docs/format.md. When another writer moved the ref first, the ref is read again, the commit is
re-parented onto the new tip (the caller's ``make`` builds it again) and the swap retried after
a jittered, growing pause; a conflict that left the target alone (only the ref's summary
changed) keeps the commit as it is. Every branch, experiment and checkpoint commit goes
through here; nothing else moves a ref to a new commit.

:func:`record_paths` (and :func:`commit_paths`, its short form) snapshots files into a commit
on a branch through it. This module owns no storage format of its own and never reads the
environment.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlvc_core import ingest
from mlvc_core.errors import MlvcError, RefConflict, RefNotFound
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import Commit
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository
from mlvc_core.session import ProgressFn, WriteSession

if TYPE_CHECKING:
    from mlvc_core.statcache import StatCache

CAS_ATTEMPTS = 30
"""Compare-and-swap attempts before :func:`advance` gives up with :class:`RefConflict`."""

MakeFn = Callable[[ObjectId | None], Commit]
"""Builds the commit to record on top of a parent (None: the ref does not exist yet)."""
SummarizeFn = Callable[[dict[str, Any], str], dict[str, Any]]
"""Given the ref's current summary (``{}`` for a new ref) and the new commit's hex id, returns
the summary stored beside the new target."""


@dataclass(frozen=True)
class Advanced:
    """What :func:`advance` recorded."""

    commit: ObjectId
    """The commit the ref now points at."""
    ref: Ref
    """The ref as moved (its new version, target and summary)."""
    new_bytes: int
    """Bytes of content (uncompressed) the session stored, this commit's objects included."""
    stored_bytes: int
    """Bytes the session wrote into packs for them (after compression)."""


def retry_pause(attempt: int) -> None:
    """Sleep a jittered, doubling interval (at most about 1.5 s) before retrying a swap."""
    time.sleep(min(1.0, 0.02 * 2**attempt) * (0.5 + random.random()))


def advance(
    session: WriteSession,
    name: str,
    expected: Ref | None,
    make: MakeFn,
    summarize: SummarizeFn | None = None,
    *,
    reparent: bool = True,
    attempts: int = CAS_ATTEMPTS,
) -> Advanced:
    """Store ``make(parent)`` and move ref ``name`` to it by compare-and-swap.

    The commit is stored and the session flushed before the ref moves, so no reader ever
    sees a ref pointing at something missing. A lost race is retried: the ref is read again
    and, if its target moved, the commit is built again on the new target (unless
    ``reparent`` is false) and stored. Without ``summarize`` the ref keeps its summary.

    Args:
        session: An open write session; it is flushed (and stays open).
        name: Full ref name, e.g. ``heads/main`` or ``experiments/<id>``.
        expected: The ref as the caller read it, or None to create the ref.
        make: Builds the commit on a parent (``expected``'s target at first; None when
            creating).
        summarize: Builds the ref's new summary from its current one and the commit's hex id.
        reparent: When false, a ref whose target moved is a conflict, not a retry (a user's
            ``mlvc commit`` reports it instead of recording onto a tip it never saw).
        attempts: Compare-and-swap attempts before giving up.

    Returns:
        The commit id, the moved ref and the bytes the session stored.

    Raises:
        RefConflict: The target moved and ``reparent`` is false, or the race was still lost
            after ``attempts`` tries.
        RefNotFound: The ref was deleted while this was retrying.
        InvalidRefName: ``name`` is not a valid ref name.
        LockLost: The session lost its lock to gc; the ref was not moved.
    """
    refs = session.repo.refs
    parent = expected.target if expected is not None else None
    commit = make(parent)
    cid = session.add_object(commit)
    session.flush()
    current = expected
    for attempt in range(max(1, attempts)):
        session.check_lock()  # gc may have run if this process was paused past its lease
        try:
            if current is None:
                summary = summarize({}, to_hex(cid)) if summarize is not None else {}
                moved = refs.set(name, cid, None, summary)
            else:
                summary = (
                    summarize(current.summary, to_hex(cid))
                    if summarize is not None
                    else current.summary
                )
                moved = refs.move(current, cid, summary)
            return Advanced(cid, moved, session.new_bytes, session.stored_bytes)
        except RefConflict as exc:
            if attempt + 1 >= attempts:
                raise
            now = refs.get(name)
            if now is None and current is not None:
                raise RefNotFound(name) from exc  # deleted meanwhile: nothing to build on
            target = now.target if now is not None else None
            if target != parent:
                if not reparent:
                    raise RefConflict(
                        name,
                        to_hex(parent) if parent is not None else None,
                        to_hex(target) if target is not None else None,
                    ) from exc
                parent = target
                commit = make(parent)
                cid = session.add_object(commit)
                session.flush()
            current = now
            retry_pause(attempt)
    raise RefConflict(name, to_hex(parent) if parent is not None else None)


def default_author() -> str:
    """``user@host`` of this process (the author recorded in its commits)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Recorded:
    """What :func:`record_paths` recorded."""

    commit: ObjectId
    """The new commit."""
    ref: Ref | None
    """The branch as moved, or None for a loose commit."""
    new_bytes: int
    """Bytes of content (uncompressed) stored that the repository did not hold."""
    stored_bytes: int
    """Bytes written into packs for them (after compression)."""


def record_paths(
    repo: Repository,
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    message: str = "",
    branch: str | None = "main",
    metadata: dict[str, Any] | None = None,
    parents: Iterable[ObjectId] | None = None,
    exclude: Callable[[str], bool] | None = None,
    progress: ProgressFn | None = None,
    stat_cache: StatCache | None = None,
) -> Recorded:
    """Snapshot files or directories as a commit and (optionally) move a branch to it.

    A single directory becomes the tree root; several paths (or a file) become entries of
    the root named by their base names. The branch moves through :func:`advance` without
    re-parenting: if another writer moved it meanwhile, this is a conflict, not a retry.

    Args:
        repo: The repository.
        paths: Files or directories to snapshot.
        message: Commit message.
        branch: Branch to advance by compare-and-swap, or None to write a loose commit.
        metadata: Free-form mapping stored in the commit.
        parents: Parents; default the branch's current commit.
        exclude: Predicate on ``/``-separated relative paths to leave out.
        progress: Called with bytes read.
        stat_cache: A stat cache to skip unchanged files.

    Returns:
        The new commit, the moved branch and the bytes stored.

    Raises:
        RefConflict: The branch moved while committing.
        RepositoryLocked: gc kept the repository locked for too long.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    ref = repo.head(branch) if branch is not None else None
    expected = ref.target if ref is not None else None
    chosen = [expected] if expected is not None and parents is None else list(parents or [])
    guide = None
    if chosen:
        # Files changed since the parent are verified against its version chunk by chunk
        # before anything is cut: re-committing rewritten or copied data stays fast.
        with contextlib.suppress(MlvcError):
            guide = repo.read_commit(chosen[0]).tree
    with WriteSession(repo, progress) as s:
        tree_id = ingest.ingest_paths(
            s, list(paths), exclude=exclude, stat_cache=stat_cache, guide=guide
        )

        def make(_parent: ObjectId | None) -> Commit:
            return Commit(
                tree=tree_id,
                parents=tuple(chosen),
                author=default_author(),
                time=time.time(),
                message=message,
                metadata=dict(metadata or {}),
            )

        if branch is None:
            cid = s.add_object(make(None))
            s.flush()
            return Recorded(cid, None, s.new_bytes, s.stored_bytes)
        done = advance(s, f"heads/{branch}", ref, make, reparent=False)
        return Recorded(done.commit, done.ref, done.new_bytes, done.stored_bytes)


def commit_paths(
    repo: Repository,
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    message: str = "",
    branch: str | None = "main",
    metadata: dict[str, Any] | None = None,
    parents: Iterable[ObjectId] | None = None,
    exclude: Callable[[str], bool] | None = None,
    progress: ProgressFn | None = None,
    stat_cache: StatCache | None = None,
) -> ObjectId:
    """:func:`record_paths`, returning only the new commit's id (arguments and errors alike)."""
    return record_paths(
        repo, paths, message, branch, metadata, parents, exclude, progress, stat_cache
    ).commit

"""Storing a run's experiment: its start, resume, checkpoints and end, as commits and a ref.

Write ordering (docs/format.md): the files and trees, then the commit, then the experiment's
ref by compare-and-swap, all inside one write session, whose shared lock keeps gc away from
what it stored until the ref reaches it. Every commit of a run (start, resume, checkpoint),
and every checkpoint ``mlvc sync`` sends from the outbox, goes through the core's one commit
path, :func:`mlvc_core.history.advance`; an end rewrites only the ref's summary
(:func:`update_summary`). Commit and summary formats: docs/experiments.md.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlvc.errors import MlvcError
from mlvc.experiments.catalog import compact_catalog
from mlvc.experiments.summary import (
    ExperimentSummary,
    heartbeat_key,
    ref_name,
    summary_with_checkpoint,
)
from mlvc.repo import open_repo
from mlvc.settings import Settings
from mlvc.tracking.code import shown_name, snapshot_code
from mlvc.tracking.environment import environment
from mlvc.tracking.heartbeat import Heartbeat
from mlvc.tracking.jobs import CheckpointChanged, Job
from mlvc.tracking.protect import remove_copy_dirs
from mlvc_core.errors import RefConflict, RefNotFound
from mlvc_core.history import CAS_ATTEMPTS, MakeFn, advance, default_author, retry_pause
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.ingest import TreeBuilder
from mlvc_core.objects import Commit, Tree, TreeEntry
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession

log = logging.getLogger("mlvc")

__all__ = [
    "ExperimentRemoved",
    "ExperimentWriter",
    "on_parent",
    "checkpoint_commit",
    "end_summary",
    "overlay",
    "status_of",
    "update_summary",
]

INTERRUPTS = ("SIGTERM", "SIGINT", "KeyboardInterrupt")


def on_parent(make: Callable[[ObjectId], Commit]) -> MakeFn:
    """``make`` for :func:`~mlvc_core.history.advance` on an existing ref (always a parent)."""

    def build(parent: ObjectId | None) -> Commit:
        assert parent is not None  # the experiment's ref exists: every commit has a parent
        return make(parent)

    return build


def update_summary(
    repo: Repository, name: str, summarize: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> Ref | None:
    """Rewrite a ref's summary by CAS, retrying on conflicts; its target stays.

    No commit is recorded, so this is not :func:`~mlvc_core.history.advance`'s work: a lost
    race only reads the ref again and rebuilds the summary.

    Args:
        repo: The repository.
        name: The ref.
        summarize: The new summary from the current one; None leaves the ref alone.

    Returns:
        The ref as rewritten; None if it is gone or ``summarize`` declined.

    Raises:
        RefConflict: Still losing the race after many attempts.
    """
    for attempt in range(CAS_ATTEMPTS):
        ref = repo.refs.get(name)
        if ref is None:
            return None
        summary = summarize(ref.summary)
        if summary is None:
            return None
        try:
            return repo.refs.update_summary(ref, summary)
        except RefConflict:
            retry_pause(attempt)
    raise RefConflict(name, None)


def status_of(reason: str, error: Mapping[str, str] | None) -> str:
    """The status recorded for an end: ``failed``, ``interrupted`` or ``stopped``."""
    if error is not None:
        return "failed"
    return "interrupted" if reason in INTERRUPTS else "stopped"


def end_summary(
    old: Mapping[str, Any], reason: str, error: dict[str, str] | None, ended: float
) -> dict[str, Any]:
    """An experiment's summary once its run ended."""
    return (
        ExperimentSummary.from_dict(dict(old))
        .ended_with(status_of(reason, error), ended, reason, error)
        .to_dict()
    )


def overlay(session: WriteSession, base: ObjectId | None, entries: Mapping[str, TreeEntry]) -> Tree:
    """A tree: ``base`` with ``entries`` (relative path -> entry) put in place, subtrees stored."""
    repo = session.repo
    tree = repo.read_tree(base) if base is not None else Tree()
    by_name = {e.name: e for e in tree.entries}
    groups: dict[str, dict[str, TreeEntry]] = {}
    for rel, e in entries.items():
        head, _, rest = rel.partition("/")
        if rest:
            groups.setdefault(head, {})[rest] = e
        else:
            by_name[head] = replace(e, name=head)
    for head, sub in groups.items():
        current = by_name.get(head)
        sub_base = current.oid if current is not None and current.kind == "dir" else None
        subtree = overlay(session, sub_base, sub)
        by_name[head] = TreeEntry(head, "dir", session.add_object(subtree), subtree.size, 0o755)
    return Tree(tuple(by_name.values()))


def checkpoint_commit(
    tree: ObjectId,
    parent: ObjectId,
    exp_id: str,
    step: int | None,
    metrics: dict[str, Any],
    primary: tuple[str, str] | None,
    when: float,
    paths: list[str],
) -> Commit:
    """The commit recording one checkpoint (format: docs/experiments.md)."""
    metrics_text = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )
    return Commit(
        tree=tree,
        parents=(parent,),
        author=default_author(),
        time=when,
        message=f"checkpoint step {step}" + (f": {metrics_text}" if metrics_text else ""),
        metadata={
            "type": "checkpoint",
            "experiment": exp_id,
            "step": step,
            "metrics": metrics,
            "primary_metric": {"name": primary[0], "goal": primary[1]} if primary else None,
            "paths": paths,
        },
    )


class ExperimentRemoved(MlvcError):
    """The run's experiment was removed (``mlvc rm``) while the run went on."""


class ExperimentWriter:
    """Records one run's experiment in its repository; used by the background thread only.

    Attributes:
        repo: The repository (opened, and created if missing, by the start).
        exp_id: The experiment's id once its start is recorded.
        code_tree: The code snapshot's tree.
        summary: The experiment's summary as last written.
        saved: Checkpoints stored by this run.
        removed: The experiment was removed (``mlvc rm``) while the run went on.
        unrecorded: Checkpoints not recorded because the experiment had been removed.
    """

    def __init__(
        self,
        settings: Settings | None,
        repo: Repository | None,
        heartbeat: Heartbeat,
        code_dir: Path,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.heartbeat = heartbeat
        self.code_dir = code_dir
        self.exp_id: str | None = None
        self.code_tree: ObjectId | None = None
        self.code_copy: Path | None = None
        """The private copy of the code taken by ``track()``, read by the start."""
        self.summary: dict[str, Any] = {}
        self.saved = 0
        self.removed = False
        self.unrecorded = 0

    def open(self) -> Repository:
        """The repository, opened (and created if missing) on first use."""
        if self.repo is None:
            assert self.settings is not None
            self.repo = open_repo(self.settings, create=True)
        return self.repo

    def start(
        self,
        name: str,
        params: dict[str, Any],
        primary: tuple[str, str] | None,
        started: float,
        argv: list[str],
        resume_id: str | None,
    ) -> None:
        """Record the experiment's first commit, or a ``resume`` commit on ``resume_id``."""
        repo = self.open()
        assert self.settings is not None
        env = environment(self.code_dir, argv)
        meta: dict[str, Any] = {
            "name": name,
            "params": params,
            "env": env,
            "started": started,
            "code_path": str(self.code_dir),
        }
        # Refs move while the session is still open (after flush): the session's shared lock
        # keeps gc away from what it stored until a ref reaches it (docs/format.md).
        with WriteSession(repo) as s:
            if self.code_copy is None:
                raise MlvcError("the code snapshot was not taken when the run started")
            code_tree = self.code_tree = snapshot_code(s, self.code_copy)
            if resume_id is None:
                first = Commit(
                    tree=code_tree,
                    author=default_author(),
                    time=started,
                    message=f"experiment {name}",
                    metadata={"type": "experiment", **meta},
                )
                exp_id = to_hex(s.add_object(first))  # its id names the experiment
                self.heartbeat.write(repo.store, exp_id)  # before the ref: listed runs have one
                summary = ExperimentSummary(
                    name=name,
                    created=started,
                    user=env["user"],
                    host=env["host"],
                    command=env["command_line"],
                    params=params,
                    primary_metric=primary,
                ).to_dict()
                created = advance(
                    s,
                    ref_name(exp_id),
                    None,
                    lambda _parent: first,
                    lambda _old, _cid: summary,
                    reparent=False,  # a new experiment: its ref cannot exist yet
                )
                self.summary = created.ref.summary
            else:
                exp_id = resume_id
                self.heartbeat.write(repo.store, exp_id)

                def make(parent: ObjectId) -> Commit:
                    return Commit(
                        tree=code_tree,
                        parents=(parent,),
                        author=default_author(),
                        time=started,
                        message=f"resume {name}",
                        metadata={"type": "resume", "experiment": exp_id, **meta},
                    )

                def summarize(old: dict[str, Any], _cid: str) -> dict[str, Any]:
                    return ExperimentSummary.from_dict(old).resumed_with(params).to_dict()

                ref = repo.refs.require(ref_name(exp_id))
                self.summary = advance(s, ref.name, ref, on_parent(make), summarize).ref.summary
        self.exp_id = exp_id
        self.drop_code_copy()
        self.heartbeat.start(repo.store, exp_id)

    def drop_code_copy(self) -> None:
        """Remove the private copy of the code (stored, or the run is over)."""
        if self.code_copy is not None:
            remove_copy_dirs([self.code_copy.parent])
            self.code_copy = None

    def checkpoint(self, job: Job, progress: Callable[[int], None] | None = None) -> None:
        """Store one checkpoint's files over the code snapshot, commit, move the ref.

        Raises:
            CheckpointChanged: A file changed before it was stored (the checkpoint is dropped).
            CopyFailed: A background copy of a file failed.
            ExperimentRemoved: The experiment was removed while the run went on.
        """
        assert self.exp_id is not None
        try:
            self._checkpoint(job, progress)
        except RefNotFound as exc:
            self.removed = True
            self.unrecorded += 1
            raise ExperimentRemoved(
                f"experiment {self.exp_id[:12]} was removed (mlvc rm) while the run went on: "
                f"the checkpoint at step {job.step} was not recorded"
            ) from exc

    def _checkpoint(self, job: Job, progress: Callable[[int], None] | None) -> None:
        assert self.exp_id is not None
        repo, exp_id = self.open(), self.exp_id
        ref = repo.refs.require(ref_name(exp_id))
        with WriteSession(repo, progress) as s:
            # The previous checkpoint's files guide this one's: unchanged tensors are verified
            # by hash instead of being cut and compressed again.
            guide = None
            with contextlib.suppress(MlvcError):
                guide = repo.read_commit(ref.target).tree
            unnamable: list[str] = []

            def exclude(rel: str) -> bool:
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    unnamable.append(rel)
                    return True
                return False

            builder = TreeBuilder(s, exclude=exclude, guide=guide)
            entries: dict[str, TreeEntry] = {}
            for rel, copied in job.files.items:
                name = rel.rsplit("/", 1)[-1]
                entry = job.read(copied, lambda path: builder.entry(path, name, rel))  # noqa: B023
                if entry is not None:
                    entries[rel] = entry
            if unnamable:
                log.warning(
                    "mlvc: checkpoint at step %s left out %d file(s) whose name is not UTF-8: %s",
                    job.step,
                    len(unnamable),
                    ", ".join(shown_name(r) for r in unnamable[:10]),
                )
            changed = job.changed_in_place()
            if changed:
                raise CheckpointChanged(
                    f"{changed[0]} changed before mlvc had stored it, so the checkpoint at step "
                    f"{job.step} was not recorded; with checkpoint(copy=False) leave the files "
                    "alone until the next checkpoint (or call run.flush() first)"
                )
            tree_id = s.add_object(overlay(s, self.code_tree, entries))
            paths = [rel for rel, _ in job.files.items]

            def make(parent: ObjectId) -> Commit:
                return checkpoint_commit(
                    tree_id, parent, exp_id, job.step, job.metrics, job.primary, job.time, paths
                )

            def summarize(old: dict[str, Any], cid: str) -> dict[str, Any]:
                new = summary_with_checkpoint(old, cid, job.step, job.metrics, job.primary)
                new["status"] = "running"
                return new

            self.summary = advance(s, ref.name, ref, on_parent(make), summarize).ref.summary
        self.saved += 1

    def stop(self, reason: str, error: dict[str, str] | None) -> None:
        """Record the run's end in the summary; delete the heartbeat; compact the catalog."""
        if self.exp_id is None or self.repo is None:
            return
        repo, ended = self.repo, time.time()
        ref = None
        with contextlib.suppress(RefConflict):  # still racing after many attempts: as it was
            ref = update_summary(
                repo, ref_name(self.exp_id), lambda old: end_summary(old, reason, error, ended)
            )
        if ref is not None:
            self.summary = ref.summary
        elif repo.refs.get(ref_name(self.exp_id)) is None:
            self.removed = True  # nothing to end: removed while the run went on
        repo.store.delete(heartbeat_key(self.exp_id))
        with contextlib.suppress(MlvcError, OSError):
            compact_catalog(repo)  # a writer keeps the experiment catalog compact

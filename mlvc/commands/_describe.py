"""Describing commits and files the way ``log``, ``show`` and ``--json`` present them.

Names typed by users are resolved by :mod:`mlvc.experiments.revisions`; this module only turns
commits and trees into :class:`CommitInfo` and :class:`FileInfo`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mlvc.experiments.summary import iso
from mlvc_core.ids import SHORT_LEN, ObjectId, to_hex
from mlvc_core.repository import Repository
from mlvc_core.trees import walk_tree


@dataclass(frozen=True)
class CommitInfo:
    """One commit as people and scripts see it."""

    id: str
    time: float
    author: str
    message: str
    type: str
    """``experiment``, ``checkpoint`` or ``commit`` (from its metadata)."""
    parents: list[str]
    experiment: str | None = None
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (time as ISO 8601)."""
        d = asdict(self)
        d["time"] = iso(self.time)
        d["short_id"] = self.id[:SHORT_LEN]
        return d


def describe_commit(repo: Repository, oid: ObjectId) -> CommitInfo:
    """Read one commit into a :class:`CommitInfo`."""
    c = repo.read_commit(oid)
    meta = c.metadata
    kind = str(meta.get("type") or "commit")
    experiment = meta.get("experiment") if kind == "checkpoint" else None
    if kind == "experiment":
        experiment = to_hex(oid)
    step = meta.get("step")
    return CommitInfo(
        id=to_hex(oid),
        time=c.time,
        author=c.author,
        message=c.message,
        type=kind,
        parents=[to_hex(p) for p in c.parents],
        experiment=str(experiment) if experiment else None,
        step=int(step) if isinstance(step, (int, float)) else None,
        metrics=dict(meta.get("metrics") or {}),
    )


@dataclass(frozen=True)
class FileInfo:
    """One file of a snapshot."""

    path: str
    size: int
    kind: str = "file"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def list_files(repo: Repository, commit_id: ObjectId) -> list[FileInfo]:
    """Every file (and symlink) of a commit's tree, sorted by path."""
    tree = repo.read_commit(commit_id).tree
    return [FileInfo(rel, e.size, e.kind) for rel, e in walk_tree(repo, tree) if e.kind != "dir"]

"""``mlvc diff A B --code``: line-by-line changes of two snapshots' text files.

For every file added, removed or changed between the two snapshots (the trees
:func:`mlvc_core.diff.diff_trees` compares), a unified diff when both sides are text (UTF-8
without NUL bytes, at most ``max_bytes`` each), else a one-line summary (``binary`` or
``large``). The git diffs the two runs recorded (uncommitted changes against their git
commit, see :mod:`mlvc.tracking.environment`) are compared the same way, as the pseudo-file
``(git diff)``. Pure: returns data, prints nothing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from mlvc.experiments.revisions import Target, resolve
from mlvc_core.ids import ObjectId
from mlvc_core.repository import Repository
from mlvc_core.trees import find_entry

__all__ = ["CodeDiff", "FileDiff", "code_diff"]

MAX_TEXT_BYTES = 1 << 20
"""Files bigger than this are summarised, not diffed line by line."""
GIT_DIFF_PATH = "(git diff)"

Kind = Literal["text", "binary", "large"]


@dataclass(frozen=True)
class FileDiff:
    """One changed file.

    Attributes:
        path: Path in the snapshot (``(git diff)`` for the recorded git diffs).
        status: ``added``, ``removed`` or ``modified``.
        kind: ``text`` (``lines`` holds a unified diff), ``binary`` or ``large``.
        old_size: Bytes in A (None: absent).
        new_size: Bytes in B (None: absent).
        lines: The unified diff, without line ends, headers included (text only).
    """

    path: str
    status: str
    kind: Kind
    old_size: int | None
    new_size: int | None
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (the diff as one string)."""
        return {
            "path": self.path,
            "status": self.status,
            "kind": self.kind,
            "old_size": self.old_size,
            "new_size": self.new_size,
            "diff": "\n".join(self.lines) + "\n" if self.lines else "",
        }


@dataclass(frozen=True)
class CodeDiff:
    """Line-level differences between two snapshots."""

    a: Target
    b: Target
    files: list[FileDiff]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "files": [f.to_dict() for f in self.files],
        }


def _text(data: bytes) -> list[str] | None:
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return None


def _read(repo: Repository, tree: ObjectId, path: str) -> bytes:
    entry = find_entry(repo, tree, path)
    if entry is None:
        return b""
    if entry.kind == "link":
        return (entry.target or "").encode()
    if entry.oid is None or entry.kind != "file":
        return b""
    manifest = repo.read_manifest(entry.oid)
    return b"".join(repo.read_chunks(cid for cid, _ in manifest.chunks))


def _unified(path: str, old: list[str], new: list[str], status: str, context: int) -> list[str]:
    a = "/dev/null" if status == "added" else f"a/{path}"
    b = "/dev/null" if status == "removed" else f"b/{path}"
    return list(difflib.unified_diff(old, new, a, b, n=context, lineterm=""))


def _file_diff(
    path: str,
    status: str,
    old: bytes | None,
    new: bytes | None,
    context: int,
) -> FileDiff:
    sizes = (None if old is None else len(old), None if new is None else len(new))
    old_lines = _text(old) if old is not None else []
    new_lines = _text(new) if new is not None else []
    if old_lines is None or new_lines is None:
        return FileDiff(path, status, "binary", *sizes)
    return FileDiff(
        path, status, "text", *sizes, _unified(path, old_lines, new_lines, status, context)
    )


def _git_diff(repo: Repository, target: Target) -> str:
    from mlvc.commands.inspect import _params_env

    meta = repo.read_commit(target.commit_id).metadata
    _params, env = _params_env(repo, target, meta)
    git = env.get("git") or {}
    return str(git.get("diff") or "") if isinstance(git, dict) else ""


def code_diff(
    repo: Repository,
    spec_a: str,
    spec_b: str,
    context: int = 3,
    max_bytes: int = MAX_TEXT_BYTES,
) -> CodeDiff:
    """Unified diffs of the text files that differ between two snapshots.

    Args:
        repo: The repository.
        spec_a: The old side: any id form (:func:`mlvc.experiments.revisions.resolve`).
        spec_b: The new side.
        context: Unchanged lines shown around each change.
        max_bytes: Files bigger than this (on either side) are summarised as ``large``.

    Returns:
        Every changed file, sorted by path, then the recorded git diffs if they differ.

    Raises:
        ObjectNotFound: Either id names nothing.
        AmbiguousId: Either prefix matches several ids.
    """
    from mlvc_core.diff import diff_trees

    ta, tb = resolve(repo, spec_a), resolve(repo, spec_b)
    tree_a = repo.read_commit(ta.commit_id).tree
    tree_b = repo.read_commit(tb.commit_id).tree
    files: list[FileDiff] = []
    for change in diff_trees(repo, tree_a, tree_b):
        sizes = (change.old_size, change.new_size)
        if any(s is not None and s > max_bytes for s in sizes):
            files.append(FileDiff(change.path, change.status, "large", *sizes))
            continue
        old = _read(repo, tree_a, change.path) if change.status != "added" else None
        new = _read(repo, tree_b, change.path) if change.status != "removed" else None
        files.append(_file_diff(change.path, change.status, old, new, context))
    git_a, git_b = _git_diff(repo, ta), _git_diff(repo, tb)
    if git_a != git_b:
        status = "added" if not git_a else "removed" if not git_b else "modified"
        files.append(
            _file_diff(
                GIT_DIFF_PATH,
                status,
                git_a.encode() if git_a else None,
                git_b.encode() if git_b else None,
                context,
            )
        )
    return CodeDiff(ta, tb, files)

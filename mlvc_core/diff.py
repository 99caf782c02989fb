"""Tree-vs-tree diff: structured changes, pure (no printing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlvc_core.ids import ObjectId
from mlvc_core.objects import TreeEntry
from mlvc_core.repository import Repository
from mlvc_core.trees import tree_budget

Status = Literal["added", "removed", "modified"]


@dataclass(frozen=True)
class Change:
    """One file that differs between two trees."""

    path: str
    status: Status
    old_size: int | None
    new_size: int | None

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form."""
        return {
            "path": self.path,
            "status": self.status,
            "old_size": self.old_size,
            "new_size": self.new_size,
        }


def _files(repo: Repository, entry: TreeEntry, path: str) -> list[tuple[str, TreeEntry]]:
    if entry.kind != "dir" or entry.oid is None:
        return [(path, entry)]
    out = []
    for e in repo.read_tree(entry.oid).entries:
        out.extend(_files(repo, e, f"{path}/{e.name}"))
    return out


def _same(a: TreeEntry, b: TreeEntry) -> bool:
    return a.kind == b.kind and a.oid == b.oid and a.target == b.target and a.mode == b.mode


def diff_trees(
    repo: Repository, a: ObjectId | None, b: ObjectId | None, prefix: str = ""
) -> list[Change]:
    """Files added, removed or modified from tree ``a`` to tree ``b``, sorted by path.

    Subtrees with equal ids are skipped without being read, so a diff costs what changed.
    """
    if a == b:
        return []
    if not prefix:  # the top call: refuse hostile trees before expanding them
        for root in (a, b):
            if root is not None:
                tree_budget(repo, root)
    ea = {e.name: e for e in repo.read_tree(a).entries} if a is not None else {}
    eb = {e.name: e for e in repo.read_tree(b).entries} if b is not None else {}
    changes: list[Change] = []
    for name in sorted(set(ea) | set(eb)):
        x, y = ea.get(name), eb.get(name)
        path = f"{prefix}{name}"
        if x is not None and y is not None and _same(x, y):
            continue
        if x is not None and y is not None and x.kind == "dir" and y.kind == "dir":
            changes.extend(diff_trees(repo, x.oid, y.oid, path + "/"))
            continue
        if x is not None and y is not None and x.kind != "dir" and y.kind != "dir":
            changes.append(Change(path, "modified", x.size, y.size))
            continue
        if x is not None:
            changes.extend(Change(p, "removed", e.size, None) for p, e in _files(repo, x, path))
        if y is not None:
            changes.extend(Change(p, "added", None, e.size) for p, e in _files(repo, y, path))
    return sorted(changes, key=lambda c: (c.path, c.status != "removed"))

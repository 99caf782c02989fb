"""Trees: every path a tree holds, and the entry at one path, within the format's budgets.

Path walks (listing, diff, checkout) expand shared subtrees, so :func:`tree_budget` first
counts the paths a tree describes over its distinct subtrees (each read once) and refuses a
tree that is too deep, describes too many paths, or declares sizes its subtrees disagree with:
48 levels of a tree whose two entries name the same subtree describe 2**48 paths in a few KB.
Reachability over objects (each visited once by id) is :mod:`mlvc_core.walk`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

from mlvc_core.errors import FormatError
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import TreeEntry
from mlvc_core.repository import Repository

MAX_TREE_DEPTH = 512
"""Most directories a path may nest (Linux paths stop at 4096 bytes, two per level)."""
MAX_TREE_PATHS = 1 << 24
"""Most paths (files, links, directories) one tree may describe."""
FREE_PATHS = 1 << 20
"""Paths any tree may describe, however much it repeats its subtrees."""
MAX_EXPANSION = 64
"""Beyond :data:`FREE_PATHS`, a tree may describe at most this many paths per distinct entry."""


class TreeCount(NamedTuple):
    """What a tree describes once its shared subtrees are expanded."""

    paths: int
    size: int
    depth: int
    distinct: int
    """Entries of its distinct trees (what reading it costs)."""


def tree_budget(repo: Repository, tree_id: ObjectId, max_paths: int = MAX_TREE_PATHS) -> TreeCount:
    """Count a tree's paths, reading each distinct subtree once; refuse a hostile tree.

    Args:
        repo: The repository.
        tree_id: The root tree.
        max_paths: Hard limit on paths (the expansion rule may refuse fewer).

    Returns:
        Paths, total file size, depth and distinct entries of the tree.

    Raises:
        FormatError: Deeper than :data:`MAX_TREE_DEPTH`, more paths than allowed, or a
            directory entry whose declared size is not its subtree's.
        ObjectNotFound: A subtree is missing.
    """
    memo: dict[ObjectId, TreeCount] = {}
    distinct = 0
    stack: list[tuple[ObjectId, int, bool]] = [(tree_id, 1, False)]
    while stack:
        oid, depth, children_done = stack.pop()
        if oid in memo:
            continue
        if depth > MAX_TREE_DEPTH:
            raise FormatError(
                f"tree {to_hex(tree_id)[:12]} nests more than {MAX_TREE_DEPTH} directories deep"
            )
        tree = repo.read_tree(oid)
        if not children_done:
            stack.append((oid, depth, True))
            stack.extend(
                (e.oid, depth + 1, False)
                for e in tree.entries
                if e.kind == "dir" and e.oid is not None and e.oid not in memo
            )
            continue
        paths = size = height = 0
        for e in tree.entries:
            paths += 1
            size += e.size
            if e.kind == "dir" and e.oid is not None:
                sub = memo[e.oid]
                if sub.size != e.size:
                    raise FormatError(
                        f"tree {to_hex(oid)[:12]}: directory {e.name!r} declares {e.size} "
                        f"bytes but holds {sub.size}: declared sizes disagree"
                    )
                paths += sub.paths
                height = max(height, sub.depth)
        distinct += len(tree.entries)
        count = TreeCount(paths, size, height + 1, distinct)
        if count.depth > MAX_TREE_DEPTH:
            raise FormatError(
                f"tree {to_hex(tree_id)[:12]} nests more than {MAX_TREE_DEPTH} directories deep"
            )
        if count.paths > max_paths:
            raise FormatError(
                f"tree {to_hex(tree_id)[:12]} describes more than {max_paths} paths; refused"
            )
        memo[oid] = count
    root = memo[tree_id]
    allowed = max(FREE_PATHS, MAX_EXPANSION * distinct)
    if root.paths > allowed:
        raise FormatError(
            f"tree {to_hex(tree_id)[:12]} describes {root.paths} paths with only {distinct} "
            f"distinct entries (more than {allowed}): it repeats its subtrees; refused"
        )
    return TreeCount(root.paths, root.size, root.depth, distinct)


def walk_tree(
    repo: Repository, tree_id: ObjectId, prefix: str = ""
) -> Iterator[tuple[str, TreeEntry]]:
    """Every entry below a tree as ``(relative posix path, entry)``, depth first, sorted.

    The tree is checked with :func:`tree_budget` before the first entry is yielded.

    Raises:
        FormatError: The tree is refused by :func:`tree_budget`.
    """
    tree_budget(repo, tree_id)
    stack: list[Iterator[TreeEntry]] = [iter(repo.read_tree(tree_id).entries)]
    prefixes = [prefix]
    while stack:
        e = next(stack[-1], None)
        if e is None:
            stack.pop()
            prefixes.pop()
            continue
        rel = f"{prefixes[-1]}{e.name}"
        yield rel, e
        if e.kind == "dir" and e.oid is not None:
            stack.append(iter(repo.read_tree(e.oid).entries))
            prefixes.append(rel + "/")


def find_entry(repo: Repository, tree_id: ObjectId, path: str) -> TreeEntry | None:
    """The tree entry at a ``/``-separated path, or None."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        return None
    entry: TreeEntry | None = None
    current: ObjectId | None = tree_id
    for part in parts:
        if current is None:
            return None
        entry = repo.read_tree(current).get(part)
        if entry is None:
            return None
        current = entry.oid if entry.kind == "dir" else None
    return entry


_DIGITS = re.compile(r"[0-9]+")


def find_previous_version(repo: Repository, tree_id: ObjectId, path: str) -> TreeEntry | None:
    """The file that was the previous version of ``path`` in the tree ``tree_id``, or None.

    The file at the same path if there is one; otherwise, for checkpoint files whose names
    carry their step (``ckpt-100.pt`` then ``ckpt-200.pt``), the file in the same directory
    whose name is equal once every run of digits is ignored, the one with the largest
    numbers (compared run by run) if several are.
    """
    entry = find_entry(repo, tree_id, path)
    if entry is not None:
        return entry if entry.kind == "file" else None
    head, _, name = path.strip("/").rpartition("/")
    pattern = _DIGITS.sub("", name)
    if pattern == name:
        return None
    parent = find_entry(repo, tree_id, head) if head else None
    if head and (parent is None or parent.kind != "dir" or parent.oid is None):
        return None
    tree = repo.read_tree(parent.oid if parent is not None and parent.oid else tree_id)
    found = [e for e in tree.entries if e.kind == "file" and _DIGITS.sub("", e.name) == pattern]
    if not found:
        return None
    return max(found, key=lambda e: [int(d) for d in _DIGITS.findall(e.name)])

"""Checkout plans: what a checkout writes where, and what stands in its way.

:func:`plan_checkout` lists the entries of a tree (or of chosen paths and their parents) by path;
:func:`link_escapes` says whether a link would lead out of the checkout root, resolving it
through the tree's links and those already on disk; :func:`find_conflicts` finds everything in
the way before the first byte is written (an existing file with exactly the content a
checkout would write is no conflict). Nothing here writes: :mod:`mlvc_core.restore` does.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections import deque
from collections.abc import Iterable

from mlvc_core.errors import UsageError
from mlvc_core.ids import ObjectId, hash_bytes
from mlvc_core.objects import Manifest, TreeEntry
from mlvc_core.repository import Repository
from mlvc_core.trees import walk_tree

Parts = tuple[str, ...]
"""A path inside the checkout root, as its components."""

MAX_HOPS = 40
"""Links followed while resolving one target (the kernel's own limit, MAXSYMLINKS)."""


def _select(
    entries: list[tuple[str, TreeEntry]], paths: Iterable[str] | None
) -> list[tuple[str, TreeEntry]]:
    if paths is None:
        return entries
    wanted = [p.strip("/") for p in paths]
    chosen = []
    for rel, e in entries:
        if any(rel == w or rel.startswith(w + "/") for w in wanted):
            chosen.append((rel, e))
    missing = [w for w in wanted if not any(r == w or r.startswith(w + "/") for r, _ in chosen)]
    if missing:
        raise UsageError(f"not in this snapshot: {', '.join(missing)}")
    return chosen


def plan_checkout(
    repo: Repository, tree_id: ObjectId, paths: Iterable[str] | None
) -> dict[Parts, TreeEntry]:
    """The entries to restore by path, parents first (those of selected paths included)."""
    everything = list(walk_tree(repo, tree_id))
    chosen = _select(everything, paths)
    by_rel = dict(everything) if paths is not None else {}
    plan: dict[Parts, TreeEntry] = {}
    for rel, e in chosen:
        parts = tuple(rel.split("/"))
        for i in range(1, len(parts)):
            if parts[:i] not in plan:
                plan[parts[:i]] = by_rel["/".join(parts[:i])]
        plan[parts] = e
    return plan


class Disk:
    """What ``dest`` already holds, looked at without following any link below it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._is_dir: dict[Parts, bool] = {(): True}

    def lstat(self, parts: Parts) -> os.stat_result | None:
        """The entry at ``parts`` if every directory above it is a real one; else None."""
        if not parts or not self.is_dir(parts[:-1]):
            return None
        try:
            return os.lstat(os.path.join(self.root, *parts))
        except OSError:
            return None

    def is_dir(self, parts: Parts) -> bool:
        """A real directory (not a link to one) at ``parts``, every parent real too."""
        known = self._is_dir.get(parts)
        if known is None:
            st = self.lstat(parts)
            known = st is not None and stat_mod.S_ISDIR(st.st_mode)
            self._is_dir[parts] = known
        return known

    def readlink(self, parts: Parts) -> str | None:
        """The target of a link at ``parts``, or None if no link is there."""
        st = self.lstat(parts)
        if st is None or not stat_mod.S_ISLNK(st.st_mode):
            return None
        try:
            return os.readlink(os.path.join(self.root, *parts))
        except OSError:
            return None


def link_escapes(
    link: Parts, target: str, plan: dict[Parts, TreeEntry], disk: Disk | None = None
) -> str | None:
    """Why the link at ``link`` would lead out of the checkout root, or None if it cannot.

    Only targets whose ``..`` all come first, no more of them than the link is deep, are
    restored: what ``name/..`` resolves to depends on what ``name`` is, and a link created
    later (even by another checkout) could make it the root, then the ``..`` leads out.
    Such a target keeps meaning what it meant whatever is added later.

    The target is then resolved as the kernel will resolve it once the checkout is written: one
    component at a time from the link's directory, each link met on the way (one of the
    tree's, from ``plan``, or one already on ``disk``) replaced by its own target. Any step
    above the root or an absolute target anywhere on the way is an escape. Components that
    do not exist resolve lexically (a later ``..`` just climbs back). A resolution still
    going after :data:`MAX_HOPS` links (a loop, which the kernel refuses) counts as one too.
    """
    if not target or "\x00" in target:
        return "its target is empty or holds a NUL byte"
    if target.startswith("/"):
        return f"it points to an absolute path ({target})"
    ups, down = 0, False
    for comp in target.split("/"):
        if comp == "..":
            if down:
                # Where "name/.." leads depends on what "name" is, which a later link (this
                # checkout's or a later one's) could make any directory, the root included.
                return f"its target goes up (..) after going down ({target})"
            ups += 1
        elif comp not in ("", "."):
            down = True
    if ups > len(link) - 1:
        return f"it resolves outside the checkout ({target})"
    stack = list(link[:-1])
    pending = deque(target.split("/"))
    hops = 0
    while pending:
        comp = pending.popleft()
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                return f"it resolves outside the checkout ({target})"
            stack.pop()
            continue
        stack.append(comp)
        here = tuple(stack)
        entry = plan.get(here)
        if entry is not None:
            nxt = entry.target if entry.kind == "link" else None
        else:
            nxt = disk.readlink(here) if disk is not None else None
        if nxt is None:
            continue
        hops += 1
        if hops > MAX_HOPS:
            # A loop (or a chain the kernel will not follow: ELOOP). It leads nowhere, but
            # tools that resolve "as far as possible" disagree on where (realpath -m never
            # returns, os.path.realpath reads the rest lexically): not restored.
            return f"it loops (more than {MAX_HOPS} links to resolve {target})"
        if not nxt or nxt.startswith("/"):
            return f"it leads through {'/'.join(here)} to an absolute path ({nxt})"
        stack.pop()
        pending.extendleft(reversed(nxt.split("/")))
    return None


def name_refused_here(name: str) -> str | None:
    """Why this system cannot give a file this name, or None."""
    if os.sep != "/" and (os.sep in name or (os.altsep is not None and os.altsep in name)):
        return f"its name holds {os.sep!r}, a path separator on this system"
    return None


def _same_file(path: str, manifest: Manifest) -> bool:
    """Whether the regular file at ``path`` holds exactly ``manifest``'s bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    with open(fd, "rb", buffering=0) as f:
        if os.fstat(fd).st_size != manifest.size:
            return False
        for cid, n in manifest.chunks:
            data = f.read(n)
            if len(data) != n or hash_bytes(data) != cid:
                return False
        return True


def _describe(st: os.stat_result) -> str:
    if stat_mod.S_ISLNK(st.st_mode):
        return "a link"
    if stat_mod.S_ISDIR(st.st_mode):
        return "a directory"
    if stat_mod.S_ISREG(st.st_mode):
        return "a file"
    return "a special file"


def find_conflicts(
    repo: Repository, plan: dict[Parts, TreeEntry], disk: Disk, skip: set[Parts]
) -> tuple[dict[str, str], set[Parts]]:
    """Every path in the way of the plan, described; and the entries already as planned."""
    conflicts: dict[str, str] = {}
    same: set[Parts] = set()
    for parts, e in plan.items():
        if parts in skip:
            continue
        st = disk.lstat(parts)
        if st is None:
            continue
        rel = "/".join(parts)
        if e.kind == "dir":
            if not stat_mod.S_ISDIR(st.st_mode):
                conflicts[rel] = f"{rel} ({_describe(st)} where the snapshot has a directory)"
        elif e.kind == "link":
            if stat_mod.S_ISLNK(st.st_mode) and disk.readlink(parts) == e.target:
                same.add(parts)
            else:
                conflicts[rel] = f"{rel} ({_describe(st)} where the snapshot has a link)"
        elif stat_mod.S_ISREG(st.st_mode):
            assert e.oid is not None
            if st.st_size == e.size and _same_file(
                os.path.join(disk.root, *parts), repo.read_manifest(e.oid)
            ):
                same.add(parts)
            else:
                conflicts[rel] = f"{rel} (a file with other content)"
        else:
            conflicts[rel] = f"{rel} ({_describe(st)} where the snapshot has a file)"
    return conflicts, same

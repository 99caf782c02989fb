"""Walks: everything a set of refs keeps alive, and every path a tree holds, within budgets.

Reachability (gc, check, stats, transfer) visits each object once by id, so a tree whose
entries share subtrees costs its distinct objects, never its paths. Path walks (listing,
diff, checkout) expand shared subtrees, so :func:`tree_budget` first counts the paths a tree
describes over its distinct subtrees (each read once) and refuses a tree that is too deep,
describes too many paths, or declares sizes its subtrees disagree with: 48 levels of a tree
whose two entries name the same subtree describe 2**48 paths in a few KB.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from mlvc_core.errors import FormatError, IntegrityError, MissingObject, ObjectNotFound, UnsafePath
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import CHUNK, COMMIT, Commit, Manifest, TreeEntry, iter_tree_refs
from mlvc_core.refs import Ref
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


def ref_roots(refs: Iterable[Ref]) -> list[ObjectId]:
    """Commit ids a ref keeps alive: its target, plus earlier targets a tag remembers."""
    roots: list[ObjectId] = []
    for ref in refs:
        roots.append(ref.target)
        for old in ref.summary.get("history", []) or []:
            if isinstance(old, dict) and isinstance(old.get("target"), str):
                try:
                    roots.append(ObjectId(bytes.fromhex(old["target"])))
                except ValueError:
                    continue
    return roots


def reachable(
    repo: Repository,
    roots: Iterable[ObjectId],
    missing: list[tuple[ObjectId, str]] | None = None,
    follow_parents: bool = True,
    unreadable: list[tuple[ObjectId, str]] | None = None,
) -> dict[ObjectId, int]:
    """Every object and chunk reachable from ``roots`` (commit ids), with its kind.

    Args:
        repo: The repository to read.
        roots: Commit ids to start from.
        missing: If given, ids that are referenced but absent are appended here (with the id
            of the object referring to them) instead of raising.
        follow_parents: Walk commit history too.
        unreadable: If given (with ``missing``), objects stored but undecodable, and
            manifests whose chunk lengths disagree with the stored chunks, are appended here
            with the reason (undecodable ones instead of to ``missing``).

    Raises:
        ObjectNotFound: A referenced object is absent and ``missing`` is None.
        FormatError: A referenced object is undecodable and ``missing`` is None.
    """
    seen: dict[ObjectId, int] = {}
    # Depth first, one root's history after another, in the order their commits are stored:
    # consecutive roots then share packs, and a remote reader fetches each small pack once.
    stack: list[tuple[int, ObjectId, ObjectId | None]] = [
        (COMMIT, r, None) for r in sorted(set(roots), key=lambda r: _where(repo, r), reverse=True)
    ]
    while stack:
        kind, oid, referrer = stack.pop()
        if oid in seen:
            continue
        if kind == CHUNK:
            if not repo.has(oid):
                if missing is None:
                    raise MissingObject(oid.hex(), "chunk")
                missing.append((oid, referrer.hex() if referrer else ""))
                continue
            seen[oid] = kind
            continue
        try:
            obj = repo.read_object(oid)
        except (ObjectNotFound, IntegrityError, FormatError, UnsafePath) as exc:
            if missing is None:
                raise
            if isinstance(exc, (FormatError, UnsafePath)) and unreadable is not None:
                unreadable.append((oid, str(exc)))
            else:
                missing.append((oid, referrer.hex() if referrer else ""))
            continue
        seen[oid] = kind
        if unreadable is not None and isinstance(obj, Manifest):
            why = _chunk_lengths_disagree(repo, obj)
            if why is not None:
                unreadable.append((oid, why))
        for child_kind, child in iter_tree_refs(obj):
            if child_kind == COMMIT and not follow_parents:
                continue
            if child not in seen:
                stack.append((child_kind, child, oid))
    return seen


def _chunk_lengths_disagree(repo: Repository, manifest: Manifest) -> str | None:
    """Why a manifest's chunk lengths disagree with the stored chunks' (None if they agree)."""
    for cid, length in manifest.chunks:
        if repo.has(cid) and repo.locate(cid).raw_len != length:
            return (
                f"manifest says chunk {to_hex(cid)[:12]} has {length} bytes; "
                f"it has {repo.locate(cid).raw_len}"
            )
    return None


def _where(repo: Repository, oid: ObjectId) -> tuple[str, int]:
    """Pack and offset of ``oid`` (a missing one sorts first; the walk reports it)."""
    try:
        loc = repo.locate(oid)
    except ObjectNotFound:
        return ("", 0)
    return (loc.pack, loc.offset)


def all_roots(repo: Repository) -> list[ObjectId]:
    """Roots of every ref in the repository.

    Raises:
        FormatError: A ref is unreadable: what it keeps alive is unknown (named, with how
            to remove it).
    """
    refs, bad = repo.refs.scan()
    if bad:
        name, why = bad[0]
        raise FormatError(
            f"{why}; what it keeps alive is unknown, so nothing is deleted: repair it, or "
            f"remove the key refs/{name} from {repo.url}"
            + (f" ({len(bad) - 1} more unreadable refs)" if len(bad) > 1 else "")
        )
    return ref_roots(refs)


def reachable_commits(repo: Repository, roots: Iterable[ObjectId]) -> list[ObjectId]:
    """Commit ids reachable from ``roots`` through parents."""
    seen: set[ObjectId] = set()
    out = []
    stack = list(roots)
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        out.append(oid)
        commit = repo.read_object(oid)
        if isinstance(commit, Commit):
            stack.extend(commit.parents)
    return out

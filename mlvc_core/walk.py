"""Reachability: everything a set of refs keeps alive (shared by gc, check, stats, transfer)."""

from __future__ import annotations

from collections.abc import Iterable

from mlvc_core.errors import IntegrityError, ObjectNotFound
from mlvc_core.ids import ObjectId
from mlvc_core.objects import CHUNK, COMMIT, Commit, iter_tree_refs
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository


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
) -> dict[ObjectId, int]:
    """Every object and chunk reachable from ``roots`` (commit ids), with its kind.

    Args:
        repo: The repository to read.
        roots: Commit ids to start from.
        missing: If given, ids that are referenced but absent are appended here (with the id
            of the object referring to them) instead of raising.
        follow_parents: Walk commit history too.

    Raises:
        ObjectNotFound: A referenced object is absent and ``missing`` is None.
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
                    raise ObjectNotFound(oid.hex(), "chunk")
                missing.append((oid, referrer.hex() if referrer else ""))
                continue
            seen[oid] = kind
            continue
        try:
            obj = repo.read_object(oid)
        except (ObjectNotFound, IntegrityError):
            if missing is None:
                raise
            missing.append((oid, referrer.hex() if referrer else ""))
            continue
        seen[oid] = kind
        for child_kind, child in iter_tree_refs(obj):
            if child_kind == COMMIT and not follow_parents:
                continue
            if child not in seen:
                stack.append((child_kind, child, oid))
    return seen


def _where(repo: Repository, oid: ObjectId) -> tuple[str, int]:
    """Pack and offset of ``oid`` (a missing one sorts first; the walk reports it)."""
    try:
        loc = repo.locate(oid)
    except ObjectNotFound:
        return ("", 0)
    return (loc.pack, loc.offset)


def all_roots(repo: Repository) -> list[ObjectId]:
    """Roots of every ref in the repository."""
    return ref_roots(repo.refs.list())


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

"""Walks: everything a set of refs keeps alive.

Reachability (gc, check, stats, transfer) visits each object once by id, so a tree whose
entries share subtrees costs its distinct objects, never its paths. Path walks over trees
(listing, diff, checkout) are :mod:`mlvc_core.trees`'s.
"""

from __future__ import annotations

from collections.abc import Iterable

from mlvc_core.errors import FormatError, IntegrityError, MissingObject, ObjectNotFound, UnsafePath
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import CHUNK, COMMIT, Commit, Manifest, iter_tree_refs
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

"""fsck: re-hash every payload, verify every index, check refs reach only stored objects.

Reports every problem; never stops at the first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mlvc_core.errors import FormatError, IntegrityError, KeyNotFound, MlvcError
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import Manifest, Tree
from mlvc_core.packs import (
    MAX_INDEX_FILE_SIZE,
    PACK_PREFIX,
    Location,
    decode_index_file,
    index_file_key,
    pack_key,
)
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository
from mlvc_core.walk import reachable, reachable_commits, ref_roots


@dataclass(frozen=True)
class Problem:
    """One damaged or missing thing."""

    key: str
    """A store key (pack, index) or an object id in hex."""
    kind: str
    """``corrupt``, ``missing``, ``unreadable`` or ``orphan``."""
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON-safe form."""
        return {"key": self.key, "kind": self.kind, "message": self.message}


@dataclass
class CheckReport:
    """What :func:`check` found."""

    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    objects_checked: int = 0
    bytes_checked: int = 0
    packs_checked: int = 0

    @property
    def ok(self) -> bool:
        """True if nothing is damaged or missing."""
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form."""
        return {
            "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [p.to_dict() for p in self.warnings],
            "objects_checked": self.objects_checked,
            "bytes_checked": self.bytes_checked,
            "packs_checked": self.packs_checked,
        }


_RUN_BYTES = 16 << 20
"""fsck reads a pack in runs of about this many bytes: memory follows what the index names,
never the size of the pack file (which a damaged or hostile repository may make huge)."""


def _runs(
    entries: list[tuple[tuple[int, ObjectId], Location]],
) -> list[list[tuple[tuple[int, ObjectId], Location]]]:
    """Entries sorted by offset, cut into runs of at most :data:`_RUN_BYTES` bytes each.

    A larger payload is a run of its own.
    """
    runs: list[list[tuple[tuple[int, ObjectId], Location]]] = []
    for item in entries:
        loc = item[1]
        if runs:
            first = runs[-1][0][1]
            if loc.offset + loc.stored_len - first.offset <= _RUN_BYTES:
                runs[-1].append(item)
                continue
        runs.append([item])
    return runs


def check(repo: Repository, progress: Callable[[int], None] | None = None) -> CheckReport:
    """Verify the whole repository.

    Args:
        repo: The repository.
        progress: Called after each pack with the number of bytes of that pack just verified.

    Returns:
        A report listing every problem (``ok`` is False if there is any).
    """
    report = CheckReport()
    packs = {info.key.rsplit("/", 1)[-1]: info for info in repo.store.list(PACK_PREFIX)}
    by_pack: dict[str, list[tuple[ObjectId, Location]]] = {}
    for index_id in repo.list_index_files():
        key = index_file_key(index_id)
        try:
            f = decode_index_file(repo.store.read(key, MAX_INDEX_FILE_SIZE), key, index_id)
        except KeyNotFound:
            continue  # merged or collected since the listing
        except (IntegrityError, FormatError) as exc:
            report.problems.append(Problem(key, "corrupt", str(exc)))
            continue
        for oid, loc in f.entries:
            by_pack.setdefault(loc.pack, []).append((oid, loc))
    stored = {oid for p, entries in by_pack.items() if p in packs for oid, _ in entries}
    needs: dict[ObjectId, list[ObjectId]] = defaultdict(list)
    """Base id -> the deltas coded against it."""
    for pack_id, entries in sorted(by_pack.items()):
        if pack_id not in packs:
            report.problems.append(
                Problem(pack_key(pack_id), "missing", f"pack of {len(entries)} objects is missing")
            )
            continue
        report.packs_checked += 1
        unique = sorted({(loc.offset, oid): loc for oid, loc in entries}.items())
        read = 0
        try:
            for run in _runs(unique):
                start = run[0][1].offset
                end = max(loc.offset + loc.stored_len for _, loc in run)
                blob = repo.store.read_range(pack_key(pack_id), start, end - start)
                read += len(blob)
                for (_, oid), loc in run:  # an id named by two index files is checked once
                    payload = blob[loc.offset - start : loc.offset - start + loc.stored_len]
                    if loc.base is not None:
                        needs[loc.base].append(oid)
                        if loc.base not in stored:
                            continue  # reported with its missing base, below
                    try:
                        repo.verify_payload(oid, loc, payload)
                    except IntegrityError as exc:
                        if loc.base is not None and _unreadable(repo, loc.base):
                            continue  # reported with its damaged base, below
                        report.problems.append(
                            Problem(to_hex(oid), "corrupt", f"{exc} in {pack_key(pack_id)}")
                        )
                    report.objects_checked += 1
                    report.bytes_checked += loc.raw_len
        except MlvcError as exc:
            report.problems.append(Problem(pack_key(pack_id), "unreadable", str(exc)))
            continue
        if progress is not None:
            progress(read)
    for pack_id in set(packs) - set(by_pack):
        report.warnings.append(
            Problem(
                pack_key(pack_id),
                "orphan",
                "pack no index names (an interrupted write, or dead data); gc removes it",
            )
        )
    repo.reload_index()
    missing: list[tuple[ObjectId, str]] = []
    refs, bad_refs = repo.refs.scan()
    for name, why in bad_refs:  # reported; the other refs are still checked
        report.problems.append(Problem(f"refs/{name}", "corrupt", why))
    unreadable: list[tuple[ObjectId, str]] = []
    try:
        reachable(repo, ref_roots(refs), missing=missing, unreadable=unreadable)
    except MlvcError as exc:
        report.problems.append(Problem("refs", "unreadable", str(exc)))
    for oid, why in unreadable:
        report.problems.append(Problem(to_hex(oid), "corrupt", why))
    bad = {b: b not in stored for b in needs if b not in stored or _unreadable(repo, b)}
    if bad:
        _report_bases(repo, refs, bad, needs, report)
    corrupt = {p.key for p in report.problems}
    for oid, referrer in missing:
        if to_hex(oid) not in corrupt:
            report.problems.append(
                Problem(
                    to_hex(oid),
                    "missing",
                    f"referenced by {referrer[:12] or 'a ref'} but not stored",
                )
            )
    return report


def _unreadable(repo: Repository, base: ObjectId) -> bool:
    """True if the delta base ``base`` cannot be read (decoded bases are cached)."""
    try:
        repo.read_base(base)
    except MlvcError:
        return True
    return False


def _report_bases(
    repo: Repository,
    refs: Iterable[Ref],
    bad: dict[ObjectId, bool],
    needs: dict[ObjectId, list[ObjectId]],
    report: CheckReport,
) -> None:
    """One problem per missing or damaged delta base, naming every commit it makes unreadable.

    ``bad`` maps each such base to True when it is missing (else it is damaged).
    """
    lost = {d: b for b in bad for d in needs[b]}
    hit: dict[ObjectId, set[ObjectId]] = defaultdict(set)  # base -> commits
    memo: dict[ObjectId, frozenset[ObjectId]] = {}
    unread = [0]  # commits, trees and manifests that could not be read: the list is partial

    def below(oid: ObjectId) -> frozenset[ObjectId]:
        """The bad bases whose deltas the tree or manifest ``oid`` reaches."""
        if oid not in memo:
            memo[oid] = frozenset()  # a cycle (a damaged repository) adds nothing
            try:
                obj = repo.read_object(oid)
            except MlvcError:
                unread[0] += 1
                return frozenset()
            found: set[ObjectId] = set()
            if isinstance(obj, Manifest):
                found = {lost[c] for c, _ in obj.chunks if c in lost}
                found |= {c for c, _ in obj.chunks if c in bad}
            elif isinstance(obj, Tree):
                for e in obj.entries:
                    if e.oid is not None and e.kind in ("file", "dir"):
                        found |= below(e.oid)
            memo[oid] = frozenset(found)
        return memo[oid]

    commits: set[ObjectId] = set()
    for root in ref_roots(refs):
        try:
            commits.update(reachable_commits(repo, [root]))
        except MlvcError:  # reported by the reachability walk
            unread[0] += 1
    for cid in commits:
        try:
            for b in below(repo.read_commit(cid).tree):
                hit[b].add(cid)
        except MlvcError:
            unread[0] += 1
    for b, missing in sorted(bad.items()):
        names = sorted(to_hex(c)[:12] for c in hit[b])
        more = f" and {len(names) - 20} more" if len(names) > 20 else ""
        shown = ", ".join(names[:20]) + more
        report.problems.append(
            Problem(
                to_hex(b),
                "missing" if missing else "corrupt",
                f"delta base {'not stored' if missing else 'damaged'}: {len(needs[b])} chunk(s) "
                f"coded against it are unreadable, in {len(names)} commit(s)"
                + (f": {shown}" if names else "")
                + (
                    f" (and maybe others: {unread[0]} commit(s), tree(s) or history walk(s) "
                    "could not be read, see above)"
                    if unread[0]
                    else ""
                ),
            )
        )

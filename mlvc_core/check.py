"""fsck: re-hash every payload, verify every index, check refs reach only stored objects.

Reports every problem; never stops at the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlvc_core.errors import FormatError, IntegrityError, KeyNotFound, MlvcError
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.packs import (
    MAX_INDEX_FILE_SIZE,
    PACK_PREFIX,
    Location,
    decode_index_file,
    index_file_key,
    pack_key,
)
from mlvc_core.repository import Repository
from mlvc_core.walk import reachable, ref_roots


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
                    try:
                        repo.verify_payload(oid, loc, payload)
                    except IntegrityError as exc:
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

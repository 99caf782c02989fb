"""fsck: re-hash every payload, verify every index, check refs reach only stored objects.

Reports every problem; never stops at the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlvc_core.errors import FormatError, IntegrityError, KeyNotFound, MlvcError
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.packs import (
    PACK_PREFIX,
    Location,
    decode_index_file,
    index_file_key,
    pack_key,
)
from mlvc_core.repository import Repository
from mlvc_core.walk import all_roots, reachable


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
            f = decode_index_file(repo.store.read(key), key)
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
        try:
            blob = repo.store.read(pack_key(pack_id))
        except MlvcError as exc:
            report.problems.append(Problem(pack_key(pack_id), "unreadable", str(exc)))
            continue
        seen: set[tuple[ObjectId, int]] = set()
        for oid, loc in entries:
            if (oid, loc.offset) in seen:
                continue  # named by two index files (a merge in progress)
            seen.add((oid, loc.offset))
            payload = blob[loc.offset : loc.offset + loc.stored_len]
            try:
                repo.verify_payload(oid, loc, payload)
            except IntegrityError as exc:
                report.problems.append(
                    Problem(to_hex(oid), "corrupt", f"{exc} in {pack_key(pack_id)}")
                )
            report.objects_checked += 1
            report.bytes_checked += loc.raw_len
        if progress is not None:
            progress(len(blob))
        del blob
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
    try:
        reachable(repo, all_roots(repo), missing=missing)
    except MlvcError as exc:
        report.problems.append(Problem("refs", "unreadable", str(exc)))
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

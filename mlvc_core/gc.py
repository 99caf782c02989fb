"""Garbage collection: mark from every ref, sweep what nothing reaches.

* Mark: every object and chunk reachable from any ref (including earlier targets a tag
  remembers) is live.
* Sweep, pack by pack: a pack with nothing live is deleted (index first, then pack, so a
  reader never finds an index without its pack); a pack that is mostly dead is repacked (its
  live payloads copied verbatim into a new pack, published before the old one is deleted).
* Packs (and orphan packs without an index) younger than the grace period are never touched:
  a concurrent writer may have written them and not yet published the commit and ref that
  will reach them.
* Deleting runs under the exclusive lock (:mod:`mlvc_core.lock`), so no writer can be reusing
  an old chunk at the same moment. The default is a dry run that only reports.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass

from mlvc_core.ids import ObjectId
from mlvc_core.lock import ExclusiveLock
from mlvc_core.packs import INDEX_PREFIX, PACK_PREFIX, Location, index_key, pack_key
from mlvc_core.repository import Repository
from mlvc_core.walk import all_roots, reachable

SMALL_PACK = 4 << 20
"""Packs below this size are merged once there are :data:`MERGE_AT` of them (each commit or
checkpoint writes small packs; fewer, larger ones keep opening a remote repository cheap)."""
MERGE_AT = 16

REPACK_DEAD_FRACTION = 0.2
"""Repack a pack once at least this fraction of its payload bytes is dead (headers and the
index trailer are not payload: a freshly repacked pack is never dead weight)."""


@dataclass
class GcReport:
    """What gc freed (or, in a dry run, would free)."""

    dry_run: bool
    reachable_objects: int = 0
    packs_total: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_merged: int = 0
    """Small, fully live packs rewritten into fewer, larger ones."""
    orphans_deleted: int = 0
    bytes_freed: int = 0
    bytes_kept: int = 0
    packs_in_grace: int = 0

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form."""
        return asdict(self)


def collect(
    repo: Repository,
    dry_run: bool = True,
    grace_seconds: float = 3600.0,
    progress: Callable[[int], None] | None = None,
    now: float | None = None,
) -> GcReport:
    """Find (and unless ``dry_run``, free) everything no ref reaches.

    Raises:
        RepositoryLocked: Another gc runs or writers are active (only when not a dry run).
    """
    lock = None if dry_run else ExclusiveLock.acquire(repo.store)
    try:
        return _collect(repo, dry_run, grace_seconds, progress, time.time() if now is None else now)
    finally:
        if lock is not None:
            lock.release()


def _collect(
    repo: Repository,
    dry_run: bool,
    grace: float,
    progress: Callable[[int], None] | None,
    now: float,
) -> GcReport:
    report = GcReport(dry_run=dry_run)
    repo.load_index()
    live = reachable(repo, all_roots(repo))
    report.reachable_objects = len(live)
    pack_infos = {i.key.rsplit("/", 1)[-1]: i for i in repo.store.list(PACK_PREFIX)}
    index_infos = {i.key[len(INDEX_PREFIX) :]: i for i in repo.store.list(INDEX_PREFIX)}
    report.packs_total = len(pack_infos)

    by_pack: dict[str, list[tuple[ObjectId, Location]]] = defaultdict(list)
    for oid, loc in repo.iter_index():
        by_pack[loc.pack].append((oid, loc))
    # A payload stored twice (two writers raced) is live only in the pack the index names;
    # a pack all of whose payloads are such duplicates has no entries here and is dead.

    to_repack: list[tuple[str, list[tuple[ObjectId, Location]]]] = []
    small: list[tuple[str, list[tuple[ObjectId, Location]]]] = []
    for pack_id, info in pack_infos.items():
        young = (
            now - max(info.mtime, index_infos[pack_id].mtime if pack_id in index_infos else 0)
            < grace
        )
        if young or pack_id in repo.bad_indexes:  # an unreadable index: contents unknown
            report.packs_in_grace += 1
            report.bytes_kept += info.size
            continue
        if pack_id not in index_infos:
            report.orphans_deleted += 1
            report.bytes_freed += info.size
            if not dry_run:
                repo.store.delete(pack_key(pack_id))
            continue
        entries = by_pack.get(pack_id, [])
        live_entries = [(oid, loc) for oid, loc in entries if oid in live]
        live_bytes = sum(loc.stored_len for _, loc in live_entries)
        dead_bytes = sum(loc.stored_len for oid, loc in entries if oid not in live)
        if not live_entries:
            report.packs_deleted += 1
            report.bytes_freed += info.size
            if not dry_run:
                repo.store.delete(index_key(pack_id))
                repo.store.delete(pack_key(pack_id))
                repo.forget_packs([pack_id])
        elif dead_bytes >= REPACK_DEAD_FRACTION * (live_bytes + dead_bytes):
            report.packs_repacked += 1
            report.bytes_freed += info.size - live_bytes
            report.bytes_kept += live_bytes
            to_repack.append((pack_id, live_entries))
        else:
            report.bytes_kept += info.size
            if info.size < SMALL_PACK:
                small.append((pack_id, live_entries))
        if progress is not None:
            progress(info.size)
    if len(small) >= MERGE_AT:
        report.packs_merged = len(small)
        to_repack.extend(small)
    if not dry_run and to_repack:
        _repack(repo, to_repack)
    return report


def _repack(repo: Repository, packs: list[tuple[str, list[tuple[ObjectId, Location]]]]) -> None:
    """Copy live payloads verbatim (verified) into new packs, then drop the old packs."""
    done: list[str] = []
    # Drop the old packs from the in-memory index first, so the session does not consider
    # their payloads already stored.
    repo.forget_packs(pack_id for pack_id, _ in packs)
    with repo.session(lock=False) as s:  # the caller holds the exclusive lock
        for pack_id, entries in packs:
            key = pack_key(pack_id)
            ranges = [(loc.offset, loc.stored_len) for _, loc in entries]
            payloads = repo.store.read_ranges(key, ranges)
            for (oid, loc), payload in zip(entries, payloads, strict=True):
                repo.verify_payload(oid, loc, payload)
                s.add_payload(oid, loc.kind, loc.codec, payload, loc.raw_len)
            done.append(pack_id)
        s.flush()
        for pack_id in done:
            repo.store.delete(index_key(pack_id))
            repo.store.delete(pack_key(pack_id))

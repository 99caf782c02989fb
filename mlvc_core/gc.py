"""Garbage collection: mark from every ref, sweep what nothing reaches, advance the generation.

* Lock: gc takes the exclusive lock (:mod:`mlvc_core.lock`), removing the locks of writers
  that are gone; it refuses to run beside a live writer. So while it deletes, no write session
  is open, and every session that starts afterwards re-reads the index at the new generation
  before it deduplicates (:meth:`~mlvc_core.repository.Repository.refresh`).
* Mark: every object and chunk reachable from any ref (including earlier targets a tag
  remembers) is live, and so is the base of every delta that stays (a live one, or one in a
  pack kept for the grace period): a base outlives the last delta coded against it, and a
  repacked delta keeps naming its base.
* Sweep, pack by pack: a pack with nothing live is deleted; a pack that is mostly dead is
  repacked (its live payloads copied verbatim into a new pack); small packs are merged once
  there are many; a pack no index file covers (its writer died before publishing it) and
  temporary files of killed writers are deleted.
* Index: the index is rewritten as a few large index files naming exactly the live payloads
  (a dead object left inside a partly live pack is no longer *stored*: a writer that needs it
  writes it again, so nothing can come to depend on what its dead children were). Then the
  generation record (``generation``) is advanced to name those files, and only then are the
  old index files and the dead packs deleted. A crash at any step leaves a repository whose
  index names only stored payloads; the next gc finishes the work.
* Lost lock: before every write that publishes and every delete, gc checks that it still
  holds its lock (:meth:`~mlvc_core.lock.ExclusiveLock.check`); a gc paused past its lease
  whose lock another process took over stops there with :class:`~mlvc_core.errors.LockLost`.
* Grace period: only when a writer may still be alive (a lock not refreshed for minutes, its
  holder paused or cut off, removed as stale, or in a dry run any writer's lock) are packs
  younger than the grace period kept as they are: such a writer may still publish them. With
  no writer left, everything no ref reaches is freed at once.

The default is a dry run that only reports.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from mlvc_core import lock as locks
from mlvc_core.config import FORMAT_VERSION
from mlvc_core.errors import FormatError
from mlvc_core.holders import Holder
from mlvc_core.ids import ObjectId
from mlvc_core.lock import ExclusiveLock, active_writers
from mlvc_core.objects import CHUNK
from mlvc_core.packs import (
    GENERATION_KEY,
    PACK_PREFIX,
    Generation,
    Location,
    PackWriter,
    encode_index_file,
    index_file_id,
    index_file_key,
    pack_key,
)
from mlvc_core.repository import Repository
from mlvc_core.walk import all_roots, reachable

SMALL_PACK = 4 << 20
"""Packs below this size are merged once there are :data:`MERGE_AT` of them (each commit or
checkpoint writes small packs; fewer, larger ones keep opening a remote repository cheap)."""
MERGE_AT = 16

REPACK_DEAD_FRACTION = 0.2
"""Repack a pack once at least this fraction of its payload bytes is dead (headers and the
index trailer are not payload: a freshly repacked pack is never dead weight)."""

INDEX_FILE_ENTRIES = 500_000
"""Most entries gc puts in one index file."""

OTHER_TEMP_AGE = 3600.0
"""Temporary files outside ``packs/`` and ``index/`` (refs, heartbeats: written without a
shared lock) are removed only when at least this old."""


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
    """Packs kept only because a writer that may still be alive may publish them."""
    writers: list[str] = field(default_factory=list)
    """Writers that may still be alive (why the grace period applied), described."""
    temp_files_deleted: int = 0
    index_files_before: int = 0
    index_files_after: int = 0
    generation: int = 0
    """The repository generation after gc (advanced whenever anything is deleted)."""

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

    Args:
        repo: The repository.
        dry_run: Only report.
        grace_seconds: How long packs of a writer that may still be alive are kept.
        progress: Called with the size of each pack examined.
        now: The current time (tests).

    Raises:
        RepositoryLocked: Another gc runs or writers are active (only when not a dry run).
        LockLost: gc was paused past its lock's lease and another process took the lock
            over; it stopped before its next write or delete.
    """
    lock = None if dry_run else ExclusiveLock.acquire(repo.store)
    try:
        if lock is not None and repo.config.version < FORMAT_VERSION:
            repo.upgrade()
        writers = active_writers(repo.store) if lock is None else lock.broken
        return _collect(
            repo,
            dry_run,
            grace_seconds,
            progress,
            time.time() if now is None else now,
            writers,
            _no_lock if lock is None else lock.check,
        )
    finally:
        if lock is not None:
            lock.release()


def _no_lock(max_age: float | None = None) -> None:
    """A dry run holds no lock: nothing to check."""


@dataclass
class _Plan:
    keep: list[tuple[ObjectId, Location]] = field(default_factory=list)
    repack: list[tuple[str, list[tuple[ObjectId, Location]]]] = field(default_factory=list)
    delete_packs: list[str] = field(default_factory=list)
    delete_temp: list[str] = field(default_factory=list)
    dead_entries: int = 0


def _collect(
    repo: Repository,
    dry_run: bool,
    grace: float,
    progress: Callable[[int], None] | None,
    now: float,
    writers: list[Holder],
    check: Callable[..., None],
) -> GcReport:
    report = GcReport(dry_run=dry_run)
    report.writers = [w.describe(now, locks.STALE_AFTER) for w in writers]
    protect = bool(writers)
    repo.reload_index()  # every index file as of now (no writer can add one meanwhile)
    if repo.bad_indexes:
        names = ", ".join(sorted(repo.bad_indexes))
        raise FormatError(
            f"gc cannot tell which packs the damaged index file(s) {names} cover, so it "
            "deletes nothing; `mlvc fsck` reports the damage"
        )
    files = repo.index_files()
    report.index_files_before = len(files)
    covered = {p for packs in files.values() for p in packs}
    live = reachable(repo, all_roots(repo))
    report.reachable_objects = len(live)
    pack_infos = {i.key.rsplit("/", 1)[-1]: i for i in repo.store.list(PACK_PREFIX)}
    report.packs_total = len(pack_infos)

    # A payload stored twice (two writers raced) is live only in the pack the index names;
    # a pack all of whose payloads are such duplicates has no entries here and is dead.
    by_pack: dict[str, list[tuple[ObjectId, Location]]] = defaultdict(list)
    for oid, loc in repo.iter_index():
        by_pack[loc.pack].append((oid, loc))
    graced = {p for p, i in pack_infos.items() if protect and now - i.mtime < grace}
    _keep_bases(live, by_pack, graced)
    plan = _Plan()
    plan.dead_entries = sum(len(v) for p, v in by_pack.items() if p not in pack_infos)
    small: list[tuple[str, list[tuple[ObjectId, Location]]]] = []
    for pack_id, info in pack_infos.items():
        entries = by_pack.get(pack_id, [])
        if pack_id in graced:
            report.packs_in_grace += 1
            report.bytes_kept += info.size
            plan.keep.extend(entries)
            continue
        if pack_id not in covered:
            report.orphans_deleted += 1
            report.bytes_freed += info.size
            plan.delete_packs.append(pack_id)
            continue
        live_entries = [(oid, loc) for oid, loc in entries if oid in live]
        plan.dead_entries += len(entries) - len(live_entries)
        live_bytes = sum(loc.stored_len for _, loc in live_entries)
        dead_bytes = sum(loc.stored_len for oid, loc in entries if oid not in live)
        if not live_entries:
            report.packs_deleted += 1
            report.bytes_freed += info.size
            plan.delete_packs.append(pack_id)
        elif dead_bytes >= REPACK_DEAD_FRACTION * (live_bytes + dead_bytes):
            report.packs_repacked += 1
            report.bytes_freed += info.size - live_bytes
            report.bytes_kept += live_bytes
            plan.repack.append((pack_id, live_entries))
        else:
            report.bytes_kept += info.size
            if info.size < SMALL_PACK:
                small.append((pack_id, live_entries))
            else:
                plan.keep.extend(live_entries)
        if progress is not None:
            progress(info.size)
    if len(small) >= MERGE_AT:
        report.packs_merged = len(small)
        plan.repack.extend(small)
    else:
        plan.keep.extend(e for _, entries in small for e in entries)
    for prefix in ("packs/", "index/"):
        for info in repo.store.list_temporary(prefix):
            if not (protect and now - info.mtime < grace):
                plan.delete_temp.append(info.key)
    for info in repo.store.list_temporary(""):
        if not info.key.startswith(("packs/", "index/")) and now - info.mtime > OTHER_TEMP_AGE:
            plan.delete_temp.append(info.key)
    report.temp_files_deleted = len(plan.delete_temp)
    report.generation = repo.generation
    if dry_run:
        report.index_files_after = report.index_files_before
        return report
    changed = bool(plan.repack or plan.delete_packs or plan.dead_entries)
    many_small = len(repo.small_index_files()) > 1
    if changed or many_small:
        _rewrite(repo, plan, files, report, check)
    else:
        report.index_files_after = report.index_files_before
    for key in plan.delete_temp:
        check()
        repo.store.delete_temporary(key)
    return report


def _keep_bases(
    live: dict[ObjectId, int],
    by_pack: dict[str, list[tuple[ObjectId, Location]]],
    graced: set[str],
) -> None:
    """Mark live the base of every delta that stays: live ones and those of graced packs.

    A base is a chunk stored on its own (never itself a delta), so one pass suffices; a base
    no ref reaches is kept for as long as a delta coded against it is.
    """
    for pack_id, entries in by_pack.items():
        keep_all = pack_id in graced
        for oid, loc in entries:
            if loc.base is not None and (keep_all or oid in live):
                live.setdefault(loc.base, CHUNK)


def _rewrite(
    repo: Repository,
    plan: _Plan,
    files: dict[str, tuple[str, ...]],
    report: GcReport,
    check: Callable[..., None],
) -> None:
    """Repack, publish the new index and generation, then delete (in that order).

    ``check`` (the lock's) comes before every write that publishes and every delete; the
    generation is written only right after a refresh of the lock has confirmed it.
    """
    check()
    entries = plan.keep + _repack(repo, plan.repack)
    new_ids: list[str] = []
    for start in range(0, max(len(entries), 1), INDEX_FILE_ENTRIES):
        part = entries[start : start + INDEX_FILE_ENTRIES]
        if not part:
            break
        blob = encode_index_file(part)
        index_id = index_file_id(blob)
        check()
        repo.store.write(index_file_key(index_id), blob)
        new_ids.append(index_id)
    generation = Generation(repo.read_generation().number + 1, tuple(new_ids))
    check(0)
    repo.store.write(GENERATION_KEY, generation.encode(time.time()))
    # From here on every writer rebuilds its index from the files just named.
    for index_id in files:
        if index_id not in new_ids:
            check()
            repo.store.delete(index_file_key(index_id))
    for pack_id in plan.delete_packs + [p for p, _ in plan.repack]:
        check()
        repo.store.delete(pack_key(pack_id))
    repo.refresh()
    report.index_files_after = len(new_ids)
    report.generation = generation.number


def _repack(
    repo: Repository, packs: list[tuple[str, list[tuple[ObjectId, Location]]]]
) -> list[tuple[ObjectId, Location]]:
    """Copy live payloads verbatim (verified) into new packs; return their new locations."""
    out: list[tuple[ObjectId, Location]] = []
    done: set[ObjectId] = set()
    w: PackWriter | None = None
    try:
        for pack_id, entries in packs:
            ranges = [(loc.offset, loc.stored_len) for _, loc in entries]
            payloads = repo.store.read_ranges(pack_key(pack_id), ranges)
            for (oid, loc), payload in zip(entries, payloads, strict=True):
                if oid in done:
                    continue
                repo.verify_payload(oid, loc, payload)
                if w is not None and w.size >= repo.config.pack_size:
                    out.extend(w.finish())
                    w = None
                if w is None:
                    w = PackWriter(repo.store)
                w.add(oid, loc.kind, loc.codec, payload, loc.raw_len, loc.base)
                done.add(oid)
        if w is not None:
            out.extend(w.finish())
            w = None
    finally:
        if w is not None:
            w.abort()
    return out

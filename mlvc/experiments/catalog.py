"""Reading experiments from the store: every ref through the catalog, or one by its id.

:func:`scan` never reads commit chains nor pack indexes: it lists the refs (one request per
1,000), takes every unchanged ref from this machine's cache or from the compacted catalog
``refs/experiments.catalog`` (:mod:`mlvc_core.catalog`), reads only the refs that changed,
and lists ``heartbeats/`` once. A ref unchanged since this machine last checked it is taken
from the row cache (:mod:`mlvc.experiments.rows`) without being loaded, decoded or checked
again. :func:`experiment_ids` lists only the refs whose names start with an id prefix, which
is how an id is looked up (:mod:`mlvc.experiments.revisions`).

This module owns the local listing caches; it does not filter, sort or resolve names.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from mlvc.experiments.model import STALE_AFTER, Experiment
from mlvc.experiments.rows import Row, load_rows, paused_gc, save_rows
from mlvc.experiments.summary import (
    HEARTBEAT_PREFIX,
    REFS_PREFIX,
    REMOVED_PREFIX,
    ExperimentSummary,
    checked_ref,
    heartbeat_key,
    ref_name,
    tombstone_key,
)
from mlvc_core.catalog import Copied, Entry, LocalCache, ScanResult
from mlvc_core.catalog import scan as scan_catalog
from mlvc_core.errors import FormatError, KeyNotFound, MlvcError, ObjectNotFound
from mlvc_core.ids import SHORT_LEN, ObjectId
from mlvc_core.refs import Ref, decode_ref
from mlvc_core.repository import Repository

log = logging.getLogger("mlvc")

RACY_SECONDS = {"local": 1.0, "remote": 2.0}
"""A cached ref is trusted only if it was read this long after its modification time."""

_caches: dict[tuple[str, str], LocalCache] = {}
_caches_lock = threading.Lock()


def _cache_for(repo: Repository) -> LocalCache:
    """This machine's copies of the repository's refs (``<cache dir>/refs.sqlite``)."""
    path = repo.cache_dir / "refs.sqlite" if repo.cache_dir is not None else None
    key = (repo.config.repo_id, str(path) if path is not None else f"mem:{id(repo)}")
    with _caches_lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = LocalCache(path)
        return cache


def _racy(repo: Repository) -> float:
    return RACY_SECONDS["local" if repo.store.is_local else "remote"]


def scan_refs(
    repo: Repository,
    prefix: str,
    compact: bool = True,
    compact_threshold: int | None = None,
    held: Callable[[], Mapping[str, Copied]] | None = None,
) -> ScanResult:
    """Every ref under ``prefix`` via the catalog and the local cache (see mlvc_core.catalog).

    Raises:
        StorageError: The listing or a ref read failed.
    """
    return scan_catalog(
        repo.store,
        prefix,
        _cache_for(repo),
        _racy(repo),
        compact=compact,
        compact_threshold=compact_threshold,
        held=held,
    )


def compact_catalog(repo: Repository, threshold: int | None = None) -> ScanResult:
    """List the experiment refs and rewrite their catalog if too many are newer than it.

    What a writer calls after moving refs (a tracked run does when it stops): one listing,
    and only when the catalog is out of date a read of it, of the changed refs, and one
    compare-and-swap.

    Raises:
        StorageError: The listing or a ref read failed.
    """
    return scan_refs(repo, REFS_PREFIX, compact=True, compact_threshold=threshold)


def heartbeats(repo: Repository) -> dict[str, float]:
    """Experiment id -> modification time of its heartbeat (one listing)."""
    return {
        info.key[len(HEARTBEAT_PREFIX) :]: info.mtime for info in repo.store.list(HEARTBEAT_PREFIX)
    }


def heartbeat_of(repo: Repository, exp_id: str) -> float | None:
    """Modification time of one experiment's heartbeat, or None (one listing of its name)."""
    key = heartbeat_key(exp_id)
    for info in repo.store.list(key):
        if info.key == key:
            return info.mtime
    return None


def _parse_ref_doc(key: str, data: bytes) -> Ref:
    """A stored experiment ref document, its summary checked.

    Raises:
        FormatError: Not a well-formed experiment ref (the error names ``key``).
    """
    ref = decode_ref(key, data)
    checked_ref(ref)
    return ref


def _row_of(repo: Repository, key: str, entry: Entry) -> tuple[Row | None, bool]:
    """The checked row of one ref copy, and whether it may be kept (it names ``entry``'s token).

    A copy that does not decode may be what is damaged (this machine's cache, the catalog):
    the copy is forgotten and the ref itself read; a ref that still does not decode is left
    out of the listing with a warning (``fsck`` names it too).
    """
    try:
        ref = _parse_ref_doc(key, entry.doc)
        keep = True
    except FormatError:
        _cache_for(repo).update([], [key])
        try:
            ref = _parse_ref_doc(key, repo.store.read(key))
            keep = False
        except (FormatError, KeyNotFound) as exc:
            log.warning("mlvc: skipping experiment %s: %s", key.rpartition("/")[2][:SHORT_LEN], exc)
            return None, False
    summary = ExperimentSummary.from_dict(ref.summary)
    return Row(entry.token, entry.exact, entry.read_at, ObjectId(ref.target), summary), keep


def _rows_path(repo: Repository, prefix: str) -> Path | None:
    """``<cache dir>/refs.experiments.rows`` (``removed.experiments.rows``), or None."""
    if repo.cache_dir is None:
        return None
    return repo.cache_dir / f"{prefix.strip('/').replace('/', '.')}.rows"


def _experiments_of(
    repo: Repository,
    prefix: str,
    stale_after: float,
    removed: bool,
    skip: set[str] | frozenset[str] = frozenset(),
) -> list[Experiment]:
    """Every experiment whose ref is under ``prefix`` (except the ids in ``skip``), in key order.

    Refs unchanged since this machine checked them come from the row cache (:mod:`.rows`);
    the others are decoded and checked, and the row cache rewritten.
    """
    path = _rows_path(repo, prefix)
    repo_id = repo.config.repo_id
    with paused_gc(), ThreadPoolExecutor(2) as pool:
        # The row cache loads, and the heartbeats are listed, while the refs are listed.
        loading = pool.submit(load_rows, path, repo_id, prefix) if path is not None else None
        beating = pool.submit(heartbeats, repo) if not removed else None
        result = scan_refs(repo, prefix, held=loading.result if loading is not None else None)
        rows = loading.result() if loading is not None else {}
        beats = beating.result() if beating is not None else {}
        fresh: dict[str, Row] = {}
        kept: dict[str, Row] = {k: rows[k] for k in result.held}
        for key, entry in result.entries.items():
            row, keep = _row_of(repo, key, entry)
            if row is not None:
                fresh[key] = row
                if keep:
                    kept[key] = row
        if path is not None and (len(kept) != len(rows) or len(kept) != len(result.held)):
            save_rows(path, repo_id, prefix, kept)
        out = []
        now = time.time()
        start = len(prefix)
        for key in result.listed:
            exp_id = key[start:]
            row = rows[key] if key in result.held else fresh.get(key)
            if row is None or exp_id in skip:
                continue
            summary = replace(row.summary, status="removed") if removed else row.summary
            out.append(
                Experiment(
                    repo,
                    exp_id,
                    row.target,
                    summary,
                    beats.get(exp_id),
                    stale_after,
                    removed=removed,
                    now=now,
                )
            )
    return out


def scan(repo: Repository, stale_after: float = STALE_AFTER) -> list[Experiment]:
    """Every live experiment (from refs, the catalog and the local caches; see the module)."""
    return _experiments_of(repo, REFS_PREFIX, stale_after, removed=False)


def removed_experiments(repo: Repository, live: set[str]) -> list[Experiment]:
    """Experiments removed but not collected yet, from their tombstones (not from commits).

    A tombstone whose commit ``gc`` has freed is dropped from the listing (and deleted).
    """
    exps = _experiments_of(repo, REMOVED_PREFIX, STALE_AFTER, removed=True, skip=live)
    out = []
    for exp in exps:
        if repo.has(exp.target):
            out.append(exp)
        else:
            with contextlib.suppress(MlvcError, OSError):
                repo.store.delete(tombstone_key(exp.id))  # collected: nothing left to show
    return out


def experiment_ids(repo: Repository, prefix: str = "") -> list[str]:
    """Ids of the experiments whose id starts with ``prefix`` (one listing of those names)."""
    start = REFS_PREFIX + prefix
    return [
        info.key[len(REFS_PREFIX) :]
        for info in repo.store.list(start)
        if info.key.startswith(REFS_PREFIX) and "/" not in info.key[len(REFS_PREFIX) :]
    ]


def load_experiment(repo: Repository, exp_id: str, stale_after: float = STALE_AFTER) -> Experiment:
    """The experiment with full id ``exp_id`` (its ref and heartbeat).

    Raises:
        ObjectNotFound: No such experiment (or it was removed).
        FormatError: Its ref is malformed.
    """
    ref = checked_ref(repo.refs.get(ref_name(exp_id)))
    if ref is None:
        raise ObjectNotFound(exp_id, "experiment")
    return Experiment(
        repo,
        ref.short_name,
        ref.target,
        ExperimentSummary.from_dict(ref.summary),
        heartbeat_of(repo, exp_id),
        stale_after,
    )

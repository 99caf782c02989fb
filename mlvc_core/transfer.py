"""push / pull / clone: copy the packs the destination lacks, then move its refs.

Order is the write ordering of a single commit, across two repositories: packs first, each
followed by an index file covering it, refs last, each by compare-and-swap.

What moves is decided from the two repositories' indexes, never by reading objects one by one:

* every payload the source indexes (or, for named refs, every payload they reach) that the
  destination lacks is sent;
* a pack all of whose indexed payloads the destination lacks is copied whole, under its own
  pack id, streamed in pieces of :data:`PIECE_BYTES` (one ranged GET each), every payload
  verified (decompressed and re-hashed) as it passes, then published with an index file of its
  own: an interrupted transfer resumes pack by pack, since a copied pack is indexed at once;
* from a pack the destination partly has, the payloads it lacks are read in runs of adjacent
  payloads (one ranged read per run, up to :data:`_BATCH_BYTES`) and appended to new packs;
* a delta travels with its base (a named ref's payloads include the bases of its deltas) and
  is never published before it: whole packs are copied in waves, a pack once the bases its
  deltas need are at the destination or inside it, and packs still waiting after that go
  with the runs, whose index file lists stored-alone payloads before deltas.

So a clone costs requests per pack, not per object: one listing of the source's packs, their
pieces, and one PUT per pack and per index file. Refs are read through the experiment catalog
(:mod:`mlvc_core.catalog`) on both sides, and only refs that differ are written.

A destination ref moves only forward (its current target is an ancestor of the new one) unless
``force``; a ref that diverged is reported in ``refs_skipped``.

A transfer killed while uploading a large pack to S3 leaves an incomplete multipart upload,
invisible to listings but billed: the store lists it among its temporary objects and ``gc``
aborts it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from mlvc_core.catalog import Entry, LocalCache, scan
from mlvc_core.errors import IntegrityError, MlvcError, RefConflict
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.packs import PACK_PREFIX, Location, pack_key
from mlvc_core.refs import PREFIX as REFS_PREFIX
from mlvc_core.refs import Ref, decode_ref, encode_ref
from mlvc_core.repository import Repository
from mlvc_core.session import WriteSession
from mlvc_core.walk import reachable, ref_roots

_BATCH_BYTES = 16 << 20
PIECE_BYTES = 16 << 20
"""Bytes of a pack read per request when it is copied whole."""
_PACK_WORKERS = 4
_EXPERIMENTS = f"{REFS_PREFIX}experiments/"


log = logging.getLogger("mlvc")


@dataclass
class TransferReport:
    """What a transfer did."""

    objects_sent: int = 0
    bytes_sent: int = 0
    objects_present: int = 0
    packs_copied: int = 0
    """Packs copied whole (the rest of ``objects_sent`` went in runs into new packs)."""
    refs_updated: list[str] = field(default_factory=list)
    refs_skipped: list[str] = field(default_factory=list)
    refs_unchanged: list[str] = field(default_factory=list)
    refs_unreadable: list[str] = field(default_factory=list)
    """Refs of the source that could not be read, so were not sent (see ``mlvc fsck``)."""

    def to_dict(self) -> dict[str, object]:
        """JSON-safe form."""
        return asdict(self)


def _is_ancestor(repo: Repository, old: ObjectId, new: ObjectId, limit: int = 100_000) -> bool:
    stack: list[ObjectId] = [new]
    seen: set[ObjectId] = set()
    while stack and len(seen) < limit:
        oid = stack.pop()
        if oid == old:
            return True
        if oid in seen:
            continue
        seen.add(oid)
        stack.extend(repo.read_commit(oid).parents)
    return False


def _offset(entry: tuple[ObjectId, Location]) -> int:
    return entry[1].offset


def _batches(entries: list[tuple[ObjectId, Location]]) -> Iterator[list[tuple[ObjectId, Location]]]:
    batch: list[tuple[ObjectId, Location]] = []
    size = 0
    for item in entries:
        batch.append(item)
        size += item[1].stored_len
        if size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _all_refs(repo: Repository, report: TransferReport) -> dict[str, Ref]:
    """Every readable ref by name: experiments through their catalog, heads and tags read.

    An unreadable ref is left behind (named in ``report.refs_unreadable`` and logged): what
    it reached is not sent, unless another ref reaches it.
    """
    refs, bad = repo.refs.scan()
    for name, why in bad:
        log.warning("mlvc: ref %s is not sent: %s", name, why)
        report.refs_unreadable.append(name)
    return {r.name: r for r in refs}


class _Progress:
    """Thread-safe forwarding of byte counts to a caller's callback."""

    def __init__(self, fn: Callable[[int], None] | None) -> None:
        self._fn = fn
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self._fn is not None and n:
            with self._lock:
                self._fn(n)


def copy_pack(
    src: Repository,
    dst: Repository,
    pack_id: str,
    size: int,
    entries: list[tuple[ObjectId, Location]],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Copy one pack whole from ``src`` to ``dst`` (same id), verifying ``entries`` in passing.

    The pack is streamed in pieces of :data:`PIECE_BYTES` (one ranged read each) straight to
    ``dst``, where it becomes visible only once complete; every payload of ``entries`` is
    decompressed and re-hashed as its bytes go by. The caller then publishes an index file.

    Raises:
        IntegrityError: A payload does not match its id, or the pack is shorter than indexed
            (nothing is left at the destination).
    """
    key = pack_key(pack_id)
    todo = sorted(entries, key=lambda e: e[1].offset)
    buf = bytearray()
    buf_start = 0
    i = 0
    with dst.store.open_write(key) as out:
        offset = 0
        while offset < size:
            piece = src.store.read_range(key, offset, min(PIECE_BYTES, size - offset))
            if not piece:
                break
            out.write(piece)
            buf += piece
            offset += len(piece)
            while i < len(todo) and todo[i][1].offset + todo[i][1].stored_len <= offset:
                oid, loc = todo[i]
                start = loc.offset - buf_start
                src.verify_payload(oid, loc, bytes(buf[start : start + loc.stored_len]))
                i += 1
            keep = todo[i][1].offset if i < len(todo) else offset
            del buf[: max(0, keep - buf_start)]
            buf_start = max(buf_start, keep)
            if progress is not None:
                progress(len(piece))
        if i < len(todo):
            raise IntegrityError(to_hex(todo[i][0]), f"pack {pack_id} is shorter than indexed")


def _pack_sizes(repo: Repository) -> dict[str, int]:
    """Pack id -> size in bytes (one listing of ``packs/``, a request per 1,000 packs)."""
    return {
        info.key.rsplit("/", 1)[-1]: info.size
        for info in repo.store.list(PACK_PREFIX)
        if info.key.count("/") == 2
    }


def transfer(
    src: Repository,
    dst: Repository,
    refs: Iterable[str] | None = None,
    progress: Callable[[int], None] | None = None,
    force: bool = False,
    total: Callable[[int], None] | None = None,
) -> TransferReport:
    """Copy refs (default: all) and everything they reach from ``src`` to ``dst``.

    Args:
        src: Repository to read.
        dst: Repository to write (must have the same chunker config for dedup to work; the
            payloads themselves are valid whatever the config).
        refs: Full ref names to transfer; default every ref of ``src`` (then every payload
            ``src`` indexes is sent, without walking its history).
        progress: Called with bytes as they are sent (from worker threads, serialised).
        force: Move destination refs even when they diverged.
        total: Called once with the number of bytes that will be sent.

    Returns:
        A :class:`TransferReport`.

    Raises:
        IntegrityError: A payload read from ``src`` is damaged (what was sent before stays,
            indexed, at ``dst``).
        RefNotFound: A named ref does not exist in ``src``.
    """
    report = TransferReport()
    chosen: list[Ref]
    if refs is not None:
        chosen = [src.refs.require(n) for n in refs]
        wanted: set[ObjectId] | None = set(reachable(src, ref_roots(chosen)))
    else:
        chosen = sorted(_all_refs(src, report).values(), key=lambda r: r.name)
        wanted = None
    index = dict(src.iter_index())
    if wanted is not None:  # and the base of every delta they reach
        wanted.update([loc.base for oid in wanted if (loc := index.get(oid)) and loc.base])
    by_pack: dict[str, list[tuple[ObjectId, Location]]] = defaultdict(list)
    for oid, loc in index.items():
        if wanted is None or oid in wanted:
            by_pack[loc.pack].append((oid, loc))
    whole: list[tuple[str, list[tuple[ObjectId, Location]]]] = []
    runs: list[tuple[str, list[tuple[ObjectId, Location]]]] = []
    for pack_id, entries in sorted(by_pack.items()):
        missing = [(oid, loc) for oid, loc in entries if not dst.has(oid)]
        report.objects_present += len(entries) - len(missing)
        if not missing:
            continue
        if wanted is None and len(missing) == len(entries):
            whole.append((pack_id, missing))
        else:
            runs.append((pack_id, missing))
    sizes = _pack_sizes(src) if whole else {}
    for pack_id, entries in list(whole):
        if pack_id not in sizes:  # listed index, unlisted pack: copy what is indexed, in runs
            whole.remove((pack_id, entries))
            runs.append((pack_id, entries))
    if total is not None:
        total(
            sum(sizes[p] for p, _ in whole)
            + sum(loc.stored_len for _, entries in runs for _, loc in entries)
        )
    tick = _Progress(progress)

    with WriteSession(dst) as session:
        # A delta is published only once its base is: whole packs go in waves, each pack
        # once every base its deltas need is at the destination or inside it; packs whose
        # bases never arrive that way go with the runs, whose index file comes last.
        while whole:
            ready, waiting = _ready(dst, whole)
            if not ready:
                runs.extend(waiting)
                break
            _copy_whole_packs(src, dst, ready, sizes, tick, report)
            whole = waiting
        _copy_runs(src, session, runs, tick, report)
        session.flush()
        _move_refs(src, dst, chosen, force, report)
    return report


def _ready(
    dst: Repository, whole: list[tuple[str, list[tuple[ObjectId, Location]]]]
) -> tuple[
    list[tuple[str, list[tuple[ObjectId, Location]]]],
    list[tuple[str, list[tuple[ObjectId, Location]]]],
]:
    """Split ``whole`` into packs that may be published now and packs that must wait.

    A pack may be published once the base of each of its deltas is stored at ``dst`` or
    travels in the pack itself.
    """
    ready, waiting = [], []
    for pack_id, entries in whole:
        own = {oid for oid, _ in entries}
        needs = {loc.base for _, loc in entries if loc.base is not None} - own
        if all(dst.has(b) for b in needs):
            ready.append((pack_id, entries))
        else:
            waiting.append((pack_id, entries))
    return ready, waiting


def _copy_whole_packs(
    src: Repository,
    dst: Repository,
    whole: list[tuple[str, list[tuple[ObjectId, Location]]]],
    sizes: dict[str, int],
    tick: _Progress,
    report: TransferReport,
) -> None:
    """Copy packs whole, each published with its own index file as soon as it is complete."""
    if not whole:
        return

    def one(pack_id: str, entries: list[tuple[ObjectId, Location]]) -> None:
        copy_pack(src, dst, pack_id, sizes[pack_id], entries, tick)
        dst.publish_index(entries)  # this pack is now stored: a rerun skips it

    with ThreadPoolExecutor(_PACK_WORKERS, thread_name_prefix="mlvc-pack") as pool:
        futures: list[tuple[Future[None], list[tuple[ObjectId, Location]]]] = [
            (pool.submit(one, pack_id, entries), entries) for pack_id, entries in whole
        ]
        error: BaseException | None = None
        for fut, entries in futures:
            try:
                fut.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised once every pack settled
                error = error or exc
                continue
            report.packs_copied += 1
            report.objects_sent += len(entries)
            report.bytes_sent += sum(loc.stored_len for _, loc in entries)
        if error is not None:
            raise error


def _copy_runs(
    src: Repository,
    session: WriteSession,
    runs: list[tuple[str, list[tuple[ObjectId, Location]]]],
    tick: _Progress,
    report: TransferReport,
) -> None:
    """Copy single payloads read in runs (one ranged read per batch) into the session's packs."""

    def fetch(
        pack_id: str, batch: list[tuple[ObjectId, Location]]
    ) -> list[tuple[ObjectId, Location, bytes]]:
        payloads = src.store.read_ranges(
            pack_key(pack_id), [(loc.offset, loc.stored_len) for _, loc in batch]
        )
        out = []
        for (oid, loc), payload in zip(batch, payloads, strict=True):
            src.verify_payload(oid, loc, payload)
            out.append((oid, loc, payload))
        return out

    # Payloads stored on their own first, deltas after: a delta's base is then in the
    # session (or already stored) when the delta is added.
    jobs = [
        (pack_id, batch)
        for deltas in (False, True)
        for pack_id, entries in runs
        for batch in _batches(
            sorted((e for e in entries if (e[1].base is not None) == deltas), key=_offset)
        )
    ]
    pending: list[Future[list[tuple[ObjectId, Location, bytes]]]] = []
    it = iter(jobs)
    for job in it:
        pending.append(src.pool.submit(fetch, *job))
        if len(pending) >= 4:
            break
    while pending:
        fut = pending.pop(0)
        nxt = next(it, None)
        if nxt is not None:
            pending.append(src.pool.submit(fetch, *nxt))
        for oid, loc, payload in fut.result():
            session.add_payload(oid, loc.kind, loc.codec, payload, loc.raw_len, loc.base)
            report.objects_sent += 1
            report.bytes_sent += len(payload)
            tick(len(payload))


def _racy(repo: Repository) -> float:
    return 1.0 if repo.store.is_local else 2.0


def _move_refs(
    src: Repository, dst: Repository, chosen: list[Ref], force: bool, report: TransferReport
) -> None:
    """Move the destination's refs; only refs that differ are read again and written."""
    cache = LocalCache(None)
    found = scan(dst.store, _EXPERIMENTS, cache, _racy(dst), compact=False)
    current = {key[len(REFS_PREFIX) :]: decode_ref(key[len(REFS_PREFIX) :], data)
               for key, data in found.docs.items()}  # fmt: skip
    current.update((r.name, r) for kind in ("heads", "tags") for r in dst.refs.list(kind))
    written: list[Entry] = []
    for ref in chosen:
        have = current.get(ref.name)
        if have is not None and have.target == ref.target and have.summary == ref.summary:
            report.refs_unchanged.append(ref.name)
            continue
        now = time.time()
        moved = _move_ref(src, dst, ref, force, report)
        if moved is not None and moved.kind == "experiments" and moved.version is not None:
            doc = encode_ref(moved.target, moved.summary)
            written.append(Entry(REFS_PREFIX + moved.name, str(moved.version), True, now, doc))
    if len(written) > 1:
        # Many experiment refs just changed: a writer keeps the catalog compact. The refs
        # written are known already (their new versions too), so this reads none of them
        # where listings carry versions.
        cache.update(written, ())
        with contextlib.suppress(MlvcError, OSError):
            scan(dst.store, _EXPERIMENTS, cache, _racy(dst))


def _move_ref(
    src: Repository, dst: Repository, ref: Ref, force: bool, report: TransferReport
) -> Ref | None:
    """Move one destination ref; return it as written, or None."""
    current = dst.refs.get(ref.name)
    if current is not None and current.target == ref.target and current.summary == ref.summary:
        report.refs_unchanged.append(ref.name)
        return None
    expected = current.target if current is not None else None
    if current is not None and current.target != ref.target and not force:
        fast_forward = src.has(current.target) and _is_ancestor(src, current.target, ref.target)
        if not fast_forward:
            report.refs_skipped.append(ref.name)
            return None
    try:
        if current is not None and current.target == ref.target:
            moved = dst.refs.update_summary(current, ref.summary)
        else:
            moved = dst.refs.set(ref.name, ref.target, expected, ref.summary)
    except RefConflict:
        report.refs_skipped.append(ref.name)
        return None
    report.refs_updated.append(ref.name)
    return moved

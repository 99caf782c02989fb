"""push / pull / clone: copy what the destination lacks, then move its refs.

Order is the write ordering of a single commit, across two repositories: payloads first (read
from the source's packs, verified, appended verbatim - no recompression - to new packs in the
destination, each published with its index as it fills), refs last, each by compare-and-swap.
An interrupted transfer resumes where it stopped: every pack published before the
interruption is in the destination's index, so its payloads are not sent again.

A destination ref moves only forward (its current target is an ancestor of the new one) unless
``force``; a ref that diverged is reported in ``refs_skipped``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

from mlvc_core.errors import RefConflict
from mlvc_core.ids import ObjectId
from mlvc_core.packs import Location, pack_key
from mlvc_core.refs import Ref
from mlvc_core.repository import Repository
from mlvc_core.walk import reachable, ref_roots

_BATCH_BYTES = 16 << 20


@dataclass
class TransferReport:
    """What a transfer did."""

    objects_sent: int = 0
    bytes_sent: int = 0
    objects_present: int = 0
    refs_updated: list[str] = field(default_factory=list)
    refs_skipped: list[str] = field(default_factory=list)
    refs_unchanged: list[str] = field(default_factory=list)

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
        refs: Full ref names to transfer; default every ref of ``src``.
        progress: Called with payload bytes as they are sent.
        force: Move destination refs even when they diverged.
        total: Called once with the number of bytes that will be sent.

    Returns:
        A :class:`TransferReport`.
    """
    report = TransferReport()
    src.load_index()
    dst.load_index()
    chosen: list[Ref] = [src.refs.require(n) for n in refs] if refs is not None else src.refs.list()
    needed = reachable(src, ref_roots(chosen))
    by_pack: dict[str, list[tuple[ObjectId, Location]]] = defaultdict(list)
    for oid in needed:
        if dst.has(oid):
            report.objects_present += 1
            continue
        loc = src.locate(oid)
        by_pack[loc.pack].append((oid, loc))
    if total is not None:
        total(sum(loc.stored_len for entries in by_pack.values() for _, loc in entries))

    with dst.session() as session:

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

        jobs = [
            (pack_id, batch)
            for pack_id, entries in sorted(by_pack.items())
            for batch in _batches(sorted(entries, key=lambda e: e[1].offset))
        ]
        pending = []
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
                session.add_payload(oid, loc.kind, loc.codec, payload, loc.raw_len)
                report.objects_sent += 1
                report.bytes_sent += len(payload)
                if progress is not None:
                    progress(len(payload))
        session.flush()
        for ref in chosen:
            _move_ref(src, dst, ref, force, report)
    return report


def _move_ref(
    src: Repository, dst: Repository, ref: Ref, force: bool, report: TransferReport
) -> None:
    current = dst.refs.get(ref.name)
    if current is not None and current.target == ref.target and current.summary == ref.summary:
        report.refs_unchanged.append(ref.name)
        return
    expected = current.target if current is not None else None
    if current is not None and current.target != ref.target and not force:
        fast_forward = src.has(current.target) and _is_ancestor(src, current.target, ref.target)
        if not fast_forward:
            report.refs_skipped.append(ref.name)
            return
    try:
        if current is not None and current.target == ref.target:
            dst.refs.update_summary(current, ref.summary)
        else:
            dst.refs.set(ref.name, ref.target, expected, ref.summary)
        report.refs_updated.append(ref.name)
    except RefConflict:
        report.refs_skipped.append(ref.name)

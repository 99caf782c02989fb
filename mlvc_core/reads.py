"""Reading chunks: payloads decoded (a delta against its base) and verified, in runs.

:class:`ChunkReads` extends the pack index with the reads of payloads: one request per run
of payloads adjacent in a pack (:meth:`ChunkReads.chunk_runs`), each payload decompressed
within its recorded length and re-hashed, a mismatch raising
:class:`~mlvc_core.errors.IntegrityError` naming the id. A delta (codec 3) is decoded against
its base, a chunk stored on its own; the base is hashed only to blame it when the result
does not match (docs/format.md, "Delta payloads").

Two forms of result: :meth:`ChunkReads.read_run` returns new ``bytes`` the caller keeps;
:meth:`ChunkReads.read_run_into` decodes into an *arena* (a reusable buffer of one run,
:meth:`ChunkReads.take_arena`) and returns views of it, for readers that write or copy each
chunk at once (a checkout, a file object): no decoded chunk is copied and no fresh memory is
touched per chunk, which on a loaded machine costs as much as decoding it. It knows nothing
of threads: :class:`~mlvc_core.repository.Repository` runs these reads on its workers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from mlvc_core import codec, delta
from mlvc_core.caches import LRU
from mlvc_core.errors import FormatError, IntegrityError, KeyNotFound, MlvcError
from mlvc_core.ids import ObjectId, hash_bytes, to_hex
from mlvc_core.indexes import PackIndex
from mlvc_core.objects import CHUNK
from mlvc_core.packs import Location, pack_key
from mlvc_core.storage import Store

if TYPE_CHECKING:
    import os

    import numpy as np
    from numpy.typing import NDArray

    Arena = NDArray[np.uint8]

__all__ = ["ARENA_BYTES", "BASE_CACHE_BYTES", "Arena", "ChunkReads"]

_RUN_BYTES = 4 << 20
"""Most bytes, stored and decoded, in one run of :meth:`ChunkReads.chunk_runs` (one request)."""
BASE_CACHE_BYTES = 16 << 20
"""Decoded delta bases kept in memory (bytes): the bases prefetched for the runs a reader
of :meth:`ChunkReads.read_run` has in flight, and those several versions coded against the
same base share."""
_SLOT_ALIGN = 64
"""Chunks decoded into an arena start at multiples of this many bytes (whole cache lines)."""
ARENA_BYTES = _RUN_BYTES + (64 << 10)
"""Size of an arena (:meth:`ChunkReads.take_arena`): a run's raw bytes plus the alignment
of up to 1,024 chunks. A run that needs more gets a buffer of its own."""
_ARENAS_KEPT = 6
"""Free arenas kept for the next reads (a stream holds ``prefetch + 1``)."""


class ChunkReads(PackIndex):
    """The pack index, with verified reads of the chunks and objects it locates."""

    def __init__(self, store: Store, cache_dir: str | os.PathLike[str] | None = None) -> None:
        super().__init__(store, cache_dir)
        # Keyed (base, verified): a reader decodes a base without hashing it, since the delta
        # it serves is verified and a mismatch then checks the base (see _apply_delta).
        self._bases: LRU[tuple[ObjectId, bool], bytes] = LRU(BASE_CACHE_BYTES, len)
        self._arenas: list[Arena] = []
        self._arena_lock = threading.Lock()

    def drop_arenas(self) -> None:
        """Free the arenas kept for later reads (those in use are dropped when handed back)."""
        with self._arena_lock:
            self._arenas.clear()

    def read_raw(self, oid: ObjectId) -> bytes:
        """The verified, uncompressed bytes of a chunk or object.

        Raises:
            ObjectNotFound: Not stored.
            IntegrityError: The stored bytes are damaged.
        """
        return self.verify_payload(oid, *self._payload(oid))

    def _payload(self, oid: ObjectId) -> tuple[Location, bytes]:
        """Where ``oid`` is stored and its payload as stored (a repacked one followed)."""
        loc = self._stored(oid)
        try:
            return loc, self.store.read_range(pack_key(loc.pack), loc.offset, loc.stored_len)
        except KeyNotFound:
            if not self._moved(oid, loc):
                raise
            loc = self.locate(oid)
            return loc, self.store.read_range(pack_key(loc.pack), loc.offset, loc.stored_len)

    def _moved(self, oid: ObjectId, old: Location) -> bool:
        """True if ``oid``, whose pack at ``old`` is gone, lives elsewhere now.

        gc repacked it since the index was loaded; another thread may have refreshed already.
        """
        if self._index.get(oid, old) != old:
            return True
        self.refresh()
        return self._index.get(oid, old) != old

    def verify_payload(self, oid: ObjectId, loc: Location, payload: bytes | memoryview) -> bytes:
        """Decode and re-hash one payload read from a pack (a delta: against its base).

        Raises:
            IntegrityError: Truncated, undecodable, hashing to another id, or a delta whose
                base is missing, damaged or itself a delta.
        """
        if loc.codec == codec.DELTA:
            return bytes(self._apply_delta(oid, loc, payload))  # bytes already: no copy
        raw = self._decode(oid, loc, payload)
        if hash_bytes(raw) != oid:
            raise IntegrityError(to_hex(oid), "content does not match its id")
        return raw

    def _decode(self, oid: ObjectId, loc: Location, payload: bytes | memoryview) -> bytes:
        """The bytes of a payload stored on its own (codec 0-2), not yet verified."""
        if len(payload) != loc.stored_len:
            raise IntegrityError(to_hex(oid), "pack is truncated")
        try:
            return codec.decompress(payload, loc.codec, loc.raw_len)
        except FormatError as exc:
            raise IntegrityError(to_hex(oid), str(exc)) from exc

    def _decode_into(
        self, oid: ObjectId, loc: Location, payload: bytes | memoryview, out: Arena
    ) -> memoryview:
        """:meth:`_decode` into ``out`` (``loc.raw_len`` bytes); returns where the bytes are."""
        if len(payload) != loc.stored_len:
            raise IntegrityError(to_hex(oid), "pack is truncated")
        try:
            return codec.decompress_into(payload, loc.codec, out)
        except FormatError as exc:
            raise IntegrityError(to_hex(oid), str(exc)) from exc

    def _apply_delta(
        self,
        oid: ObjectId,
        loc: Location,
        payload: bytes | memoryview,
        out: Arena | None = None,
        stored_base: tuple[Location, bytes | memoryview] | None = None,
    ) -> bytes | memoryview:
        """The verified chunk of a delta payload: decoded against its base, then re-hashed.

        The base is decoded but hashed only when the result does not match ``oid``: a
        damaged base then makes the result wrong, and is named as the cause. (A base whose
        damage lies outside the bytes the delta uses gives the right chunk, which is
        verified; fsck and any read of the base itself still report it.)

        Args:
            oid: The chunk.
            loc: Its index entry (a delta's).
            payload: Its payload as stored.
            out: Decode into this buffer (``loc.raw_len`` bytes) instead of new ``bytes``.
            stored_base: The base's index entry and payload, already read: a base not in
                the cache is then decoded from it into this thread's scratch buffer and not
                cached (a file read front to back uses each base once).

        Raises:
            IntegrityError: As :meth:`verify_payload`.
        """
        if len(payload) != loc.stored_len:
            raise IntegrityError(to_hex(oid), "pack is truncated")
        if loc.base is None:
            raise IntegrityError(to_hex(oid), "a delta without a base")
        try:
            base, verified = self._decoded_base(loc.base, stored_base)
        except MlvcError as exc:
            raise IntegrityError(to_hex(oid), f"its delta base is unreadable: {exc}") from exc
        try:
            if out is None:
                raw: bytes | memoryview = delta.decode(payload, base, loc.raw_len)
            else:
                raw = delta.decode_into(payload, base, out)
        except FormatError as exc:
            failure = str(exc)
        else:
            if hash_bytes(raw) == oid:
                return raw
            failure = "content does not match its id"
        if not verified:
            if hash_bytes(base) != loc.base:
                self._bases.discard((loc.base, False))
                bad = IntegrityError(to_hex(loc.base), "content does not match its id")
                raise IntegrityError(to_hex(oid), f"its delta base is unreadable: {bad}")
            self._bases.discard((loc.base, False))
            self._bases.put((loc.base, True), bytes(base))
        raise IntegrityError(to_hex(oid), failure)

    def _decoded_base(
        self, base: ObjectId, stored: tuple[Location, bytes | memoryview] | None = None
    ) -> tuple[bytes | memoryview, bool]:
        """The decoded bytes of a delta base, and whether they have been verified yet.

        ``stored``: see :meth:`_apply_delta` (bytes decoded from it are valid until the
        next base is decoded on this thread).

        Raises:
            MissingObject: The base is not stored.
            IntegrityError: It is undecodable, or not a chunk stored on its own.
        """
        for verified in (True, False):
            data = self._bases.get((base, verified))
            if data is not None:
                return data, verified
        self._check_base(base)
        if stored is not None:
            loc, payload = stored
            return self._decode_into(base, loc, payload, codec.scratch("base", loc.raw_len)), False
        data = self._decode(base, *self._payload(base))
        self._bases.put((base, False), data)
        return data, False

    def _check_base(self, base: ObjectId) -> None:
        found = self._stored(base)
        if found.kind != CHUNK or found.codec == codec.DELTA:
            raise IntegrityError(to_hex(base), "a delta base must be a chunk stored on its own")

    def read_base(self, base: ObjectId, cache: bool = True) -> bytes:
        """The verified bytes of a chunk that deltas are coded against.

        Decoded bases are kept in a bounded LRU (:data:`BASE_CACHE_BYTES`) unless ``cache``
        is False (a writer reads each base once). A base is always a chunk stored on its own,
        so one read of a chunk reads at most one base.

        Raises:
            MissingObject: The base is not stored.
            IntegrityError: It is damaged, or not a chunk stored on its own.
        """
        data = self._bases.get((base, True))
        if data is not None:
            return data
        self._check_base(base)
        data = self.read_raw(base)
        if cache:
            self._bases.put((base, True), data)
        return data

    def take_arena(self, run: list[tuple[ObjectId, Location]]) -> Arena:
        """A buffer to decode ``run`` into with :meth:`read_run_into`.

        Hand it back with :meth:`give_arena` once its chunks are no longer used.
        """
        import numpy as np

        need = sum(-(-loc.raw_len // _SLOT_ALIGN) * _SLOT_ALIGN for _, loc in run)
        if need > ARENA_BYTES:
            return np.empty(need, dtype=np.uint8)
        with self._arena_lock:
            if self._arenas:
                return self._arenas.pop()
        return np.empty(ARENA_BYTES, dtype=np.uint8)

    def give_arena(self, arena: Arena) -> None:
        """Keep ``arena`` for the next :meth:`take_arena` (its chunks must be unused now)."""
        if len(arena) == ARENA_BYTES:
            with self._arena_lock:
                if len(self._arenas) < _ARENAS_KEPT:
                    self._arenas.append(arena)

    def chunk_runs(self, oids: Iterable[ObjectId]) -> Iterator[list[tuple[ObjectId, Location]]]:
        """``oids`` located and grouped, in order, into runs of payloads adjacent in one pack.

        A run holds at most :data:`_RUN_BYTES` of stored bytes and of raw bytes (a run of
        well-compressed text must not decode into hundreds of MiB).

        Raises:
            ObjectNotFound: An id is not stored (raised when the iteration reaches it).
        """
        run: list[tuple[ObjectId, Location]] = []
        start = end = raw = 0
        for oid in oids:
            loc = self._stored(oid)
            if run and (
                loc.pack != run[0][1].pack
                or loc.offset != end
                or loc.offset + loc.stored_len - start > _RUN_BYTES
                or raw + loc.raw_len > _RUN_BYTES
            ):
                yield run
                run = []
            if not run:
                start, raw = loc.offset, 0
            run.append((oid, loc))
            end = loc.offset + loc.stored_len
            raw += loc.raw_len
        if run:
            yield run

    def read_run(self, run: list[tuple[ObjectId, Location]]) -> list[bytes]:
        """The verified bytes of a run from :meth:`chunk_runs`, read with one request.

        A pack gone since the index was loaded (gc repacked it: the generation moved) is
        looked up again in the current generation, payload by payload.
        """
        self._prefetch_bases([loc.base for _, loc in run if loc.base is not None])
        payloads = self._run_payloads(run)
        if payloads is None:
            return [self.read_raw(oid) for oid, _ in run]
        return [
            self.verify_payload(oid, loc, payload)
            for (oid, loc), payload in zip(run, payloads, strict=True)
        ]

    def read_run_into(self, run: list[tuple[ObjectId, Location]], arena: Arena) -> list[memoryview]:
        """:meth:`read_run`, decoding into ``arena`` (from :meth:`take_arena`) without copies.

        Each chunk is decoded into its own slot of ``arena`` (a raw one is left in the
        payload read), so the results stay valid while ``arena`` is not reused. The delta
        bases of the run that are not cached are read with one request per adjacent group
        and decoded into a per-thread buffer right before the chunk that needs them (a file
        read front to back uses each base once, so nothing is cached or copied).

        Raises:
            IntegrityError: A chunk is damaged, or its base (named).
        """
        payloads = self._run_payloads(run)
        if payloads is None:
            return [memoryview(self.read_raw(oid)) for oid, _ in run]
        bases = self._base_payloads([loc.base for _, loc in run if loc.base is not None])
        out: list[memoryview] = []
        pos = 0
        for (oid, loc), payload in zip(run, payloads, strict=True):
            slot = arena[pos : pos + loc.raw_len]
            pos += -(-loc.raw_len // _SLOT_ALIGN) * _SLOT_ALIGN
            if loc.codec == codec.DELTA:
                stored = bases.get(loc.base) if loc.base is not None else None
                data = self._apply_delta(oid, loc, payload, slot, stored)
            else:
                data = self._decode_into(oid, loc, payload, slot)
                if hash_bytes(data) != oid:
                    raise IntegrityError(to_hex(oid), "content does not match its id")
            out.append(memoryview(data))
        return out

    def _bases_to_read(self, bases: list[ObjectId]) -> list[ObjectId]:
        """Those of ``bases`` (once each, in order) not in the cache and stored as keyframes."""
        wanted = [
            b
            for b in dict.fromkeys(bases)
            if self._bases.get((b, True)) is None and self._bases.get((b, False)) is None
        ]
        with self._index_lock:
            return [
                b
                for b in wanted
                if (loc := self._index.get(b)) and loc.kind == CHUNK and loc.codec != codec.DELTA
            ]

    def _base_payloads(
        self, bases: list[ObjectId]
    ) -> dict[ObjectId, tuple[Location, bytes | memoryview]]:
        """The stored payloads of the delta bases not decoded in the cache.

        Adjacent ones are read with one request. A hint: what fails here is read and
        reported by the delta's own read.
        """
        found = self._bases_to_read(bases)
        out: dict[ObjectId, tuple[Location, bytes | memoryview]] = {}
        with contextlib.suppress(MlvcError):
            for run in self.chunk_runs(found):
                payloads = self._run_payloads(run)
                if payloads is None:
                    break
                for (oid, loc), payload in zip(run, payloads, strict=True):
                    out[oid] = (loc, payload)
        return out

    def _run_payloads(
        self, run: list[tuple[ObjectId, Location]]
    ) -> list[bytes | memoryview] | None:
        """The payloads of a run, read with one request; None if its pack is gone (moved)."""
        first = run[0][1]
        end = run[-1][1].offset + run[-1][1].stored_len
        try:
            blob = self.store.read_range(pack_key(first.pack), first.offset, end - first.offset)
        except KeyNotFound:
            if not self._moved(run[0][0], first):
                raise
            return None
        if len(run) == 1:
            return [blob]  # a raw chunk: no copy
        view = memoryview(blob)
        return [view[loc.offset - first.offset :][: loc.stored_len] for _, loc in run]

    def _prefetch_bases(self, bases: list[ObjectId]) -> None:
        """Decode the delta bases of a run not decoded yet, adjacent ones with one request.

        The keyframes of a file's chunks lie side by side in their pack, so a run of deltas
        costs one more request, not one per base. A hint: what fails here is read (and
        reported) again by :meth:`_apply_delta`. The bases are not hashed here: see there.
        """
        with contextlib.suppress(MlvcError):
            for oid, (loc, payload) in self._base_payloads(bases).items():
                self._bases.put((oid, False), self._decode(oid, loc, payload))

"""The repository: config, packs and their index, objects and refs, over one :class:`Store`.

Writes go through a :class:`~mlvc_core.session.WriteSession` (packs, then their index file)
and refs move to new commits only through :func:`mlvc_core.history.advance`, ref last, by
compare-and-swap (see docs/format.md). A crash at any point leaves at worst unreferenced packs
for ``gc``.

Every read is verified: a payload is decompressed (bounded by its recorded length) and re-hashed;
a mismatch raises :class:`~mlvc_core.errors.IntegrityError` naming the id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mlvc_core import codec, delta
from mlvc_core.caches import BytesCache, ObjectCache
from mlvc_core.config import MAX_CONFIG_SIZE, RepoConfig, upgrade_config
from mlvc_core.errors import (
    FormatError,
    IntegrityError,
    KeyNotFound,
    MlvcError,
    NotARepository,
    ObjectNotFound,
    RepositoryExists,
    UsageError,
)
from mlvc_core.ids import ObjectId, from_hex, hash_bytes, is_hex_prefix, resolve_prefix, to_hex
from mlvc_core.indexes import PackIndex
from mlvc_core.objects import (
    CHUNK,
    KIND_NAMES,
    Commit,
    Manifest,
    Object,
    Tree,
    decode,
)
from mlvc_core.packs import (
    Location,
    pack_key,
)
from mlvc_core.refs import KINDS, Ref, RefStore
from mlvc_core.storage import LocalStore, Store, open_store

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Arena = NDArray[np.uint8]

CONFIG_KEY = "config"


log = logging.getLogger(__name__)

_RUN_BYTES = 4 << 20
"""Most bytes, stored and decoded, in one run of :meth:`Repository.chunk_runs` (one request)."""
_SMALL_PACK_BYTES = 1 << 20
"""Packs up to this size are read whole when an object in them is read from a remote store."""
_PACK_CACHE_BYTES = 32 << 20
"""Small packs kept in memory (bytes)."""
BASE_CACHE_BYTES = 16 << 20
"""Decoded delta bases kept in memory (bytes): the bases prefetched for the runs a reader
of :meth:`Repository.read_run` has in flight, and those several versions coded against the
same base share."""
_SLOT_ALIGN = 64
"""Chunks decoded into an arena start at multiples of this many bytes (whole cache lines)."""
ARENA_BYTES = _RUN_BYTES + (64 << 10)
"""Size of an arena that the chunks of one run are decoded into (:meth:`Repository.read_run_into`):
a run's raw bytes plus the alignment of up to 1,024 chunks. A run that needs more gets a
buffer of its own."""
_ARENAS_KEPT = 6
"""Free arenas a repository keeps for the next reads (a stream holds ``prefetch + 1``)."""


def default_workers() -> int:
    """Threads for hashing/compression: one per core (blake3 and zstd release the GIL)."""
    return max(2, os.cpu_count() or 2)


class Repository(PackIndex):
    """An mlvc repository. Open with :meth:`open`, create with :meth:`init`.

    The index of its packs (what is stored where, and the generation it is at) is the
    :class:`~mlvc_core.indexes.PackIndex` it extends.
    """

    def __init__(
        self, store: Store, config: RepoConfig, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__(store, cache_dir)
        self.config = config
        self.refs = RefStore(store)
        self.url = store.url
        self._objects = ObjectCache()
        self._pool: ThreadPoolExecutor | None = None
        self._packs: BytesCache[str] = BytesCache(_PACK_CACHE_BYTES)
        # Keyed (base, verified): a reader decodes a base without hashing it, since the delta
        # it serves is verified and a mismatch then checks the base (see _apply_delta).
        self._bases: BytesCache[tuple[ObjectId, bool]] = BytesCache(BASE_CACHE_BYTES)
        self._arenas: list[Arena] = []
        self._arena_lock = threading.Lock()

    def _forget_decoded(self) -> None:
        self._objects = ObjectCache()

    # ------------------------------------------------------------------ open / init

    @classmethod
    def init(
        cls,
        url: str | os.PathLike[str] | Store,
        config: RepoConfig | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **storage_options: Any,
    ) -> Repository:
        """Create a repository at ``url``.

        Raises:
            RepositoryExists: One is already there.
        """
        store = url if isinstance(url, Store) else open_store(url, **storage_options)
        config = config or RepoConfig()
        config.chunker.validate()
        if not store.create(CONFIG_KEY, config.encode()):
            raise RepositoryExists(store.url)
        return cls(store, config, cache_dir)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] | Store,
        cache_dir: str | os.PathLike[str] | None = None,
        **storage_options: Any,
    ) -> Repository:
        """Open the repository at ``url``.

        Raises:
            NotARepository: No repository there.
            UnsupportedFormatVersion: Written by a format this mlvc does not know.
        """
        store = url if isinstance(url, Store) else open_store(url, **storage_options)
        try:
            data = store.read(CONFIG_KEY, MAX_CONFIG_SIZE)
        except KeyNotFound:
            raise NotARepository(store.url) from None
        return cls(store, RepoConfig.decode(data), cache_dir)

    def own_directories(self) -> frozenset[tuple[int, int]]:
        """``(st_dev, st_ino)`` of this repository's directory (if local) and of its cache.

        Never part of a snapshot, never written by a checkout: ``mlvc commit .`` in a project
        would record the repository into itself, and a checkout of such a snapshot into the
        project would overwrite the repository's refs and config.
        """
        dirs = [self.cache_dir]
        if isinstance(self.store, LocalStore):
            dirs.append(self.store.root)
        out = set()
        for d in dirs:
            if d is None:
                continue
            try:
                st = os.stat(d)
            except OSError:
                continue
            out.add((st.st_dev, st.st_ino))
        return frozenset(out)

    def close(self) -> None:
        """Release threads and connections."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._arena_lock:
            self._arenas.clear()
        self.store.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pool(self) -> ThreadPoolExecutor:
        """Shared worker threads for hashing, compression and reads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(default_workers(), thread_name_prefix="mlvc")
        return self._pool

    # ------------------------------------------------------------------ reads

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

    def read_chunks(self, oids: Iterable[ObjectId], prefetch: int = 4) -> Iterator[bytes]:
        """Verified chunk bytes, in order, read and checked on the worker threads.

        Chunks stored one after another in the same pack (a file's chunks usually are) are
        read with one request, up to :data:`_RUN_BYTES`: on a bucket that is one GET for
        many chunks instead of one each, and locally fewer calls and thread hand-offs. At
        most ``prefetch`` such runs are in flight, so memory stays bounded.
        """
        pending: deque[Future[list[bytes]]] = deque()
        for run in self.chunk_runs(oids):
            pending.append(self.pool.submit(self.read_run, run))
            if len(pending) >= prefetch:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()

    def stream_chunks(self, oids: Iterable[ObjectId], prefetch: int = 4) -> Iterator[memoryview]:
        """:meth:`read_chunks` for a reader that is done with each chunk before the next.

        The chunks are decoded on the worker threads straight into buffers that are reused
        (:meth:`read_run_into`): no copy of a decoded chunk into new ``bytes``, no fresh
        memory per chunk. Each chunk yielded is valid only until the next one is requested
        (then its buffer may be overwritten): write or hash it, never keep it. Memory: at
        most ``prefetch + 1`` runs (:data:`ARENA_BYTES` each).

        Raises:
            ObjectNotFound: An id is not stored.
            IntegrityError: A chunk is damaged (raised when the iteration reaches it).
        """
        pending: deque[tuple[Arena, Future[list[memoryview]]]] = deque()
        try:
            for run in self.chunk_runs(oids):
                arena = self.take_arena(run)
                pending.append((arena, self.pool.submit(self.read_run_into, run, arena)))
                if len(pending) >= prefetch:
                    arena, done = pending.popleft()
                    yield from done.result()
                    self.give_arena(arena)
            while pending:
                arena, done = pending[0]
                yield from done.result()
                pending.popleft()
                self.give_arena(arena)
        finally:
            for arena, done in pending:  # no arena back in use while a worker writes to it
                with contextlib.suppress(BaseException):
                    done.result()
                self.give_arena(arena)

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

    def _base_payloads(
        self, bases: list[ObjectId]
    ) -> dict[ObjectId, tuple[Location, bytes | memoryview]]:
        """The stored payloads of the delta bases not decoded in the cache.

        Adjacent ones are read with one request. A hint: what fails here is read and
        reported by the delta's own read.
        """
        wanted = [
            b
            for b in dict.fromkeys(bases)
            if self._bases.get((b, True)) is None and self._bases.get((b, False)) is None
        ]
        with self._index_lock:
            found = [
                b
                for b in wanted
                if (loc := self._index.get(b)) and loc.kind == CHUNK and loc.codec != codec.DELTA
            ]
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
        wanted = [
            b
            for b in dict.fromkeys(bases)
            if self._bases.get((b, True)) is None and self._bases.get((b, False)) is None
        ]
        with self._index_lock:
            found = [
                b
                for b in wanted
                if (loc := self._index.get(b)) and loc.kind == CHUNK and loc.codec != codec.DELTA
            ]
        if not found:
            return
        with contextlib.suppress(MlvcError):
            for run in self.chunk_runs(found):
                payloads = self._run_payloads(run)
                if payloads is None:
                    return
                for (oid, loc), payload in zip(run, payloads, strict=True):
                    self._bases.put((oid, False), self._decode(oid, loc, payload))

    def read_object(self, oid: ObjectId) -> Object:
        """A verified, decoded object (cached)."""
        obj = self._objects.get(oid)
        if obj is None:
            loc = self._stored(oid)
            if loc.kind == CHUNK:
                raise FormatError(f"{to_hex(oid)} is a data chunk, not an object")
            blob = self._small_pack(loc.pack) if not self.store.is_local else None
            try:
                if blob is not None:
                    payload = blob[loc.offset : loc.offset + loc.stored_len]
                    obj = decode(self.verify_payload(oid, loc, payload))
                else:
                    obj = decode(self.read_raw(oid))
            except FormatError as exc:  # name the object: the decoder only sees bytes
                raise FormatError(f"{KIND_NAMES[loc.kind]} {to_hex(oid)}: {exc}") from exc
            self._objects.put(oid, obj)
        return obj

    def remember(self, oid: ObjectId, obj: Object) -> None:
        """Cache an object just written (by a write session) for the reads that follow."""
        self._objects.put(oid, obj)

    def prefetch_objects(self, oids: Iterable[ObjectId]) -> None:
        """Read and cache objects not cached yet, each run of adjacent ones with one request.

        A hint for what is about to be read: whatever cannot be read or decoded is left for
        :meth:`read_object` to report.
        """
        with self._index_lock:
            found = [
                (loc.pack, loc.offset, oid)
                for oid in dict.fromkeys(oids)
                if (loc := self._index.get(oid)) is not None and loc.kind != CHUNK
            ]
        wanted = [oid for _, _, oid in sorted(found) if self._objects.get(oid) is None]
        for run in self.chunk_runs(wanted):
            try:
                raws = self.read_run(run)
            except MlvcError:
                continue
            for (oid, _), raw in zip(run, raws, strict=True):
                with contextlib.suppress(MlvcError):
                    self._objects.put(oid, decode(raw))

    def _small_pack(self, pack_id: str) -> bytes | None:
        """The payload bytes of a pack no larger than :data:`_SMALL_PACK_BYTES`, or None.

        Objects (commits, trees, manifests) are read from such packs whole, with one request,
        and kept: the next object of an experiment is usually in the same pack (on a bucket
        ``show`` or ``log`` then costs a GET per pack instead of one per object).
        """
        with self._index_lock:
            if self._extents is None:
                extents: dict[str, int] = {}
                for loc in self._index.values():
                    end = loc.offset + loc.stored_len
                    if end > extents.get(loc.pack, 0):
                        extents[loc.pack] = end
                self._extents = extents
            size = self._extents.get(pack_id, 0)
        if not 0 < size <= _SMALL_PACK_BYTES:
            return None
        blob = self._packs.get(pack_id)
        if blob is None:
            blob = self.store.read_range(pack_key(pack_id), 0, size)
            self._packs.put(pack_id, blob)
        return blob

    def _typed(self, oid: ObjectId, cls: type[Any]) -> Any:
        obj = self.read_object(oid)
        if not isinstance(obj, cls):
            raise UsageError(
                f"{to_hex(oid)[:12]} is a {type(obj).__name__.lower()}, "
                f"not a {cls.__name__.lower()}"
            )
        return obj

    def read_commit(self, oid: ObjectId) -> Commit:
        """A commit."""
        commit: Commit = self._typed(oid, Commit)
        return commit

    def read_tree(self, oid: ObjectId) -> Tree:
        """A tree."""
        tree: Tree = self._typed(oid, Tree)
        return tree

    def read_manifest(self, oid: ObjectId) -> Manifest:
        """A manifest."""
        manifest: Manifest = self._typed(oid, Manifest)
        return manifest

    # ------------------------------------------------------------------ names

    def commit_ids(self) -> set[ObjectId]:
        """Every stored commit."""
        self._ensure_index()
        return set(self._commits)

    def resolve(self, rev: str | ObjectId) -> ObjectId:
        """Turn a commit id or a full ref name into a commit id.

        Accepts a raw id, a full or unique-prefix hex id, or a ref name with its kind
        (``heads/main``, ``tags/production``). Short names (``main``), experiment ids and
        selectors are the one grammar of :mod:`mlvc.experiments.revisions`, not core's.

        Raises:
            ObjectNotFound: Nothing by that name.
            AmbiguousId: A prefix matching several commits.
        """
        if isinstance(rev, bytes):
            return ObjectId(rev)
        rev = rev.strip()
        if "/" in rev and rev.split("/", 1)[0] in KINDS:
            return self.refs.require(rev).target
        if is_hex_prefix(rev):
            if len(rev) == 64:
                oid = from_hex(rev)
                self.locate(oid)
                return oid
            candidates = [to_hex(c) for c in self.commit_ids()]
            try:
                return from_hex(resolve_prefix(rev, candidates, "commit"))
            except ObjectNotFound:
                if self.load_index():
                    return from_hex(
                        resolve_prefix(rev, [to_hex(c) for c in self._commits], "commit")
                    )
                raise
        raise ObjectNotFound(rev, "revision")

    def head(self, branch: str = "main") -> Ref | None:
        """The ref of a branch, if it exists."""
        return self.refs.get(f"heads/{branch}")

    def log(self, start: ObjectId, limit: int | None = None) -> Iterator[tuple[ObjectId, Commit]]:
        """Commits from ``start`` following first parents, newest first."""
        oid: ObjectId | None = start
        n = 0
        while oid is not None and (limit is None or n < limit):
            commit = self.read_commit(oid)
            yield oid, commit
            n += 1
            oid = commit.parents[0] if commit.parents else None

    # ------------------------------------------------------------------ writes

    def upgrade(self, *, announce: bool = True) -> bool:
        """Upgrade a repository of an older format version to this one's; True if it did.

        See :func:`~mlvc_core.config.upgrade_config`. Write sessions and gc do this on their
        own, logging a warning; ``announce=False`` leaves the telling to the caller.

        Raises:
            UnsupportedFormatVersion: The stored config names a version this mlvc does not know.
            StorageError: The config kept changing under it.
        """
        self.config, upgraded = upgrade_config(self.store, CONFIG_KEY, announce=announce)
        return upgraded

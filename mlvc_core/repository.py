"""The repository: config, packs and their index, objects and refs, over one :class:`Store`.

Writes go through a :class:`~mlvc_core.session.WriteSession` (packs, then their index file)
and refs move to new commits only through :func:`mlvc_core.history.advance`, ref last, by
compare-and-swap (see docs/format.md). A crash at any point leaves at worst unreferenced packs
for ``gc``.

Every read is verified (:mod:`mlvc_core.reads`): a payload is decompressed (bounded by its
recorded length) and re-hashed; a mismatch raises :class:`~mlvc_core.errors.IntegrityError`
naming the id. Here the reads of a file's chunks run on the worker threads, a few runs ahead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mlvc_core.caches import LRU
from mlvc_core.config import MAX_CONFIG_SIZE, RepoConfig, upgrade_config
from mlvc_core.errors import (
    FormatError,
    KeyNotFound,
    MlvcError,
    NotARepository,
    ObjectNotFound,
    RepositoryExists,
    UsageError,
)
from mlvc_core.ids import ObjectId, from_hex, is_hex_prefix, resolve_prefix, to_hex
from mlvc_core.objects import (
    CHUNK,
    KIND_NAMES,
    Commit,
    Manifest,
    Object,
    Tree,
    decode,
)
from mlvc_core.packs import pack_key
from mlvc_core.reads import ChunkReads
from mlvc_core.refs import KINDS, Ref, RefStore
from mlvc_core.storage import LocalStore, Store, open_store

if TYPE_CHECKING:
    from mlvc_core.reads import Arena

CONFIG_KEY = "config"


log = logging.getLogger(__name__)

_SMALL_PACK_BYTES = 1 << 20
"""Packs up to this size are read whole when an object in them is read from a remote store."""
_DECODED_OBJECTS = 4096
"""Decoded trees and manifests kept in memory, most recently used first."""
_PACK_CACHE_BYTES = 32 << 20
"""Small packs kept in memory (bytes)."""


def default_workers() -> int:
    """Threads for hashing/compression: one per core (blake3 and zstd release the GIL)."""
    return max(2, os.cpu_count() or 2)


class Repository(ChunkReads):
    """An mlvc repository. Open with :meth:`open`, create with :meth:`init`.

    The index of its packs (what is stored where, and the generation it is at) and the
    verified reads of chunks are the :class:`~mlvc_core.reads.ChunkReads` it extends.
    """

    def __init__(
        self, store: Store, config: RepoConfig, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__(store, cache_dir)
        self.config = config
        self.refs = RefStore(store)
        self.url = store.url
        self._objects: LRU[ObjectId, Object] = LRU(_DECODED_OBJECTS)
        self._pool: ThreadPoolExecutor | None = None
        self._packs: LRU[str, bytes] = LRU(_PACK_CACHE_BYTES, len)

    def _forget_decoded(self) -> None:
        self._objects = LRU(_DECODED_OBJECTS)

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
        self.drop_arenas()
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

    def stream_chunks(
        self, oids: Iterable[ObjectId], prefetch: int = 4
    ) -> Generator[memoryview, None, None]:
        """:meth:`read_chunks` for a reader that is done with each chunk before the next.

        The chunks are decoded on the worker threads straight into buffers that are reused
        (:meth:`read_run_into`): no copy of a decoded chunk into new ``bytes``, no fresh
        memory per chunk. Each chunk yielded is valid only until the next one is requested
        (then its buffer may be overwritten): write or hash it, never keep it. Memory: at
        most ``prefetch + 1`` runs (:data:`~mlvc_core.reads.ARENA_BYTES` each). Closed
        early, it waits for the runs still being decoded before their buffers are reused.

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
                arena, done = pending.popleft()
                yield from done.result()
                self.give_arena(arena)
        finally:
            # The run being yielded when the reader stops keeps its arena (the reader may
            # still hold its chunk); the others go back once no worker writes to them.
            for arena, done in pending:
                with contextlib.suppress(BaseException):
                    done.result()
                self.give_arena(arena)

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

"""Write sessions: how new payloads and objects reach a repository's packs.

A :class:`WriteSession` registers as a writer (a shared lock gc waits for), brings the
repository's index to the current generation, streams chunk payloads into data packs and holds
small metadata objects back to append at the flush; :meth:`WriteSession.flush` publishes each
pack before the one index file that covers them. Only after a flush may a ref point at what the
session stored (:mod:`mlvc_core.history` does that). It never moves refs itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from mlvc_core import codec
from mlvc_core.config import FORMAT_VERSION
from mlvc_core.errors import LockLost, MlvcError, ObjectNotFound
from mlvc_core.ids import ObjectId, hash_bytes, to_hex
from mlvc_core.lock import SharedLock
from mlvc_core.objects import CHUNK, COMMIT, Object, iter_tree_refs
from mlvc_core.packs import Location, PackWriter
from mlvc_core.repository import Repository

ProgressFn = Callable[[int], None]
"""Called with a number of bytes just processed."""

log = logging.getLogger(__name__)

GC_WAIT = 60.0
"""Seconds a write session waits for a running gc before it fails (a tracked checkpoint or a
commit should outlast a short gc, not fail at once)."""
META_BUFFER = 1 << 20
"""Bytes of metadata a write session holds back to append to its data pack at the flush."""
RAW_METADATA = 128
"""Metadata objects shorter than this are stored raw without trying zstd: a small file's
manifest (one chunk id, ~66 bytes) never shrinks by the 4% that compression must save, and
trying cost ~3 us a file."""


class WriteSession:
    """Streams new payloads into packs; :meth:`flush` publishes them (packs, then one index file).

    Metadata objects (manifests, trees, commits) are held back in memory and, at the flush,
    appended to the open data pack: a checkpoint is one pack and one index file, not two tiny
    packs. Past :data:`META_BUFFER` bytes they stream into a pack of their own instead.
    Thread-safe for concurrent ``add_*`` calls.

    On creation the session registers as a writer (a shared lock, refreshed in the background)
    and then brings the repository's index to the current generation
    (:meth:`~mlvc_core.repository.Repository.refresh`), so everything it deduplicates against
    is really stored: gc cannot run until it ends.
    """

    def __init__(
        self,
        repo: Repository,
        progress: ProgressFn | None = None,
        lock: bool = True,
        wait: float = GC_WAIT,
    ) -> None:
        self.repo = repo
        self.progress = progress
        self._data: PackWriter | None = None
        self._meta: PackWriter | None = None
        self._pending: dict[ObjectId, tuple[int, int]] = {}
        """Written (or held back) in this session, not yet in a published index file: the
        raw and stored bytes each counts in :attr:`new_bytes` and :attr:`stored_bytes`."""
        self._held: list[tuple[ObjectId, int, int, bytes, int]] = []
        """Metadata payloads held back for the flush: id, kind, codec, payload, raw length."""
        self._held_bytes = 0
        self._unindexed: list[tuple[ObjectId, Location]] = []
        """Entries of packs already closed whose index file is not written yet."""
        self._lock = threading.Lock()
        self.new_bytes = 0
        self.stored_bytes = 0
        self.read_bytes = 0
        self._lock_handle: SharedLock | None = None
        if lock:
            if repo.config.version < FORMAT_VERSION:
                repo.upgrade()
            # Registered, then refreshed, before any dedup decision: what this session
            # reuses is present in the current generation, and gc waits until it ends.
            self._lock_handle = SharedLock.acquire(repo.store, wait=wait)
            try:
                repo.refresh()
            except BaseException:
                self._release()
                raise

    def has(self, oid: ObjectId) -> bool:
        """True if ``oid`` is stored or already written in this session."""
        return oid in self._pending or self.repo.has(oid)

    def _writer(self, kind: int) -> PackWriter:
        """The open pack for ``kind`` (chunks and metadata go to separate packs)."""
        if kind == CHUNK:
            self._data = self._open_pack(self._data)
            return self._data
        self._meta = self._open_pack(self._meta)
        return self._meta

    def _open_pack(self, w: PackWriter | None) -> PackWriter:
        """``w``, or a new pack once ``w`` is full (its entries then wait for the index)."""
        if w is not None and (w.size >= self.repo.config.pack_size or w.full):
            self._unindexed.extend(w.finish())
            w = None
        return w if w is not None else PackWriter(self.repo.store)

    def add_payload(
        self,
        oid: ObjectId,
        kind: int,
        codec_id: int,
        payload: bytes | memoryview,
        raw_len: int,
        base: ObjectId | None = None,
    ) -> bool:
        """Store an already hashed and compressed payload unless present. True if written.

        A delta (``codec_id`` :data:`~mlvc_core.codec.DELTA`) names its ``base``, a chunk
        stored on its own in the current generation or earlier in this session.
        """
        with self._lock:
            if self.has(oid):
                return False
            if base is not None and not self.has(base):
                raise ObjectNotFound(to_hex(base))  # never store a delta whose base is gone
            if kind != CHUNK and self._meta is None and self._held_bytes < META_BUFFER:
                self._held.append((oid, kind, codec_id, bytes(payload), raw_len))
                self._held_bytes += len(payload)
            else:
                if kind != CHUNK and self._held:
                    self._spill(self._writer(kind))  # too much metadata: a pack of its own
                self._writer(kind).add(oid, kind, codec_id, payload, raw_len, base)
            self._pending[oid] = (raw_len, len(payload))
            self.new_bytes += raw_len
            self.stored_bytes += len(payload)
            return True

    def uncount(self, oids: Iterable[ObjectId]) -> None:
        """Take back from :attr:`new_bytes` and :attr:`stored_bytes` what ``oids`` added.

        For chunks of a read that was abandoned (the file changed under it): they stay
        stored, unreferenced, for gc, but are not what the session recorded. Ids this session
        did not write, or already took back, count nothing.
        """
        with self._lock:
            for oid in oids:
                raw_len, stored = self._pending.get(oid, (0, 0))
                if raw_len or stored:
                    self._pending[oid] = (0, 0)
                    self.new_bytes -= raw_len
                    self.stored_bytes -= stored

    def add_object(self, obj: Object) -> ObjectId:
        """Encode and store a manifest, tree or commit; return its id.

        Raises:
            ObjectNotFound: It refers to something not stored (never recorded: a commit
                must not reach missing data).
        """
        self._check_refs(obj)
        data = obj.encode()
        oid = hash_bytes(data)  # as :func:`object_id`, without encoding it twice
        if not self.has(oid):
            payload: bytes | memoryview = data
            c = codec.RAW
            if len(data) >= RAW_METADATA:
                c, payload = codec.compress(data, 3)
            self.add_payload(oid, obj.kind, c, payload, len(data))
        self.repo.remember(oid, obj)
        return oid

    def _check_refs(self, obj: Object) -> None:
        for kind, child in iter_tree_refs(obj):
            if kind != COMMIT and not self.has(child):
                err = ObjectNotFound(to_hex(child))
                err.args = (
                    f"object {to_hex(child)} is no longer stored (gc removed it after it was "
                    "read); nothing referring to it was recorded",
                )
                raise err

    def flush(self) -> None:
        """Publish every open pack, then one index file covering all of them.

        The session stays open. Write a ref to what the session stored only after this
        returns, and before :meth:`finish`, so gc never sees the session's objects
        unprotected.

        Raises:
            LockLost: This session's lock was removed as abandoned (it was not
                refreshed for minutes), so gc may have deleted what it reused; nothing
                more is published.
        """
        with self._lock:
            if self._held:
                self._spill(self._meta or self._data or self._writer(COMMIT))
            for w in (self._data, self._meta):
                if w is not None:
                    self._unindexed.extend(w.finish())
            self._data = self._meta = None
            if self._lock_handle is not None and self._unindexed:
                self._check_lock(0)  # still ours? (confirmed right before publishing)
            if self._unindexed:
                self.repo.publish_index(self._unindexed)
                self._unindexed = []
                self._pending.clear()

    def check_lock(self) -> None:
        """Make sure the session still holds its lock; call it right before moving a ref.

        Costs no request while the lock's lease runs (see :mod:`mlvc_core.lock`).

        Raises:
            LockLost: The lock was taken over as abandoned (this process was paused for
                minutes), so gc may have deleted what the session reused: publish nothing.
        """
        self._check_lock(None)

    def _check_lock(self, max_age: float | None) -> None:
        if self._lock_handle is None:
            return
        try:
            self._lock_handle.check(max_age)
        except LockLost:
            raise LockLost(
                "this writer's lock was removed as abandoned (it went unrefreshed for "
                "minutes: the process was paused or cut off) and gc may have run since; "
                "nothing more was published, retry"
            ) from None

    def _spill(self, w: PackWriter) -> None:
        extra: PackWriter | None = None  # once ``w`` holds as many payloads as a pack may
        for oid, kind, codec_id, payload, raw_len in self._held:
            target = extra or w
            if target.full:
                if extra is not None:
                    self._unindexed.extend(extra.finish())
                extra = target = PackWriter(self.repo.store)
            target.add(oid, kind, codec_id, payload, raw_len)
        if extra is not None:
            self._unindexed.extend(extra.finish())
        self._held = []
        self._held_bytes = 0

    def finish(self) -> None:
        """Flush and end the session (merging small index files if many have accumulated)."""
        try:
            self.flush()
        except BaseException:
            self.abort()
            raise
        if self._lock_handle is not None:
            try:
                self.repo.merge_small_indexes(check=self.check_lock)
            except MlvcError as exc:  # merging is housekeeping: never fail a commit for it
                log.warning("mlvc: could not merge index files: %s", exc)
        self._release()

    def _release(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.release()
            self._lock_handle = None

    def abort(self) -> None:
        """Discard open packs (closed ones stay, without an index file, for gc)."""
        with self._lock:
            for w in (self._data, self._meta):
                if w is not None:
                    w.abort()
            self._data = self._meta = None
            self._pending.clear()
            self._unindexed = []
            self._held = []
            self._held_bytes = 0
        self._release()

    def __enter__(self) -> WriteSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()

"""The index of a repository's packs: which payload is stored where, at which generation.

:class:`PackIndex` loads the published index files of a store (each cached locally, as index
files never change), learns of new ones from other writers (:meth:`PackIndex.load_index`),
follows gc's generation record so nothing deleted is believed stored
(:meth:`PackIndex.refresh`), publishes the index files of a write session's packs and merges
small ones. It reads no payloads: :class:`~mlvc_core.repository.Repository` extends it with
verified reads, config and refs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlvc_core.errors import (
    FormatError,
    IntegrityError,
    KeyNotFound,
    MissingObject,
    ObjectNotFound,
    StorageError,
)
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import COMMIT
from mlvc_core.packs import (
    GENERATION_KEY,
    INDEX_PREFIX,
    MAX_GENERATION_SIZE,
    MAX_INDEX_FILE_SIZE,
    MAX_PACK_ENTRIES,
    Generation,
    IndexFile,
    Location,
    decode_index_file,
    encode_index_file,
    index_file_id,
    index_file_key,
)
from mlvc_core.storage import Store

log = logging.getLogger(__name__)

INDEX_MERGE_AT = 32
"""A writer merges the small index files once this many have accumulated."""
SMALL_INDEX = 50_000
"""Index files with fewer entries than this are small (merged by writers and gc)."""


class PackIndex:
    """The in-memory index of the packs in ``store``, loaded on first need."""

    def __init__(self, store: Store, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.store = store
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._index: dict[ObjectId, Location] = {}
        self._commits: set[ObjectId] = set()
        self._files: dict[str, tuple[str, ...]] = {}
        self._sizes: dict[str, int] = {}
        self._generation = -1
        self.bad_indexes: dict[str, str] = {}
        """Index files that could not be read (id -> why): the packs they cover are unknown."""
        self._index_lock = threading.RLock()
        self._extents: dict[str, int] | None = None
        """Pack sizes by id, computed from the index when first needed."""
        self._index_loaded = False
        """Index files are read on first need (``ls`` and ref reads never need them)."""

    def _forget_decoded(self) -> None:
        """Called when the index is replaced: drop what was decoded under the old one."""

    def _cached_index_path(self, index_id: str) -> Path | None:
        return self.cache_dir / "index" / index_id if self.cache_dir is not None else None

    def read_index_file(self, index_id: str) -> IndexFile:
        """An index file, from the local cache if there (index files never change).

        A damaged cache file is a hint gone bad, not a damaged repository: it is discarded
        with a warning and fetched again.

        Raises:
            KeyNotFound: No such index file (gc or a merge removed it).
            IntegrityError: The stored index file is damaged.
            FormatError: The stored index file is not one.
        """
        key = index_file_key(index_id)
        cached = self._cached_index_path(index_id)
        if cached is not None and cached.is_file():
            try:
                return decode_index_file(cached.read_bytes(), key, index_id)
            except (FormatError, IntegrityError, OSError) as exc:
                log.warning(
                    "mlvc: local index cache file %s was damaged (%s); discarded, fetching it "
                    "again from the repository",
                    cached,
                    exc,
                )
                with contextlib.suppress(OSError):
                    cached.unlink()
        data = self.store.read(key, MAX_INDEX_FILE_SIZE)
        decoded = decode_index_file(data, key, index_id)
        self._cache_index(index_id, data)
        return decoded

    def _cache_index(self, index_id: str, data: bytes) -> None:
        cached = self._cached_index_path(index_id)
        if cached is None:
            return
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}-{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, cached)

    def list_index_files(self) -> list[str]:
        """Ids of every published index file (one LIST)."""
        return [
            info.key[len(INDEX_PREFIX) :]
            for info in self.store.list(INDEX_PREFIX)
            if "/" not in info.key[len(INDEX_PREFIX) :]
        ]

    def _read_one(self, index_id: str) -> IndexFile | None:
        try:
            return self.read_index_file(index_id)
        except (FormatError, IntegrityError) as exc:
            log.warning(
                "mlvc: index file %s is damaged (%s); the packs it names stay unread until it "
                "is repaired (`mlvc fsck` reports it)",
                index_id,
                exc,
            )
            with self._index_lock:
                self.bad_indexes[index_id] = str(exc)
            return None

    def _read_many(self, ids: list[str]) -> dict[str, IndexFile]:
        """Read index files; a damaged one is left out and remembered in :attr:`bad_indexes`.

        Raises:
            KeyNotFound: One of them is gone (gc or a merge removed it).
        """
        if len(ids) > 4 and not self.store.is_local:
            with ThreadPoolExecutor(16) as ex:
                files = list(ex.map(self._read_one, ids))
        else:
            files = [self._read_one(i) for i in ids]
        return {i: f for i, f in zip(ids, files, strict=True) if f is not None}

    def _ensure_index(self) -> None:
        if not self._index_loaded:
            self.reload_index()

    def index_ids(self) -> list[str]:
        """Ids of every pack an index file names (loading index files new since the last look)."""
        self.load_index()
        with self._index_lock:
            return sorted({p for packs in self._files.values() for p in packs})

    def index_files(self) -> dict[str, tuple[str, ...]]:
        """Loaded index files: id -> the packs each covers."""
        self._ensure_index()
        with self._index_lock:
            return dict(self._files)

    def small_index_files(self) -> list[str]:
        """Loaded index files with fewer than :data:`SMALL_INDEX` entries (to be merged)."""
        with self._index_lock:
            return [i for i, n in self._sizes.items() if n < SMALL_INDEX]

    @property
    def generation(self) -> int:
        """The repository generation the in-memory index is at (see :meth:`refresh`)."""
        return self._generation

    def read_generation(self) -> Generation:
        """The repository's current generation record (generation 0 until gc first deletes).

        Raises:
            FormatError: The record is damaged.
        """
        try:
            data = self.store.read(GENERATION_KEY, MAX_GENERATION_SIZE)
        except KeyNotFound:
            return Generation(0, None)
        return Generation.decode(data)

    def load_index(self) -> int:
        """Read index files not loaded yet (new packs from other writers). Returns how many.

        Only adds: it never learns of deletions (see :meth:`refresh`).
        """
        if not self._index_loaded:
            before = len(self._files)
            self.reload_index()
            return len(self._files) - before
        for _ in range(3):
            new = [
                i
                for i in self.list_index_files()
                if i not in self._files and i not in self.bad_indexes
            ]
            if not new:
                return 0
            try:
                files = self._read_many(new)
            except KeyNotFound:
                continue  # merged away between the listing and the read: list again
            for index_id, f in files.items():
                self._add_file(index_id, f)
            return len(files)
        return 0

    def refresh(self) -> bool:
        """Bring the in-memory index to the repository's current generation.

        One small read when gc has not run since the index was loaded. When it has, the
        index is rebuilt from the index files the generation record names (no listing),
        so nothing gc removed is believed stored any more. Returns True if it changed.
        A write session calls this after taking its shared lock and before any dedup.

        Raises:
            FormatError: The generation record is damaged.
        """
        for _ in range(3):
            gen = self.read_generation()
            if gen.number == self._generation:
                return False
            if gen.indexes is None:
                break
            try:
                files = self._read_many(list(gen.indexes))
            except KeyNotFound:
                continue  # a later gc or a writer's merge removed one: read the record again
            self._replace(gen.number, files)
            return True
        self.reload_index()
        return True

    def reload_index(self) -> None:
        """Rebuild the in-memory index from a fresh listing (at open, or when unsure).

        The generation is read before the listing: should gc run in between, the next
        :meth:`refresh` sees a newer generation and rebuilds again.
        """
        for _ in range(5):
            gen = self.read_generation()
            ids = self.list_index_files()
            self.bad_indexes = {}
            try:
                files = self._read_many(ids)
            except KeyNotFound:
                continue
            self._replace(gen.number, files)
            self._prune_cache(set(ids))
            return
        raise StorageError("index files kept disappearing while being read; retry")

    def _replace(self, generation: int, files: dict[str, IndexFile]) -> None:
        index: dict[ObjectId, Location] = {}
        commits: set[ObjectId] = set()
        for f in files.values():
            for oid, loc in f.entries:
                index.setdefault(oid, loc)
                if loc.kind == COMMIT:
                    commits.add(oid)
        with self._index_lock:
            self._index = index
            self._commits = commits
            self._files = {i: f.packs for i, f in files.items()}
            self._sizes = {i: len(f.entries) for i, f in files.items()}
            self._generation = generation
            self._index_loaded = True
            self._extents = None
        self._forget_decoded()

    def _prune_cache(self, keep: set[str]) -> None:
        if self.cache_dir is None:
            return
        with contextlib.suppress(OSError):
            for p in (self.cache_dir / "index").iterdir():
                if p.name not in keep and ".tmp" not in p.name:
                    p.unlink()

    def _add_file(self, index_id: str, f: IndexFile) -> None:
        with self._index_lock:
            for oid, loc in f.entries:
                self._index.setdefault(oid, loc)
                if loc.kind == COMMIT:
                    self._commits.add(oid)
            self._files[index_id] = f.packs
            self._sizes[index_id] = len(f.entries)
            self._extents = None

    def publish_index(self, entries: list[tuple[ObjectId, Location]]) -> str:
        """Write index files covering ``entries`` (their packs already published).

        One file unless there are more than :data:`~mlvc_core.packs.MAX_PACK_ENTRIES`
        entries, the most one index file may hold. From then on the payloads are stored for
        every reader. Returns the id of the last file written. Deltas come after every
        payload stored on its own, so a base is never published after a delta that needs it.
        """
        entries = sorted(entries, key=lambda e: e[1].base is not None)
        index_id = ""
        for start in range(0, max(len(entries), 1), MAX_PACK_ENTRIES):
            part = entries[start : start + MAX_PACK_ENTRIES]
            blob = encode_index_file(part)
            index_id = index_file_id(blob)
            self.store.write(index_file_key(index_id), blob)
            self._cache_index(index_id, blob)
            packs = tuple(dict.fromkeys(loc.pack for _, loc in part))
            self._add_file(index_id, IndexFile(packs, part))
        return index_id

    def merge_small_indexes(
        self, at: int = INDEX_MERGE_AT, check: Callable[[], None] | None = None
    ) -> int:
        """Merge small index files into one once ``at`` or more of them are loaded.

        Safe beside other writers and readers: the merged file is written before the small
        ones are deleted and names the same payloads, so nothing becomes less present (a
        reader that lists a small file just before it goes lists again). Call it only while
        holding a shared lock, so gc cannot run meanwhile, and pass its ``check``, called
        right before the merged file is written. Returns how many were merged.
        """
        small = self.small_index_files()
        if len(small) < at:
            return 0
        try:
            files = self._read_many(small)
        except KeyNotFound:
            return 0  # another writer is merging them: leave it to that one
        entries = [e for f in files.values() for e in f.entries]
        if check is not None:
            check()  # still under the lock? (gc may have replaced what was just read)
        merged = self.publish_index(entries)
        small = [i for i in files if i != merged]
        for i in small:
            self.store.delete(index_file_key(i))
        with self._index_lock:
            for i in small:
                self._files.pop(i, None)
                self._sizes.pop(i, None)
        return len(small)

    def has(self, oid: ObjectId) -> bool:
        """True if ``oid`` is stored (in a pack with a published index)."""
        if not self._index_loaded:
            self.reload_index()
        return oid in self._index

    def locate(self, oid: ObjectId) -> Location:
        """Where ``oid`` is stored.

        Raises:
            ObjectNotFound: It is not.
        """
        self._ensure_index()
        loc = self._index.get(oid)
        if loc is None:
            self.load_index()
            loc = self._index.get(oid)
            if loc is None:
                raise ObjectNotFound(to_hex(oid))
        return loc

    def index_entry(self, oid: ObjectId) -> Location | None:
        """Where ``oid`` is stored as far as the loaded index files say (no new ones read)."""
        self._ensure_index()
        return self._index.get(oid)

    def _stored(self, oid: ObjectId) -> Location:
        """Where ``oid``, which something stored refers to, is stored.

        Raises:
            MissingObject: It is not (the repository is damaged).
        """
        try:
            return self.locate(oid)
        except ObjectNotFound:
            raise MissingObject(to_hex(oid)) from None

    def iter_index(self) -> Iterator[tuple[ObjectId, Location]]:
        """Every indexed payload."""
        self._ensure_index()
        with self._index_lock:
            items = list(self._index.items())
        return iter(items)

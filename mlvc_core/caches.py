"""Bounded in-memory caches of what a repository has read and verified.

Decoded objects (trees and manifests are read again and again), whole small packs read from
a remote store, and decoded delta bases (the chunks that deltas of later versions are coded
against; the repository keys each by whether it has been hashed yet). Each is bounded (by
count or by bytes) and thread-safe; nothing here reads, verifies or evicts by anything but
recency. Only :class:`~mlvc_core.repository.Repository` uses them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from mlvc_core.ids import ObjectId
from mlvc_core.objects import Object

K = TypeVar("K", bound=Hashable)


class ObjectCache:
    """A small LRU of decoded objects, bounded by count."""

    def __init__(self, capacity: int = 4096) -> None:
        self._d: OrderedDict[ObjectId, Object] = OrderedDict()
        self._cap = capacity
        self._lock = threading.Lock()

    def get(self, oid: ObjectId) -> Object | None:
        """The cached object, or None."""
        with self._lock:
            obj = self._d.get(oid)
            if obj is not None:
                self._d.move_to_end(oid)
            return obj

    def put(self, oid: ObjectId, obj: Object) -> None:
        """Cache ``obj`` (evicting the least recently used past the capacity)."""
        with self._lock:
            self._d[oid] = obj
            if len(self._d) > self._cap:
                self._d.popitem(last=False)


class BytesCache(Generic[K]):
    """An LRU of byte strings bounded by their total size (the newest one is always kept)."""

    def __init__(self, capacity: int) -> None:
        self._d: OrderedDict[K, bytes] = OrderedDict()
        self._bytes = 0
        self._cap = capacity
        self._lock = threading.Lock()

    def get(self, key: K) -> bytes | None:
        """The cached bytes, or None."""
        with self._lock:
            blob = self._d.get(key)
            if blob is not None:
                self._d.move_to_end(key)
            return blob

    def put(self, key: K, blob: bytes) -> None:
        """Cache ``blob`` under ``key`` (evicting the least recently used past the capacity)."""
        with self._lock:
            if key in self._d:
                return
            self._d[key] = blob
            self._bytes += len(blob)
            while self._bytes > self._cap and len(self._d) > 1:
                _, old = self._d.popitem(last=False)
                self._bytes -= len(old)

    def discard(self, key: K) -> None:
        """Forget ``key`` if cached."""
        with self._lock:
            blob = self._d.pop(key, None)
            if blob is not None:
                self._bytes -= len(blob)

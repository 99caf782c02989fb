"""Bounded in-memory caches of what a repository has read and verified.

Decoded objects (trees and manifests are read again and again), whole small packs read from
a remote store, and decoded delta bases (the chunks that deltas of later versions are coded
against; the repository keys each by whether it has been hashed yet). Each is one
:class:`LRU`, bounded by count or by bytes; nothing here reads, verifies or evicts by anything
but recency. Only :class:`~mlvc_core.repository.Repository` and its chunk reads use them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(_: object) -> int:
    return 1


class LRU(Generic[K, V]):
    """A thread-safe map that forgets its least recently used entries past a capacity.

    The capacity bounds the total weight of the values: their count by default, their size in
    bytes with ``weigh=len``. The newest entry is always kept, whatever it weighs.
    """

    def __init__(self, capacity: int, weigh: Callable[[V], int] = _one) -> None:
        self._d: OrderedDict[K, V] = OrderedDict()
        self._weigh = weigh
        self._weight = 0
        self._cap = capacity
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The cached value, or None (it becomes the most recently used)."""
        with self._lock:
            value = self._d.get(key)
            if value is not None:
                self._d.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Cache ``value`` under ``key`` (kept as it is if the key is cached already)."""
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return
            self._d[key] = value
            self._weight += self._weigh(value)
            while self._weight > self._cap and len(self._d) > 1:
                _, old = self._d.popitem(last=False)
                self._weight -= self._weigh(old)

    def discard(self, key: K) -> None:
        """Forget ``key`` if cached."""
        with self._lock:
            if key in self._d:
                self._weight -= self._weigh(self._d.pop(key))

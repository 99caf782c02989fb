"""An in-memory store: a plain dict per instance, for tests and dry runs.

Unlike fsspec's ``memory://`` filesystem (one global dict per process) each instance is its
own world, so tests never leak state into each other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from mlvc_core.errors import KeyNotFound, PreconditionFailed
from mlvc_core.storage.base import KeyInfo, Store, Version, Writer, check_limit


class _MemWriter(Writer):
    def __init__(self, store: MemoryStore, key: str) -> None:
        self._store = store
        self._key = key
        self._buf: bytearray | None = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self._buf is not None, "writer is closed"
        self._buf += data
        return len(data)

    def close(self) -> None:
        if self._buf is not None:
            self._store.write(self._key, bytes(self._buf))
            self._buf = None

    def abort(self) -> None:
        self._buf = None


class MemoryStore(Store):
    """A store that lives in one Python dict."""

    def __init__(self, name: str = "memory") -> None:
        self.url = f"mem:{name}"
        self._data: dict[str, tuple[bytes, float, int]] = {}
        self._lock = threading.Lock()
        self._counter = 0

    def _get(self, key: str) -> tuple[bytes, float, int]:
        try:
            return self._data[key]
        except KeyError:
            raise KeyNotFound(key) from None

    def read(self, key: str, limit: int | None = None) -> bytes:
        data = self._get(key)[0]
        check_limit(key, len(data), limit)
        return data

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self._get(key)[0][offset : offset + length]

    def _put(self, key: str, data: bytes) -> int:
        self._counter += 1
        self._data[key] = (bytes(data), time.time(), self._counter)
        return self._counter

    def write(self, key: str, data: bytes) -> None:
        with self._lock:
            self._put(key, data)

    def create(self, key: str, data: bytes) -> bool:
        with self._lock:
            if key in self._data:
                return False
            self._put(key, data)
            return True

    def open_write(self, key: str) -> Writer:
        return _MemWriter(self, key)

    def exists(self, key: str) -> bool:
        return key in self._data

    def list(self, prefix: str) -> Iterator[KeyInfo]:
        with self._lock:
            items = [(k, v) for k, v in self._data.items() if k.startswith(prefix)]
        for k, (data, mtime, gen) in sorted(items):
            yield KeyInfo(k, len(data), mtime, str(gen))

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, Version]:
        data, _, gen = self._get(key)
        check_limit(key, len(data), limit)
        return data, Version(gen)

    def write_if(self, key: str, data: bytes, expected: Version | None) -> Version:
        with self._lock:
            current: Any = self._data[key][2] if key in self._data else None
            if current != expected:
                raise PreconditionFailed(key)
            return Version(self._put(key, data))

    def delete_if(self, key: str, expected: Version) -> None:
        with self._lock:
            current: Any = self._data[key][2] if key in self._data else None
            if current is None or current != expected:
                raise PreconditionFailed(key)
            del self._data[key]

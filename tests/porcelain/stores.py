"""Store wrappers for porcelain tests: count reads, fail on demand, block writes.

They wrap a real store (local directory), so what they let through really happens.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

from mlvc_core.errors import StorageError
from mlvc_core.storage.base import KeyInfo, Store, Version, Writer


class WrappedStore(Store):
    """Forwards everything to ``inner``; subclasses hook ``before(op, key)``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.url = inner.url
        self.is_local = inner.is_local

    def before(self, op: str, key: str) -> None:
        pass

    def read(self, key: str, limit: int | None = None) -> bytes:
        self.before("read", key)
        return self.inner.read(key, limit)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        self.before("read", key)
        return self.inner.read_range(key, offset, length)

    def read_ranges(self, key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        self.before("read", key)
        return self.inner.read_ranges(key, ranges)

    def open_read(self, key: str) -> BinaryIO:
        self.before("read", key)
        return self.inner.open_read(key)

    def write(self, key: str, data: bytes) -> None:
        self.before("write", key)
        self.inner.write(key, data)

    def create(self, key: str, data: bytes) -> bool:
        self.before("write", key)
        return self.inner.create(key, data)

    def open_write(self, key: str) -> Writer:
        self.before("write", key)
        return self.inner.open_write(key)

    def exists(self, key: str) -> bool:
        self.before("stat", key)
        return self.inner.exists(key)

    def list(self, prefix: str) -> Iterator[KeyInfo]:
        self.before("list", prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.before("write", key)
        self.inner.delete(key)

    def read_versioned(self, key: str, limit: int | None = None) -> tuple[bytes, Version]:
        self.before("read", key)
        return self.inner.read_versioned(key, limit)

    def write_if(self, key: str, data: bytes, expected: Version | None) -> Version:
        self.before("write", key)
        return self.inner.write_if(key, data, expected)

    def close(self) -> None:
        self.inner.close()


class CountingStore(WrappedStore):
    """Counts operations by (op, first key component)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    def before(self, op: str, key: str) -> None:
        with self._lock:
            self.counts[(op, key.split("/", 1)[0])] += 1

    def reads(self, area: str) -> int:
        return self.counts[("read", area)]

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()


class FailingStore(WrappedStore):
    """Every write raises StorageError once ``broken`` is set (reads still work)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.broken = threading.Event()

    def before(self, op: str, key: str) -> None:
        if op == "write" and self.broken.is_set():
            raise StorageError(f"cannot write {key}: injected failure (disk full)")


class GatedStore(WrappedStore):
    """Writes block while the gate is closed (a deliberately stalled store)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()

    def before(self, op: str, key: str) -> None:
        if op == "write" and not self.gate.is_set():
            self.blocked.set()
            self.gate.wait()


def wrap_repo(cls: type[WrappedStore], path: Any, cache_dir: Any) -> tuple[Any, Any]:
    """Create a repository at ``path`` and reopen it over ``cls(LocalStore(path))``."""
    from mlvc_core.repository import Repository
    from mlvc_core.storage import LocalStore

    Repository.init(str(path)).close()
    store = cls(LocalStore(path))
    repo = Repository.open(store, cache_dir=cache_dir)
    return repo, store


class SlowStore(WrappedStore):
    """Every pack write takes ``delay`` seconds longer (a slow network)."""

    def __init__(self, inner: Store, delay: float = 1.0) -> None:
        super().__init__(inner)
        self.delay = delay

    def before(self, op: str, key: str) -> None:
        if op == "write" and key.startswith("packs/"):
            import time

            time.sleep(self.delay)

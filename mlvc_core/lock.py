"""Repository locks: many writers share, ``gc`` excludes them all. No lock server.

* A write session creates ``locks/shared-<random>`` when it starts and deletes it when done.
* ``gc`` creates ``locks/exclusive`` (create-if-absent, so only one gc runs), then refuses to
  go on while any fresh shared lock exists. A writer that starts checks for the exclusive lock
  after creating its own. Both sides write their flag before reading the other's, so on a
  strongly consistent store (local disk, S3, GCS) at least one of them sees the other.
* Locks are JSON with host, pid and time. A lock older than :data:`STALE_AFTER` seconds is
  considered abandoned (its process died) and ignored.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

from mlvc_core.errors import KeyNotFound, RepositoryLocked
from mlvc_core.storage.base import Store

LOCK_PREFIX = "locks/"
EXCLUSIVE = "locks/exclusive"
STALE_AFTER = 3600.0


def _holder(op: str) -> bytes:
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "op": op}
    ).encode()


def _describe(store: Store, key: str) -> str:
    try:
        doc = json.loads(store.read(key))
        since = time.ctime(doc.get("time", 0))
        return f"{doc.get('op', '?')} (pid {doc.get('pid')} on {doc.get('host')}, since {since})"
    except (OSError, ValueError):
        return key


def _fresh(mtime: float, now: float) -> bool:
    return now - mtime < STALE_AFTER


def _exclusive_held(store: Store, now: float) -> bool:
    """True if a gc holds the exclusive lock and has shown signs of life recently."""
    try:
        doc = json.loads(store.read(EXCLUSIVE))
    except KeyNotFound:
        return False
    except ValueError:
        return True  # unreadable: be safe
    return _fresh(float(doc.get("time", 0)), now)


@dataclass
class SharedLock:
    """Held by a write session."""

    store: Store
    key: str

    @classmethod
    def acquire(cls, store: Store) -> SharedLock:
        """Register a writer.

        Raises:
            RepositoryLocked: gc holds the exclusive lock.
        """
        key = f"{LOCK_PREFIX}shared-{uuid.uuid4().hex}"
        store.write(key, _holder("write"))
        if _exclusive_held(store, time.time()):
            store.delete(key)
            raise RepositoryLocked(_describe(store, EXCLUSIVE) + "; retry when it has finished")
        return cls(store, key)

    def release(self) -> None:
        """Unregister."""
        self.store.delete(self.key)


@dataclass
class ExclusiveLock:
    """Held by gc while it deletes."""

    store: Store

    @classmethod
    def acquire(cls, store: Store, op: str = "gc") -> ExclusiveLock:
        """Take the exclusive lock.

        Raises:
            RepositoryLocked: Another gc runs, or writers are active.
        """
        now = time.time()
        if not store.create(EXCLUSIVE, _holder(op)):
            if _exclusive_held(store, now):
                raise RepositoryLocked(_describe(store, EXCLUSIVE))
            store.delete(EXCLUSIVE)
            if not store.create(EXCLUSIVE, _holder(op)):
                raise RepositoryLocked(_describe(store, EXCLUSIVE))
        writers = [
            i.key
            for i in store.list(LOCK_PREFIX)
            if i.key.startswith(LOCK_PREFIX + "shared-") and _fresh(i.mtime, now)
        ]
        if writers:
            store.delete(EXCLUSIVE)
            raise RepositoryLocked(
                f"{len(writers)} writer(s), e.g. {_describe(store, writers[0])}; "
                "retry when they have finished"
            )
        return cls(store)

    def refresh(self) -> None:
        """Show the lock is still held (long gc runs)."""
        self.store.write(EXCLUSIVE, _holder("gc"))

    def release(self) -> None:
        """Give the lock back."""
        self.store.delete(EXCLUSIVE)

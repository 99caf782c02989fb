"""Repository locks: many writers share, ``gc`` excludes them all. No lock server.

* A write session creates ``locks/shared-<random>`` when it starts and deletes it when done.
* ``gc`` creates ``locks/exclusive`` (create-if-absent, so only one gc runs), then refuses to
  go on while any live shared lock exists. A writer that starts checks for the exclusive lock
  after creating its own. Both sides write their flag before reading the other's, so on a
  strongly consistent store (local disk, S3, GCS) at least one of them sees the other. A
  writer that finds gc running keeps its lock and waits (a bounded time) for it to finish:
  the next gc then sees the writer and lets it go first.
* A lock is JSON naming its holder: host, pid, the process's start time, the operation and the
  time of its last refresh. A background thread rewrites it every :data:`REFRESH_INTERVAL`
  seconds while it is held.
* Locks die with their holder. A lock whose holder ran on this host is *dead* at once when no
  process with that pid and start time runs any more (a pid reused by another process does not
  keep it alive). Any other lock is *stale* once it has not been refreshed for
  :data:`STALE_AFTER` seconds (a few intervals): its holder is gone, or alive but paused
  (stopped, swapped out, asleep) or cut off, so gc then keeps what that holder may still
  publish for the grace period. Dead and stale locks are ignored by writers and removed by gc
  (on condition of the version read); a dead or stale exclusive lock is taken over by
  compare-and-swap.
* A holder keeps the version (ETag, generation...) of the lock it last wrote: a refresh is a
  conditional write on it, a release a conditional delete. A refresh that finds the lock gone
  or replaced means another process took it over: the lock is *lost* and the holder must stop
  (gc deletes nothing more; a write session publishes nothing). Between refreshes a holder
  acts only within its *lease*, :func:`lease` (half of :data:`STALE_AFTER`) after its last
  confirmed refresh, by both the monotonic and the wall clock; past it (the process was
  paused), ``check`` refreshes before anything is done, so a resumed holder learns it lost the
  lock before it acts on it. Only a pause in the middle of a single request escapes that.

The staleness rules need clocks in step within a fraction of :data:`STALE_AFTER` between hosts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from mlvc_core.errors import (
    FormatError,
    KeyNotFound,
    LockLost,
    PreconditionFailed,
    RepositoryLocked,
    StorageError,
)
from mlvc_core.holders import Holder
from mlvc_core.storage.base import Store, Version

LOCK_PREFIX = "locks/"
EXCLUSIVE = "locks/exclusive"
SHARED_PREFIX = "locks/shared-"
REFRESH_INTERVAL = 60.0
"""Seconds between two refreshes of a held lock."""
STALE_AFTER = 5 * REFRESH_INTERVAL
"""Seconds without a refresh after which another host's lock is stale."""
MAX_LOCK_SIZE = 64 << 10
"""Largest lock read (a real one is about 100 bytes); a larger one reads as unreadable."""

log = logging.getLogger(__name__)


def read_holder(store: Store, key: str) -> Holder | None:
    """The holder recorded in lock ``key``; None if the lock is absent or unreadable."""
    return _read_lock(store, key)[0]


def _read_lock(store: Store, key: str) -> tuple[Holder | None, Version | None]:
    """The holder recorded in lock ``key`` and the version read.

    ``(None, version)`` for bytes that are no lock; ``(None, None)`` for an absent key or one
    larger than any lock.
    """
    try:
        data, version = store.read_versioned(key, MAX_LOCK_SIZE)
    except KeyNotFound:
        return None, None
    except FormatError:
        return None, None  # not a lock mlvc wrote: as unreadable as garbage
    return Holder.decode(data), version


@dataclass
class _Held:
    """A lock this process holds: the version it wrote, refreshed by a background thread.

    Every refresh is a conditional write on the version of the previous one; one that finds
    the lock gone or replaced means another process judged it abandoned and took over:
    :attr:`lost` is set and never cleared. Between refreshes the holder may act only within
    its lease (:func:`lease`) of the last confirmed one: :meth:`check` refreshes first when
    the lease has run out (the process was paused, or its refreshes failed).
    """

    store: Store
    key: str
    op: str
    interval: float
    stale_after: float
    version: Version
    confirmed: float
    """Wall-clock time recorded in the lock by the last confirmed write."""
    confirmed_mono: float
    """``time.monotonic()`` when that write was started."""
    lost: bool = False
    """The lock was removed or replaced by someone else (judged stale): what it protected
    may be gone."""
    _mutex: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @classmethod
    def written(
        cls,
        store: Store,
        key: str,
        holder: Holder,
        version: Version,
        interval: float,
        stale_after: float,
        mono: float,
    ) -> _Held:
        """The lock just written as ``holder`` at ``version``, refreshed from now on."""
        held = cls(store, key, holder.op, interval, stale_after, version, holder.time, mono)
        held._thread = threading.Thread(
            target=held._run, name=f"mlvc-lock-{holder.op}", daemon=True
        )
        held._thread.start()
        return held

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except StorageError as exc:  # try again next interval; the lease covers a few
                log.warning("mlvc: could not refresh lock %s: %s", self.key, exc)
            if self.lost:
                return

    def refresh(self) -> None:
        """Rewrite the lock with the current time, on condition of the version last written.

        Raises:
            StorageError: The backend failed (the lock may or may not have been refreshed).
        """
        with self._mutex:
            if self.lost:
                return
            me = Holder.me(self.op)
            data = me.encode()
            mono = time.monotonic()
            version: Version | None
            try:
                version = self.store.write_if(self.key, data, self.version)
            except PreconditionFailed:
                version = self._mine_after_all(data)
                if version is None:
                    self.lost = True
                    log.warning(
                        "mlvc: lock %s was taken over by another process (it judged it "
                        "abandoned: this one was not refreshed for %.0fs)",
                        self.key,
                        time.time() - self.confirmed,
                    )
                    return
            self.version, self.confirmed, self.confirmed_mono = version, me.time, mono

    def _mine_after_all(self, data: bytes) -> Version | None:
        """After a failed refresh: the version of the lock if it holds exactly ``data``.

        A retried request can report a conflict although its first attempt was applied.
        """
        try:
            found, version = self.store.read_versioned(self.key, MAX_LOCK_SIZE)
        except (KeyNotFound, FormatError):
            return None
        return version if found == data else None

    def check(self, max_age: float | None = None) -> None:
        """Make sure the lock is still held, refreshing it first if its lease ran out.

        Args:
            max_age: Refresh first if the last confirmed refresh is older than this many
                seconds (default: the lease, :func:`lease`; 0: always).

        Raises:
            LockLost: Another process took the lock over.
            StorageError: The lease ran out and the lock could not be refreshed.
        """
        limit = lease(self.stale_after) if max_age is None else max_age
        if not self.lost and self.age() >= limit:
            self.refresh()
        if self.lost:
            raise LockLost(
                f"{self.op} lost its lock {self.key}: it went unrefreshed for over "
                f"{self.stale_after:.0f}s (the process was paused or cut off) and another "
                "process judged it abandoned and took over; stopped before changing "
                "anything more, retry"
            )

    def age(self) -> float:
        """Seconds since the last confirmed refresh.

        By both clocks: the monotonic one stops while a machine sleeps, the wall clock may be
        stepped.
        """
        return max(time.monotonic() - self.confirmed_mono, time.time() - self.confirmed)

    def release(self) -> None:
        """Stop refreshing and delete the lock, on condition that it is still the one written."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None
        with self._mutex:
            if self.lost:
                return  # another process's lock now: not ours to delete
            try:
                self.store.delete_if(self.key, self.version)
            except PreconditionFailed:
                self.lost = True
                log.warning("mlvc: lock %s was taken over by another process", self.key)


def lease(stale_after: float) -> float:
    """How long after its last confirmed refresh a holder may still act.

    Half the time after which others may judge its lock stale: the other half absorbs clocks
    out of step.
    """
    return stale_after / 2


def _write_new(store: Store, key: str, holder: Holder) -> tuple[Version, float]:
    """Create lock ``key`` as ``holder``; its version and the monotonic time of the write.

    Raises:
        PreconditionFailed: It exists.
    """
    mono = time.monotonic()
    return store.write_if(key, holder.encode(), None), mono


@dataclass
class SharedLock:
    """Held by a write session (refreshed in the background until released)."""

    store: Store
    key: str
    _held: _Held

    @classmethod
    def acquire(
        cls,
        store: Store,
        interval: float | None = None,
        wait: float = 0.0,
        stale_after: float | None = None,
    ) -> SharedLock:
        """Register a writer, waiting up to ``wait`` seconds for a running gc to finish.

        Args:
            store: The repository's store.
            interval: Seconds between refreshes (default :data:`REFRESH_INTERVAL`).
            wait: Seconds to wait for a running gc.
            stale_after: Seconds after which an unrefreshed lock is stale (default
                :data:`STALE_AFTER`).

        Raises:
            RepositoryLocked: A running gc still holds the exclusive lock after ``wait``.
        """
        interval, stale_after = _timing(interval, stale_after)
        deadline = time.monotonic() + wait
        delay = 0.05
        key = f"{SHARED_PREFIX}{uuid.uuid4().hex}"
        me = Holder.me("write")
        version, mono = _write_new(store, key, me)
        # While it waits, the writer keeps its lock: the running gc checked the shared locks
        # before this one existed, but the next gc sees it and lets the writer go first. The
        # writer decides nothing before the running gc is gone (and refreshes after it).
        held: _Held | None = None
        try:
            while True:
                now = time.time()
                gc, gc_version = _read_lock(store, EXCLUSIVE)
                if gc is None:
                    break
                if gc.state(now, stale_after) not in ("alive", "live"):
                    # Abandoned, or its holder is paused: take it away on condition of the
                    # version read, so a holder that resumes finds it lost before it deletes
                    # (if it refreshed meanwhile, it is back: judge it again).
                    if gc_version is not None and _delete_unchanged(store, EXCLUSIVE, gc_version):
                        break
                if time.monotonic() + delay > deadline:
                    waited = f"; waited {wait:.0f}s" if wait >= 1 else ""
                    raise RepositoryLocked(
                        gc.describe(now, stale_after) + waited + "; retry when it has finished"
                    )
                if held is None:  # waiting long: keep the lock fresh meanwhile
                    held = _Held.written(store, key, me, version, interval, stale_after, mono)
                time.sleep(delay)
                delay = min(0.5, delay * 2)
        except BaseException:
            if held is not None:
                held.release()
            else:
                with contextlib.suppress(PreconditionFailed):
                    store.delete_if(key, version)
            raise
        if held is None:
            held = _Held.written(store, key, me, version, interval, stale_after, mono)
        return cls(store, key, held)

    @property
    def lost(self) -> bool:
        """True if gc took this lock over as abandoned (the session must not publish)."""
        return self._held.lost

    def refresh(self) -> None:
        """Refresh now, finding out whether the lock is still held (see :attr:`lost`)."""
        self._held.refresh()

    def check(self, max_age: float | None = None) -> None:
        """Raise unless the lock is still held (see :meth:`_Held.check`).

        Raises:
            LockLost: gc took the lock over as abandoned.
            StorageError: The lease ran out and the lock could not be refreshed.
        """
        self._held.check(max_age)

    def release(self) -> None:
        """Unregister (deleting the lock only if it is still this one)."""
        self._held.release()


@dataclass
class ExclusiveLock:
    """Held by gc while it deletes (refreshed in the background until released).

    gc calls :meth:`check` before each step that deletes or publishes: a gc paused past
    its lease whose lock another process took over stops there.
    """

    store: Store
    _held: _Held
    broken: list[Holder] = field(default_factory=list)
    """Stale locks removed on the way in: their holders may still be alive, so what they
    may still publish (packs younger than the grace period) must be kept."""

    @classmethod
    def acquire(
        cls,
        store: Store,
        op: str = "gc",
        interval: float | None = None,
        stale_after: float | None = None,
    ) -> ExclusiveLock:
        """Take the exclusive lock; remove dead and stale shared locks.

        Args:
            store: The repository's store.
            op: What takes it, for messages (``gc``).
            interval: Seconds between refreshes (default :data:`REFRESH_INTERVAL`).
            stale_after: Seconds after which an unrefreshed lock is stale (default
                :data:`STALE_AFTER`).

        Raises:
            RepositoryLocked: Another gc runs, or writers are active.
        """
        interval, stale_after = _timing(interval, stale_after)
        me = Holder.me(op)
        broken: list[Holder] = []
        try:
            version, mono = _write_new(store, EXCLUSIVE, me)
        except PreconditionFailed:
            now = time.time()
            try:
                data, old = store.read_versioned(EXCLUSIVE, MAX_LOCK_SIZE)
            except KeyNotFound:
                data, old = b"", None
            other = Holder.decode(data) if data else None
            if other is not None and other.state(now, stale_after) in ("alive", "live"):
                raise RepositoryLocked(other.describe(now, stale_after)) from None
            mono = time.monotonic()
            try:
                version = store.write_if(EXCLUSIVE, me.encode(), old)
            except PreconditionFailed:
                raise RepositoryLocked("another gc that has just started") from None
            if other is not None and other.state(now, stale_after) == "stale":
                broken.append(other)
        held = _Held.written(store, EXCLUSIVE, me, version, interval, stale_after, mono)
        try:
            broken += _clear_shared(store, stale_after)
        except BaseException:
            held.release()
            raise
        return cls(store, held, broken)

    @property
    def lost(self) -> bool:
        """True if another process took this lock over as abandoned."""
        return self._held.lost

    def refresh(self) -> None:
        """Show the lock is still held (the background thread does this on its own)."""
        self._held.refresh()

    def check(self, max_age: float | None = None) -> None:
        """Raise unless the lock is still held (see :meth:`_Held.check`).

        Raises:
            LockLost: Another process took the lock over: delete nothing more.
            StorageError: The lease ran out and the lock could not be refreshed.
        """
        self._held.check(max_age)

    def release(self) -> None:
        """Give the lock back (deleting it only if it is still this one)."""
        self._held.release()


def _clear_shared(store: Store, stale_after: float) -> list[Holder]:
    """Remove dead and stale shared locks; return the stale ones' holders.

    Each is deleted on condition of the version read: a holder that refreshed it meanwhile
    is back, and counts as live.

    Raises:
        RepositoryLocked: A live writer holds a shared lock.
    """
    now = time.time()
    live: list[Holder] = []
    gone: list[tuple[str, Version | None, Holder | None]] = []
    for info in store.list(LOCK_PREFIX):
        if not info.key.startswith(SHARED_PREFIX):
            continue
        h, version = _read_lock(store, info.key)
        if h is None:
            if version is None and not store.exists(info.key):
                continue  # released meanwhile
            if now - info.mtime > stale_after:
                gone.append((info.key, version, None))  # not a lock mlvc wrote; old enough
                continue
            live.append(Holder("?", 0, None, info.mtime, "write"))
            continue
        state = h.state(now, stale_after)
        if state in ("alive", "live"):
            live.append(h)
        else:
            gone.append((info.key, version, h if state == "stale" else None))
    broken: list[Holder] = []
    for key, version, h in gone:
        if live:
            break
        if version is None:
            store.delete(key)  # larger than any lock: no holder can be refreshing it
        else:
            try:
                store.delete_if(key, version)
            except PreconditionFailed:
                back = read_holder(store, key)
                if back is not None:
                    live.append(back)  # its holder refreshed it just now: not abandoned
                continue
        if h is not None:
            broken.append(h)
    if live:
        raise RepositoryLocked(
            f"{len(live)} writer(s), e.g. {live[0].describe(now, stale_after)}; "
            "retry when they have finished"
        )
    return broken


def _delete_unchanged(store: Store, key: str, version: Version) -> bool:
    """Delete ``key`` if still at ``version``; False if it changed (absent counts as deleted)."""
    try:
        store.delete_if(key, version)
    except PreconditionFailed:
        return not store.exists(key)
    return True


def _timing(interval: float | None, stale_after: float | None) -> tuple[float, float]:
    """``(interval, stale_after)`` with the module's current defaults filled in."""
    return (
        REFRESH_INTERVAL if interval is None else interval,
        STALE_AFTER if stale_after is None else stale_after,
    )


def active_writers(store: Store, stale_after: float | None = None) -> list[Holder]:
    """Holders of shared locks that may still be writing (alive, live or stale, not dead)."""
    _, stale_after = _timing(None, stale_after)
    now = time.time()
    out = []
    for info in store.list(LOCK_PREFIX):
        if info.key.startswith(SHARED_PREFIX):
            h = read_holder(store, info.key)
            if h is None:
                h = Holder("?", 0, None, info.mtime, "write")
            if h.state(now, stale_after) != "dead":
                out.append(h)
    return out

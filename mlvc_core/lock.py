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
  keep it alive). A lock from another host whose holder cannot be checked is *stale* once it
  has not been refreshed for :data:`STALE_AFTER` seconds (a few intervals): its holder is
  probably gone, but may be alive and cut off, so gc then keeps what that holder may still
  publish for the grace period. Dead and stale locks are ignored by writers and removed by gc;
  a dead or stale exclusive lock is taken over by compare-and-swap.

The staleness rules need clocks in step within a fraction of :data:`STALE_AFTER` between hosts.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from mlvc_core.errors import (
    FormatError,
    KeyNotFound,
    PreconditionFailed,
    RepositoryLocked,
    StorageError,
)
from mlvc_core.storage.base import Store

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

State = Literal["alive", "live", "dead", "stale"]
"""``alive``: held by a running process of this host; ``live``: refreshed recently by another
host; ``dead``: its process on this host is gone; ``stale``: not refreshed for too long."""


_BOOT_TIME: list[float] = []


def _linux_process_start(pid: int) -> float | None:
    """``pid``'s start time from ``/proc`` (what psutil computes, without importing it).

    ``/proc/<pid>/stat`` field 22 is the start in clock ticks after boot; ``/proc/stat``'s
    ``btime`` the boot time (proc(5)). None for no such process or a zombie.

    Raises:
        OSError, ValueError: ``/proc`` is not as expected (the caller falls back to psutil).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ", from field 3 on
    if fields[0] == b"Z":
        return None
    if not _BOOT_TIME:
        with open("/proc/stat", "rb") as f:
            btime = next(line for line in f if line.startswith(b"btime "))
        _BOOT_TIME.append(float(btime.split()[1]))
    return _BOOT_TIME[0] + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if none runs.

    On Linux read from ``/proc`` (importing psutil costs ~15 ms, paid by every command that
    takes a lock); elsewhere, or if ``/proc`` is unreadable, through psutil.
    """
    if sys.platform.startswith("linux"):
        try:
            return _linux_process_start(pid)
        except (OSError, ValueError, IndexError, StopIteration):
            pass
    import psutil  # imported here: only lock holders and checkers need it

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:
        return -1.0  # exists but cannot be inspected (another user's): assume it is the holder


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` runs on this host (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


_START: dict[int, float | None] = {}


def _my_start() -> float | None:
    """This process's start time (computed once per process, forks included)."""
    pid = os.getpid()
    if pid not in _START:
        _START[pid] = _process_start(pid)
    return _START[pid]


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as recorded in it."""

    host: str
    pid: int
    start: float | None
    """The holder process's start time (None if it could not be read)."""
    time: float
    """Last refresh, seconds since the epoch."""
    op: str

    @classmethod
    def me(cls, op: str) -> Holder:
        """This process, now."""
        return cls(socket.gethostname(), os.getpid(), _my_start(), time.time(), op)

    def encode(self) -> bytes:
        """JSON form."""
        return json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "start": self.start,
                "time": self.time,
                "op": self.op,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Holder | None:
        """Parse a lock; None if it is not one (never written by mlvc, or damaged)."""
        try:
            doc = json.loads(data)
            start = doc.get("start")
            return cls(
                str(doc["host"]),
                int(doc["pid"]),
                None if start is None else float(start),
                float(doc["time"]),
                str(doc.get("op", "?")),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def state(self, now: float, stale_after: float = STALE_AFTER) -> State:
        """Whether the holder still runs (see the module docstring)."""
        if self.host == socket.gethostname():
            started = _process_start(self.pid)
            if started is None:
                return "dead"
            if self.start is not None and started >= 0 and abs(started - self.start) > 1.0:
                return "dead"  # the pid now names another process
            return "alive"
        return "stale" if now - self.time > stale_after else "live"

    def describe(self, now: float, stale_after: float = STALE_AFTER) -> str:
        """For messages: who, where, and when the lock expires if its holder is gone."""
        age = max(0.0, now - self.time)
        who = f"{self.op} (pid {self.pid} on {self.host}, refreshed {age:.0f}s ago"
        if self.host == socket.gethostname():
            return who + ", still running)"
        left = max(0.0, stale_after - age)
        return who + f"; considered abandoned if not refreshed within {left:.0f}s)"


def read_holder(store: Store, key: str) -> Holder | None:
    """The holder recorded in lock ``key``; None if the lock is absent or unreadable."""
    try:
        return Holder.decode(store.read(key, MAX_LOCK_SIZE))
    except KeyNotFound:
        return None
    except FormatError:
        return None  # not a lock mlvc wrote: as unreadable as garbage


@dataclass
class _Held:
    """A lock this process holds, refreshed by a background thread."""

    store: Store
    key: str
    op: str
    interval: float
    lost: bool = False
    """The lock was removed by someone else (judged stale): what it protected may be gone."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mlvc-lock-{self.op}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except StorageError as exc:  # try again next interval; staleness takes minutes
                log.warning("mlvc: could not refresh lock %s: %s", self.key, exc)
            if self.lost:
                return

    def refresh(self) -> None:
        """Rewrite the lock with the current time (unless someone removed it)."""
        if self.lost:
            return
        if not self.store.exists(self.key):
            self.lost = True
            log.warning(
                "mlvc: lock %s was removed by another process (it judged it abandoned)", self.key
            )
            return
        self.store.write(self.key, Holder.me(self.op).encode())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self._thread = None


@dataclass
class SharedLock:
    """Held by a write session (refreshed in the background until released)."""

    store: Store
    key: str
    _held: _Held

    @classmethod
    def acquire(
        cls, store: Store, interval: float = REFRESH_INTERVAL, wait: float = 0.0
    ) -> SharedLock:
        """Register a writer, waiting up to ``wait`` seconds for a running gc to finish.

        Raises:
            RepositoryLocked: A running gc still holds the exclusive lock after ``wait``.
        """
        deadline = time.monotonic() + wait
        delay = 0.05
        key = f"{SHARED_PREFIX}{uuid.uuid4().hex}"
        store.write(key, Holder.me("write").encode())
        # While it waits, the writer keeps its lock: the running gc checked the shared locks
        # before this one existed, but the next gc sees it and lets the writer go first. The
        # writer decides nothing before the running gc is gone (and refreshes after it).
        while True:
            now = time.time()
            gc = read_holder(store, EXCLUSIVE)
            if gc is None or gc.state(now) not in ("alive", "live"):
                break
            if time.monotonic() + delay > deadline:
                store.delete(key)
                waited = f"; waited {wait:.0f}s" if wait >= 1 else ""
                raise RepositoryLocked(gc.describe(now) + waited + "; retry when it has finished")
            time.sleep(delay)
            delay = min(0.5, delay * 2)
        held = _Held(store, key, "write", interval)
        held.start()
        return cls(store, key, held)

    @property
    def lost(self) -> bool:
        """True if gc removed this lock as abandoned (the session must not publish)."""
        return self._held.lost

    def refresh(self) -> None:
        """Refresh now, finding out whether the lock is still there (see :attr:`lost`)."""
        self._held.refresh()

    def release(self) -> None:
        """Unregister."""
        self._held.stop()
        self.store.delete(self.key)


@dataclass
class ExclusiveLock:
    """Held by gc while it deletes (refreshed in the background until released)."""

    store: Store
    _held: _Held
    broken: list[Holder] = field(default_factory=list)
    """Stale locks of other hosts removed on the way in: their holders may still be alive,
    so what they may still publish (packs younger than the grace period) must be kept."""

    @classmethod
    def acquire(
        cls,
        store: Store,
        op: str = "gc",
        interval: float = REFRESH_INTERVAL,
        stale_after: float = STALE_AFTER,
    ) -> ExclusiveLock:
        """Take the exclusive lock; remove dead and stale shared locks.

        Raises:
            RepositoryLocked: Another gc runs, or writers are active.
        """
        mine = Holder.me(op).encode()
        broken: list[Holder] = []
        if not store.create(EXCLUSIVE, mine):
            now = time.time()
            try:
                data, version = store.read_versioned(EXCLUSIVE, MAX_LOCK_SIZE)
            except KeyNotFound:
                data, version = b"", None
            other = Holder.decode(data) if data else None
            if other is not None and other.state(now, stale_after) in ("alive", "live"):
                raise RepositoryLocked(other.describe(now, stale_after))
            try:
                store.write_if(EXCLUSIVE, mine, version)
            except PreconditionFailed:
                raise RepositoryLocked("another gc that has just started") from None
            if other is not None and other.state(now, stale_after) == "stale":
                broken.append(other)
        now = time.time()
        live: list[Holder] = []
        gone: list[str] = []
        for info in store.list(LOCK_PREFIX):
            if not info.key.startswith(SHARED_PREFIX):
                continue
            h = read_holder(store, info.key)
            if h is None:
                if now - info.mtime > stale_after:
                    gone.append(info.key)  # not a lock mlvc wrote; old enough to drop
                    continue
                h = Holder("?", 0, None, info.mtime, "write")
                live.append(h)
                continue
            state = h.state(now, stale_after)
            if state in ("alive", "live"):
                live.append(h)
            else:
                gone.append(info.key)
                if state == "stale":
                    broken.append(h)
        if live:
            store.delete(EXCLUSIVE)
            raise RepositoryLocked(
                f"{len(live)} writer(s), e.g. {live[0].describe(now, stale_after)}; "
                "retry when they have finished"
            )
        for key in gone:
            store.delete(key)
        held = _Held(store, EXCLUSIVE, op, interval)
        held.start()
        return cls(store, held, broken)

    def refresh(self) -> None:
        """Show the lock is still held (the background thread does this on its own)."""
        self._held.refresh()

    def release(self) -> None:
        """Give the lock back."""
        self._held.stop()
        self.store.delete(EXCLUSIVE)


def active_writers(store: Store, stale_after: float = STALE_AFTER) -> list[Holder]:
    """Holders of shared locks that may still be writing (alive, live or stale, not dead)."""
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

"""Who holds a lock: the record a lock stores, and whether its holder still runs.

A :class:`Holder` names a process (host, pid, start time), the operation it runs and when it
last refreshed its lock. Whether it still runs: a holder on this host whose process (pid *and*
start time: a pid reused by another process does not count) is gone is ``dead`` at once; any
other holder is ``stale`` once unrefreshed for longer than the caller's stale time (it is
gone, or alive but paused or cut off), and otherwise ``alive`` (this host) or ``live``
(another host). Process start times come from ``/proc`` on Linux, from psutil elsewhere.

Pure of storage: reading, writing and judging locks in a store is :mod:`mlvc_core.lock`'s.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Literal

State = Literal["alive", "live", "dead", "stale"]
"""``alive``: held by a running process of this host, refreshed recently; ``live``: refreshed
recently by another host; ``dead``: its process on this host is gone; ``stale``: not refreshed
for too long (its holder gone, paused or cut off)."""


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

    def state(self, now: float, stale_after: float) -> State:
        """Whether the holder still runs (see the module docstring).

        Args:
            now: The current time, seconds since the epoch.
            stale_after: Seconds without a refresh after which the lock is stale.
        """
        unrefreshed = now - self.time > stale_after
        if self.host == socket.gethostname():
            started = _process_start(self.pid)
            if started is None:
                return "dead"
            if self.start is not None and started >= 0 and abs(started - self.start) > 1.0:
                return "dead"  # the pid now names another process
            return "stale" if unrefreshed else "alive"  # running, but stopped or hung
        return "stale" if unrefreshed else "live"

    def describe(self, now: float, stale_after: float) -> str:
        """For messages: who, where, and when the lock expires if its holder is gone."""
        age = max(0.0, now - self.time)
        who = f"{self.op} (pid {self.pid} on {self.host}, refreshed {age:.0f}s ago"
        left = max(0.0, stale_after - age)
        if self.host == socket.gethostname():
            return who + f", still running; abandoned if not refreshed within {left:.0f}s)"
        return who + f"; considered abandoned if not refreshed within {left:.0f}s)"

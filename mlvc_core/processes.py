"""Processes on this host: whether one still runs (for leftovers named by a process id)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` runs on this host (another user's counts as running).

    Uses ``kill(pid, 0)`` (POSIX): no signal is sent, only existence and permission are checked.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True

"""A real process killed with SIGKILL at its N-th write to a local store.

The child counts its own writes to the store (every write, create, delete, conditional
write, temporary delete, streamed pack write and pack close) and sends itself SIGKILL at the
N-th; with N = 0 it runs to the end and prints how many it made. ``commit`` records ARG (a
file or directory) on branch ``main``; ``gc`` collects with no grace period.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import os, signal, sys
from mlvc_core.storage import local
op, repo_path, arg, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
count = [0]
def point():
    count[0] += 1
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
def hook(cls, name):
    orig = getattr(cls, name)
    def wrapped(self, *a, **k):
        point()
        return orig(self, *a, **k)
    setattr(cls, name, wrapped)
for name in ("write", "create", "delete", "write_if", "delete_temporary"):
    hook(local.LocalStore, name)
for name in ("write", "close"):
    hook(local._FileWriter, name)
from mlvc_core.gc import collect
from mlvc_core.repository import Repository
from mlvc_core.history import commit_paths
repo = Repository.open(repo_path)
if op == "commit":
    commit_paths(repo, arg, "new", branch="main")
else:
    collect(repo, dry_run=False, grace_seconds=0)
print(count[0])
"""


def run_killed(
    op: str, repo: Path, arg: str, kill_at: int, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``op`` (``commit`` or ``gc``) on ``repo`` in a child killed at write ``kill_at``."""
    return subprocess.run(
        [sys.executable, "-c", CHILD, op, str(repo), arg, str(kill_at)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=timeout,
    )

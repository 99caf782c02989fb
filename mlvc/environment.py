"""What a run records about where it runs: Python, packages, git state, user, host, command.

Never environment variables: they hold secrets.
"""

from __future__ import annotations

import functools
import getpass
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

GIT_DIFF_LIMIT = 1 << 20
OWN_DIRS = (".mlvc", ".mlvc-staging")
"""mlvc's own directories (a local repository, checkpoint staging): they never make a git work
tree dirty."""


def _git(args: list[str], cwd: Path, limit: int | None = None) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, timeout=15, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    out = proc.stdout if limit is None else proc.stdout[:limit]
    return out.decode("utf-8", errors="replace")


def git_info(directory: Path) -> dict[str, Any] | None:
    """Commit, branch, dirty flag, diff against HEAD (capped), untracked files; None outside git."""
    if (_git(["rev-parse", "--is-inside-work-tree"], directory) or "").strip() != "true":
        return None
    status = _git(["status", "--porcelain", "--untracked-files=normal"], directory) or ""
    # mlvc's own directories (a local repository, staging) do not make the work tree dirty.
    changes = [
        line
        for line in status.splitlines()
        if not any(part in OWN_DIRS for part in line[3:].strip('"').split("/"))
    ]
    diff_full = _git(["diff", "HEAD", "--no-color", "--no-ext-diff"], directory) or ""
    untracked = [line[3:] for line in changes if line.startswith("??")]
    return {
        "commit": (_git(["rev-parse", "HEAD"], directory) or "").strip() or None,
        "branch": (_git(["rev-parse", "--abbrev-ref", "HEAD"], directory) or "").strip() or None,
        "root": (_git(["rev-parse", "--show-toplevel"], directory) or "").strip() or None,
        "dirty": bool(changes),
        "diff": diff_full[:GIT_DIFF_LIMIT],
        "diff_truncated": len(diff_full) > GIT_DIFF_LIMIT,
        "untracked": untracked[:1000],
    }


def packages() -> dict[str, str]:
    """Installed distributions and their versions.

    Cached per ``sys.path``: scanning them takes about a quarter of a second.
    """
    return dict(_packages(tuple(sys.path)))


@functools.lru_cache(maxsize=4)
def _packages(_path: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except (KeyError, TypeError):
            continue
        if name and name not in out:
            out[name] = dist.version
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def environment(code_dir: Path, argv: list[str]) -> dict[str, Any]:
    """What a run records about where it runs (never environment variables)."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": packages(),
        "git": git_info(code_dir),
        "user": _user(),
        "host": socket.gethostname(),
        "command": list(argv),
        "command_line": shlex.join(argv),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }

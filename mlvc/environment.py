"""What a run records about where it runs: Python, packages, git state, user, host, command.

Never environment variables: they hold secrets. The command line is recorded with the values of
secret-looking options and URL passwords redacted (:mod:`mlvc.redaction`).
"""

from __future__ import annotations

import functools
import getpass
import importlib.metadata
import os
import platform
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from mlvc._children import run_output
from mlvc.redaction import redact_argv

GIT_DIFF_LIMIT = 1 << 20
GIT_TIMEOUT = 15.0
"""Seconds one ``git`` command may run."""
OWN_DIRS = (".mlvc", ".mlvc-staging")
"""mlvc's own directories (a local repository, checkpoint staging): they never make a git work
tree dirty."""


def _git(args: list[str], cwd: Path, limit: int | None = None) -> str | None:
    """``git ARGS`` in ``cwd``: its output, or None if it failed (fork-safe, see _children)."""
    result = run_output(["git", *args], cwd, timeout=GIT_TIMEOUT, limit=limit)
    if result is None or result[0] != 0:
        return None
    return result[1].decode("utf-8", errors="replace")


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
    diff_full = (
        _git(["diff", "HEAD", "--no-color", "--no-ext-diff"], directory, GIT_DIFF_LIMIT + 1) or ""
    )
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


def platform_name() -> str:
    """Like :func:`platform.platform` (``Linux-6.8.0-x86_64-with-glibc2.35``), without a process.

    :func:`platform.platform` runs ``uname -p`` through a pipe the first time, which a fork of
    the training process could keep open (see :mod:`mlvc._children`).
    """
    u = os.uname() if hasattr(os, "uname") else None
    system, release, machine = (
        (u.sysname, u.release, u.machine)
        if u is not None
        else (platform.system(), platform.release(), platform.machine())
    )
    parts = [system, release, machine]
    if system == "Linux":
        lib, version = platform.libc_ver()
        if lib:
            parts += ["with", lib + version]
    elif system == "Darwin":
        mac = platform.mac_ver()[0]
        if mac:
            parts = ["macOS", mac, machine]
    return "-".join(p for p in parts if p)


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
        "platform": platform_name(),
        "executable": sys.executable,
        "packages": packages(),
        "git": git_info(code_dir),
        "user": _user(),
        "host": socket.gethostname(),
        "command": redact_argv(argv),
        "command_line": shlex.join(redact_argv(argv)),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
    }

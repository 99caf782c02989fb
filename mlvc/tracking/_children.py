"""Child processes that tracking starts (``git``), safe against user forks.

A training process forks while mlvc's background threads run: a PyTorch ``DataLoader`` forks
its workers (without ``exec``), and so do ``multiprocessing`` pools. A fork copies every open
file descriptor, whatever its close-on-exec flag. Two kinds of descriptor that a child process
launch holds open for a moment would then stay open in the forked worker for its whole life:

* the pipe that carries a child's output: a reader waiting for end of file (what
  ``subprocess.run(capture_output=True)`` does) waits until the worker exits, and a
  persistent worker lives until the training process exits, which waits for that reader;
* the pipe ``subprocess.Popen`` uses to learn whether ``exec`` succeeded, read until end of
  file inside ``Popen()``: a worker forked in that window holds it open and ``Popen()`` never
  returns.

So a child's output goes to an anonymous temporary file (nothing waits for its end of file: the
parent waits for the process, then reads the file), and every ``Popen()`` runs under
:func:`fork_guard`, a lock that :func:`os.register_at_fork` also takes around any fork of the
process: no fork happens while a launch holds descriptors that must not leak. The lock is held
only for the launch itself (milliseconds), never while the child runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["fork_guard", "popen", "run_output"]

_LOCK = threading.Lock()
_installed = False


def _reset_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # the forking thread held it: the child starts with it free


def _before_fork() -> None:
    _LOCK.acquire()


def _after_fork_in_parent() -> None:
    _LOCK.release()


def _install() -> None:
    global _installed
    if _installed or not hasattr(os, "register_at_fork"):
        return
    _installed = True
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_reset_in_child
    )


@contextlib.contextmanager
def fork_guard() -> Iterator[None]:
    """Keep the process from forking while the block runs (a child process launch).

    Forks from other threads wait (``os.fork`` runs the guard's at-fork hook) until the block
    ends. ``subprocess`` launches inside the block do not run at-fork hooks, so they do not wait
    for themselves.
    """
    _install()
    with _LOCK:
        yield


def popen(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **kwargs)`` under :func:`fork_guard`.

    Raises:
        OSError: The program could not be started.
        ValueError: Bad arguments.
    """
    with fork_guard():
        return subprocess.Popen(list(args), **kwargs)


def run_output(
    args: Sequence[str], cwd: str | os.PathLike[str] | None, timeout: float, limit: int | None
) -> tuple[int, bytes] | None:
    """Run a program and return its exit status and (up to ``limit`` bytes of) its output.

    Its standard output goes to an anonymous temporary file, its standard error and input to
    ``/dev/null``: no pipe that a forked process could keep open.

    Args:
        args: The program and its arguments.
        cwd: Its working directory.
        timeout: Seconds it may run before it is killed.
        limit: Most bytes of output kept (None: all).

    Returns:
        ``(returncode, output)``, or None if it could not run or ran out of time.
    """
    try:
        with tempfile.TemporaryFile() as out:
            proc = popen(
                args,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return None
            out.seek(0)
            data = out.read() if limit is None else out.read(limit)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return code, data

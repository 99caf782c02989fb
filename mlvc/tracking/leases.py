"""File leases that protect a checkpoint's files for ``Run.checkpoint(copy=True)``.

The training loop may overwrite a checkpoint's files as soon as ``checkpoint()`` returns, yet
every stored checkpoint holds the bytes its files had at the call. Small files are copied into
a private copy directory before the call returns (cheap). Large regular files
(:data:`LEASE_MIN_SIZE` and up) are handed to a helper process
(:mod:`mlvc.tracking._lease_helper`) that takes a Linux file lease on each one and answers; the
call returns once every large file is leased (:class:`CheckpointLeases`: the leases and copies
of one checkpoint):

* the background worker reads a leased file in place (no copy) and then tells the helper,
  which releases the lease: the file could not change while it was read;
* while a file is leased, any open of it for writing or truncation (``torch.save``,
  ``open(path, "wb")``, by any process) waits in the kernel; the helper sees the writer
  waiting, copies the file to the copy directory, then releases the lease and the writer goes
  ahead. That checkpoint is stored from the copy (what was read in place, if anything, is
  thrown away). Opening a file for reading does not wait, and replacing it by a rename (write
  elsewhere, then ``os.replace``) does not wait either: the worker sees that the path no
  longer names the leased file and has the helper copy the old one;
* files inside a checkpointed directory are copied by the helper in the background (the
  directory is stored from its copy), each under its lease until its copy is made;
* the kernel lets a waiting writer in after ``/proc/sys/fs/lease-break-time`` seconds (45 by
  default); a file that changed that way is reported ``changed`` and its checkpoint is
  dropped, never recorded torn;
* the lease is taken and released by the helper process, never by a thread of the training
  process: a writer that blocks in ``open()`` without releasing the GIL (``torch.save``
  does) would keep such a thread from releasing it until the kernel gave up waiting. The
  helper never waits for the training process before it releases a lease.

Where leases are unavailable (other systems, network filesystems, files of another user, a
file someone holds open for writing) or the helper cannot run, the file is copied before the
call returns, as for small files. If the helper dies, files it held are reported lost (what
was read in place is not trusted; their checkpoints fail, with a clear message) and the rest
of the run copies synchronously.

Copies go to :data:`COPY_DIR` (``.mlvc-staging``, a name kept from earlier versions: projects'
``.gitignore`` files list it) beside the file, else under the cache directory; see
:mod:`mlvc.tracking.protect`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import socket
import stat as stat_mod
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mlvc.errors import MlvcError
from mlvc.tracking._children import fork_guard

log = logging.getLogger("mlvc")

__all__ = [
    "LEASE_MIN_SIZE",
    "MAX_IN_FLIGHT",
    "COPY_DIR",
    "Lease",
    "CopyFailed",
    "CheckpointLeases",
    "LeaseHelper",
    "copy_file",
]

COPY_DIR = ".mlvc-staging"
LEASE_MIN_SIZE = 1 << 20
"""Smaller files are copied before ``checkpoint()`` returns."""
MAX_IN_FLIGHT = 256
"""Files the helper may hold at once; more are copied before ``checkpoint()`` returns."""
REPLY_TIMEOUT = 30.0
"""Seconds to wait for the helper to lease a file before giving up on it."""
CLOSE_TIMEOUT = 10.0
"""Seconds the helper gets to exit on :meth:`LeaseHelper.close` before it is killed."""
_MAX_MESSAGE = 1 << 16
_HELPER = Path(__file__).with_name("_lease_helper.py")
_T = TypeVar("_T")


class CopyFailed(MlvcError):
    """The background copy of a checkpoint file failed or was lost with the helper process."""


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy one file's bytes (and mode) cheaply.

    ``copy_file_range`` lets the kernel (or the filesystem, by reflink) do the copy; other
    systems fall back to :func:`shutil.copyfile`.
    """
    done = False
    if hasattr(os, "copy_file_range"):
        try:
            with open(src, "rb") as fi, open(dst, "wb") as fo:
                while os.copy_file_range(fi.fileno(), fo.fileno(), 1 << 30):
                    pass
            done = True
        except OSError as exc:
            if exc.errno not in (
                errno.EXDEV,
                errno.ENOSYS,
                errno.EINVAL,
                errno.EOPNOTSUPP,
                errno.EPERM,
            ):
                raise
    if not done:
        shutil.copyfile(src, dst)
    shutil.copymode(src, dst)


class Lease:
    """One file copied by the helper process.

    Attributes:
        src: The file as given (copied here again if the helper gives up before the call ends).
        dst: Where the helper copies it in the copy directory, if it has to.
        rid: The helper's name for it.
        status: ``sent``, then ``leased``, then one of ``released`` (read in place and let go
            untouched), ``copied`` (a writer came, or a copy was asked for: ``dst`` holds the
            file), ``changed`` (the lease was broken and the file changed), ``failed``; or
            ``refused`` (no lease: copy it yourself) or ``lost`` (the helper died or was given
            up).
        detail: Why it was refused, failed or lost.
        identity: The leased file's (device, inode, size, mtime, ctime), once leased.
        in_place: Whether it may be read in place (a checkpointed file, not one inside a
            checkpointed directory, which is stored from its copy).
        leased: Set once the file is leased or will not be copied in the background.
        done: Set once the status is final.
    """

    def __init__(self, src: str, dst: str, rid: int = 0) -> None:
        self.src = src
        self.dst = dst
        self.rid = rid
        self.status = "sent"
        self.detail = ""
        self.identity: tuple[int, ...] | None = None
        self.in_place = False
        self.leased = threading.Event()
        self.done = threading.Event()

    def answer(self, status: str, detail: str = "") -> None:
        """Record the helper's answer (or the client's verdict) and wake whoever waits."""
        if self.done.is_set():
            return
        if status == "leased":
            with contextlib.suppress(ValueError):
                self.identity = tuple(int(x) for x in detail.split())
            detail = ""
        self.detail = detail
        self.status = status
        self.leased.set()
        if status != "leased":
            self.done.set()

    def __repr__(self) -> str:
        return f"<Lease {self.src} {self.status}>"


class LeaseHelper:
    """Client of the helper process (:mod:`mlvc.tracking._lease_helper`), started on first use.

    Thread-safe. Used only by the process that created it (a forked child copies itself).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pid = os.getpid()
        self._ids = itertools.count(1)
        self._pending: dict[int, Lease] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._closing = False
        self._given_up: str | None = None
        self.copies_made = 0
        """Files the helper copied (taken over from a writer, or asked for)."""
        self.unavailable: str | None = (
            None if sys.platform.startswith("linux") else "file leases need Linux"
        )
        """Why files are no longer sent to the helper (None while they are)."""

    @property
    def pid(self) -> int | None:
        """The helper's process id (None before it started or after it ended)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def submit(self, src: str, dst: str) -> Lease | None:
        """Ask the helper to lease ``src`` and copy it to ``dst`` (absolute paths).

        Returns:
            The copy, whose ``leased`` event tells when the file is protected; None when the
            helper is unavailable or busy with :data:`MAX_IN_FLIGHT` files: copy it yourself.
        """
        with self._lock:
            if self.unavailable is not None or self._closing or os.getpid() != self._pid:
                return None
            if len(self._pending) >= MAX_IN_FLIGHT:
                return None
            if self._sock is None:
                self._start()
            sock = self._sock
            if sock is None:
                return None
            rid = next(self._ids)
            copy = Lease(src, dst, rid)
            self._pending[rid] = copy
        message = b"\0".join((str(rid).encode(), os.fsencode(src), os.fsencode(dst)))
        try:
            with self._send_lock:
                sock.send(message)
        except OSError as exc:  # timeout included: the helper stopped reading
            self.abandon(f"sending to it failed: {exc}")
            return None
        return copy

    def tell(self, copy: Lease, verb: str) -> None:
        """Tell the helper ``done`` (the file was read: release it) or ``copy`` (copy it now).

        Its verdict comes as the copy's final status (``lost`` if the helper is gone).
        """
        with self._lock:
            sock = self._sock if self._pending.get(copy.rid) is copy else None
        if sock is None:
            return  # already answered
        try:
            with self._send_lock:
                sock.send(b"\0".join((str(copy.rid).encode(), verb.encode())))
        except OSError as exc:
            self.abandon(f"sending to it failed: {exc}")

    def abandon(self, reason: str) -> None:
        """Stop using the helper: kill it; copies in flight are lost."""
        with self._lock:
            proc = self._proc
            self._given_up = self._given_up or reason
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(CLOSE_TIMEOUT)
        self._fail(reason)

    def close(self) -> None:
        """Stop the helper and wait for it to exit; copies still in flight are lost."""
        with self._lock:
            self._closing = True
            sock, proc, reader = self._sock, self._proc, self._reader
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # end of file for the helper; wakes the reader
        if proc is not None:
            try:
                proc.wait(CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if reader is not None and reader is not threading.current_thread():
            reader.join(CLOSE_TIMEOUT)
        if sock is not None:
            sock.close()
        self._fail("the run was closed")

    # ------------------------------------------------------------------ internals

    def _start(self) -> None:
        """Start the helper (with ``_lock`` held); on failure mark the helper unavailable."""
        if not sys.executable or not _HELPER.is_file():
            self._unavailable("no Python executable or helper script to run")
            return
        # Under the fork guard: a fork of the training process (a DataLoader worker) between
        # socketpair() and the close of the helper's end would keep that end open, and the
        # reader would never see the helper exit (mlvc.tracking._children).
        with fork_guard():
            try:
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            except (OSError, AttributeError) as exc:
                self._unavailable(f"no socket pair: {exc}")
                return
            try:
                with theirs:
                    fd = theirs.fileno()
                    self._proc = subprocess.Popen(
                        [sys.executable, "-I", "-S", str(_HELPER), str(fd), str(os.getpid())],
                        pass_fds=(fd,),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,  # never keeps the training process's pipes
                        cwd="/",
                    )
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                ours.close()
                self._unavailable(f"the helper process did not start: {exc}")
                return
        ours.settimeout(REPLY_TIMEOUT)  # bounds sends; the reader just waits again
        self._sock = ours
        self._reader = threading.Thread(
            target=self._read, args=(ours,), name="mlvc-lease-reader", daemon=True
        )
        self._reader.start()

    def _unavailable(self, reason: str) -> None:
        if self.unavailable is None:
            self.unavailable = reason
            log.info(
                "mlvc: checkpoint files are now copied before checkpoint() returns: %s", reason
            )

    def _read(self, sock: socket.socket) -> None:
        reason = "the helper process exited"
        try:
            while True:
                try:
                    message = sock.recv(_MAX_MESSAGE)
                except TimeoutError:
                    continue
                except OSError as exc:
                    if exc.errno != errno.ECONNRESET:  # reset: it died with requests unread
                        reason = f"reading from the helper process failed: {exc}"
                    break
                if not message:
                    break
                rid, _, rest = message.partition(b"\0")
                status, _, detail = rest.partition(b"\0")
                with self._lock:
                    key = int(rid)
                    copy = self._pending.get(key)
                    if copy is not None and status != b"leased":
                        del self._pending[key]
                    if status in (b"copied", b"changed"):
                        self.copies_made += 1
                if copy is not None:
                    copy.answer(status.decode(), os.fsdecode(detail))
        finally:
            proc = self._proc
            if proc is not None:
                try:
                    proc.wait(CLOSE_TIMEOUT)  # no zombie; end of file means it is exiting
                except subprocess.TimeoutExpired:
                    proc.kill()  # nothing of it may still write once its copies are lost
                    proc.wait()
                if proc.returncode not in (None, 0):
                    reason += f" (exit status {proc.returncode})"
            self._fail(self._given_up or reason)

    def _fail(self, reason: str) -> None:
        """Mark the helper unusable and every copy in flight lost."""
        with self._lock:
            pending, self._pending = self._pending, {}
            if not self._closing:
                self._unavailable(reason)
            else:
                self.unavailable = self.unavailable or reason
        for copy in pending.values():
            copy.answer("lost", reason)


class CheckpointLeases:
    """The copies of one checkpoint's files into its copy directories.

    In the caller's thread: :meth:`copy` each file or directory, then :meth:`protect` before
    returning to the training loop (or :meth:`cancel` on failure). In the background:
    :meth:`copy_nested` then :meth:`wait_nested` before reading copied directories,
    :meth:`read` for each copied file, and :meth:`wait` before removing the copy
    directories.
    """

    def __init__(self, helper: LeaseHelper | None) -> None:
        self._helper = helper
        self.copies: list[Lease] = []
        """Files copied by the helper."""

    def copy(self, src: Path, dst: Path) -> None:
        """Copy a file or a directory (symlinks kept as links, copy directories left out)."""
        if src.is_dir():
            shutil.copytree(
                src,
                dst,
                symlinks=True,
                copy_function=self._copy_file,
                ignore=shutil.ignore_patterns(COPY_DIR),
            )
        else:
            self._copy_file(str(src), str(dst))
            if self.copies and self.copies[-1].dst == os.path.abspath(dst):
                self.copies[-1].in_place = True

    def _copy_file(self, src: str, dst: str) -> str:
        copy = None
        if self._helper is not None and self._helper.unavailable is None:
            st = os.stat(src)
            euid = os.geteuid()
            if (
                stat_mod.S_ISREG(st.st_mode)
                and st.st_size >= LEASE_MIN_SIZE
                and (st.st_uid == euid or euid == 0)  # leases need the owner (or CAP_LEASE)
            ):
                copy = self._helper.submit(os.path.realpath(src), os.path.abspath(dst))
        if copy is None:
            copy_file(src, dst)
        else:
            self.copies.append(copy)
        return dst

    def _await_leases(self) -> None:
        deadline = time.monotonic() + REPLY_TIMEOUT
        for copy in self.copies:
            if not copy.leased.wait(max(0.0, deadline - time.monotonic())):
                assert self._helper is not None
                self._helper.abandon(f"no answer in {REPLY_TIMEOUT:.0f} s")
                break

    def protect(self) -> None:
        """Return once every file is leased or copied; copy here what the helper could not.

        Raises:
            OSError: A file the helper could not lease could not be copied here either.
        """
        if not self.copies:
            return
        self._await_leases()
        kept: list[Lease] = []
        for copy in self.copies:
            if copy.status in ("leased", "copied"):
                kept.append(copy)
            else:  # the file is still as the caller left it: copy it now
                log.debug("mlvc: copying %s here: %s %s", copy.src, copy.status, copy.detail)
                copy_file(copy.src, copy.dst)
        self.copies = kept

    def cancel(self) -> None:
        """Let the helper's copies in flight go (their files are about to be removed)."""
        if self.copies:
            self._await_leases()  # a leased file's copy exists: removing it is final
        self.copies = []

    def copy_nested(self) -> None:
        """Ask the helper to copy now the files that are not read in place."""
        for copy in self.copies:
            if not copy.in_place and self._helper is not None:
                self._helper.tell(copy, "copy")

    def wait_nested(self) -> list[Lease]:
        """Wait for the copies of the files that are not read in place.

        Returns:
            Those that did not succeed (changed, failed or lost).
        """
        nested = [c for c in self.copies if not c.in_place]
        for copy in nested:
            copy.done.wait()
        return [c for c in nested if c.status != "copied"]

    def read(self, copied: Path, ingest: Callable[[Path], _T]) -> tuple[_T | None, str]:
        """Run ``ingest`` on a copied file, or on the original while the helper leases it.

        A leased file is read in place; the result is kept only if the helper then releases
        it untouched (``released``: the lease was held throughout, so the file did not
        change). If a writer came meanwhile (``copied``), or the path no longer names the
        leased file (replaced by a rename), the helper's copy is read instead.

        Returns:
            ``ingest``'s result and ``""``; or None and the status of a copy that failed
            (``changed``, ``failed``, ``lost``; see :class:`Lease`).
        """
        copy = self.copy_of(copied)
        if copy is None:
            return ingest(copied), ""
        helper = self._helper
        assert helper is not None
        if copy.status == "leased" and copy.identity is not None:
            if _identity_of(copy.src) == copy.identity:
                result = ingest(Path(copy.src))
                intact = _identity_of(copy.src) == copy.identity  # not renamed over meanwhile
                helper.tell(copy, "done" if intact else "copy")
                copy.done.wait()
                if intact and copy.status == "released":
                    return result, ""
            else:
                helper.tell(copy, "copy")
        elif copy.status == "leased":
            helper.tell(copy, "copy")
        copy.done.wait()
        if copy.status == "copied":
            return ingest(Path(copy.dst)), ""
        return None, copy.status

    def copy_of(self, copied: Path) -> Lease | None:
        """The helper's copy for a copied file read by :meth:`read`, if any."""
        dst = os.path.abspath(copied)
        return next((c for c in self.copies if c.in_place and c.dst == dst), None)

    def wait(self) -> list[Lease]:
        """Let go of the files still leased, and wait for every background copy to end.

        Returns:
            The copies that did not succeed (changed, failed or lost).
        """
        for copy in self.copies:
            if copy.status == "leased" and self._helper is not None:
                self._helper.tell(copy, "done")
        for copy in self.copies:
            copy.done.wait()
        return [c for c in self.copies if c.status not in ("copied", "released")]


def _identity_of(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

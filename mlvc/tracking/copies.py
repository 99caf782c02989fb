"""Copies of a checkpoint's files for ``Run.checkpoint(copy=True)``: never in the writer's way.

The rule. The training loop may open, truncate, overwrite, append to, or rename over a
checkpoint's files as soon as ``checkpoint()`` returns, and nothing mlvc does ever makes that
wait or fail: mlvc takes no lock or lease on them and only ever reads them (a read never blocks
a writer, and a writer never blocks or interrupts on a reader). Every stored checkpoint holds
exactly the bytes its files had at the call, or is not stored at all, with a warning.

How (:class:`CheckpointCopies`, one per call; :class:`Copier`, one per run):

1. Each file is opened at the call, so a file later replaced by a rename (``os.replace``) is
   still read from the inode the call saw.
2. It is cloned into a private copy directory (:data:`COPY_DIR`, see
   :mod:`mlvc.tracking.protect`) where the filesystem can (``FICLONE``: a copy-on-write
   reflink on btrfs, XFS, bcachefs, ZFS 2.2; instant whatever the size), else copied by the
   kernel (``copy_file_range``, falling back to ``sendfile`` and read/write): a file just
   saved is in the page cache, about 3.5 GB/s on the development machine.
3. ``checkpoint()`` returns once every file is copied or once the call's copy budget
   (``track(copy_budget=...)``, default 1 s, :data:`~mlvc.tracking.options.COPY_BUDGET`;
   ``None``: no limit) is spent, whichever is first. What is left is copied by the run's
   background copier thread at once, chunk by chunk.
4. Every file copied after the call returns is watched for writes
   (:class:`~mlvc.tracking.changes.ChangeWatch`, inotify on the open file) from before its
   first byte is copied. If a write reaches it before its copy is complete, the copy stops:
   the bytes the call saw are gone, so that checkpoint is not stored and a warning names the
   file, the step and the remedy (:class:`~mlvc.tracking.jobs.CheckpointChanged`; raised with
   ``strict=True``). A copy is also refused when the file's size or mtime moved, or when
   fewer bytes were read than it held.
5. Files whose writes could go unseen (filesystems another host may write to, no inotify,
   other systems), and files past :data:`MAX_IN_FLIGHT` background copies, are copied whole
   before the call returns, whatever the budget.

Why a writer never waits: mlvc holds no lease, lock or open-for-write on the user's files, and
inotify only queues events. A kernel copy reads the page cache like any reader; a writer
truncating the file waits at most for the page being read to be unlocked (microseconds,
uninterruptible: never ``EINTR``). A clone holds the filesystem's inode lock for its own
duration (a metadata operation: milliseconds), during which a writer waits the same way.

So what a user can rely on: the call blocks for at most about the budget (plus the time to
open and clone or copy files that cannot be watched); a loop that saves its next checkpoint
after the copies finish (for files up to ~3 GB under the default budget: always) loses none;
an earlier save of a larger file costs that one checkpoint, reported, never a torn record.
Touches no repository.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat as stat_mod
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from mlvc.errors import MlvcError
from mlvc.tracking.changes import ChangeWatch, identity

log = logging.getLogger("mlvc")

__all__ = [
    "COPY_DIR",
    "MAX_IN_FLIGHT",
    "CheckpointCopies",
    "Copier",
    "CopyFailed",
    "FileCopy",
]

COPY_DIR = ".mlvc-staging"
"""The copy directory's name (kept from earlier versions: projects' ``.gitignore`` list it)."""
MAX_IN_FLIGHT = 256
"""Files copied in the background at once; more are copied whole before the call returns."""
CHUNK = 16 << 20
"""Bytes per kernel copy call: how often the deadline and writes are looked at."""
FICLONE = 0x40049409
"""``ioctl`` request of a copy-on-write clone (Linux ``_IOW(0x94, 9, int)``)."""
_OTHER_WAY = frozenset(
    {
        errno.EXDEV,
        errno.ENOSYS,
        errno.EINVAL,
        errno.EOPNOTSUPP,
        errno.EPERM,
        errno.ENOTSUP,
        errno.ENOTSOCK,  # macOS: sendfile() writes only to sockets
    }
)
_NO_CLONE = _OTHER_WAY | {errno.ENOTTY, errno.EBADF}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class CopyFailed(MlvcError):
    """The copy of a checkpoint file failed (a full disk, an I/O error)."""


class FileCopy:
    """One file being copied into its copy directory.

    Attributes:
        src: The file as given (for messages).
        dst: Its copy.
        size: Its size at the call (bytes).
        copied: Bytes copied so far.
        status: ``copying``, then ``copied``, ``changed`` (written to before its copy was
            complete), ``failed`` (see ``detail``) or ``cancelled``.
        detail: Why it failed.
        in_background: Whether the copy went on after the call returned.
        seconds: When its copy ended, in seconds after the call started it.
        done: Set once the status is final.
    """

    def __init__(self, src: str, dst: str, src_fd: int, dst_fd: int) -> None:
        self.src = src
        self.dst = dst
        self.status = "copying"
        self.detail = ""
        self.in_background = False
        self.copied = 0
        self.seconds = 0.0
        self.done = threading.Event()
        self._src_fd = src_fd
        self._dst_fd = dst_fd
        self._before = identity(src_fd)
        self._mode = stat_mod.S_IMODE(os.fstat(src_fd).st_mode)
        self.size = self._before[0]
        self._token: int | None = None
        self._method = "copy_file_range" if hasattr(os, "copy_file_range") else "sendfile"
        if not hasattr(os, "sendfile"):
            self._method = "read"
        self._started = time.monotonic()
        self._cancelled = False

    def __repr__(self) -> str:
        return f"<FileCopy {self.src} {self.status} {self.copied}/{self.size}>"

    def clone(self) -> bool:
        """Clone the whole file copy-on-write (``FICLONE``); False where that is not possible.

        Raises:
            OSError: The clone failed for another reason than lack of support.
        """
        try:
            import fcntl  # not on Windows
        except ImportError:
            return False
        try:
            fcntl.ioctl(self._dst_fd, FICLONE, self._src_fd)
        except OSError as exc:
            if exc.errno in _NO_CLONE:
                return False
            raise
        self.copied = self.size
        return True

    def step(self) -> bool:
        """Copy the next chunk; True at the end of the file.

        Raises:
            OSError: Reading or writing failed.
        """
        while True:
            try:
                if self._method == "copy_file_range":
                    n = os.copy_file_range(self._src_fd, self._dst_fd, CHUNK, self.copied)
                elif self._method == "sendfile":
                    n = os.sendfile(self._dst_fd, self._src_fd, self.copied, CHUNK)
                else:
                    os.lseek(self._src_fd, self.copied, os.SEEK_SET)
                    data = memoryview(os.read(self._src_fd, CHUNK))
                    n = len(data)
                    while data:
                        data = data[os.write(self._dst_fd, data) :]
            except OSError as exc:
                if self._method != "read" and exc.errno in _OTHER_WAY:
                    self._method = "sendfile" if self._method == "copy_file_range" else "read"
                    continue
                raise
            self.copied += n
            return n == 0

    def finish(self, watch: ChangeWatch, error: OSError | None = None) -> None:
        """Decide the copy's status, close both files and wake whoever waits."""
        status, detail = "failed", ""
        try:
            if self._cancelled:
                status = "cancelled"
            elif error is not None:
                detail = f"{errno.errorcode.get(error.errno or 0, 'error')}: {error.strerror}"
            else:
                written = self._token is not None and watch.changed(self._token)
                same = identity(self._src_fd) == self._before and self.copied == self.size
                status = "copied" if same and not written else "changed"
                if status == "copied":
                    os.chmod(self.dst, self._mode)
        except OSError as exc:
            status, detail = "failed", str(exc)
        finally:
            if self._token is not None:
                watch.forget(self._token)
            for fd in (self._src_fd, self._dst_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.status, self.detail = status, detail
        self.seconds = time.monotonic() - self._started
        self.done.set()

    def cancel(self) -> None:
        """Stop a background copy at its next chunk (its copy directory is going away)."""
        self._cancelled = True


class Copier:
    """A run's background copier thread and the watch over the files it copies. Thread-safe.

    Used only by the process that created it: a forked child copies every file whole before
    its call returns (the thread does not exist there, and the watch belongs to the parent).
    """

    def __init__(self) -> None:
        self.watch = ChangeWatch()
        self._cond = threading.Condition()
        self._queue: deque[FileCopy] = deque()
        self._in_flight = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._pid = os.getpid()
        self.background_copies = 0
        """Files whose copy went on after their call returned."""

    def start(self, src: str, dst: str, deadline: float | None) -> FileCopy:
        """Copy ``src`` to the new file ``dst`` until done or until ``deadline`` (monotonic).

        Returns:
            The copy: done, or going on in the background.

        Raises:
            OSError: ``src`` cannot be opened or ``dst`` created, or a copy before the call
                returns failed.
        """
        # Non-blocking: opening a FIFO for reading would wait for a writer, forever.
        flags = os.O_RDONLY | _NONBLOCK | _CLOEXEC | getattr(os, "O_BINARY", 0)
        src_fd = os.open(src, flags)
        try:
            if not stat_mod.S_ISREG(os.fstat(src_fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", src)
            if _NONBLOCK:
                os.set_blocking(src_fd, True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | getattr(os, "O_BINARY", 0)
            dst_fd = os.open(dst, flags, 0o600)
        except BaseException:
            os.close(src_fd)
            raise
        copy = FileCopy(src, dst, src_fd, dst_fd)
        try:
            if self._may_leave(deadline):
                copy._token = self.watch.watch(src_fd)  # before the first byte is read
            if copy.clone():
                copy.finish(self.watch)
                return copy
            while copy._token is None or deadline is None or time.monotonic() < deadline:
                if copy.step():
                    copy.finish(self.watch)
                    return copy
        except OSError as exc:
            copy.finish(self.watch, exc)
            raise
        self._hand_over(copy)
        return copy

    def _may_leave(self, deadline: float | None) -> bool:
        """Whether a copy started now may go on after the call returns."""
        with self._cond:
            return (
                deadline is not None
                and not self._closing
                and os.getpid() == self._pid
                and self._in_flight < MAX_IN_FLIGHT
            )

    def _hand_over(self, copy: FileCopy) -> None:
        copy.in_background = True
        with self._cond:
            self._in_flight += 1
            self.background_copies += 1
            self._queue.append(copy)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlvc-copier", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                if not self._queue:
                    return
                copy = self._queue[0]
            self._advance(copy)
            if copy.done.is_set():
                with self._cond:
                    self._queue.popleft()
                    self._in_flight -= 1

    def _advance(self, copy: FileCopy) -> None:
        """Copy one chunk of ``copy``, or end it (finished, written to, cancelled, failed)."""
        try:
            token = copy._token
            if copy._cancelled or (token is not None and self.watch.changed(token)):
                copy.finish(self.watch)  # a write came: the bytes of the call are gone
            elif copy.step():
                copy.finish(self.watch)
        except OSError as exc:
            copy.finish(self.watch, exc)

    def close(self) -> None:
        """Cancel the copies still going on (the run has ended), stop the thread and the watch.

        The run's worker has stored, or the run's end has kept in the outbox, every checkpoint
        whose copies it needed by then, so nothing waits for those that are left.
        """
        with self._cond:
            self._closing = True
            thread = self._thread
            for copy in self._queue:
                copy.cancel()
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.watch.close()


class CheckpointCopies:
    """The copies of one checkpoint's files into its copy directories.

    In the caller's thread: :meth:`copy` each file or directory (or :meth:`cancel` on
    failure). In the background: :meth:`wait` before reading the copies.

    Args:
        copier: The run's copier.
        budget: Seconds the call may spend copying before the rest goes on in the background
            (None: copy everything first).
    """

    def __init__(self, copier: Copier, budget: float | None) -> None:
        self._copier = copier
        self._deadline = None if budget is None else time.monotonic() + max(0.0, budget)
        self.copies: list[FileCopy] = []
        """Every file copied, in order."""

    def copy(
        self,
        src: Path,
        dst: Path,
        skip: frozenset[tuple[int, int]] = frozenset(),
        exclude: Callable[[str], bool] | None = None,
    ) -> None:
        """Copy a file or a directory (links kept as links; sockets, FIFOs, devices left out).

        Inside a directory, copy directories and the directories of ``skip`` are left out.

        Args:
            src: The file or directory.
            dst: Its copy (a new path).
            skip: ``(st_dev, st_ino)`` of directories never copied (the repository, caches).
            exclude: Inside a directory, called with each member's path relative to ``src``
                (``/``-separated); True leaves it (and what it holds) out.

        Raises:
            OSError: A file could not be opened, created or copied.
        """
        if src.is_dir():

            def ignore(directory: str, names: list[str]) -> set[str]:
                left_out = {COPY_DIR} & set(names)
                if exclude is not None:
                    rel = os.path.relpath(directory, src)
                    prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
                    left_out.update(n for n in names if exclude(prefix + n))
                for name in names if skip else ():
                    try:
                        st = os.lstat(os.path.join(directory, name))
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) in skip:
                        left_out.add(name)
                return left_out

            shutil.copytree(src, dst, symlinks=True, copy_function=self._copy_member, ignore=ignore)
        else:
            self._copy_file(str(src), str(dst))

    def _copy_file(self, src: str, dst: str) -> str:
        self.copies.append(self._copier.start(src, dst, self._deadline))
        return dst

    def _copy_member(self, src: str, dst: str) -> str:
        """Copy a file met inside a directory; leave out sockets, FIFOs and devices.

        They hold no content, as in a commit (docs/format.md), and opening one may block.
        """
        if stat_mod.S_ISREG(os.stat(src).st_mode):
            self._copy_file(src, dst)
        return dst

    def wait(self) -> list[FileCopy]:
        """Wait for the background copies to end.

        Returns:
            Those that did not succeed (changed, failed or cancelled).
        """
        for copy in self.copies:
            copy.done.wait()
        return [c for c in self.copies if c.status != "copied"]

    def cancel(self) -> None:
        """Stop the copies still going on (their copy directories are about to be removed)."""
        for copy in self.copies:
            copy.cancel()
        for copy in self.copies:
            copy.done.wait()

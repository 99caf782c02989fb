"""Helper process that holds leases on checkpoint files; the client is :mod:`mlvc.tracking.leases`.

Started as ``python -I -S _lease_helper.py FD PARENT_PID``, where ``FD`` is its end of an
``AF_UNIX``/``SOCK_SEQPACKET`` socket pair (one message per packet). It imports the standard
library only, so it starts fast, and it holds no reference to the training process's
interpreter: the leases it takes are released by this process alone, even while a writer of
the training process blocks in ``open()`` holding that process's GIL.

Lease requests are ``id NUL source NUL destination`` (absolute paths). For each one the helper
opens the source (``O_NOFOLLOW``), takes a read lease on it (``F_SETLEASE``, ``F_RDLCK``: from
then on any open of the file for writing or truncation waits in the kernel until the lease is
released), creates the destination and answers ``id NUL leased NUL identity`` (the leased
file's device, inode, size, mtime and ctime, in decimal), or ``id NUL refused NUL reason`` when
any of that fails (the client then copies the file itself).

It then holds the lease without copying: the client reads the file in place. Every
:data:`HOLD_POLL_MS` while it holds a lease it looks (``F_GETLEASE``) for a writer waiting on
it. When one waits (a take-over), or when the client asks with ``id NUL copy``, the helper
copies the file to its destination, a chunk at a time, answering new requests between chunks,
and releases the lease once the copy is made, answering ``copied``, ``changed`` (the lease was
lost, which the kernel does after ``/proc/sys/fs/lease-break-time`` seconds of a waiting
writer, and the file changed) or ``failed`` (with the reason). The writer then goes ahead.

``id NUL done`` says the client has read the file: the helper releases a lease it still holds
untouched, removes the unused destination and answers ``released`` (the file did not change
while it was read). For a file already being copied it changes nothing: the copy's answer
follows. It never waits for the client before releasing a lease.

It exits when the socket reaches end of file (the client closed it, or the training process
died) or when its parent process changes. It ignores SIGINT, SIGTERM and SIGHUP: a terminal's
Ctrl-C or a job manager's SIGTERM reaches every process of the job, and the training process
flushes its pending checkpoints on those, which needs the leases and copies in flight.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import stat
import sys
from collections import deque

F_SETLEASE: int = getattr(fcntl, "F_SETLEASE", 1024)
F_GETLEASE: int = getattr(fcntl, "F_GETLEASE", 1025)
F_SETSIG: int = getattr(fcntl, "F_SETSIG", 10)
CHUNK = 8 << 20
"""Bytes copied between two looks at the socket (bounds how long a request waits)."""
IDLE_POLL_MS = 1000
"""How often an idle helper checks that its parent is still alive."""
HOLD_POLL_MS = 20
"""How often a helper holding leases looks for writers waiting on them."""
MAX_MESSAGE = 1 << 16
_OTHER_WAY = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.ENOTSUP}
)


def _reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{name}: {exc.strerror}" if name else str(exc)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _Copy:
    """One leased source file, held until it is read or copied to its destination."""

    def __init__(
        self, rid: bytes, src: int, dst: int, st: os.stat_result, dst_path: bytes = b""
    ) -> None:
        self.rid = rid
        self.src = src
        self.dst = dst
        self.dst_path = dst_path
        self.mode = stat.S_IMODE(st.st_mode)
        self.before = _identity(st)
        self.copied = 0
        self.method = "copy_file_range"

    def step(self) -> bool:
        """Copy one chunk; True at the end of the file.

        Raises:
            OSError: Reading or writing failed.
        """
        while True:
            try:
                if self.method == "copy_file_range":
                    n = os.copy_file_range(self.src, self.dst, CHUNK)
                elif self.method == "sendfile":
                    n = os.sendfile(self.dst, self.src, None, CHUNK)
                else:
                    data = memoryview(os.read(self.src, CHUNK))
                    n = len(data)
                    while data:
                        data = data[os.write(self.dst, data) :]
            except OSError as exc:
                if self.method != "read" and exc.errno in _OTHER_WAY:
                    self.method = "sendfile" if self.method == "copy_file_range" else "read"
                    continue
                raise
            self.copied += n
            return n == 0

    def breaking(self) -> bool:
        """True when a writer waits for this lease (``F_GETLEASE`` reads unlocked then)."""
        try:
            return bool(fcntl.fcntl(self.src, F_GETLEASE) == fcntl.F_UNLCK)
        except OSError:
            return False

    def release(self) -> bytes:
        """The client has read the file: release the lease, drop the destination, answer.

        Answers ``released`` when the lease was still held (or the file is unchanged), else
        ``changed``.
        """
        held = _unlock(self.src)
        try:
            intact = held or _identity(os.fstat(self.src)) == self.before
        except OSError:
            intact = False
        _close(self.src)
        _close(self.dst)
        if self.dst_path:
            with contextlib.suppress(OSError):
                os.unlink(self.dst_path)
        return _message(self.rid, "released" if intact else "changed")

    def finish(self, error: OSError | None) -> bytes:
        """Release the lease, close both files, and say how the copy went."""
        status, detail = "failed", _reason(error) if error is not None else ""
        try:
            if error is None:
                after = _identity(os.fstat(self.src))
                held = _unlock(self.src)
                intact = (held or after == self.before) and self.copied == self.before[0]
                status = "copied" if intact else "changed"
                os.fchmod(self.dst, self.mode)
        except OSError as exc:
            status, detail = "failed", _reason(exc)
        finally:
            _close(self.src)
            _close(self.dst)
        return _message(self.rid, status, detail)


def _unlock(fd: int) -> bool:
    """Release ``fd``'s lease; False if the kernel had broken it (a writer may have got in)."""
    try:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
    except OSError:
        return False
    return True


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _message(rid: bytes, status: str, detail: str = "") -> bytes:
    return b"\0".join((rid, status.encode(), os.fsencode(detail)))


def lease(request: bytes) -> tuple[_Copy | None, bytes]:
    """Open and lease a request's source and create its destination.

    Returns:
        The copy to make (None if refused) and the answer to send at once.
    """
    rid, _, rest = request.partition(b"\0")
    src_path, _, dst_path = rest.partition(b"\0")
    src = dst = -1
    try:
        if not src_path or not dst_path:
            raise OSError(errno.EINVAL, "malformed request")
        src = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        fcntl.fcntl(src, F_SETSIG, signal.SIGURG)  # the default SIGIO would kill this process
        fcntl.fcntl(src, F_SETLEASE, fcntl.F_RDLCK)
        st = os.fstat(src)  # after the lease: what changes from here on shows
        dst = os.open(
            dst_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as exc:
        if src >= 0:
            _close(src)  # closing releases the lease
        return None, _message(rid, "refused", _reason(exc))
    identity = f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}"
    return _Copy(rid, src, dst, st, dst_path), _message(rid, "leased", identity)


def _receive(
    fd: int, held: dict[bytes, _Copy], copies: deque[_Copy], replies: deque[bytes]
) -> bool:
    """Take every waiting request; False at end of file."""
    while True:
        try:
            request = os.read(fd, MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not request:
            return False
        if request.count(b"\0") == 1:  # a command about a leased file
            rid, _, verb = request.partition(b"\0")
            copy = held.pop(rid, None)
            if copy is None:
                continue  # being copied (its answer follows) or already answered
            if verb == b"done":
                replies.append(copy.release())
            else:
                copies.append(copy)
            continue
        copy, reply = lease(request)
        replies.append(reply)
        if copy is not None:
            held[copy.rid] = copy


def _send(fd: int, replies: deque[bytes]) -> bool:
    """Send what the socket takes without waiting; False if the client is gone."""
    while replies:
        try:
            os.write(fd, replies[0])
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        replies.popleft()
    return True


def serve(fd: int, parent: int) -> None:
    """Answer requests on ``fd`` until end of file or until ``parent`` is no longer the parent."""
    os.set_blocking(fd, False)
    poller = select.poll()
    held: dict[bytes, _Copy] = {}  # leased, read in place by the client
    copies: deque[_Copy] = deque()  # taken over: copied one after the other
    replies: deque[bytes] = deque()  # never wait to send: the client may be unable to read
    while os.getppid() == parent:
        poller.register(fd, select.POLLIN | (select.POLLOUT if replies else 0))
        timeout = 0 if copies else HOLD_POLL_MS if held else IDLE_POLL_MS
        events = poller.poll(timeout)
        if events and events[0][1] & (select.POLLIN | select.POLLHUP | select.POLLERR):
            if not _receive(fd, held, copies, replies):
                return
        if not _send(fd, replies):
            return
        for rid, waited in list(held.items()):
            if waited.breaking():  # a writer waits for it: copy it, then let the writer in
                del held[rid]
                copies.append(waited)
        if not copies:
            continue
        if len(copies) > 1 and not copies[0].breaking():
            first = next((c for c in copies if c.breaking()), None)
            if first is not None:  # a writer waits for that one: copy it first
                copies.remove(first)
                copies.appendleft(first)
        copy = copies[0]
        try:
            if not copy.step():
                continue
            reply = copy.finish(None)
        except OSError as exc:
            reply = copy.finish(exc)
        copies.popleft()
        replies.append(reply)
        if not _send(fd, replies):
            return


def main(argv: list[str]) -> int:
    """Entry point: ``argv`` is the socket's file descriptor and the parent's process id."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGURG, signal.SIG_IGN)
    fd, parent = int(argv[0]), int(argv[1])
    serve(fd, parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

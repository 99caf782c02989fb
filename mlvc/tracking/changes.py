"""Seeing a write to a checkpoint file while mlvc copies it, without ever making the writer wait.

A :class:`ChangeWatch` puts a Linux ``inotify`` watch (``IN_MODIFY``, through the
``inotify_simple`` library, this module being its one home) on the *open file* being copied
(``/proc/self/fd/N``, so the watch is on exactly the inode read, whatever is renamed over its
path later). The kernel queues an event for every ``write``, truncation (``O_TRUNC``,
``truncate``), ``fallocate`` or ``copy_file_range`` into that inode, by any process of this
host, and the writer never waits for it: the event is only read, later, by the copier. A copy
whose file saw such an event between the watch and the end of the copy is not trusted.

What a watch does not see, so a file it cannot promise to see is never copied in the
background (:meth:`ChangeWatch.watch` returns None and the caller copies the file whole first):

* files on filesystems where another host may write (NFS, SMB, FUSE, cluster filesystems):
  only the filesystems of :data:`LOCAL_FILESYSTEMS` are watched (``fstatfs``);
* any file when ``inotify`` is unavailable (other systems, the watch limit
  ``/proc/sys/fs/inotify/max_user_watches`` reached, no ``/proc``).

Writes through a shared memory map (``mmap`` with ``MAP_SHARED``; not what ``torch.save``,
safetensors or ``numpy.save`` do) raise no event; the file's size and mtime are compared too
(:func:`identity`), which catches most of them. An overflowing event queue marks every watched
file changed.
Touches no repository.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import sys
import threading
from typing import Any

log = logging.getLogger("mlvc")

__all__ = ["LOCAL_FILESYSTEMS", "ChangeWatch", "identity"]

LOCAL_FILESYSTEMS = frozenset(
    {
        0xEF53,  # ext2, ext3, ext4
        0x58465342,  # xfs
        0x9123683E,  # btrfs
        0x01021994,  # tmpfs
        0xF2F52010,  # f2fs
        0x2FC12FC1,  # zfs
        0xCA451A4E,  # bcachefs
        0x794C7630,  # overlayfs (containers)
        0x858458F6,  # ramfs
    }
)
"""``statfs`` magic numbers of the filesystems watched: only this host writes to them."""

_IN_MODIFY = 0x2
_IN_Q_OVERFLOW = 0x4000


def identity(fd: int) -> tuple[int, int, int]:
    """An open file's (size, mtime ns, inode): what a write to it moves.

    Not its ctime, which a rename over its path or a link also moves.

    Raises:
        OSError: ``fstat`` failed.
    """
    st = os.fstat(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 128)]


def _filesystem_type(fd: int) -> int | None:
    """The ``statfs`` magic number of ``fd``'s filesystem (None where it cannot be read)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = _StatFs()
        if libc.fstatfs(fd, ctypes.byref(buf)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int(buf.f_type) & 0xFFFFFFFF


class ChangeWatch:
    """Watches open files for writes; thread-safe; one per run (:class:`~.copies.Copier`).

    Attributes:
        unavailable: Why no file can be watched (None while files can be).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inotify: Any = None
        self._tokens = itertools.count(1)
        self._wd_of: dict[int, int] = {}  # token -> inotify watch descriptor
        self._tokens_of: dict[int, set[int]] = {}  # watch descriptor -> its tokens
        self._changed: set[int] = set()  # tokens whose file was written to
        self._local: dict[int, bool] = {}  # st_dev -> on a watched filesystem
        self.unavailable: str | None = None
        if not sys.platform.startswith("linux"):
            self.unavailable = "file change notification (inotify) needs Linux"

    def watch(self, fd: int) -> int | None:
        """Start watching the open file ``fd`` for writes.

        The same file may be watched by several callers at once (one inotify watch serves
        them all): each gets its own token, and sees only the writes after its own call.

        Returns:
            A token for :meth:`changed` and :meth:`forget`; None if writes to this file could
            go unseen (copy it whole before letting the caller go on).
        """
        if self.unavailable is not None:
            return None
        try:
            dev = os.fstat(fd).st_dev
        except OSError:
            return None
        local = self._local.get(dev)
        if local is None:
            local = self._local[dev] = _filesystem_type(fd) in LOCAL_FILESYSTEMS
        if not local:
            return None
        with self._lock:
            try:
                if self._inotify is None:
                    self._inotify = _open_inotify()
                # The same inode already watched gives the same descriptor: what is queued
                # for it happened before this call, so it goes to the earlier tokens only.
                self._drain()
                wd = int(self._inotify.add_watch(f"/proc/self/fd/{fd}", _IN_MODIFY))
            except (OSError, ImportError, AttributeError) as exc:
                if self._inotify is None:
                    self.unavailable = f"no inotify: {exc}"
                    log.info("mlvc: checkpoint files are copied whole before returning: %s", exc)
                return None  # e.g. the watch limit: this file is copied whole
            token = next(self._tokens)
            self._wd_of[token] = wd
            self._tokens_of.setdefault(wd, set()).add(token)
            return token

    def changed(self, token: int) -> bool:
        """True if the file watched as ``token`` was written to since its :meth:`watch`."""
        with self._lock:
            self._drain()
            return token in self._changed

    def forget(self, token: int) -> None:
        """Stop watching for ``token`` (after its last :meth:`changed`)."""
        with self._lock:
            self._changed.discard(token)
            wd = self._wd_of.pop(token, None)
            tokens = self._tokens_of.get(wd, set()) if wd is not None else set()
            tokens.discard(token)
            if wd is None or tokens:
                return  # others still watch that file
            del self._tokens_of[wd]
            if self._inotify is not None:
                self._drain()  # events of that descriptor go before it can be reused
                with contextlib.suppress(OSError):
                    self._inotify.rm_watch(wd)

    def close(self) -> None:
        """Stop watching every file."""
        with self._lock:
            if self._inotify is not None:
                with contextlib.suppress(OSError):
                    self._inotify.close()
                self._inotify = None
            self._wd_of.clear()
            self._tokens_of.clear()
            self._changed.clear()

    def _drain(self) -> None:
        """Read the queued events: mark the tokens of every file written to."""
        if self._inotify is None:
            return
        try:
            events = self._inotify.read(timeout=0)
        except OSError:
            self._changed.update(self._wd_of)  # unreadable: trust no copy in flight
            return
        for event in events:
            if event.mask & _IN_Q_OVERFLOW:
                self._changed.update(self._wd_of)  # events were lost: trust no copy in flight
            elif event.mask & _IN_MODIFY:
                self._changed.update(self._tokens_of.get(event.wd, ()))


def _open_inotify() -> Any:  # noqa: ANN401 - inotify_simple ships no types
    from inotify_simple import INotify

    return INotify(inheritable=False, nonblocking=True)

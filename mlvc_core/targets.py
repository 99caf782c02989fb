"""Checkout targets on disk: directories opened without following links, new ones built aside.

:mod:`mlvc_core.restore` writes through what this module hands it: descriptors of the
target's directories, opened component by component with ``O_NOFOLLOW`` from a descriptor
of the target (:class:`Dirs`), and the names it renames into place (:func:`put`).

A directory that does not exist yet is **built under a temporary name** (``.mlvc-<pid>-<12
hex>.tmp`` beside it) and renamed to its own name once everything below it is written
(:meth:`Dirs.publish`): nothing is there to protect, so the files below it are created
in place (no temporary name and rename each), and a checkout killed midway leaves no torn
file under a real name, only a temporary directory the next checkout writing beside it
removes (:func:`sweep_temporary`). Directories created below a new one get their own names
at once (nobody sees them before the one rename). Nothing here reads the repository.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat as stat_mod
import sys
import uuid

from mlvc_core.errors import FileExistsConflict
from mlvc_core.objects import TreeEntry
from mlvc_core.processes import pid_alive

Parts = tuple[str, ...]
"""A path inside the checkout root, as its components (as :data:`mlvc_core.plan.Parts`)."""

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
"""How every directory of a target is opened: never through a link."""


def remove(dir_fd: int, name: str) -> None:
    """Remove whatever is called ``name`` in ``dir_fd`` (a directory with its contents)."""
    st = os.lstat(name, dir_fd=dir_fd)
    if not stat_mod.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
    elif sys.version_info >= (3, 11):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:  # rmtree takes dir_fd from Python 3.11 on
        _rmtree_at(dir_fd, name)


def _rmtree_at(parent_fd: int, name: str) -> None:
    """Remove directory ``name`` of ``parent_fd`` with its contents, following no link."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    try:
        for child in os.listdir(fd):
            if stat_mod.S_ISDIR(os.lstat(child, dir_fd=fd).st_mode):
                _rmtree_at(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def tmp_name() -> str:
    """A temporary name for a file, link or directory being written.

    Short whatever the target's name (a name may already be NAME_MAX bytes long); it names
    the writing process, so a later checkout removes what a killed one left.
    """
    return f".mlvc-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"


_TMP_NAME = re.compile(r"\.mlvc-([0-9]{1,10})-[0-9a-f]{12}\.tmp")


def sweep_temporary(dir_fd: int) -> None:
    """Remove the temporary files and directories a killed checkout left in a directory.

    Only entries named by :func:`tmp_name` whose process no longer runs on this host go (a
    directory with everything in it).
    """
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for name in names:
        m = _TMP_NAME.fullmatch(name)
        if m is not None and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                remove(dir_fd, name)


def put(dir_fd: int, tmp: str, name: str, force: bool = True) -> None:
    """Rename ``tmp`` over ``name`` (a link is replaced, never followed).

    Something in the way that a rename cannot replace (a directory, or a file where ``tmp``
    is a directory) is removed with its contents if ``force``, else a conflict.

    Raises:
        FileExistsConflict: Something appeared at ``name`` and ``force`` is false.
    """
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise
        if not force:  # appeared since the conflicts were looked for
            raise FileExistsConflict([name]) from None
        remove(dir_fd, name)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


class Dirs:
    """Directory descriptors along the current path, opened without following links.

    Directories that do not exist are created with their recorded mode (``| 0o700``, the
    umask on top): the first of a branch under a temporary name, renamed into place by
    :meth:`publish` (see the module's docstring); :meth:`is_new` says whether a directory
    was created by this checkout and is not yet visible under its name (its files may be
    created in place). ``root_new``: the root itself is such a directory (built aside by
    the caller, who renames it).
    """

    def __init__(
        self, root_fd: int, plan: dict[Parts, TreeEntry], force: bool, root_new: bool = False
    ) -> None:
        self._stack: list[tuple[Parts, int]] = [((), root_fd)]
        self._plan = plan
        self._force = force
        self._new: set[Parts] = {()} if root_new else set()
        self._aside: list[tuple[Parts, str]] = []
        """New directories under a temporary name: their path, the temporary name."""
        if not root_new:
            sweep_temporary(root_fd)

    def is_new(self, parts: Parts) -> bool:
        """Whether the directory at ``parts`` is this checkout's own, not yet published."""
        return parts in self._new

    def fd(self, parts: Parts) -> int:
        """A descriptor of the directory at ``parts``, created (mode as recorded) if needed."""
        while parts[: len(self._stack[-1][0])] != self._stack[-1][0]:
            self._leave(self._stack.pop()[1])
        while len(self._stack[-1][0]) < len(parts):
            here = parts[: len(self._stack[-1][0]) + 1]
            fd = self._open(self._stack[-1][1], here)
            self._stack.append((here, fd))
            if here not in self._new:
                sweep_temporary(fd)
        return self._stack[-1][1]

    def _leave(self, fd: int) -> None:
        os.close(fd)

    def _open(self, parent: int, here: Parts) -> int:
        name = here[-1]
        entry = self._plan.get(here)
        mode = (entry.mode if entry is not None and entry.kind == "dir" else 0o755) & 0o777
        if here[:-1] in self._new:  # below a directory nobody sees yet: its own name at once
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode | 0o700, dir_fd=parent)  # the umask applies on top
            self._new.add(here)
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if not self._force:  # appeared since the conflicts were looked for
                raise FileExistsConflict(["/".join(here)]) from None
            remove(parent, name)
        tmp = tmp_name()
        os.mkdir(tmp, mode | 0o700, dir_fd=parent)
        self._aside.append((here, tmp))
        self._new.add(here)
        return os.open(tmp, DIR_FLAGS, dir_fd=parent)

    def publish(self, refused_errnos: set[int]) -> list[tuple[Parts, int]]:
        """Rename every directory built aside to its name (once all below it is written).

        Returns ``(path, errno)`` of each directory whose name the file system refused
        (an errno in ``refused_errnos``): removed again with everything below it.

        Raises:
            FileExistsConflict: Something appeared at such a name meanwhile and ``force``
                is false (that directory is removed again).
        """
        refused: list[tuple[Parts, int]] = []
        while self._aside:
            here, tmp = self._aside[0]
            parent = self.fd(here[:-1])
            try:
                put(parent, tmp, here[-1], self._force)
            except FileExistsConflict:
                raise FileExistsConflict(["/".join(here)]) from None
            except OSError as exc:
                if exc.errno not in refused_errnos:
                    raise
                remove(parent, tmp)
                refused.append((here, exc.errno))
            self._aside.pop(0)
            self._new = {p for p in self._new if p[: len(here)] != here}
        return refused

    def discard(self) -> None:
        """Remove the directories built aside and not published (after a failure)."""
        self.close()
        for here, tmp in self._aside:
            with contextlib.suppress(OSError):
                remove(self.fd(here[:-1]), tmp)
        self._aside = []
        self.close()

    def close(self) -> None:
        """Close every descriptor but the root's."""
        while len(self._stack) > 1:
            os.close(self._stack.pop()[1])


class LaterDirs(Dirs):
    """:class:`Dirs` whose descriptors, once left, stay open until :meth:`release`.

    Files handed to worker threads are written through their directory's descriptor after
    the walk has moved on: a descriptor is closed only once no worker can still use it.
    """

    def __init__(
        self, root_fd: int, plan: dict[Parts, TreeEntry], force: bool, root_new: bool = False
    ) -> None:
        super().__init__(root_fd, plan, force, root_new)
        self.left: list[int] = []

    def _leave(self, fd: int) -> None:
        self.left.append(fd)

    def release(self) -> None:
        """Close the descriptors left behind (no worker may use them any more)."""
        fds, self.left = self.left, []
        for fd in fds:
            os.close(fd)

    def close(self) -> None:
        """Close every descriptor but the root's, those left behind too."""
        self.release()
        super().close()

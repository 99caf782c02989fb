"""Protecting a checkpoint's files in the caller's thread, before ``checkpoint()`` returns.

``copy=True``: each file is cloned or copied into a private copy directory
(:data:`~mlvc.tracking.copies.COPY_DIR` beside the file when that is inside the project, so a
clone is possible, else under the cache directory; never above the project root), within the
run's copy budget, the rest in the background without ever making a writer wait
(:mod:`mlvc.tracking.copies`), so the loop may overwrite it at once.
``copy=False``: only each file's identity (:func:`fingerprint`) is noted; the background thread
reads the files in place and drops the checkpoint if one changed. Copy directories left by dead
processes of this host are swept. Touches no repository.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlvc.errors import UsageError
from mlvc.settings import default_cache_dir
from mlvc.tracking.copies import COPY_DIR, CheckpointCopies, Copier
from mlvc.tracking.options import Paths
from mlvc_core.processes import pid_alive

__all__ = [
    "FileProtector",
    "ProtectedFiles",
    "disk_room",
    "fingerprint",
    "fingerprint_of",
    "remove_copy_dirs",
    "size_of",
    "sweep_copy_dirs",
]

MIN_FREE_DISK = 0.01
"""A backlog of checkpoints (storage not answering) never leaves less than this fraction of
the local disk free (and never less than 1 GB): further checkpoints are dropped instead.
One percent, not more: a large disk that is 95% full still has room for many checkpoints, and
dropping them there would lose what the user asked to keep."""

Fingerprint = tuple[int, ...]


def fingerprint_of(path: str) -> Fingerprint | None:
    """A file's identity (size, mtime, inode, ctime), or None if it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def fingerprint(
    src: Path, skip: frozenset[tuple[int, int]] = frozenset()
) -> dict[str, Fingerprint]:
    """Identity (size, mtime, inode, ctime) of a file or of every file under a directory.

    Directories whose ``(st_dev, st_ino)`` is in ``skip`` are left out with what they hold.
    """
    if not src.is_dir() or src.is_symlink():
        fp = fingerprint_of(str(src))
        return {str(src): fp} if fp is not None else {}
    out: dict[str, Fingerprint] = {}
    for dirpath, dirs, files in os.walk(src):
        if skip:
            dirs[:] = [d for d in dirs if _dir_id(os.path.join(dirpath, d)) not in skip]
        for name in files:
            full = os.path.join(dirpath, name)
            fp = fingerprint_of(full)
            if fp is not None:
                out[full] = fp
    return out


def _dir_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def size_of(paths: Paths) -> int:
    """Bytes of the files named (directories walked); 0 for what cannot be read."""
    if paths is None:
        return 0
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    total = 0
    for p in items:
        for fp in fingerprint(Path(p)).values():
            total += fp[0]
    return total


def disk_room(where: Path, size: int) -> bool:
    """True if ``size`` more bytes of backlog leave enough of the local disk free."""
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return True
    return usage.free - 2 * size > max(MIN_FREE_DISK * usage.total, 1e9)


def sweep_copy_dirs(root: Path) -> None:
    """Remove copy directories left by dead processes of this host (killed mid-copy)."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    host = socket.gethostname()
    for name in names:
        owner, _, rest = name.rpartition("-")
        owner_host, _, pid = owner.rpartition("-")
        if owner_host == host and pid.isdigit() and rest and not pid_alive(int(pid)):
            shutil.rmtree(root / name, ignore_errors=True)


def remove_copy_dirs(dirs: list[Path]) -> None:
    """Remove a checkpoint's copy directories (and the shared parent, once empty)."""
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            d.parent.rmdir()


@dataclass
class ProtectedFiles:
    """A checkpoint's files as protected for the background thread.

    Attributes:
        items: ``(path in the tree, file to read)`` per file or directory given.
        copy_dirs: The private copy directories to remove once the checkpoint is stored.
        fingerprints: Identity of each file read in place (``copy=False``).
        copies: The files' copies (``copy=True``), some maybe still going on.
    """

    items: list[tuple[str, Path]] = field(default_factory=list)
    copy_dirs: list[Path] = field(default_factory=list)
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    copies: CheckpointCopies | None = None


class FileProtector:
    """Protects the files of a run's checkpoints; owns the run's copier.

    Args:
        code_dir: The code directory (tree paths are relative to it first).
        cwd: The run's working directory (tree paths are relative to it next).
        cache_dir: Where copies go when they cannot go beside the file inside the project
            (None: the default cache directory).
        copy_budget: Seconds one ``checkpoint()`` call may spend copying before the rest of
            its files are copied in the background (None: no limit).
        skip_dirs: Directories never copied from inside a checkpoint's directory (the
            repository when local, the cache directory), as a commit never records them.
    """

    def __init__(
        self,
        code_dir: Path,
        cwd: Path,
        cache_dir: Path | None,
        copy_budget: float | None,
        skip_dirs: Sequence[Path] = (),
    ) -> None:
        self.code_dir = code_dir
        self.cwd = cwd
        self.cache_dir = cache_dir
        self.copy_budget = copy_budget
        self.skip_dirs = list(skip_dirs)
        self.copier: Copier | None = None
        """The run's copier, made by the first ``copy=True`` checkpoint."""
        self._swept: set[Path] = set()

    def tree_path(self, src: Path) -> str:
        """A checkpoint file's path in the tree.

        Relative to the code directory, else to the working directory, else its base name at
        the root.
        """
        absolute = Path(os.path.abspath(src))
        for base in (self.code_dir, self.cwd):
            try:
                rel = absolute.relative_to(base).as_posix()
            except ValueError:
                continue
            if rel not in ("", "."):
                return rel
        return absolute.name

    def _skipped(self) -> frozenset[tuple[int, int]]:
        """``(st_dev, st_ino)`` of the directories never copied (those that exist now)."""
        ids = set()
        for d in self.skip_dirs:
            with contextlib.suppress(OSError):
                st = os.stat(d)
                ids.add((st.st_dev, st.st_ino))
        return frozenset(ids)

    def _in_project(self, directory: Path) -> bool:
        """Whether ``directory`` is the code or working directory, or lies under one."""
        return any(directory == base or base in directory.parents for base in self._roots())

    def _roots(self) -> list[Path]:
        return [Path(os.path.abspath(base)) for base in (self.code_dir, self.cwd)]

    def _copy_dir(self, near: Path, cache_first: bool = False) -> Path:
        """A new private copy directory in directory ``near``, else under the cache directory.

        In ``near`` (so a clone is possible) only when that is inside the project, never above
        the project root (a checkpoint of ``.`` or of a file elsewhere is not copied into a
        directory the user never gave). ``cache_first``: under the cache directory first (never
        read by a checkpoint of a project directory, which leaves the cache out).
        """
        unique = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        near = Path(os.path.abspath(near))
        staging = (self.cache_dir or default_cache_dir()) / "staging"
        candidates = [near / COPY_DIR] if self._in_project(near) else []
        candidates.insert(0 if cache_first else len(candidates), staging)
        last: OSError | None = None
        for root in candidates:
            if root not in self._swept:
                self._swept.add(root)
                sweep_copy_dirs(root)
            try:
                (root / unique).mkdir(parents=True)
                return root / unique
            except OSError as exc:
                last = exc
        assert last is not None
        raise last

    def protect(self, paths: Paths, copy: bool) -> ProtectedFiles:
        """Copy (``copy``), else fingerprint, the files of one checkpoint.

        Returns once every file is copied, or once the copy budget is spent with the rest
        going on in the background (see :mod:`mlvc.tracking.copies`).

        Raises:
            FileNotFoundError: A path does not exist.
            UsageError: The same path given twice.
            OSError: A file could not be opened or copied.
        """
        out = ProtectedFiles()
        if paths is None:
            return out
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if copy and self.copier is None:
            self.copier = Copier()
        copies = None
        skip = self._skipped()
        if self.copier is not None and copy:
            copies = out.copies = CheckpointCopies(self.copier, self.copy_budget)
        try:
            for p in paths:
                src = Path(p)
                if not src.exists():
                    raise FileNotFoundError(
                        errno.ENOENT, "checkpoint path does not exist", str(src)
                    )
                rel = self.tree_path(src)
                if any(r == rel for r, _ in out.items):
                    raise UsageError(f"checkpoint path given twice: {rel}")
                if copies is None:
                    src = src.absolute()
                    out.fingerprints.update(fingerprint(src, skip))
                    out.items.append((rel, src))
                    continue
                d = self._copy_dir(Path(os.path.abspath(src)).parent)
                out.copy_dirs.append(d)
                dst = d / Path(os.path.abspath(src)).name
                copies.copy(src, dst, skip)
                out.items.append((rel, dst))
        except BaseException:
            if copies is not None:
                copies.cancel()
            remove_copy_dirs(out.copy_dirs)
            raise
        return out

    def copy_tree(self, root: Path, exclude: Callable[[str], bool]) -> tuple[Path, list[str]]:
        """Copy the directory ``root``, less what ``exclude`` names, whole before returning.

        The copy goes into a private copy directory under the cache directory, else inside
        ``root`` (left out of every snapshot); remove it with :func:`remove_copy_dirs`
        on the returned path's parent.

        Returns:
            The copy of ``root``, and the paths (relative to ``root``) of the files that
            could not be copied or changed while copied: they are not in the copy.

        Raises:
            OSError: The copy directory could not be made.
        """
        if self.copier is None:
            self.copier = Copier()
        copies = CheckpointCopies(self.copier, None)
        d = self._copy_dir(Path(os.path.abspath(root)), cache_first=True)
        dst = d / "code"
        failed: list[str] = []
        try:
            copies.copy(root, dst, self._skipped(), exclude)
        except shutil.Error as exc:  # per-file failures, the rest is copied
            for src, copied, _why in exc.args[0]:
                failed.append(os.path.relpath(src, root))
                with contextlib.suppress(OSError):
                    os.unlink(copied)  # partial
        except BaseException:
            copies.cancel()
            remove_copy_dirs([d])
            raise
        for bad in copies.wait():
            failed.append(os.path.relpath(bad.src, root))
            with contextlib.suppress(OSError):
                os.unlink(bad.dst)
        return dst, failed

    def close(self) -> None:
        """Stop the copier (after the worker: every copy it waited for is made)."""
        if self.copier is not None:
            self.copier.close()

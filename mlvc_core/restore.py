"""Restore: trees -> files on disk (or streams), verified and confined to the target directory.

Guarantees (tests guard each):

* nothing outside ``dest`` is written and nothing is written through a link: every directory
  is opened component by component with ``O_NOFOLLOW`` from a descriptor of ``dest``, and files,
  directories and links are created relative to those descriptors (``openat``, ``mkdirat``,
  ``symlinkat``, ``renameat``), so no link, planted in ``dest`` or restored from the tree, is
  ever traversed by a write;
* no link is created whose target resolves outside ``dest``: targets are resolved the way the
  kernel will, component by component, through the links of the tree and those already on
  disk (:func:`link_escapes`); such a link, and any entry this system cannot name, is skipped
  with a warning while the rest of the snapshot is restored; links are created last;
* conflicts are all found before the first byte is written: a file, directory or link in
  the way of a different entry is a conflict (:class:`FileExistsConflict`, listing every
  one) unless ``force``, which replaces each kind; an existing file with exactly the content
  checkout would write (or a link with the same target) is left alone and is no conflict;
* modes never widen: files and directories are created with their recorded permission bits
  and the process's umask applies on top (``0600`` stays ``0600``);
* zero runs become holes again: an all-zero chunk is seeked over, not written;
* each file is streamed chunk by chunk (read and verified on worker threads, a bounded number
  in flight) into a temporary name beside its target, then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import stat as stat_mod
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

from mlvc_core.errors import FileExistsConflict, IntegrityError, UsageError
from mlvc_core.ids import ObjectId, to_hex
from mlvc_core.objects import Manifest, TreeEntry
from mlvc_core.plan import (
    Disk,
    Parts,
    find_conflicts,
    link_escapes,
    name_refused_here,
    plan_checkout,
)
from mlvc_core.processes import pid_alive
from mlvc_core.repository import Repository, default_workers
from mlvc_core.session import ProgressFn

log = logging.getLogger(__name__)

SkipFn = Callable[[str, str], None]
"""Called with ``(relative path, reason)`` for each entry left out of a checkout."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NAME_ERRNOS = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL}
"""Errors by which a file system refuses a name (too long, not in its encoding)."""


_ZEROS = bytes(4 << 20)


def _is_zero(data: bytes | memoryview) -> bool:
    """Whether a chunk is all zero bytes (a memcmp, stopping at the first other byte)."""
    if len(data) <= len(_ZEROS):
        return _ZEROS.startswith(data)
    return bytes(data).count(0) == len(data)


def _remove(dir_fd: int, name: str) -> None:
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
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        for child in os.listdir(fd):
            if stat_mod.S_ISDIR(os.lstat(child, dir_fd=fd).st_mode):
                _rmtree_at(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _tmp_name() -> str:
    # Short whatever the target's name (a name may already be NAME_MAX bytes long); it names
    # the writing process, so a later checkout removes what a killed one left.
    return f".mlvc-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"


_TMP_NAME = re.compile(r"\.mlvc-([0-9]{1,10})-[0-9a-f]{12}\.tmp")


def sweep_temporary(dir_fd: int) -> None:
    """Remove the temporary files a killed checkout left in a directory it was writing.

    Only files named by :func:`_tmp_name` whose process no longer runs on this host go.
    """
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for name in names:
        m = _TMP_NAME.fullmatch(name)
        if m is not None and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)


class _Dirs:
    """Directory descriptors along the current path, opened without following links."""

    def __init__(self, root_fd: int, plan: dict[Parts, TreeEntry], force: bool) -> None:
        self._stack: list[tuple[Parts, int]] = [((), root_fd)]
        self._plan = plan
        self._force = force
        sweep_temporary(root_fd)

    def fd(self, parts: Parts) -> int:
        """A descriptor of the directory at ``parts``, created (mode as recorded) if needed."""
        while parts[: len(self._stack[-1][0])] != self._stack[-1][0]:
            os.close(self._stack.pop()[1])
        while len(self._stack[-1][0]) < len(parts):
            here = parts[: len(self._stack[-1][0]) + 1]
            fd = self._open(self._stack[-1][1], here)
            self._stack.append((here, fd))
            sweep_temporary(fd)
        return self._stack[-1][1]

    def _open(self, parent: int, here: Parts) -> int:
        name = here[-1]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            if not self._force:  # appeared since the conflicts were looked for
                raise FileExistsConflict(["/".join(here)]) from None
            _remove(parent, name)
        entry = self._plan.get(here)
        mode = (entry.mode if entry is not None and entry.kind == "dir" else 0o755) & 0o777
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode | 0o700, dir_fd=parent)  # the umask applies on top
        return os.open(name, _DIR_FLAGS, dir_fd=parent)

    def close(self) -> None:
        """Close every descriptor but the root's."""
        while len(self._stack) > 1:
            os.close(self._stack.pop()[1])


class _LaterDirs(_Dirs):
    """:class:`_Dirs` whose descriptors, once left, stay open until :meth:`release`.

    Files handed to worker threads are written through their directory's descriptor after
    the walk has moved on: a descriptor is closed only once no worker can still use it.
    """

    def __init__(self, root_fd: int, plan: dict[Parts, TreeEntry], force: bool) -> None:
        super().__init__(root_fd, plan, force)
        self.left: list[int] = []

    def fd(self, parts: Parts) -> int:
        """As :meth:`_Dirs.fd`; descriptors left behind wait in :attr:`left`."""
        while parts[: len(self._stack[-1][0])] != self._stack[-1][0]:
            self.left.append(self._stack.pop()[1])
        return super().fd(parts)

    def release(self) -> None:
        """Close the descriptors left behind (no worker may use them any more)."""
        fds, self.left = self.left, []
        for fd in fds:
            os.close(fd)

    def close(self) -> None:
        """Close every descriptor but the root's, those left behind too."""
        self.release()
        super().close()


def _put(dir_fd: int, tmp: str, name: str, force: bool = True) -> None:
    """Rename ``tmp`` over ``name`` (a link is replaced, never followed).

    A directory in the way is removed with its contents if ``force``, else a conflict.
    """
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise
        if not force:  # appeared since the conflicts were looked for
            raise FileExistsConflict([name]) from None
        _remove(dir_fd, name)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def write_file(
    repo: Repository,
    manifest: Manifest,
    target: Path | tuple[int, str],
    mode: int,
    progress: ProgressFn | None = None,
    force: bool = True,
    chunks: Iterable[bytes] | None = None,
) -> None:
    """Stream a manifest's chunks into ``target`` (a temporary file, then a rename).

    Args:
        repo: Where the chunks are.
        manifest: The file.
        target: A path, or ``(directory descriptor, name)``.
        mode: Permission bits; the umask applies on top (never set wider).
        progress: Called with bytes restored (holes included).
        force: Replace a directory in the way (else :class:`FileExistsConflict`).
        chunks: The manifest's chunks, already read and verified (by a caller that read
            several files' chunks together); by default they are read ahead on the worker
            threads.
    """
    if isinstance(target, tuple):
        dir_fd, name = target
    else:
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        name = target.name
    tmp = _tmp_name()
    try:
        fd = os.open(tmp, _NEW_FILE_FLAGS, mode & 0o777, dir_fd=dir_fd)
        try:
            try:
                if chunks is None:
                    chunks = repo.read_chunks(cid for cid, _ in manifest.chunks)
                pos = end = 0  # where the next chunk goes; the end of the bytes written
                for (cid, length), data in zip(manifest.chunks, chunks, strict=True):
                    if len(data) != length:  # the manifest and the chunk disagree: write neither
                        raise IntegrityError(
                            to_hex(cid), f"{len(data)} bytes, its manifest says {length}"
                        )
                    if _is_zero(data):
                        os.lseek(fd, len(data), os.SEEK_CUR)  # a hole
                    else:
                        _write_all(fd, data)
                        end = pos + len(data)
                    pos += len(data)
                    if progress is not None:
                        progress(len(data))
                if end != manifest.size:  # a hole at the end (a seek alone writes nothing)
                    os.ftruncate(fd, manifest.size)
            finally:
                os.close(fd)
            _put(dir_fd, tmp, name, force)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        if not isinstance(target, tuple):
            os.close(dir_fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` at the descriptor's position."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _make_link(dir_fd: int, name: str, target: str, force: bool) -> None:
    tmp = _tmp_name()
    os.symlink(target, tmp, dir_fd=dir_fd)
    try:
        _put(dir_fd, tmp, name, force)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def restore_tree(
    repo: Repository,
    tree_id: ObjectId,
    dest: Path,
    paths: Iterable[str] | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    on_skip: SkipFn | None = None,
) -> list[str]:
    """Write the files of a tree under ``dest``; return the relative paths written.

    Entries that cannot be restored here without leaving ``dest`` (a link leading out of it,
    an absolute link) or that this system cannot name are skipped: ``on_skip(path, reason)``
    is called for each (by default a logged warning) and the rest is restored. Files and
    links already exactly as the snapshot has them are left alone and not listed.

    Args:
        repo: The repository.
        tree_id: The root tree.
        dest: Directory to write into (created if needed).
        paths: Only these files or directories of the tree.
        force: Replace whatever is in the way (files, directories, links).
        progress: Called with bytes restored.
        on_skip: Called with ``(relative path, reason)`` for each entry skipped.

    Raises:
        FileExistsConflict: Paths are in the way and ``force`` is false (nothing written).
        UsageError: A requested path is not in the tree, or ``dest`` is not a directory.
    """
    plan = plan_checkout(repo, tree_id, paths)
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{dest} exists and is not a directory") from None
    except NotADirectoryError:
        raise UsageError(f"{dest}: a part of this path is a file, not a directory") from None
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        return _restore(repo, plan, root_fd, str(dest), force, progress, on_skip)
    finally:
        os.close(root_fd)


def checkout(
    repo: Repository,
    rev: str | ObjectId,
    dest: str | os.PathLike[str],
    paths: Iterable[str] | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> list[str]:
    """Restore a commit's files into ``dest`` (see :func:`restore_tree`).

    Args:
        repo: The repository.
        rev: A commit id, a unique hex prefix of one, or a full ref name (``heads/main``).
        dest: Directory to write into (created if needed).
        paths: Only these files or directories of the snapshot.
        force: Replace whatever is in the way.
        progress: Called with bytes restored.

    Returns:
        The relative paths written.

    Raises:
        FileExistsConflict: Existing files would be overwritten and ``force`` is false.
        UnsafePath: The tree names something outside ``dest``.
        ObjectNotFound: ``rev`` names no commit.
    """
    commit = repo.read_commit(repo.resolve(rev))
    return restore_tree(repo, commit.tree, Path(dest), paths=paths, force=force, progress=progress)


def _restore(
    repo: Repository,
    plan: dict[Parts, TreeEntry],
    root_fd: int,
    root: str,
    force: bool,
    progress: ProgressFn | None,
    on_skip: SkipFn | None,
) -> list[str]:
    def skip(parts: Parts, reason: str) -> None:
        rel = "/".join(parts)
        if on_skip is not None:
            on_skip(rel, reason)
        else:
            log.warning("mlvc: skipped %s: %s", rel, reason)

    disk = Disk(root)
    own = repo.own_directories()
    skipped: set[Parts] = set()
    for parts, e in plan.items():
        if any(parts[:i] in skipped for i in range(1, len(parts))):
            skipped.add(parts)
            continue
        st = disk.lstat(parts)
        if st is not None and stat_mod.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) in own:
            skip(parts, "it is the repository this checkout reads (or its cache)")
            skipped.add(parts)
            continue
        why = name_refused_here(parts[-1])
        if why is None and e.kind == "link":
            why = link_escapes(parts, e.target or "", plan, disk)
        if why is not None:
            skip(parts, why)
            skipped.add(parts)
    conflicts, same = find_conflicts(repo, plan, disk, skipped)
    if conflicts and not force:
        raise FileExistsConflict(list(conflicts), list(conflicts.values()))

    written: list[tuple[int, str]] = []  # (position in the plan, path): sorted at the end
    links: list[tuple[Parts, TreeEntry]] = []
    dirs = _LaterDirs(root_fd, plan, force)
    batch: list[_Job] = []
    batch_bytes = 0
    inflight: deque[Future[list[_Done]]] = deque()
    window = 2 * default_workers()

    def collect() -> None:
        for i, parts, size, why in inflight.popleft().result():
            if why is not None:
                skip(parts, why)
                skipped.add(parts)
                continue
            written.append((i, "/".join(parts)))
            if progress is not None:
                progress(size)

    def send() -> None:
        nonlocal batch, batch_bytes
        inflight.append(repo.pool.submit(_write_batch, repo, batch, force))
        batch, batch_bytes = [], 0
        while len(inflight) > window:
            collect()
        if len(dirs.left) > _MAX_LEFT:  # every descriptor left behind is sent: wait, close
            while inflight:
                collect()
            dirs.release()

    try:
        for pos, (parts, e) in enumerate(plan.items()):
            if any(parts[:i] in skipped for i in range(1, len(parts) + 1)):
                continue
            if parts in same:
                if progress is not None and e.kind == "file":
                    progress(e.size)
                continue
            try:
                if e.kind == "dir":
                    dirs.fd(parts)
                elif e.kind == "link":
                    links.append((parts, e))  # last: nothing is ever written below a new link
                elif e.size <= _BATCH_FILE:
                    # Small files go to the worker threads in batches: a thread hand-off per
                    # file would cost more than writing it.
                    assert e.oid is not None
                    batch.append((pos, parts, dirs.fd(parts[:-1]), e.oid, e.mode))
                    batch_bytes += e.size
                    if len(batch) >= _BATCH_FILES or batch_bytes >= _BATCH_BYTES:
                        send()
                else:
                    assert e.oid is not None
                    target = (dirs.fd(parts[:-1]), parts[-1])
                    manifest = repo.read_manifest(e.oid)
                    write_file(repo, manifest, target, e.mode, progress, force)
                    written.append((pos, "/".join(parts)))
            except OSError as exc:
                if exc.errno not in _NAME_ERRNOS or isinstance(exc, FileExistsConflict):
                    raise
                skip(parts, f"this file system refuses its name ({os.strerror(exc.errno)})")
                skipped.add(parts)
        if batch:
            send()
        while inflight:
            collect()
        for parts, e in links:
            if any(parts[:i] in skipped for i in range(1, len(parts))):
                continue
            try:
                _make_link(dirs.fd(parts[:-1]), parts[-1], e.target or "", force)
                written.append((len(plan), "/".join(parts)))
            except OSError as exc:
                if exc.errno not in _NAME_ERRNOS or isinstance(exc, FileExistsConflict):
                    raise
                skip(parts, f"this file system refuses its name ({os.strerror(exc.errno)})")
    finally:
        for f in inflight:  # let no worker write through a descriptor about to be closed
            with contextlib.suppress(BaseException):
                f.result()
        dirs.close()
    return [rel for _, rel in written]


_Job = tuple[int, Parts, int, ObjectId, int]
"""A small file for a worker: position in the plan, path, directory descriptor, manifest, mode."""
_Done = tuple[int, Parts, int, "str | None"]
"""A worker's answer for one file: position, path, bytes, why it was skipped (None: written)."""
_BATCH_FILE = 1 << 20
"""Files up to this size are written by worker threads, many to a task."""
_BATCH_FILES = 64
_BATCH_BYTES = 8 << 20
_MAX_LEFT = 64
"""Directory descriptors kept open for workers before the walk waits to close them."""


def _write_batch(repo: Repository, jobs: list[_Job], force: bool) -> list[_Done]:
    """Worker: write a batch of small files, read and verified on this thread.

    Memory: the batch's chunks (at most :data:`_BATCH_BYTES` plus one file).
    """
    repo.prefetch_objects(oid for _, _, _, oid, _ in jobs)  # adjacent manifests: one read
    manifests = [repo.read_manifest(oid) for _, _, _, oid, _ in jobs]
    # The batch's chunks were stored one after another: read them in runs, one read each.
    ids = (cid for m in manifests for cid, _ in m.chunks)
    data = iter([d for run in repo.chunk_runs(ids) for d in repo.read_run(run)])
    done: list[_Done] = []
    for (i, parts, dir_fd, _, mode), manifest in zip(jobs, manifests, strict=True):
        mine = [next(data) for _ in manifest.chunks]
        try:
            write_file(repo, manifest, (dir_fd, parts[-1]), mode, None, force, mine)
        except OSError as exc:
            if exc.errno not in _NAME_ERRNOS or isinstance(exc, FileExistsConflict):
                raise
            why = f"this file system refuses its name ({os.strerror(exc.errno)})"
            done.append((i, parts, 0, why))
            continue
        done.append((i, parts, manifest.size, None))
    return done

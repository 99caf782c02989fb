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
  in flight) into a temporary name beside its target, then renamed into place; in a directory
  this checkout creates, which is built under a temporary name and renamed into place once
  complete (:mod:`mlvc_core.targets`; a target directory that does not exist yet is too), files
  are created in place: a killed checkout leaves no torn file under a real name either way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_mod
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
from mlvc_core.repository import Repository, default_workers
from mlvc_core.session import ProgressFn
from mlvc_core.targets import DIR_FLAGS, LaterDirs, put, remove, sweep_temporary, tmp_name

log = logging.getLogger(__name__)

SkipFn = Callable[[str, str], None]
"""Called with ``(relative path, reason)`` for each entry left out of a checkout."""

_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NAME_ERRNOS = {errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL}
"""Errors by which a file system refuses a name (too long, not in its encoding)."""


_ZEROS = bytes(4 << 20)


def _is_zero(data: bytes | memoryview) -> bool:
    """Whether a chunk is all zero bytes (a memcmp, stopping at the first other byte)."""
    if len(data) <= len(_ZEROS):
        return _ZEROS.startswith(data)
    return bytes(data).count(0) == len(data)


def write_file(
    repo: Repository,
    manifest: Manifest,
    target: Path | tuple[int, str],
    mode: int,
    progress: ProgressFn | None = None,
    force: bool = True,
    chunks: Iterable[bytes] | None = None,
    in_place: bool = False,
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
        in_place: Create ``target`` itself (it must not exist; no temporary name): for a
            directory nobody sees yet (:meth:`mlvc_core.targets.Dirs.is_new`). A failure
            removes what was written.
    """
    if isinstance(target, tuple):
        dir_fd, name = target
    else:
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        name = target.name
    tmp = name if in_place else tmp_name()
    try:
        fd = os.open(tmp, _NEW_FILE_FLAGS, mode & 0o777, dir_fd=dir_fd)
        try:
            try:
                # Each chunk is written before the next is decoded over it.
                ids = (cid for cid, _ in manifest.chunks)
                data = repo.stream_chunks(ids) if chunks is None else chunks
                _write_chunks(fd, manifest, data, progress)
            finally:
                os.close(fd)
            if not in_place:
                put(dir_fd, tmp, name, force)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        if not isinstance(target, tuple):
            os.close(dir_fd)


def _write_chunks(
    fd: int,
    manifest: Manifest,
    chunks: Iterable[bytes | memoryview],
    progress: ProgressFn | None,
) -> None:
    """Write a manifest's chunks (checked against its lengths) at ``fd``; zero runs as holes."""
    pos = end = 0  # where the next chunk goes; the end of the bytes written
    for (cid, length), data in zip(manifest.chunks, chunks, strict=True):
        if len(data) != length:  # the manifest and the chunk disagree: write neither
            raise IntegrityError(to_hex(cid), f"{len(data)} bytes, its manifest says {length}")
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


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` at the descriptor's position."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _make_link(dir_fd: int, name: str, target: str, force: bool) -> None:
    tmp = tmp_name()
    os.symlink(target, tmp, dir_fd=dir_fd)
    try:
        put(dir_fd, tmp, name, force)
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
    fresh = not os.path.lexists(dest) and dest.name not in ("", ".", "..")
    made = dest.parent if fresh else dest
    try:
        made.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        where = "" if made == dest else f"{dest}: "
        raise UsageError(f"{where}{made} exists and is not a directory") from None
    except NotADirectoryError:
        raise UsageError(f"{dest}: a part of this path is a file, not a directory") from None
    if fresh:
        return _restore_fresh(repo, plan, dest, force, progress, on_skip)
    root_fd = os.open(dest, _ROOT_FLAGS)
    try:
        return _restore(repo, plan, root_fd, str(dest), force, progress, on_skip)
    finally:
        os.close(root_fd)


_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


def _restore_fresh(
    repo: Repository,
    plan: dict[Parts, TreeEntry],
    dest: Path,
    force: bool,
    progress: ProgressFn | None,
    on_skip: SkipFn | None,
) -> list[str]:
    """:func:`_restore` into a ``dest`` that does not exist yet: built aside, then renamed.

    The new directory is made under a temporary name beside ``dest`` (what a killed checkout
    left there is removed first), every file created in it in place, and it is renamed to
    ``dest`` once complete; on failure it is removed.

    Raises:
        FileExistsConflict: Something but an empty directory appeared at ``dest`` meanwhile.
    """
    parent_fd = os.open(dest.parent, _ROOT_FLAGS)
    try:
        sweep_temporary(parent_fd)
        tmp = tmp_name()
        try:
            os.mkdir(tmp, 0o777, dir_fd=parent_fd)  # as mkdir(1): the umask applies
        except OSError as exc:  # say where the user asked for, not the temporary name
            raise OSError(exc.errno, exc.strerror, str(dest)) from None
        try:
            root_fd = os.open(tmp, DIR_FLAGS, dir_fd=parent_fd)
            try:
                written = _restore(repo, plan, root_fd, str(dest), force, progress, on_skip, True)
            finally:
                os.close(root_fd)
            put(parent_fd, tmp, dest.name, force=False)
        except BaseException:
            with contextlib.suppress(OSError):
                remove(parent_fd, tmp)
            raise
        return written
    finally:
        os.close(parent_fd)


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
    root_new: bool = False,
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
    dirs = LaterDirs(root_fd, plan, force, root_new)
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
                    dir_fd = dirs.fd(parts[:-1])
                    new = dirs.is_new(parts[:-1])
                    batch.append((pos, parts, dir_fd, e.oid, e.mode, new))
                    batch_bytes += e.size
                    if len(batch) >= _BATCH_FILES or batch_bytes >= _BATCH_BYTES:
                        send()
                else:
                    assert e.oid is not None
                    target = (dirs.fd(parts[:-1]), parts[-1])
                    manifest = repo.read_manifest(e.oid)
                    new = dirs.is_new(parts[:-1])
                    write_file(repo, manifest, target, e.mode, progress, force, in_place=new)
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
        refused = dirs.publish(_NAME_ERRNOS)  # complete: new directories take their names
        for parts, errno_ in refused:
            skip(parts, f"this file system refuses its name ({os.strerror(errno_)})")
            skipped.add(parts)
        if refused:
            written = [(i, r) for i, r in written if not _below(r, skipped)]
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
        dirs.discard()  # new directories not published (a failure): removed
    return [rel for _, rel in written]


def _below(rel: str, dirs: set[Parts]) -> bool:
    """Whether the path ``rel`` is inside one of ``dirs``."""
    parts = tuple(rel.split("/"))
    return any(parts[:i] in dirs for i in range(1, len(parts)))


_Job = tuple[int, Parts, int, ObjectId, int, bool]
"""A small file for a worker: position in the plan, path, directory descriptor, manifest, mode,
whether to create it in place (its directory is new)."""
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
    repo.prefetch_objects(job[3] for job in jobs)  # adjacent manifests: one read
    manifests = [repo.read_manifest(job[3]) for job in jobs]
    # The batch's chunks were stored one after another: read them in runs, one read each.
    ids = (cid for m in manifests for cid, _ in m.chunks)
    data = iter([d for run in repo.chunk_runs(ids) for d in repo.read_run(run)])
    done: list[_Done] = []
    for (i, parts, dir_fd, _, mode, new), manifest in zip(jobs, manifests, strict=True):
        mine = [next(data) for _ in manifest.chunks]
        try:
            write_file(repo, manifest, (dir_fd, parts[-1]), mode, None, force, mine, new)
        except OSError as exc:
            if exc.errno not in _NAME_ERRNOS or isinstance(exc, FileExistsConflict):
                raise
            why = f"this file system refuses its name ({os.strerror(exc.errno)})"
            done.append((i, parts, 0, why))
            continue
        done.append((i, parts, manifest.size, None))
    return done

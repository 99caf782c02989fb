"""Ingest: files and directories -> manifests -> trees, streaming.

:class:`TreeBuilder` walks a directory, skips files the stat cache or a parent commit says
are unchanged, reads small files in batches on worker threads and hands each larger file to a
:class:`~mlvc_core.manifests.FileIngester` (the chunking pipeline of one file, see
:mod:`mlvc_core.manifests`). A file that changes while it is read is waited for and read
again (:meth:`TreeBuilder.read`). :func:`ingest_paths` turns a list of paths into one root
tree. Nothing here moves a ref.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat as stat_mod
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from mlvc_core import readers
from mlvc_core.chunker import MiB
from mlvc_core.errors import FileChanged, MlvcError, UsageError
from mlvc_core.ids import ObjectId
from mlvc_core.manifests import SMALL_FILE, FileIngester, TooLarge
from mlvc_core.objects import Manifest, Tree, TreeEntry, check_name
from mlvc_core.readers import AGAIN, Read, Readers, settled, stamp
from mlvc_core.repository import default_workers
from mlvc_core.session import WriteSession
from mlvc_core.trees import find_previous_version

if TYPE_CHECKING:
    from mlvc_core.statcache import StatCache  # sqlite3: imported only where a cache is used

log = logging.getLogger(__name__)

PATIENCE_S = 60.0
"""How long a file that changed while it was read is waited for (see :meth:`TreeBuilder.read`)."""
_QUIET_S = 0.5
"""How long a changed file must stay unchanged before it is read again."""
_POLL_S = 0.05

ExcludeFn = Callable[[str], bool]


def _quiet(fd: int, deadline: float) -> bool:
    """Wait until the file stays unchanged for :data:`_QUIET_S`; False at ``deadline``."""
    last = stamp(os.fstat(fd))
    since = time.monotonic()
    while time.monotonic() - since < _QUIET_S:
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
        now = stamp(os.fstat(fd))
        if now != last:
            last, since = now, time.monotonic()
    return True


def _cache_key(path: Path) -> str:
    """The stat cache's key for a file: its absolute path (see :func:`_key_of`)."""
    return _key_of(str(path.absolute()))


def _key_of(key: str) -> str:
    """The stat cache's key for an absolute path.

    A path that is not UTF-8 cannot be stored as SQLite text; it becomes ``hex:`` and its
    bytes in hex, which no absolute path (starting with ``/``) can collide with.
    """
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "hex:" + os.fsencode(key).hex()
    return key


def _is_excluded(exclude: ExcludeFn | None, rel: str) -> bool:
    return exclude is not None and exclude(rel)


_PREFETCH = 1024
"""Stat-cache hits whose manifests are read together (well under the object cache's size)."""


class TreeBuilder:
    """Walks directories into trees, honouring an exclude predicate and a stat cache.

    The repository being written to and its local cache are never walked into.
    """

    def __init__(
        self,
        session: WriteSession,
        exclude: ExcludeFn | None = None,
        stat_cache: StatCache | None = None,
        guide: ObjectId | None = None,
        on_changed: Callable[[str, FileChanged], None] | None = None,
        patience_s: float | None = None,
    ) -> None:
        """Set up a walk.

        Args:
            session: Where to store.
            exclude: Predicate on ``/``-separated relative paths to leave out.
            stat_cache: Skips files whose size, mtime, inode and ctime are unchanged.
            guide: The tree of a previous version (the parent commit's): a changed or
                touched file whose path it holds is verified chunk by chunk against that
                version before anything is cut (see :meth:`FileIngester.ingest`).
            on_changed: A file that kept changing while it was read (see :meth:`read`) is
                left out of the tree and this is called with its relative path and the
                error; without it, the error is raised.
            patience_s: How long to wait for such a file to stop changing (default
                :data:`PATIENCE_S`).
        """
        self.session = session
        self.exclude = exclude
        self.stat_cache = stat_cache
        self._files = FileIngester(session)
        self._local = threading.local()  # a worker thread's own FileIngester
        self._guide = guide
        self.on_changed = on_changed
        self.patience_s = PATIENCE_S if patience_s is None else patience_s
        self.own_dirs = session.repo.own_directories()
        """Directories never snapshotted: the repository being written to, its local cache."""
        self.readers = Readers(readers.default_workers())
        """Reader processes, started once a walk has queued enough small files to read."""

    def __enter__(self) -> TreeBuilder:
        """Start a walk: reader processes started during it live until the outermost ends."""
        self.readers.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        """End a walk; the outermost stops the reader processes, if any were started."""
        self.readers.__exit__()

    def guide_for(self, rel: str, previous: ObjectId | None = None) -> Manifest | None:
        """The previous version of the file at ``rel``, if one is known and readable.

        ``previous`` (a manifest id, from the stat cache) comes first, then the guide tree's
        file at that path, or the checkpoint file it replaces (``ckpt-100.pt`` for
        ``ckpt-200.pt``: see :func:`~mlvc_core.trees.find_previous_version`).
        """
        repo = self.session.repo
        candidates = [previous] if previous is not None else []
        if self._guide is not None:
            try:  # a guide is only a hint: an unreadable one is no guide
                e = find_previous_version(repo, self._guide, rel)
            except MlvcError:
                e = None
            if e is not None and e.kind == "file" and e.oid is not None:
                candidates.append(e.oid)
        for oid in candidates:
            try:
                return repo.read_manifest(oid)
            except MlvcError:
                continue
        return None

    def _cached_ok(self, manifest_id: ObjectId, size: int) -> bool:
        """True if a stat-cache hit may stand for the file: a hint, checked before use.

        Its manifest must be in the repository (re-checked under this session's lock) and
        record the file's size; otherwise the file is read again.
        """
        if not self.session.has(manifest_id):
            return False
        try:
            return self.session.repo.read_manifest(manifest_id).size == size
        except MlvcError:
            return False

    def file_entry(
        self, path: Path, name: str, st: os.stat_result, rel: str | None = None
    ) -> TreeEntry:
        """Store one regular file (``rel``: its path in the tree); return its entry.

        The file's recorded permission bits are its own (``st_mode & 0o777``).

        Raises:
            FileChanged: The file kept changing while it was read (see :meth:`read`).
        """
        key = _cache_key(path)
        previous = self.stat_cache.previous(key, st) if self.stat_cache else None
        mode = stat_mod.S_IMODE(st.st_mode) & 0o777
        if previous is not None and previous[1] and self._cached_ok(previous[0], st.st_size):
            if self.session.progress is not None:
                self.session.progress(st.st_size)
            return TreeEntry(name, "file", previous[0], st.st_size, mode)
        guide = None
        if st.st_size > SMALL_FILE:
            guide = self.guide_for(rel or name, previous[0] if previous else None)
        manifest, stable = self.read(path, guide)
        manifest_id = self.session.add_object(manifest)
        if self.stat_cache is not None:
            self.stat_cache.record(key, stable, manifest_id)
        return TreeEntry(name, "file", manifest_id, manifest.size, mode)

    def read(self, path: Path, guide: Manifest | None = None) -> tuple[Manifest, os.stat_result]:
        """Store a file's content as it was at one moment; return its manifest and that stat.

        A file written while it is read would be recorded as a mix of old and new bytes that
        never existed on disk. So the file's size, mtime, ctime and inode are taken before
        and after the read (from the open descriptor); if they differ, or the bytes read are
        not its size, the file is read again once it has stayed unchanged for
        :data:`_QUIET_S` (a rewrite in progress usually ends), for up to ``patience_s``
        seconds. A read starts only once the file's last change is older than a timestamp
        tick (:func:`~mlvc_core.readers.settled`), so a write during the read always moves
        its timestamps.

        Raises:
            FileChanged: It was still changing after ``patience_s``.
        """
        start = time.monotonic()
        deadline = start + self.patience_s
        reads = 0
        files: FileIngester = getattr(self._local, "files", None) or self._files
        # Chunks of abandoned reads stay stored (for gc) but are not what the commit records:
        # the session's byte counts leave out those the kept read does not use.
        abandoned: set[ObjectId] = set()
        with open(path, "rb", buffering=0) as f:
            fd = f.fileno()
            while True:
                before = settled(fd)
                if before is not None:
                    reads += 1
                    manifest = files.ingest(f, before.st_size, guide)
                    after = os.fstat(fd)
                    if stamp(after) == stamp(before) and manifest.size == after.st_size:
                        self.session.uncount(abandoned.difference(c for c, _ in manifest.chunks))
                        return manifest, after
                    abandoned.update(c for c, _ in manifest.chunks)
                    f.seek(0)
                if not _quiet(fd, deadline):
                    break
        self.session.uncount(abandoned)
        raise FileChanged(str(path), reads, time.monotonic() - start)

    def entry(self, path: Path, name: str, rel: str) -> TreeEntry | None:
        """Store whatever ``path`` is (file, directory, symlink); None if skipped."""
        check_name(name)
        st = os.lstat(path)
        if stat_mod.S_ISLNK(st.st_mode):
            return TreeEntry(name, "link", None, 0, 0o777, os.readlink(path))
        if stat_mod.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) in self.own_dirs:
                return None  # the repository itself (or its cache): never inside a snapshot
            tree = self.tree(path, rel)
            mode = stat_mod.S_IMODE(st.st_mode) & 0o777
            return TreeEntry(name, "dir", self.session.add_object(tree), tree.size, mode)
        if stat_mod.S_ISREG(st.st_mode):
            try:
                return self.file_entry(path, name, st, rel)
            except FileChanged as exc:
                if self.on_changed is None:
                    raise
                self.on_changed(rel, exc)
                return None
        return None  # sockets, fifos, devices: not content

    def tree(self, directory: Path, rel: str = "") -> Tree:
        """Build (and store the subtrees of) one directory.

        An entry removed between the listing and its reading (a temporary file) is left out,
        as if the directory had been listed a moment later.

        Small files (up to :data:`SMALL_FILE`) are read, cut, hashed and compressed on the
        repository's worker threads, :data:`_BATCH_FILES` to a task (a thread hand-off per
        file would cost more than the file), each exactly as :meth:`read` does alone (the
        same retries of a file that changes while it is read). Once the walk has queued
        :data:`~mlvc_core.readers.POOL_FILES` of them, files below the chunker's minimum
        (one chunk each) go to reader processes instead (:mod:`mlvc_core.readers`), which
        use every core; this thread stores what they send back
        (:func:`~mlvc_core.readers.store`), and reads any file they could not read cleanly
        itself. Entries take their places in name order, so the tree is the one a sequential
        walk builds. At most ``2 x workers`` tasks are in flight.
        Stat-cache hits are looked up :data:`_PREFETCH` names at a time (one query) and
        their manifests read together.
        """
        with self:
            return self._tree(directory, rel)

    def _tree(self, directory: Path, rel: str) -> Tree:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        slots: list[TreeEntry | None] = []
        batches: list[list[_Small]] = [[], []]  # for threads, for processes
        sizes = [0, 0]
        # Each batch's files, in walk order, and its answers: from a worker thread, or from a
        # reader process (the other None).
        inflight: deque[
            tuple[list[_Small], Future[list[_Read]] | None, Future[list[Read | None]] | None]
        ]
        inflight = deque()
        lost_reader: list[readers.ReaderDied] = []  # a reader process ended (said once)
        window = 2 * default_workers()
        progress = self.session.progress
        one_chunk = self.session.repo.config.chunker.min
        level = self.session.repo.config.compression_level
        planes = self.session.repo.config.byte_planes

        def stored(job: _Small, manifest_id: ObjectId, size: int, st: os.stat_result) -> None:
            if self.stat_cache is not None:
                self.stat_cache.record(job[5], st, manifest_id)
            slots[job[0]] = TreeEntry(job[2], "file", manifest_id, size, job[4])
            self.session.read_bytes += size
            if progress is not None and size:
                progress(size)

        def again(job: _Small) -> None:  # read here, as any file on its own
            with contextlib.suppress(FileNotFoundError):
                slots[job[0]] = self.entry(Path(job[1]), job[2], job[3])

        def collect() -> None:
            jobs, on_thread, in_reader = inflight.popleft()
            if in_reader is not None:
                try:
                    answers = in_reader.result()
                except readers.ReaderDied as died:
                    # Killed (the OOM killer...): nothing of the batch was stored, and the
                    # pool takes no more; this batch is read here, the rest on threads.
                    if not lost_reader:
                        log.warning("mlvc: %s; reading its files in this process", died)
                        lost_reader.append(died)
                    for job in jobs:
                        again(job)
                    return
                for job, read in zip(jobs, answers, strict=True):
                    if read is AGAIN:  # not read cleanly there
                        again(job)
                    else:
                        st = read[0]
                        stored(job, readers.store(self.session, read), st.st_size, st)
                return
            assert on_thread is not None
            for job, answer in zip(jobs, on_thread.result(), strict=True):
                if answer is AGAIN:
                    again(job)
                else:
                    manifest_id, size, stable, exc = answer
                    if isinstance(exc, FileChanged):
                        if self.on_changed is None:
                            raise exc
                        self.on_changed(job[3], exc)
                    elif isinstance(exc, TooLarge):  # grew meanwhile
                        again(job)
                    elif exc is None:
                        assert manifest_id is not None and stable is not None
                        stored(job, manifest_id, size, stable)

        def send(procs: bool) -> None:
            batch, batches[procs], sizes[procs] = batches[procs], [], 0
            pool = self.readers.pool
            if procs and pool is not None:
                paths = [job[1] for job in batch]
                inflight.append((batch, None, pool.submit(paths, one_chunk, level, planes)))
            else:
                reading = self.session.repo.pool.submit(self._read_batch, batch)
                inflight.append((batch, reading, None))
            while len(inflight) > window:
                collect()

        base = str(directory.absolute())  # as :func:`_cache_key` has it
        prefix = base if base.endswith(os.sep) else base + os.sep  # + a name: its path
        try:
            for i in range(0, len(names), _PREFETCH):
                for name, child_rel, st, hit in self._look(prefix, rel, names[i:][:_PREFETCH]):
                    if st is not None and stat_mod.S_ISREG(st.st_mode) and st.st_size <= SMALL_FILE:
                        mode = stat_mod.S_IMODE(st.st_mode) & 0o777
                        if hit is not None and hit[1] and self._cached_ok(hit[0], st.st_size):
                            slots.append(TreeEntry(name, "file", hit[0], st.st_size, mode))
                            if progress is not None:
                                progress(st.st_size)
                            continue
                        full = prefix + name
                        ready = self.readers.queued()
                        procs = st.st_size < one_chunk and ready
                        batches[procs].append(
                            (len(slots), full, name, child_rel, mode, _key_of(full))
                        )
                        slots.append(None)
                        sizes[procs] += st.st_size
                        if len(batches[procs]) >= _BATCH_FILES or sizes[procs] >= _BATCH_BYTES:
                            send(procs)
                        continue
                    try:
                        slots.append(self.entry(directory / name, name, child_rel))
                    except FileNotFoundError as exc:
                        if isinstance(exc, MlvcError):  # the repository's, not the file's
                            raise
                        # removed since the directory was listed: not part of it any more
            for procs in (False, True):
                if batches[procs]:
                    send(procs)
            while inflight:
                collect()
        finally:
            for _, on_thread, in_reader in inflight:  # let no worker outlive the walk
                with contextlib.suppress(BaseException):
                    if on_thread is not None:
                        on_thread.result()
                    if in_reader is not None:
                        in_reader.result()
        return Tree(tuple(e for e in slots if e is not None))

    def _look(
        self, prefix: str, rel: str, names: list[str]
    ) -> list[tuple[str, str, os.stat_result | None, tuple[ObjectId, bool] | None]]:
        """``(name, relative path, lstat or None, stat-cache record or None)`` of each name.

        Excluded names are left out; a name gone since the listing has no stat. Stat-cache
        records of small regular files are looked up with one query, and the manifests of
        hits read together (one request per run of adjacent ones: each is still checked
        before use, :meth:`_cached_ok`).
        """
        out: list[tuple[str, str, os.stat_result | None, tuple[ObjectId, bool] | None]] = []
        for name in names:
            child_rel = f"{rel}/{name}" if rel else name
            if _is_excluded(self.exclude, child_rel):
                continue
            check_name(name)
            try:
                st: os.stat_result | None = os.lstat(prefix + name)
            except FileNotFoundError:
                st = None
            out.append((name, child_rel, st, None))
        if self.stat_cache is None:
            return out
        small = [
            i
            for i, (_, _, st, _) in enumerate(out)
            if st is not None and stat_mod.S_ISREG(st.st_mode) and st.st_size <= SMALL_FILE
        ]
        found = self.stat_cache.previous_many(
            [(_key_of(prefix + out[i][0]), out[i][2]) for i in small]
        )
        wanted = []
        for i, record in zip(small, found, strict=True):
            if record is not None:
                name, child_rel, st, _ = out[i]
                out[i] = (name, child_rel, st, record)
                if record[1]:
                    wanted.append(record[0])
        if wanted:
            self.session.repo.prefetch_objects(wanted)
        return out

    def _read_batch(self, jobs: list[_Small]) -> list[_Read]:
        """Worker: :meth:`read` and store each small file; one answer per job, in order."""
        if getattr(self._local, "files", None) is None:
            self._local.files = FileIngester(self.session, worker=True)
        out: list[_Read] = []
        for _, path, _, _, _, _ in jobs:
            try:
                manifest, stable = self.read(Path(path))
            except (FileChanged, TooLarge) as exc:
                out.append((None, 0, None, exc))
                continue
            except FileNotFoundError as exc:
                if isinstance(exc, MlvcError):
                    raise
                out.append((None, 0, None, exc))  # removed since the directory was listed
                continue
            out.append((self.session.add_object(manifest), manifest.size, stable, None))
        return out


_Small = tuple[int, str, str, str, int, str]
"""A small file for a worker: slot in the tree, absolute path, name, relative path, mode, cache
key."""
_Read = tuple["ObjectId | None", int, "os.stat_result | None", "Exception | None"]
"""A worker's answer: manifest id, size, the stat it was read at; or why it was not read."""
_BATCH_FILES = 64
_BATCH_BYTES = 8 * MiB


def ingest_paths(
    session: WriteSession,
    paths: list[str | os.PathLike[str]],
    exclude: ExcludeFn | None = None,
    stat_cache: StatCache | None = None,
    guide: ObjectId | None = None,
    on_changed: Callable[[str, FileChanged], None] | None = None,
    patience_s: float | None = None,
) -> ObjectId:
    """Store files and directories; return the root tree id.

    One directory becomes the root itself. Otherwise each path becomes a root entry named by
    its base name. ``guide``: the root tree of a previous version; ``on_changed`` and
    ``patience_s``: what to do with files that keep changing (see :class:`TreeBuilder`).

    Raises:
        UsageError: A path does not exist, or two paths share a base name.
        FileChanged: A file kept changing while it was read and ``on_changed`` is None.
    """
    builder = TreeBuilder(session, exclude, stat_cache, guide, on_changed, patience_s)
    resolved = [Path(p) for p in paths]
    for p in resolved:
        if not p.exists() and not p.is_symlink():
            raise UsageError(f"no such file or directory: {p}")
    for p in resolved:
        if p.is_dir() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) in builder.own_dirs:
                raise UsageError(f"{p} is the repository (or its cache): it is never committed")
    try:
        with builder:  # one set of reader processes for every path
            if len(resolved) == 1 and resolved[0].is_dir() and not resolved[0].is_symlink():
                root = builder.tree(resolved[0])
            else:
                entries: dict[str, TreeEntry] = {}
                for p in resolved:
                    name = p.absolute().name
                    if name in entries:
                        raise UsageError(
                            f"two paths are both named {name!r}; commit their parent instead"
                        )
                    e = builder.entry(p, name, name)
                    if e is not None:
                        entries[name] = e
                root = Tree(tuple(entries.values()))
            return session.add_object(root)
    finally:
        if stat_cache is not None:
            stat_cache.flush()

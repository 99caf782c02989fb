"""Ingest: files and directories -> chunks -> manifests -> trees, streaming.

The pipeline for one file, all bounded in memory whatever the file's size:

1. the calling thread reads the file into a small ring of reusable buffers (no per-chunk
   allocation: fresh large allocations cost a page fault per 4 KiB) and cuts each buffer into
   content-defined chunks (pyfastcdc releases the GIL while it cuts); the bytes after the last
   cut point are carried into the next buffer, so boundaries do not depend on buffer size;
2. worker threads hash the chunks (BLAKE3), a run of four per task, and compress (zstd) only
   those the repository lacks - both release the GIL, so this runs on every core;
3. the calling thread takes results in order and appends new payloads to the session's pack.

Given the previous version of the file (a *guide*: the parent commit's file at the same path,
or the stat cache's last record of it), step 1 first lays the guide's chunks over the bytes
instead of cutting, and the workers check each against its expected id. Where one differs,
everything queued after it is dropped, the file is read again from there and cut, and the
guide is tried again once a chunk cut from the file turns out to be one of the guide's (the
offset between the two versions tells where). The result is exactly the manifest cutting gives:
a chunk boundary depends only on the bytes since the previous boundary, so a guide chunk whose
bytes match, starting at a true boundary, ends at one too (a guide's last chunk is used only at
the end of the file, where its end was not decided by content).

A buffer is refilled only after every chunk cut from it has been written, which bounds the
memory to the ring (``_NBUF`` buffers of ``_BUF`` or four of the largest chunks) plus the
compressed payloads in flight.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat as stat_mod
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlvc_core import codec
from mlvc_core.chunker import ChunkerParams, MiB, make_fastcdc
from mlvc_core.errors import FileChanged, MlvcError, UsageError
from mlvc_core.ids import ObjectId, hash_bytes
from mlvc_core.objects import CHUNK, Manifest, Tree, TreeEntry, check_name
from mlvc_core.repository import default_workers
from mlvc_core.session import WriteSession
from mlvc_core.trees import find_entry

if TYPE_CHECKING:
    from mlvc_core.statcache import StatCache  # sqlite3: imported only where a cache is used

_BUF = 4 * MiB
"""Ring buffer size (at least four of the largest chunks)."""
_NBUF = 4
_SMALL_FILE = 2 * MiB
_GROUP = 4
"""Chunks per worker task."""
_MAX_MISSES = 16
"""Failed guesses after which a file is just cut."""

PATIENCE_S = 60.0
"""How long a file that changed while it was read is waited for (see :meth:`TreeBuilder.read`)."""
_QUIET_S = 0.5
"""How long a changed file must stay unchanged before it is read again."""
_POLL_S = 0.05
_SETTLE_NS = 20_000_000
"""How long after its last change a file is read: longer than a kernel timestamp tick
(at most 10 ms), so any write during the read moves its mtime or ctime."""
_COARSE_SETTLE_NS = 2_100_000_000

ExcludeFn = Callable[[str], bool]


Result = tuple[ObjectId, int, "bytes | memoryview | None"]
"""A worker's answer for one chunk: id, codec, payload to store (None: already stored)."""


def _store(
    oid: ObjectId, view: memoryview, level: int, planes: bool, has: Callable[[ObjectId], bool]
) -> Result:
    """A hashed chunk's result: compressed unless the repository already has it."""
    if has(oid):
        return oid, codec.RAW, None
    c, payload = codec.compress(view, level, planes)
    return oid, c, payload


def _process_group(
    pieces: list[tuple[memoryview, ObjectId | None]],
    level: int,
    planes: bool,
    has: Callable[[ObjectId], bool],
    seen: list[ObjectId],
) -> list[Result]:
    """Worker: hash and :func:`_store` a run of chunks, one task for several (fewer hand-offs).

    A piece with an expected id (laid out from a previous version) that hashes to anything
    else ends the run: the result has one entry per piece before it. Ids go into ``seen`` as
    soon as they are known (before compressing), so the reading thread can spot a previous
    version's chunk without waiting for the compression.
    """
    out: list[Result] = []
    for view, expected in pieces:
        oid = hash_bytes(view)
        if expected is not None and oid != expected:
            break
        seen.append(oid)
        out.append(_store(oid, view, level, planes, has))
    return out


class _Guide:
    """A previous version of a file: its chunks, by id and by offset."""

    def __init__(self, manifest: Manifest, max_len: int) -> None:
        self.chunks = manifest.chunks
        self.by_offset: dict[int, int] = {}
        self.end_of: dict[ObjectId, int] = {}
        """End offset of each chunk that occurs once (a repeated one says nothing of where)."""
        repeated: set[ObjectId] = set()
        off = 0
        for i, (oid, n) in enumerate(self.chunks):
            self.by_offset[off] = i
            off += n
            if oid in self.end_of:
                repeated.add(oid)
            self.end_of[oid] = off
        for oid in repeated:
            del self.end_of[oid]
        self.usable = all(n <= max_len for _, n in self.chunks)


@dataclass
class _Pending:
    """A run of chunks queued to the workers."""

    buffer: int
    offset: int
    """Offset in the file of the first byte."""
    lengths: list[int]
    guided: bool
    """Laid out from a guide (each piece checked against its expected id), not cut."""
    future: Future[list[Result]] | None = None
    seen: list[ObjectId] = field(default_factory=list)

    def hit(self, ends: dict[ObjectId, int]) -> tuple[int, int] | None:
        """(end in the file, end in the guide) of the last hashed chunk the guide holds."""
        if self.guided:
            return None
        seen = list(self.seen)
        for i in range(len(seen) - 1, -1, -1):
            if seen[i] in ends:
                return self.offset + sum(self.lengths[: i + 1]), ends[seen[i]]
        return None


class _TooLarge(Exception):
    """A file grew past :data:`_SMALL_FILE` before a worker thread read it."""


class FileIngester:
    """Turns files into manifests within one :class:`WriteSession`. One per thread."""

    def __init__(self, session: WriteSession, worker: bool = False) -> None:
        """Set up.

        Args:
            session: Where to store.
            worker: Used on a worker thread of the repository's pool: small files only
                (a larger one raises :class:`_TooLarge`: the ring would wait on the pool
                it runs on), and progress is left to the thread that hands out the work.
        """
        self.session = session
        self.worker = worker
        self.repo = session.repo
        self._cutter: Any = None  # made when a file is first cut (a commit may cut none)
        # The ring's buffers, mapped one by one as a file first needs them: a commit that reads
        # nothing (stat cache hits) or only small files pays for none of them.
        self._bufs: list[mmap.mmap] = []
        self._level = self.repo.config.compression_level
        self._planes = self.repo.config.byte_planes
        self._buf_size = max(_BUF, 4 * self.repo.config.chunker.max)

    def _cdc(self) -> Any:
        if self._cutter is None:
            self._cutter = make_fastcdc(self.repo.config.chunker)
        return self._cutter

    def ingest(
        self, f: Any, size_hint: int | None = None, guide: Manifest | None = None
    ) -> Manifest:
        """Read a binary file object to its end; store its chunks; return its manifest.

        Args:
            f: A binary file object with ``readinto`` (or ``read``).
            size_hint: The expected size; files well below the ring buffer's size are read in
                one piece instead of through the ring.
            guide: The manifest of a previous version of the file (same repository). Where
                the file still holds the guide's chunks they are verified by hash instead of
                being searched for by the chunker (see :func:`_process_group`); the result is the
                same manifest either way. Needs a seekable ``f``.
        """
        if size_hint is not None and size_hint <= _SMALL_FILE:
            return self._ingest_small(f.read())
        if self.worker:
            raise _TooLarge
        g = _Guide(guide, self._buf_size // 2) if guide is not None and guide.chunks else None
        if g is not None and not (g.usable and f.seekable()):
            g = None
        start = f.tell() if g is not None else 0
        session = self.session
        pending: deque[_Pending] = deque()
        chunks: list[tuple[ObjectId, int]] = []
        restart: list[int] = []  # file offset to read again from, after a guess failed
        ends = g.end_of if g is not None else {}
        hits: list[tuple[int, int]] = []  # (end in the file, end in the guide) of a cut chunk

        # The last chunk laid out from the guide, and where it starts: its bytes match, but
        # FastCDC decides a boundary by the byte after it too, so its end is a boundary only
        # once the next chunk matches as well (or the file ends there).
        held: list[tuple[Result, int]] = []
        held_at = 0

        def accept(result: Result, length: int) -> None:
            oid, c, payload = result
            if payload is not None:
                session.add_payload(oid, CHUNK, c, payload, length)
            chunks.append((oid, length))
            session.read_bytes += length
            if session.progress is not None:
                session.progress(length)

        def take(p: _Pending) -> None:
            nonlocal held_at
            assert p.future is not None
            results = p.future.result()
            if held:
                if not (p.guided and results):
                    # A mismatch right after it, or cutting went on from its end: cut it again.
                    held.clear()
                    restart.append(held_at)
                    return
                accept(*held.pop())
            off = p.offset
            for i, (result, length) in enumerate(zip(results, p.lengths, strict=False)):
                if p.guided and i == len(results) - 1:
                    if len(results) < len(p.lengths):  # the next one differs: cut it again
                        restart.append(off)
                        return
                    oid, c, payload = result
                    if isinstance(payload, memoryview):  # the ring buffer is refilled meanwhile
                        payload = bytes(payload)
                    held.append(((oid, c, payload), length))
                    held_at = off
                else:
                    accept(result, length)
                off += length
            if len(results) < len(p.lengths):
                restart.append(off)
            elif (h := p.hit(ends)) is not None:
                hits.append(h)

        def drain(until_buffer: int | None) -> None:
            while pending and (
                until_buffer is None or any(p.buffer == until_buffer for p in pending)
            ):
                p = pending.popleft()
                assert p.future is not None
                if restart:
                    p.future.result()  # speculative: wait until no worker reads its buffer
                else:
                    take(p)

        # Where a boundary is in the file minus where the guide has it: 0 until an insertion
        # or deletion shifts the content. ``expect`` is the guide's chunk to try next, if any.
        delta = 0
        expect: int | None = 0 if g is not None else None
        evidence = -1  # end offset of the last guide chunk found by hashing and acted on
        misses = 0
        base = 0  # file offset of the buffer's first byte
        tail = b""
        bi = 0
        eof = False
        try:
            while True:
                drain(bi)
                if restart:
                    drain(None)
                    base = evidence = restart[0]
                    restart.clear()
                    misses += 1
                    if misses > _MAX_MISSES:
                        g = None  # the guide keeps failing: just cut
                    f.seek(start + base)
                    tail, expect, eof = b"", None, False
                if eof:
                    drain(None)
                    if restart:
                        continue
                    if held:  # it ends where the file does: a boundary
                        accept(*held.pop())
                    break
                if bi == len(self._bufs):
                    # Anonymous mappings: pages are zeroed by the kernel as they are first
                    # written, so a file of a few MiB touches a few MiB (a bytearray would zero
                    # all of it first), and later files reuse what earlier ones touched.
                    self._bufs.append(mmap.mmap(-1, self._buf_size))
                mv = memoryview(self._bufs[bi])
                filled = len(tail)
                mv[:filled] = tail
                while filled < self._buf_size:
                    n = f.readinto(mv[filled:])
                    if not n:
                        eof = True
                        break
                    filled += n
                if filled == 0:
                    continue
                data = mv[:filled]
                pos = 0
                if g is not None and expect is None:
                    # Back in step with the guide? The newest chunk hashed so far that the guide
                    # holds tells how far the content has shifted.
                    found = next(
                        (h for p in reversed(pending) if (h := p.hit(ends)) is not None),
                        hits[-1] if hits else None,
                    )
                    if found is not None and found[0] > evidence:
                        evidence, delta = found[0], found[0] - found[1]
                        expect = g.by_offset.get(base - delta)
                if g is not None and expect is not None:
                    expect, pos = self._lay_out(g, expect, data, base, eof, bi, pending)
                if pos < filled and (g is None or expect is None):
                    rest = data[pos:filled]
                    cuts = [(c.offset, c.length) for c in self._cdc().cut_buf(rest)]
                    if not eof:
                        cuts.pop()  # the last piece ends at the buffer's end, not at a boundary
                    for i in range(0, len(cuts), _GROUP):
                        run = cuts[i : i + _GROUP]
                        self._submit(
                            _Pending(bi, base + pos + run[0][0], [n for _, n in run], False),
                            [(rest[off : off + n], None) for off, n in run],
                            pending,
                        )
                    pos += sum(n for _, n in cuts)
                tail = bytes(data[pos:filled])
                base += pos
                bi = (bi + 1) % _NBUF
        except BaseException:
            # Workers still hashing or compressing read this ingester's buffers: let none
            # outlive the call, so a failed file leaves nothing running behind it.
            for p in pending:
                assert p.future is not None
                with contextlib.suppress(Exception):
                    p.future.result()
            raise
        return Manifest(sum(n for _, n in chunks), tuple(chunks))

    def _submit(
        self,
        p: _Pending,
        pieces: list[tuple[memoryview, ObjectId | None]],
        pending: deque[_Pending],
    ) -> None:
        p.future = self.repo.pool.submit(
            _process_group, pieces, self._level, self._planes, self.session.has, p.seen
        )
        pending.append(p)

    def _lay_out(
        self,
        g: _Guide,
        expect: int,
        data: memoryview,
        base: int,
        eof: bool,
        bi: int,
        pending: deque[_Pending],
    ) -> tuple[int | None, int]:
        """Queue the guide's chunks from ``expect`` over ``data`` for verification.

        Returns the guide chunk to try at the next buffer (None: cut from here on) and how
        far into ``data`` the queued chunks reach.
        """
        filled = len(data)
        pos = group_at = 0
        pieces: list[tuple[memoryview, ObjectId | None]] = []
        lengths: list[int] = []

        def submit() -> None:
            self._submit(_Pending(bi, base + group_at, lengths, True), pieces, pending)

        while expect < len(g.chunks):
            oid, n = g.chunks[expect]
            if pos + n > filled:
                break
            if expect == len(g.chunks) - 1 and not (eof and pos + n == filled):
                break  # the guide's last chunk was cut by its end of file, not by content
            pieces.append((data[pos : pos + n], oid))
            lengths.append(n)
            pos += n
            expect += 1
            if len(pieces) == _GROUP:
                submit()
                pieces, lengths, group_at = [], [], pos
        if pieces:
            submit()
        more = not eof and expect < len(g.chunks) and pos + g.chunks[expect][1] > filled
        return (expect if more else None), pos

    def _ingest_small(self, data: bytes) -> Manifest:
        """A small file: cut in one piece, hash and compress here (no thread round trips).

        Below the chunker's minimum size a file is one chunk (FastCDC looks for no boundary
        before it), which needs no cutter.
        """
        session = self.session
        chunks: list[tuple[ObjectId, int]] = []
        view = memoryview(data)
        if len(data) < self.repo.config.chunker.min:
            cuts = [(0, len(data))] if data else []
        else:
            cuts = [(c.offset, c.length) for c in self._cdc().cut_buf(view)]
        for offset, length in cuts:
            piece = view[offset : offset + length]
            oid = hash_bytes(piece)
            oid, codec_id, payload = _store(oid, piece, self._level, self._planes, session.has)
            if payload is not None:
                session.add_payload(oid, CHUNK, codec_id, payload, length)
            chunks.append((oid, length))
        if not self.worker:
            session.read_bytes += len(data)
            if session.progress is not None and data:
                session.progress(len(data))
        return Manifest(len(data), tuple(chunks))


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file's content does."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def _settled(fd: int) -> os.stat_result | None:
    """The file's stat once its last change is more than a timestamp tick old, or None.

    None if it kept changing meanwhile. A file system that keeps whole seconds only (both
    stamps whole: FAT, some network file systems) has a tick of up to two seconds.
    """
    st = os.fstat(fd)
    for _ in range(4):
        coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
        settle = _COARSE_SETTLE_NS if coarse else _SETTLE_NS
        wait = max(st.st_mtime_ns, st.st_ctime_ns) + settle - time.time_ns()
        if not 0 < wait <= settle:  # old enough, or stamped in the future (not ours)
            return st
        time.sleep(wait / 1e9)
        st = os.fstat(fd)
    return None


def _quiet(fd: int, deadline: float) -> bool:
    """Wait until the file stays unchanged for :data:`_QUIET_S`; False at ``deadline``."""
    last = _stamp(os.fstat(fd))
    since = time.monotonic()
    while time.monotonic() - since < _QUIET_S:
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
        now = _stamp(os.fstat(fd))
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

    def guide_for(self, rel: str, previous: ObjectId | None = None) -> Manifest | None:
        """The previous version of the file at ``rel``, if one is known and readable.

        ``previous`` (a manifest id, from the stat cache) comes first, then the guide tree's
        file at that path.
        """
        repo = self.session.repo
        candidates = [previous] if previous is not None else []
        if self._guide is not None:
            try:  # a guide is only a hint: an unreadable one is no guide
                e = find_entry(repo, self._guide, rel)
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
        if st.st_size > _SMALL_FILE:
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
        tick (:data:`_SETTLE_NS`), so a write during the read always moves its timestamps.

        Raises:
            FileChanged: It was still changing after ``patience_s``.
        """
        start = time.monotonic()
        deadline = start + self.patience_s
        reads = 0
        files: FileIngester = getattr(self._local, "files", None) or self._files
        with open(path, "rb", buffering=0) as f:
            fd = f.fileno()
            while True:
                before = _settled(fd)
                if before is not None:
                    reads += 1
                    manifest = files.ingest(f, before.st_size, guide)
                    after = os.fstat(fd)
                    if _stamp(after) == _stamp(before) and manifest.size == after.st_size:
                        return manifest, after
                    f.seek(0)
                if not _quiet(fd, deadline):
                    break
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

        Small files (up to :data:`_SMALL_FILE`) are read, cut, hashed and compressed on the
        repository's worker threads, :data:`_BATCH_FILES` to a task (a thread hand-off per
        file would cost more than the file), each exactly as :meth:`read` does alone (the
        same retries of a file that changes while it is read); their entries take their
        places in name order, so the tree is the one a sequential walk builds. At most
        ``2 x workers`` tasks are in flight. Stat-cache hits are looked up
        :data:`_PREFETCH` names at a time (one query) and their manifests read together.
        """
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        slots: list[TreeEntry | None] = []
        batch: list[_Small] = []
        batch_bytes = 0
        inflight: deque[tuple[list[_Small], Future[list[_Read]]]] = deque()
        window = 2 * default_workers()
        progress = self.session.progress

        def collect() -> None:
            jobs, future = inflight.popleft()
            for job, (manifest_id, size, stable, exc) in zip(jobs, future.result(), strict=True):
                idx, path, name, child_rel, mode, key = job
                if isinstance(exc, FileChanged):
                    if self.on_changed is None:
                        raise exc
                    self.on_changed(child_rel, exc)
                elif isinstance(exc, _TooLarge):  # grew meanwhile: read here, as any large file
                    with contextlib.suppress(FileNotFoundError):
                        slots[idx] = self.entry(path, name, child_rel)
                elif exc is None:
                    assert manifest_id is not None and stable is not None
                    if self.stat_cache is not None:
                        self.stat_cache.record(key, stable, manifest_id)
                    slots[idx] = TreeEntry(name, "file", manifest_id, size, mode)
                    self.session.read_bytes += size
                    if progress is not None and size:
                        progress(size)

        def send() -> None:
            nonlocal batch, batch_bytes
            inflight.append((batch, self.session.repo.pool.submit(self._read_batch, batch)))
            batch, batch_bytes = [], 0
            while len(inflight) > window:
                collect()

        base = str(directory.absolute())  # as :func:`_cache_key` has it
        try:
            for i in range(0, len(names), _PREFETCH):
                for name, child_rel, st, hit in self._look(
                    directory, base, rel, names[i:][:_PREFETCH]
                ):
                    if (
                        st is not None
                        and stat_mod.S_ISREG(st.st_mode)
                        and st.st_size <= _SMALL_FILE
                    ):
                        mode = stat_mod.S_IMODE(st.st_mode) & 0o777
                        if hit is not None and hit[1] and self._cached_ok(hit[0], st.st_size):
                            slots.append(TreeEntry(name, "file", hit[0], st.st_size, mode))
                            if progress is not None:
                                progress(st.st_size)
                            continue
                        key = _key_of(os.path.join(base, name))
                        batch.append((len(slots), directory / name, name, child_rel, mode, key))
                        slots.append(None)
                        batch_bytes += st.st_size
                        if len(batch) >= _BATCH_FILES or batch_bytes >= _BATCH_BYTES:
                            send()
                        continue
                    try:
                        slots.append(self.entry(directory / name, name, child_rel))
                    except FileNotFoundError as exc:
                        if isinstance(exc, MlvcError):  # the repository's, not the file's
                            raise
                        # removed since the directory was listed: not part of it any more
            if batch:
                send()
            while inflight:
                collect()
        finally:
            for _, future in inflight:  # let no worker outlive the walk
                with contextlib.suppress(BaseException):
                    future.result()
        return Tree(tuple(e for e in slots if e is not None))

    def _look(
        self, directory: Path, base: str, rel: str, names: list[str]
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
                st: os.stat_result | None = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                st = None
            out.append((name, child_rel, st, None))
        if self.stat_cache is None:
            return out
        small = [
            i
            for i, (_, _, st, _) in enumerate(out)
            if st is not None and stat_mod.S_ISREG(st.st_mode) and st.st_size <= _SMALL_FILE
        ]
        found = self.stat_cache.previous_many(
            [(_key_of(os.path.join(base, out[i][0])), out[i][2]) for i in small]
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
                manifest, stable = self.read(path)
            except (FileChanged, _TooLarge) as exc:
                out.append((None, 0, None, exc))
                continue
            except FileNotFoundError as exc:
                if isinstance(exc, MlvcError):
                    raise
                out.append((None, 0, None, exc))  # removed since the directory was listed
                continue
            out.append((self.session.add_object(manifest), manifest.size, stable, None))
        return out


_Small = tuple[int, Path, str, str, int, str]
"""A small file for a worker: slot in the tree, path, name, relative path, mode, cache key."""
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


def ingest_bytes(session: WriteSession, data: bytes) -> Manifest:
    """Store an in-memory buffer as a file; return its manifest (small files, tests)."""
    import io

    return FileIngester(session).ingest(io.BytesIO(data))


def chunk_ids_of(data: bytes, params: ChunkerParams) -> list[ObjectId]:
    """Chunk ids ``data`` would get (for tests and tools)."""
    cdc = make_fastcdc(params)
    return [hash_bytes(memoryview(data)[c.offset : c.offset + c.length]) for c in cdc.cut_buf(data)]

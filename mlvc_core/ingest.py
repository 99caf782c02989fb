"""Ingest: files and directories -> chunks -> manifests -> trees, streaming.

The pipeline for one file, all bounded in memory whatever the file's size:

1. the calling thread reads the file into a small ring of reusable buffers (no per-chunk
   allocation: fresh large allocations cost a page fault per 4 KiB) and cuts each buffer into
   content-defined chunks (pyfastcdc releases the GIL while it cuts); the bytes after the last
   cut point are carried into the next buffer, so boundaries do not depend on buffer size;
2. worker threads hash each chunk (BLAKE3) and, only if the repository lacks it, compress it
   (zstd) - both release the GIL, so this runs on every core;
3. the calling thread takes results in order and appends new payloads to the session's pack.

A buffer is refilled only after every chunk cut from it has been written, which bounds the
memory to the ring (``_NBUF`` x ``_BUF``) plus the compressed payloads in flight.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mlvc_core import codec
from mlvc_core.chunker import ChunkerParams, MiB, make_fastcdc
from mlvc_core.errors import UsageError
from mlvc_core.ids import ObjectId, hash_bytes
from mlvc_core.objects import CHUNK, Manifest, Tree, TreeEntry, check_name
from mlvc_core.repository import WriteSession
from mlvc_core.statcache import StatCache

_BUF = 16 * MiB
_NBUF = 3
_SMALL_FILE = 2 * MiB

ExcludeFn = Callable[[str], bool]


def _process(
    view: memoryview, level: int, planes: bool, has: Callable[[ObjectId], bool]
) -> tuple[ObjectId, int, bytes | memoryview | None]:
    """Worker: hash a chunk and compress it unless it is already stored."""
    oid = hash_bytes(view)
    if has(oid):
        return oid, codec.RAW, None
    c, payload = codec.compress(view, level, planes)
    return oid, c, payload


class FileIngester:
    """Turns files into manifests within one :class:`WriteSession`. One per thread."""

    def __init__(self, session: WriteSession) -> None:
        self.session = session
        self.repo = session.repo
        self._cdc = make_fastcdc(self.repo.config.chunker)
        # Allocated on first use: zero-filling 48 MiB costs tens of milliseconds of page faults,
        # which a commit that reads nothing (stat cache hits) or only small files must not pay.
        self._bufs: list[bytearray] = []
        self._level = self.repo.config.compression_level
        self._planes = self.repo.config.byte_planes
        assert _BUF >= 2 * self.repo.config.chunker.max

    def ingest(self, f: Any, size_hint: int | None = None) -> Manifest:
        """Read a binary file object to its end; store its chunks; return its manifest.

        Args:
            f: A binary file object with ``readinto`` (or ``read``).
            size_hint: The expected size; files well below the ring buffer's size are read in
                one piece instead of through the ring.
        """
        if size_hint is not None and size_hint <= _SMALL_FILE:
            return self._ingest_small(f.read())
        session = self.session
        pool = self.repo.pool
        pending: deque[tuple[int, int, Future[Any]]] = deque()  # (buffer, length, future)
        chunks: list[tuple[ObjectId, int]] = []
        size = 0

        def drain(until_buffer: int | None) -> None:
            while pending and (until_buffer is None or any(p[0] == until_buffer for p in pending)):
                _buf, length, fut = pending.popleft()
                oid, c, payload = fut.result()
                if payload is not None:
                    session.add_payload(oid, CHUNK, c, payload, length)
                chunks.append((oid, length))
                if session.progress is not None:
                    session.progress(length)

        tail = b""
        bi = 0
        eof = False
        while not eof:
            drain(bi)
            if not self._bufs:
                self._bufs = [bytearray(_BUF) for _ in range(_NBUF)]
            buf = self._bufs[bi]
            mv = memoryview(buf)
            t = len(tail)
            mv[:t] = tail
            filled = t
            while filled < _BUF:
                n = f.readinto(mv[filled:])
                if not n:
                    eof = True
                    break
                filled += n
            if filled == 0:
                break
            data = mv[:filled]
            cuts = [(c.offset, c.length) for c in self._cdc.cut_buf(data)]
            if not eof:
                # The last piece ends at the buffer's end, not at a content boundary: carry it.
                off, length = cuts.pop()
                tail = bytes(data[off : off + length])
            for off, length in cuts:
                view = data[off : off + length]
                pending.append(
                    (
                        bi,
                        length,
                        pool.submit(_process, view, self._level, self._planes, session.has),
                    )
                )
                size += length
            session.read_bytes += sum(n for _, n in cuts)
            bi = (bi + 1) % _NBUF
        drain(None)
        return Manifest(size, tuple(chunks))

    def _ingest_small(self, data: bytes) -> Manifest:
        """A small file: cut in one piece, hash and compress here (no thread round trips)."""
        session = self.session
        chunks: list[tuple[ObjectId, int]] = []
        view = memoryview(data)
        for c in self._cdc.cut_buf(view) if data else ():
            piece = view[c.offset : c.offset + c.length]
            oid, codec_id, payload = _process(piece, self._level, self._planes, session.has)
            if payload is not None:
                session.add_payload(oid, CHUNK, codec_id, payload, c.length)
            chunks.append((oid, c.length))
        session.read_bytes += len(data)
        if session.progress is not None and data:
            session.progress(len(data))
        return Manifest(len(data), tuple(chunks))


def _is_excluded(exclude: ExcludeFn | None, rel: str) -> bool:
    return exclude is not None and exclude(rel)


class TreeBuilder:
    """Walks directories into trees, honouring an exclude predicate and a stat cache."""

    def __init__(
        self,
        session: WriteSession,
        exclude: ExcludeFn | None = None,
        stat_cache: StatCache | None = None,
    ) -> None:
        self.session = session
        self.exclude = exclude
        self.stat_cache = stat_cache
        self._files = FileIngester(session)

    def file_entry(self, path: Path, name: str, st: os.stat_result) -> TreeEntry:
        """Store one regular file; return its entry."""
        key = str(path.absolute())
        manifest_id = self.stat_cache.lookup(key, st) if self.stat_cache else None
        mode = 0o755 if st.st_mode & stat_mod.S_IXUSR else 0o644
        if manifest_id is not None and self.session.has(manifest_id):
            if self.session.progress is not None:
                self.session.progress(st.st_size)
            return TreeEntry(name, "file", manifest_id, st.st_size, mode)
        with open(path, "rb", buffering=0) as f:
            manifest = self._files.ingest(f, st.st_size)
        manifest_id = self.session.add_object(manifest)
        if self.stat_cache is not None:
            self.stat_cache.record(key, st, manifest_id)
        return TreeEntry(name, "file", manifest_id, manifest.size, mode)

    def entry(self, path: Path, name: str, rel: str) -> TreeEntry | None:
        """Store whatever ``path`` is (file, directory, symlink); None if skipped."""
        check_name(name)
        st = os.lstat(path)
        if stat_mod.S_ISLNK(st.st_mode):
            return TreeEntry(name, "link", None, 0, 0o777, os.readlink(path))
        if stat_mod.S_ISDIR(st.st_mode):
            tree = self.tree(path, rel)
            return TreeEntry(name, "dir", self.session.add_object(tree), tree.size, 0o755)
        if stat_mod.S_ISREG(st.st_mode):
            return self.file_entry(path, name, st)
        return None  # sockets, fifos, devices: not content

    def tree(self, directory: Path, rel: str = "") -> Tree:
        """Build (and store the subtrees of) one directory."""
        entries = []
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        for name in names:
            child_rel = f"{rel}/{name}" if rel else name
            if _is_excluded(self.exclude, child_rel):
                continue
            e = self.entry(directory / name, name, child_rel)
            if e is not None:
                entries.append(e)
        return Tree(tuple(entries))


def ingest_paths(
    session: WriteSession,
    paths: list[str | os.PathLike[str]],
    exclude: ExcludeFn | None = None,
    stat_cache: StatCache | None = None,
) -> ObjectId:
    """Store files and directories; return the root tree id.

    One directory becomes the root itself. Otherwise each path becomes a root entry named by
    its base name.

    Raises:
        UsageError: A path does not exist, or two paths share a base name.
    """
    builder = TreeBuilder(session, exclude, stat_cache)
    resolved = [Path(p) for p in paths]
    for p in resolved:
        if not p.exists() and not p.is_symlink():
            raise UsageError(f"no such file or directory: {p}")
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
